"""OAuth tokens: the token file, the refresh grant, and which token to use when.

Pinterest hands back a NEW refresh token on every refresh (continuous refresh tokens,
60-day life). Whoever drops it must re-connect by hand every 60 days, so every pair we
receive is written at once, atomically and private (0600), to the token file, which
later runs prefer over the config. Tokens and secrets never reach a log or an error.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

#: Refresh this long before the access token's expiry, so no request races it.
ACCESS_TOKEN_MARGIN_SECONDS = 300
#: Warn when the refresh token has less than this left.
REFRESH_TOKEN_WARN_SECONDS = 7 * 24 * 3600


class AuthError(RuntimeError):
    """Credentials are missing, rejected or cannot be refreshed; the message says what to do."""


class TransientAuthError(AuthError):
    """The token endpoint was unreachable or busy (429, 5xx): worth retrying later."""


def default_token_cache_path(ad_account_id: str) -> Path:
    """Per-ad-account token file under the user's config directory (XDG)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "target-pinterest-audiences" / f"tokens-{ad_account_id}.json"


class TokenStore:
    """The token file shared by the target and the connect command."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> dict[str, Any] | None:
        """The stored tokens, or None when there is no usable file."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AuthError(
                f"token file {self.path} cannot be read ({type(exc).__name__}); "
                "fix or delete it, then run again"
            ) from None
        return data if isinstance(data, dict) else None

    def save(self, tokens: dict[str, Any]) -> None:
        """Atomic (temp file + rename), mode 0600: a crash never leaves half a token file."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
            "reconnect with `target-pinterest-audiences-auth`"
        )
        raise AuthError(
            f"Pinterest refused the {grant} grant: HTTP {response.status_code}, code {code}, "
            f"message {message!r}, x-pinterest-rid {rid}; {hint}"
        )
    return body


class TokenManager:
    """Hands out a valid access token, refreshing and persisting as needed (thread-safe)."""

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
        self._refresh: str | None = refresh_token
        self._refresh_expires_at: float | None = None
        self.refreshes = 0
        self._scope: str | None = None
        stored = store.load() if store else None
        if stored and (stored.get("access_token") or stored.get("refresh_token")):
            # The file holds the newest rotated pair: it wins over the config.
            self._access = stored.get("access_token")
            self._access_expires_at = stored.get("access_token_expires_at")
            self._refresh = stored.get("refresh_token") or refresh_token
            self._refresh_expires_at = stored.get("refresh_token_expires_at")
            self._scope = stored.get("scope")
            self.logger.info("Using the tokens stored in %s", store.path if store else "-")

    @property
    def scope(self) -> str | None:
        """The scopes granted, when a token answer or the token file said (None: unknown)."""
        return self._scope

    def refresh(self) -> None:
        """Refresh now (to learn the granted scope, or to rotate the pair on demand)."""
        with self._lock:
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
            if self.can_refresh:
                self._do_refresh()
            if not self._access:
                raise AuthError(
                    "no access token: set access_token, or refresh_token with client_id and "
                    "client_secret, or connect with `target-pinterest-audiences-auth`"
                )
            return self._access

    def on_unauthorized(self, rejected: str) -> bool:
        """After a 401 with `rejected`: make a fresh token current, for one more try.

        Returns whether this call replaced the token itself (False when another request
        in flight had already replaced it).
        """
        with self._lock:
            if self._access != rejected:
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
                return True
        raise AuthError(
            "Pinterest rejected the access token (expired or revoked) and it cannot be "
            "refreshed: set refresh_token, client_id and client_secret, or reconnect with "
            "`target-pinterest-audiences-auth`"
        )

    def _expiring(self) -> bool:
        if self._access_expires_at is None:
            return False
        return time.time() + ACCESS_TOKEN_MARGIN_SECONDS >= float(self._access_expires_at)

    def _do_refresh(self) -> None:
        assert self.client_id and self.client_secret and self._refresh
        candidates = [self._refresh]
        if self._config_refresh and self._config_refresh not in candidates:
            candidates.append(self._config_refresh)
        last_error: AuthError | None = None
        for index, refresh in enumerate(candidates):
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
                raise
            except AuthError as exc:
                last_error = exc
                if index + 1 < len(candidates):
                    self.logger.warning(
                        "Stored refresh token refused; trying the refresh token from the config"
                    )
                continue
            self._accept(answer, previous_refresh=refresh)
            return
        assert last_error is not None
        raise last_error

    def _accept(self, answer: dict[str, Any], previous_refresh: str) -> None:
        record = token_record(answer)
        record.setdefault("refresh_token", previous_refresh)
        self._access = record["access_token"]
        self._access_expires_at = record.get("access_token_expires_at")
        self._refresh = record["refresh_token"]
        self._refresh_expires_at = record.get("refresh_token_expires_at")
        self._scope = record.get("scope") or self._scope
        self.refreshes += 1
        if self.store:
            self.store.save(record)
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
                "rotates it) or reconnect with `target-pinterest-audiences-auth` before then",
                max(left, 0) / 86400,
            )
