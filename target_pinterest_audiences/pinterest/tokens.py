"""OAuth tokens: the token file, the refresh grant, and which token to use when.

Pinterest hands back a NEW refresh token on every refresh (continuous refresh tokens,
60-day life). Whoever drops it must re-connect by hand every 60 days, so every pair we
receive is written at once, atomically and private (0600), to the token file, which
later runs prefer over the config. Tokens and secrets never reach a log or an error.

Parallel jobs for one ad account share that file, and Pinterest does not say whether a
refresh token stays valid once it has been used. So every refresh happens under an OS
lock on a file beside the token file, and under that lock the file is read again first:
a pair another process stored meanwhile is adopted instead of refreshing with a refresh
token that may already be spent.

A run killed after sending a refresh and before saving its answer leaves a refresh token
Pinterest has probably replaced already. Nothing can recover that pair, but the next run can
say what happened: before sending a refresh, the token file records that it started (the
time, and the first 12 hex digits of the refresh token's SHA-256, never the token); saving
the new pair clears it. A refusal of that same refresh token then names the stopped run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from target_pinterest_audiences.private_files import UnsafePath, make_private_dirs, open_private

try:
    import fcntl
except ImportError:  # Windows: no flock, so parallel runs there are not serialized
    fcntl = None  # type: ignore[assignment]

#: Refresh this long before the access token's expiry, so no request races it (at most a
#: quarter of the token's lifetime, so short-lived tokens are not refreshed on every use).
ACCESS_TOKEN_MARGIN_SECONDS = 300
#: Give up waiting for another process's refresh after this long (it holds the lock only
#: for one token request, whose timeout is far shorter).
LOCK_WAIT_SECONDS = 300.0
#: Warn when the refresh token has less than this left.
REFRESH_TOKEN_WARN_SECONDS = 7 * 24 * 3600
#: Key of the token file's record of a refresh sent and not yet saved.
REFRESH_STARTED = "refresh_started"

_log = logging.getLogger(__name__)


class AuthError(RuntimeError):
    """Credentials are missing, rejected or cannot be refreshed; the message says what to do."""


class TransientAuthError(AuthError):
    """The token endpoint was unreachable or busy (429, 5xx): worth retrying later."""


class TokenFileError(AuthError):
    """The token file or its lock cannot be used: a local problem, not a refused credential."""


class TokenLockBusy(TokenFileError, TransientAuthError):
    """Another process holds the token lock too long: retried like an unreachable endpoint."""


def fingerprint(token: str) -> str:
    """Names a token without revealing it: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def default_token_cache_path(ad_account_id: str) -> Path:
    """Per-ad-account token file under the user's config directory (XDG)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "target-pinterest-audiences" / f"tokens-{ad_account_id}.json"


class TokenStore:
    """The token file shared by the target (any number of parallel runs) and the auth command."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    @property
    def lock_path(self) -> Path:
        """Beside the token file, never removed: removing a lock file lets two holders in."""
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def lock(self, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Hold the exclusive OS lock (flock) on the lock file: one read-refresh-write at a time.

        The OS releases it when its holder exits or dies, so a crash never leaves it stuck.
        Where fcntl does not exist (Windows) it serializes nothing.
        """
        if fcntl is None:
            yield
            return
        try:
            make_private_dirs(self.path.parent)
            fd = open_private(self.lock_path, os.O_RDWR | os.O_CREAT, "the token lock file")
        except UnsafePath as exc:
            raise TokenFileError(str(exc)) from None
        except OSError as exc:
            raise TokenFileError(
                f"cannot open the token lock file {self.lock_path} ({exc.strerror or exc}); "
                "check that its folder is writable by this user"
            ) from None
        try:
            deadline = time.monotonic() + wait_seconds
            pause = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TokenLockBusy(
                            f"another process has held the token lock {self.lock_path} for "
                            f"more than {wait_seconds:.0f} s (a parallel run or "
                            "`target-pinterest-audiences-admin connect` that may be stuck)"
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.1)
                except OSError as exc:  # a file system without locks (some network mounts)
                    _log.warning(
                        "Cannot lock %s (%s): parallel runs sharing this token file may "
                        "spend each other's refresh tokens; keep token_cache_path on a local disk",
                        self.lock_path,
                        exc.strerror or type(exc).__name__,
                    )
                    locked = False
                    break
            try:
                yield
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def load(self) -> dict[str, Any] | None:
        """The stored tokens, or None when there is no usable file.

        A token file that is a symbolic link or belongs to another user is refused: whoever
        controls it could hand this run their tokens, or read the ones it saves.
        """
        try:
            fd = open_private(self.path, os.O_RDONLY, "the token file")
            with os.fdopen(fd, encoding="utf-8") as handle:
                data = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except UnsafePath as exc:
            raise TokenFileError(f"{exc} (token_cache_path)") from None
        except (OSError, ValueError) as exc:
            raise TokenFileError(
                f"token file {self.path} cannot be read ({type(exc).__name__}); "
                "fix or delete it, then run again"
            ) from None
        return data if isinstance(data, dict) else None

    def mark_refresh(self, refresh_token: str) -> float | None:
        """Record in the token file that a refresh with `refresh_token` starts now.

        Call with the lock held, before sending it. The file's ``refresh_started`` maps the
        fingerprint of each refresh token sent and not yet answered to the time it was sent.
        Returns the time an earlier refresh with the same token was recorded (it never saved
        its answer), keeping that time; None when there was none. A file that cannot be
        written stops the refresh before the token is spent (its answer could not be saved).
        """
        try:
            stored = self.load() or {}
        except TokenFileError:
            stored = {}  # unreadable: the new pair replaces it anyway
        marks = stored.get(REFRESH_STARTED)
        marks = dict(marks) if isinstance(marks, dict) else {}
        key = fingerprint(refresh_token)
        earlier = _number(marks.get(key))
        if key in marks:
            return earlier if earlier is not None else 0.0
        marks[key] = int(time.time())
        try:
            self.save({**stored, REFRESH_STARTED: marks})
        except OSError as exc:
            raise TokenFileError(
                f"cannot write the token file {self.path} ({exc.strerror or exc}); the "
                "refresh token was not used. Check that its folder is writable by this user"
            ) from None
        return None

    def clear_refresh_mark(self, refresh_token: str) -> None:
        """Pinterest refused `refresh_token`: its refresh was never applied, so the record
        this process made before sending it says nothing true any more."""
        with contextlib.suppress(TokenFileError, OSError):
            stored = self.load()
            marks = stored.get(REFRESH_STARTED) if stored else None
            key = fingerprint(refresh_token)
            if stored is not None and isinstance(marks, dict) and key in marks:
                rest = {k: v for k, v in marks.items() if k != key}
                stored = {k: v for k, v in stored.items() if k != REFRESH_STARTED}
                self.save({**stored, REFRESH_STARTED: rest} if rest else stored)

    def save(self, tokens: dict[str, Any]) -> None:
        """Atomic (temp file + rename), mode 0600: a crash never leaves half a token file."""
        make_private_dirs(self.path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(tokens, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def token_record(answer: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """What we keep from a token answer: both tokens with absolute expiry times."""
    now = time.time() if now is None else now
    record: dict[str, Any] = {
        "access_token": answer["access_token"],
        "scope": answer.get("scope"),
        "updated_at": int(now),
    }
    if answer.get("expires_in") is not None:
        record["access_token_expires_at"] = int(now + int(answer["expires_in"]))
    if answer.get("refresh_token"):
        record["refresh_token"] = answer["refresh_token"]
        if answer.get("refresh_token_expires_at") is not None:
            record["refresh_token_expires_at"] = int(answer["refresh_token_expires_at"])
        elif answer.get("refresh_token_expires_in") is not None:
            record["refresh_token_expires_at"] = int(now + int(answer["refresh_token_expires_in"]))
    return record


def request_token(
    api_url: str,
    client_id: str,
    client_secret: str,
    form: dict[str, str],
    timeout: float = 60.0,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """POST {api_url}/oauth/token with Basic client auth; raise AuthError on refusal."""
    basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
    http = session or requests
    try:
        response = http.post(
            f"{api_url.rstrip('/')}/oauth/token",
            data=form,
            headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise TransientAuthError(
            f"could not reach the token endpoint ({type(exc).__name__}); check api_url and network"
        ) from None
    rid = response.headers.get("x-pinterest-rid", "-")
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientAuthError(
            f"the token endpoint answered HTTP {response.status_code} (x-pinterest-rid {rid})"
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
        code = body.get("code") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else None
        grant = form.get("grant_type", "?")
        hint = (
            "check client_id and client_secret"
            if response.status_code == 401
            else "the code or refresh token is invalid, expired or already used: "
            "reconnect with `target-pinterest-audiences-admin connect`"
        )
        raise AuthError(
            f"Pinterest refused the {grant} grant: HTTP {response.status_code}, code {code}, "
            f"message {message!r}, x-pinterest-rid {rid}; {hint}"
        )
    return body


class TokenManager:
    """Hands out a valid access token, refreshing and persisting as needed.

    Thread-safe within a process; across processes sharing the token file, every change
    of token happens under the store's lock, after reading the file again.
    """

    def __init__(
        self,
        *,
        api_url: str,
        client_id: str | None,
        client_secret: str | None,
        access_token: str | None,
        refresh_token: str | None,
        store: TokenStore | None,
        logger: logging.Logger,
        timeout: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        self.api_url = api_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.store = store
        self.logger = logger
        self.timeout = timeout
        self.session = session
        self._lock = threading.Lock()
        self._config_access = access_token
        self._config_refresh = refresh_token
        self._access: str | None = access_token
        self._access_expires_at: float | None = None
        self._access_lifetime: float | None = None
        self._refresh: str | None = refresh_token
        self._refresh_expires_at: float | None = None
        self.refreshes = 0
        self._scope: str | None = None
        #: The pair this process last read from or wrote to the token file: a different
        #: pair in the file means another process (or `connect`) has stored a newer one.
        self._file_pair: tuple[Any, Any] | None = None
        if store is not None and self._adopt(store.load()):
            self.logger.info("Using the tokens stored in %s", store.path)

    @property
    def scope(self) -> str | None:
        """The scopes granted, when a token answer or the token file said (None: unknown)."""
        return self._scope

    def refresh(self) -> None:
        """Refresh now (to learn the granted scope, or to rotate the pair on demand).

        Uses the newest refresh token in the token file, never one another process spent.
        """
        with self._lock, self._file_lock():
            self._reread()
            if not self.can_refresh:
                raise AuthError("refreshing needs refresh_token, client_id and client_secret")
            self._do_refresh()

    @property
    def can_refresh(self) -> bool:
        return bool(self._refresh and self.client_id and self.client_secret)

    @property
    def has_credentials(self) -> bool:
        return bool(self._access or self.can_refresh)

    def access_token(self) -> str:
        """A token valid for at least the safety margin; refreshes first when needed."""
        with self._lock:
            if self._access and not self._expiring():
                return self._access
            if self.can_refresh or self.store is not None:
                with self._file_lock():
                    # Another process may have refreshed since we last looked.
                    adopted = self._reread()
                    fresh = adopted and self._access and not self._expiring()
                    if not fresh and self.can_refresh:
                        self._do_refresh()
            if not self._access:
                raise AuthError(
                    "no access token: set access_token, or refresh_token with client_id and "
                    "client_secret, or connect with `target-pinterest-audiences-admin connect`"
                )
            return self._access

    def on_unauthorized(self, rejected: str) -> bool:
        """After a 401 with `rejected`: make a fresh token current, for one more try.

        Returns whether this call refreshed the token itself: False when another request
        in flight, or another process sharing the token file, had already replaced it (the
        caller bounds only its own refreshes, so a token someone else refreshed is free).
        """
        with self._lock:
            if self._access != rejected:
                return False
            with self._file_lock():
                if self._reread() and self._access and self._access != rejected:
                    self.logger.info("Using the newer access token another run stored")
                    return False
                if self.can_refresh:
                    # Stale from now on: if this refresh fails transiently, the next
                    # access_token() call refreshes instead of reusing the rejected token.
                    self._access_expires_at = 0
                    self._do_refresh()
                    return True
            if self._config_access and self._config_access != rejected:
                self.logger.warning("Stored access token rejected; trying the one in the config")
                self._access = self._config_access
                self._access_expires_at = self._access_lifetime = None
                return True
        raise AuthError(
            "Pinterest rejected the access token (expired or revoked) and it cannot be "
            "refreshed: set refresh_token, client_id and client_secret, or reconnect with "
            "`target-pinterest-audiences-admin connect`"
        )

    def _file_lock(self) -> contextlib.AbstractContextManager[None]:
        if self.store is None:
            return contextlib.nullcontext()
        return self.store.lock(max(LOCK_WAIT_SECONDS, 3 * self.timeout))

    def _reread(self) -> bool:
        """Adopt the token file's pair if it changed since this process last saw it.

        Call with the file lock held. An unreadable file is not fatal here: the pair in
        memory is still good, and the next save replaces the file.
        """
        if self.store is None:
            return False
        try:
            stored = self.store.load()
        except AuthError as exc:
            self.logger.warning("%s; continuing with the tokens in memory", exc)
            return False
        return self._adopt(stored)

    def _adopt(self, stored: dict[str, Any] | None) -> bool:
        """Make a stored pair current unless it is the one this process already knows."""
        if not stored or not (stored.get("access_token") or stored.get("refresh_token")):
            return False
        pair = (stored.get("access_token"), stored.get("refresh_token"))
        if pair == self._file_pair:
            return False
        self._file_pair = pair
        # The file holds the newest rotated pair: it wins over the config.
        self._access = stored.get("access_token")
        self._access_expires_at = _number(stored.get("access_token_expires_at"))
        updated_at = _number(stored.get("updated_at"))
        self._access_lifetime = (
            self._access_expires_at - updated_at
            if self._access_expires_at is not None and updated_at is not None
            else None
        )
        self._refresh = stored.get("refresh_token") or self._config_refresh
        self._refresh_expires_at = _number(stored.get("refresh_token_expires_at"))
        self._scope = stored.get("scope")
        return True

    def _expiring(self) -> bool:
        if self._access_expires_at is None:
            return False
        margin = float(ACCESS_TOKEN_MARGIN_SECONDS)
        if self._access_lifetime is not None:
            margin = min(margin, max(self._access_lifetime, 0) / 4)
        return time.time() + margin >= self._access_expires_at

    def _do_refresh(self) -> None:
        """Call with the file lock held: the refresh token used is spent from now on."""
        assert self.client_id and self.client_secret and self._refresh
        candidates = [self._refresh]
        if self._config_refresh and self._config_refresh not in candidates:
            candidates.append(self._config_refresh)
        last_error: AuthError | None = None
        stopped_error: AuthError | None = None
        for index, refresh in enumerate(candidates):
            earlier = self.store.mark_refresh(refresh) if self.store else None
            try:
                answer = request_token(
                    self.api_url,
                    self.client_id,
                    self.client_secret,
                    {"grant_type": "refresh_token", "refresh_token": refresh},
                    timeout=self.timeout,
                    session=self.session,
                )
            except TransientAuthError:
                raise  # the record stays: the refresh may have been applied, its answer lost
            except AuthError as exc:
                last_error = exc
                if earlier is not None:
                    stopped_error = AuthError(f"{_stopped_refresh(earlier)}. Pinterest said: {exc}")
                elif self.store is not None:
                    self.store.clear_refresh_mark(refresh)
                if index + 1 < len(candidates):
                    self.logger.warning(
                        "Stored refresh token refused; trying the refresh token from the config"
                    )
                continue
            self._accept(answer, previous_refresh=refresh)  # the saved pair clears the record
            return
        assert last_error is not None
        raise stopped_error or last_error

    def _accept(self, answer: dict[str, Any], previous_refresh: str) -> None:
        record = token_record(answer)
        record.setdefault("refresh_token", previous_refresh)
        self._access = record["access_token"]
        self._access_expires_at = record.get("access_token_expires_at")
        self._access_lifetime = (
            float(answer["expires_in"]) if answer.get("expires_in") is not None else None
        )
        self._refresh = record["refresh_token"]
        self._refresh_expires_at = record.get("refresh_token_expires_at")
        self._scope = record.get("scope") or self._scope
        self.refreshes += 1
        if self.store:
            self.store.save(record)
            self._file_pair = (record["access_token"], record["refresh_token"])
        self.logger.info(
            "Access token refreshed; the new token pair is saved to %s",
            self.store.path if self.store else "(no token file)",
        )
        self.warn_if_refresh_expiring()

    def warn_if_refresh_expiring(self) -> None:
        if self._refresh_expires_at is None:
            return
        left = float(self._refresh_expires_at) - time.time()
        if left < REFRESH_TOKEN_WARN_SECONDS:
            self.logger.warning(
                "The Pinterest refresh token expires in %.1f days: run the target (which "
                "rotates it) or reconnect with `target-pinterest-audiences-admin connect` "
                "before then",
                max(left, 0) / 86400,
            )


def _stopped_refresh(at: float) -> str:
    """What a refusal means when the token file says a refresh with that token never finished."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else "an unknown time"
    return (
        f"A run was stopped at {when} while refreshing the token (the token file records it): "
        "Pinterest has probably already replaced that refresh token, and the new one was never "
        "saved. Connect again with `target-pinterest-audiences-admin connect`"
    )


def _number(value: Any) -> float | None:
    """A time from the token file, or None when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
