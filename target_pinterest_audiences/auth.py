"""`target-pinterest-audiences-admin`: connect a Pinterest account, check a connection, and
report what Pinterest made of the uploads (`status`).

The command was `target-pinterest-audiences-auth` before it did more than authorization;
that name stays installed as an alias, so scripts and Meltano projects that use it keep working.

`connect` (the default) runs Pinterest's OAuth authorization-code flow: it prints a
single-use authorize link (stdout, so it can be sent to the business admin who approves
it), listens on a loopback address for Pinterest's redirect, exchanges the code for a
token pair and writes it to the token file the target reads (mode 0600).

`check` confirms, with the stored (or given) tokens, that uploads would work: the token
is accepted, it carries ads:read and ads:write, and the ad account is reachable and
neither under review nor disapproved. `check_connection` is the same check as a function.

`status` reads one CUSTOMER_LIST Audience and its Customer List, with the same tokens as
`check`, and the confirmed members from the snapshot store (status.py does the reading).

Tokens, the client secret and the authorization code are never printed or logged.
"""

from __future__ import annotations

import argparse
import getpass
import hmac
import html
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
import urllib.parse
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from target_pinterest_audiences.client import (
    PinterestAPIError,
    PinterestClient,
    RetriesExhausted,
    RetryPolicy,
    TargetError,
)
from target_pinterest_audiences.snapshot import SnapshotStore
from target_pinterest_audiences.status import read_status
from target_pinterest_audiences.tokens import (
    AuthError,
    TokenFileError,
    TokenManager,
    TokenStore,
    TransientAuthError,
    default_token_cache_path,
    request_token,
    token_record,
)

PROG = "target-pinterest-audiences-admin"
#: The command's first name, still installed (pyproject.toml) so that existing setups work.
ALIAS = "target-pinterest-audiences-auth"
COMMANDS = ("connect", "check", "status")
PLUGIN = "target-pinterest-audiences"
ENV_PREFIX = "TARGET_PINTEREST_AUDIENCES_"
DEFAULT_AUTHORIZE_URL = "https://www.pinterest.com/oauth/"
DEFAULT_API_URL = "https://api.pinterest.com/v5"
DEFAULT_REDIRECT_PORT = 8085
DEFAULT_TIMEOUT_SECONDS = 600.0
#: `check` gives up on a flaky Pinterest after this long (the target's budget is far longer).
CHECK_RETRY_SECONDS = 30.0
#: Tries of the code exchange when the token endpoint is unreachable or busy (429, 5xx).
EXCHANGE_ATTEMPTS = 3
REQUIRED_SCOPES = ("ads:read", "ads:write")
SCOPE = ",".join(REQUIRED_SCOPES)
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_NEW_LINK = f"run `{PROG} connect` again for a new link"

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or None


def granted_scopes(scope: Any) -> set[str] | None:
    """The scopes in a token answer's `scope` (comma or space separated); None if unknown."""
    if not scope or not isinstance(scope, str):
        return None
    return {part for part in re.split(r"[,\s]+", scope) if part}


def build_authorize_url(authorize_url: str, client_id: str, redirect_uri: str, state: str) -> str:
    """Pinterest's authorize link for the ads scopes, carrying the one-time `state`."""
    query = urllib.parse.urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": SCOPE,
            "state": state,
        }
    )
    return f"{authorize_url}{'&' if '?' in authorize_url else '?'}{query}"


def _when(timestamp: Any) -> str:
    try:
        moment = datetime.fromtimestamp(float(timestamp), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return "at an unknown time"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _is_pinterest_id(text: str | None) -> bool:
    """Pinterest's id pattern (`^\\d+$`, at most 18 long); ASCII digits only, unlike isdigit()."""
    return bool(text) and re.fullmatch(r"[0-9]{1,18}", str(text)) is not None


# --------------------------------------------------------------------------- the link


@dataclass(frozen=True)
class Reply:
    """What the callback listener answers the browser; `final` ends the wait."""

    status: int
    title: str
    text: str
    final: bool = False


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


_SPENT_TEXT = (
    "This authorization link is no longer valid: links work once and expire. "
    f"Nothing was saved. To get a new link, {_NEW_LINK} "
    "(or ask the person who sent you this link for a new one)."
)


class AuthorizationSession:
    """One single-use authorization link: its state nonce, its deadline, its one callback.

    A callback is accepted only with this run's `state`, only once, and only before the
    deadline; anything else is refused and the link (if still unused) keeps waiting.
    """

    def __init__(
        self,
        *,
        state: str,
        deadline: float,
        exchange: Callable[[str], Outcome],
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.deadline = deadline
        self.exchange = exchange
        self.say = say
        self.clock = clock
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self._lock = threading.Lock()
        self._spent = False
        self._expired = False

    def handle(self, params: dict[str, str]) -> Reply:
        """Process one callback's query parameters (from the listener or a pasted address)."""
        state = params.get("state") or ""
        with self._lock:
            if not state or not hmac.compare_digest(state.encode(), self.state.encode()):
                self.say(
                    "Refused a callback for an unknown link: that link is spent or belongs to "
                    f"an earlier run ({_NEW_LINK}). This run's link is still waiting."
                )
                return Reply(400, "Link not valid", _SPENT_TEXT)
            if self._spent:
                self.say(
                    "Refused a second use of this run's link: a link works only once. "
                    f"To connect again, {_NEW_LINK}."
                )
                return Reply(400, "Link already used", _SPENT_TEXT)
            if self._expired or self.clock() > self.deadline:
                self._expired = True
                self.say(f"Refused a callback: this run's link has expired; {_NEW_LINK}.")
                return Reply(400, "Link expired", _SPENT_TEXT)
            error = params.get("error")
            code = params.get("code")
            if not error and not code:
                self.say("Ignored a callback without `code` or `error`; still waiting.")
                return Reply(400, "Incomplete callback", "The address carries no authorization.")
            self._spent = True
        if error:
            raw = params.get("error_description") or error
            detail = "".join(ch for ch in raw if ch.isprintable())  # no terminal escapes
            self.outcome = Outcome(
                False,
                f"Authorization was not granted on Pinterest ({detail[:200]}). Nothing was saved. "
                f"The link is spent; to try again, {_NEW_LINK}.",
            )
            return Reply(
                400,
                "Authorization declined",
                f"Pinterest did not grant access ({detail[:200]}). Nothing was saved. "
                f"To try again, {_NEW_LINK}.",
                final=True,
            )
        try:
            self.outcome = self.exchange(code or "")
        except Exception as exc:
            self.outcome = Outcome(False, f"Connecting failed: {_describe(exc)}")
        if self.outcome.ok:
            return Reply(
                200,
                "Pinterest account connected",
                f"The tokens are saved on the computer that ran {PROG}. You can close this tab.",
                final=True,
            )
        return Reply(
            502,
            "Connecting failed",
            "Pinterest approved access, but the tokens could not be obtained or saved: the "
            f"terminal that ran {PROG} says why. Nothing was saved.",
            final=True,
        )

    def expire(self) -> bool:
        """Close the link at the timeout; False when a callback is already being processed."""
        with self._lock:
            self._expired = True
            return not self._spent


def _describe(exc: Exception) -> str:
    if isinstance(exc, (AuthError, TargetError)):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc} ({exc.filename or '-'})"
    return type(exc).__name__


def _page(reply: Reply) -> bytes:
    title = html.escape(reply.title)
    text = html.escape(reply.text)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body style='font-family:sans-serif;max-width:40em;"
        f"margin:3em auto'><h1>{title}</h1><p>{text}</p></body></html>"
    ).encode()


def _handler_class(session: AuthorizationSession, path: str) -> type[BaseHTTPRequestHandler]:
    class CallbackHandler(BaseHTTPRequestHandler):
        server_version = PROG
        sys_version = ""

        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            if parsed.path.rstrip("/") != path.rstrip("/"):
                self._send(Reply(404, "Not found", "Nothing here."))
                return
            params = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
            reply = session.handle(params)
            self._send(reply)
            if reply.final:
                session.done.set()

        def _send(self, reply: Reply) -> None:
            body = _page(reply)
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: a request line carries the authorization code."""

    return CallbackHandler


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True


class _LoopbackServer6(_LoopbackServer):
    address_family = socket.AF_INET6


def _read_pasted(session: AuthorizationSession, fd: int, say: Callable[[str], None]) -> None:
    """Accept the callback address pasted on stdin (the approver's browser was elsewhere)."""
    pending = b""
    while not session.done.is_set():
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            query = urllib.parse.urlsplit(line).query or line.lstrip("?")
            params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
            if not ({"state", "code", "error"} & params.keys()):
                say("That is not the callback address: paste the whole address from the browser.")
                continue
            reply = session.handle(params)
            if reply.final:
                session.done.set()
                return


# --------------------------------------------------------------------------- connect


def _listen_address(args: argparse.Namespace) -> tuple[str, int, str, str | None]:
    """(host to bind, port, callback path, fixed redirect URI or None to derive from the port)."""
    if args.redirect_uri:
        parsed = urllib.parse.urlsplit(args.redirect_uri)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError(
                f"--redirect-uri must be an http(s) address, got {args.redirect_uri!r}"
            )
        loopback = parsed.hostname in _LOOPBACK_HOSTS
        if args.redirect_port is not None:
            port = args.redirect_port
        elif loopback and parsed.port:
            port = parsed.port
        else:
            port = DEFAULT_REDIRECT_PORT
        if not loopback:
            logger.warning(
                "The redirect URI %s is not a loopback address: its callbacks must be forwarded "
                "to 127.0.0.1:%d (SSH tunnel or proxy), or the final address pasted here",
                args.redirect_uri,
                port,
            )
        host = "::1" if parsed.hostname == "::1" else "127.0.0.1"
        return host, port, parsed.path or "/", args.redirect_uri
    port = DEFAULT_REDIRECT_PORT if args.redirect_port is None else args.redirect_port
    return "127.0.0.1", port, "/callback", None


def _next_steps(
    path: Path, ad_account_id: str | None, client_id: str, default_path: Path | None
) -> list[str]:
    account = ad_account_id or "<your ad account id>"
    steps = [
        "Next steps:",
        f"  meltano config {PLUGIN} set ad_account_id {account}",
        f"  meltano config {PLUGIN} set client_id {client_id}",
        f"  and put the app secret in .env as {ENV_PREFIX}CLIENT_SECRET=... (it refreshes "
        "the tokens; keep it out of meltano.yml)",
    ]
    if default_path is None or path != default_path:
        steps.append(f"  meltano config {PLUGIN} set token_cache_path {path}")
        steps.append("  The target reads the tokens from that file: no token settings needed.")
    else:
        steps.append(
            "  The target reads the tokens from this file by itself: no token settings needed."
        )
    check = f"  Verify: {PROG} check --ad-account-id {account}"
    if default_path is None or path != default_path:
        check += f" --token-cache-path {path}"
    steps.append(check)
    return steps


def _exchange_function(
    *,
    api_url: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    store: TokenStore,
    ad_account_id: str | None,
    default_path: Path | None,
) -> Callable[[str], Outcome]:
    form = {
        "grant_type": "authorization_code",
        "redirect_uri": redirect_uri,
        "continuous_refresh": "true",
    }

    def exchange(code: str) -> Outcome:
        for attempt in range(EXCHANGE_ATTEMPTS):
            try:
                answer = request_token(api_url, client_id, client_secret, {**form, "code": code})
                break
            except TransientAuthError as exc:
                if attempt + 1 == EXCHANGE_ATTEMPTS:
                    raise
                logger.warning("Token exchange failed (%s); trying again", exc)
                time.sleep(2**attempt)
        record = token_record(answer)
        # The lock the target's refreshes take: a run refreshing right now cannot write its
        # pair over this one, and running targets adopt this pair at their next re-read.
        with store.lock():
            replaced = store.path.exists()
            store.save(record)
        lines = [
            f"Connected. Tokens saved to {store.path} (mode 0600)"
            + ("; they replace the ones stored before." if replaced else "."),
            f"  The access token expires {_when(record.get('access_token_expires_at'))}.",
        ]
        if record.get("refresh_token"):
            lines.append(
                "  The refresh token expires "
                f"{_when(record.get('refresh_token_expires_at'))}; the target renews it "
                "whenever it refreshes the access token, so run the target (or `check`) at "
                "least every 60 days."
            )
        else:
            lines.append(
                "  Pinterest sent no refresh token: connect again before the access token expires."
            )
        scopes = granted_scopes(record.get("scope"))
        missing = [s for s in REQUIRED_SCOPES if scopes is not None and s not in scopes]
        if missing:
            lines.append(
                f"Pinterest granted only {record.get('scope')!r}, without {', '.join(missing)}: "
                "uploads will fail. Check the app's permissions in the Pinterest developer "
                f"portal, then {_NEW_LINK}."
            )
            return Outcome(False, "\n".join(lines))
        lines.extend(_next_steps(store.path, ad_account_id, client_id, default_path))
        return Outcome(True, "\n".join(lines))

    return exchange


def _open_browser(link: str, say: Callable[[str], None]) -> None:
    """Best effort, never blocking: a console browser would hold the terminal (and the flow)."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        say("(No graphical browser here: open the link above on any computer.)")
        return

    def run() -> None:
        try:
            opened = webbrowser.open(link)
        except Exception:
            opened = False
        if not opened:
            say("(No browser could be opened here: use the link above.)")

    threading.Thread(target=run, daemon=True).start()


def run_connect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    def say(message: str) -> None:
        print(message, file=err, flush=True)

    client_id = args.client_id
    if not client_id:
        say(f"Missing the Pinterest app id: pass --client-id or set {ENV_PREFIX}CLIENT_ID.")
        return 2
    client_secret = args.client_secret
    if not client_secret and sys.stdin is not None and sys.stdin.isatty():
        client_secret = getpass.getpass("Pinterest app secret (not shown): ", stream=err)
    if not client_secret:
        say(
            f"Missing the Pinterest app secret: set {ENV_PREFIX}CLIENT_SECRET (preferred: "
            "a flag shows in the process list) or pass --client-secret."
        )
        return 2
    default_path = default_token_cache_path(args.ad_account_id) if args.ad_account_id else None
    if args.token_cache_path:
        token_path = Path(args.token_cache_path).expanduser()
    elif default_path is not None:
        token_path = default_path
    else:
        say(
            "Say which ad account this connection is for: --ad-account-id (or "
            f"{ENV_PREFIX}AD_ACCOUNT_ID), or name the token file with --token-cache-path."
        )
        return 2
    try:
        host, port, path, fixed_uri = _listen_address(args)
    except ValueError as exc:
        say(str(exc))
        return 2

    server_class = _LoopbackServer6 if host == "::1" else _LoopbackServer
    try:
        # The real handler is set once the port, hence the redirect URI, is known.
        server = server_class((host, port), BaseHTTPRequestHandler)
    except OSError as exc:
        say(
            f"Cannot listen on {host}:{port} for Pinterest's redirect ({exc.strerror or exc}). "
            "Free that port, or choose another with --redirect-port (the redirect URI "
            "registered in your Pinterest app must use the same port)."
        )
        return 1
    actual_port = server.server_address[1]
    redirect_uri = fixed_uri or f"http://127.0.0.1:{actual_port}{path}"
    exchange = _exchange_function(
        api_url=args.api_url,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=redirect_uri,
        store=TokenStore(token_path),
        ad_account_id=args.ad_account_id,
        default_path=default_path,
    )
    state = secrets.token_urlsafe(32)
    session = AuthorizationSession(
        state=state, deadline=time.monotonic() + args.timeout, exchange=exchange, say=say
    )
    server.RequestHandlerClass = _handler_class(session, path)
    link = build_authorize_url(args.authorize_url, client_id, redirect_uri, state)

    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    serving.start()
    lifetime = f"{args.timeout / 60:.0f} min" if args.timeout >= 60 else f"{args.timeout:.0f} s"
    say(
        "Open the link below (printed on stdout) in a browser logged in to Pinterest as a user "
        "with access to the ad account, or send it to that person (a business admin), and "
        f"approve access to the ads scopes ({SCOPE}). The link works once and expires in "
        f"{lifetime}."
    )
    say(
        f"Waiting for Pinterest's redirect to {redirect_uri} (this redirect URI must be "
        "registered in your Pinterest app)."
    )
    if sys.stdin is not None and sys.stdin.isatty():
        say(
            "If the approval happens on another computer, its browser ends on a page that does "
            "not load: paste that page's full address here and press Enter."
        )
    print(link, file=out, flush=True)
    if not args.no_browser:
        _open_browser(link, say)
    try:
        stdin_fd = sys.stdin.fileno() if sys.stdin is not None else -1
    except (OSError, ValueError):
        stdin_fd = -1
    if stdin_fd >= 0:
        threading.Thread(target=_read_pasted, args=(session, stdin_fd, say), daemon=True).start()

    try:
        finished = session.done.wait(args.timeout)
        if not finished and not session.expire():
            # A callback arrived just in time and is being exchanged: let it finish.
            finished = session.done.wait(120)
    except KeyboardInterrupt:
        session.expire()
        say("Cancelled: the link is spent and nothing was saved by this run.")
        return 130
    finally:
        server.shutdown()
        server.server_close()
    if not finished or session.outcome is None:
        say(
            f"The link expired: no authorization arrived within {args.timeout:.0f} s. "
            f"Nothing was saved. To connect, {_NEW_LINK} (use --timeout to wait longer)."
        )
        return 1
    say(session.outcome.message)
    return 0 if session.outcome.ok else 1


# --------------------------------------------------------------------------- check


def _stored_scope(store: TokenStore | None) -> Any:
    if store is None:
        return None
    try:
        stored = store.load()
    except AuthError:
        return None
    return stored.get("scope") if stored else None


def check_connection(
    *,
    ad_account_id: str,
    api_url: str = DEFAULT_API_URL,
    client_id: str | None = None,
    client_secret: str | None = None,
    access_token: str | None = None,
    refresh_token: str | None = None,
    token_cache_path: str | Path | None = None,
    tokens: TokenManager | None = None,
    log: logging.Logger | None = None,
    retry_seconds: float = CHECK_RETRY_SECONDS,
    timeout: float = 30.0,
) -> tuple[bool, str]:
    """Would uploads to `ad_account_id` work with these credentials? (ok, plain message).

    Uses the same tokens the target would (the token file first, then the given ones),
    refreshes when needed (saving the rotated pair), reads the granted scope and lists one
    customer list of the account. Pass `tokens` to reuse a TokenManager (its store is read
    for the scope). Never raises for a Pinterest or credential problem.
    """
    log = log or logger
    if not _is_pinterest_id(ad_account_id):
        return (
            False,
            f"NOT READY: ad_account_id must be 1 to 18 digits (0-9), got {ad_account_id!r}.",
        )
    if tokens is None:
        path = token_cache_path or default_token_cache_path(ad_account_id)
        try:
            tokens = TokenManager(
                api_url=api_url,
                client_id=client_id,
                client_secret=client_secret,
                access_token=access_token,
                refresh_token=refresh_token,
                store=TokenStore(path),
                logger=log,
                timeout=timeout,
            )
        except AuthError as exc:
            return False, f"NOT READY: {exc}."
    store = tokens.store
    if not tokens.has_credentials:
        where = f"no token file at {store.path}" if store else "no token file"
        return False, (
            f"NOT CONNECTED: {where} and no usable access or refresh token (a refresh token "
            "also needs client_id and client_secret). Connect with "
            f"`{PROG} connect --ad-account-id {ad_account_id}`."
        )
    refresh_hint = (
        ""
        if tokens.can_refresh
        else " (refreshing needs the refresh token plus client_id and client_secret)"
    )

    try:
        tokens.access_token()
        scope = tokens.scope or _stored_scope(store)
        if scope is None and tokens.can_refresh:
            # Only a token answer says what was granted: refresh once to learn it.
            tokens.refresh()
            scope = tokens.scope
    except TokenFileError as exc:  # before the others: a lock held too long is "transient" too
        return False, f"NOT READY: {exc}."
    except TransientAuthError as exc:
        return False, f"UNREACHABLE: {exc}; check api_url and the network, then check again."
    except AuthError as exc:
        return False, f"TOKEN REJECTED: {exc}{refresh_hint}."

    client = PinterestClient(
        api_url=api_url,
        tokens=tokens,
        logger=log,
        retry=RetryPolicy(budget_seconds=retry_seconds),
        timeout=timeout,
    )
    try:
        client.request(
            "GET", f"/ad_accounts/{ad_account_id}/customer_lists", params={"page_size": 1}
        )
    except PinterestAPIError as exc:
        return False, _explain_refusal(exc, ad_account_id, refresh_hint)
    except RetriesExhausted as exc:
        return False, f"UNREACHABLE: {exc}"
    except TokenFileError as exc:
        return False, f"NOT READY: {exc}."
    except (AuthError, TargetError) as exc:
        return False, f"TOKEN REJECTED: {exc}{refresh_hint}."

    scopes = granted_scopes(scope)
    if scopes is None:
        return False, (
            f"NOT VERIFIED: the token reaches ad account {ad_account_id}, but its scopes are "
            "unknown (an access token given by hand), so ads:write cannot be confirmed. Give the "
            "refresh token with client_id and client_secret, or connect with "
            f"`{PROG} connect`, and check again."
        )
    missing = [s for s in REQUIRED_SCOPES if s not in scopes]
    if missing:
        return False, (
            f"MISSING SCOPE: the token lacks {', '.join(missing)} (granted: {scope}), so "
            "uploads would be refused (HTTP 401, code 3). Reconnect with "
            f"`{PROG} connect`, approving {SCOPE}."
        )
    return True, (
        f"OK: the token works, has {SCOPE}, and ad account {ad_account_id} is reachable and "
        "not under review: uploads will work."
    )


def _explain_refusal(exc: PinterestAPIError, ad_account_id: str, refresh_hint: str) -> str:
    rid = f"x-pinterest-rid {exc.rid}"
    quoted = f"(HTTP {exc.status}, code {exc.code}, {rid})"
    if exc.status == 403 and exc.code == 2626:
        return (
            f"UNDER REVIEW: ad account {ad_account_id} is under review by Pinterest {quoted}: it "
            "cannot accept audience uploads until Pinterest's review ends. Check the account in "
            "Pinterest Ads Manager and run the check again once the review is over."
        )
    if exc.status == 403 and exc.code == 2625:
        return (
            f"DISAPPROVED: ad account {ad_account_id} is disapproved by Pinterest {quoted}: it "
            "cannot accept audience uploads. Contact Pinterest support, quoting the "
            "x-pinterest-rid."
        )
    if exc.status == 401 and exc.code == 3:
        return (
            f"MISSING SCOPE: Pinterest says the token lacks a required scope {quoted}. Reconnect "
            f"with `{PROG} connect`, approving {SCOPE}."
        )
    if exc.status == 404 or exc.code == 29:
        return (
            f"NO ACCESS: the connected Pinterest user cannot reach ad account {ad_account_id} "
            f"{quoted}. Check the id, or connect as a user with access to it (a business admin "
            "can grant access in Pinterest Business Manager)."
        )
    if exc.status == 401:
        return (
            f"TOKEN REJECTED: Pinterest refused the access token {quoted}{refresh_hint}. "
            f"Reconnect with `{PROG} connect`."
        )
    return f"NOT READY: {exc}"


def run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.ad_account_id:
        print(
            f"Say which ad account to check: --ad-account-id or {ENV_PREFIX}AD_ACCOUNT_ID.",
            file=err,
        )
        return 2
    ok, message = check_connection(
        ad_account_id=args.ad_account_id,
        api_url=args.api_url,
        client_id=args.client_id,
        client_secret=args.client_secret,
        access_token=args.access_token,
        refresh_token=args.refresh_token,
        token_cache_path=args.token_cache_path,
        retry_seconds=args.retry_seconds,
    )
    print(message, file=out, flush=True)
    return 0 if ok else 1


# --------------------------------------------------------------------------- status


def _which_audience(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(audience id, audience name): a flag wins; else the settings, where audience_id wins
    over audience_name as in the target."""
    if args.audience_id or args.audience_name:
        return args.audience_id, args.audience_name
    audience_id = _env("AUDIENCE_ID")
    if audience_id:
        return audience_id, None
    return None, _env("AUDIENCE_NAME")


def run_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Print the Audience's and its list's status, the confirmed members and the match rate."""

    def fail(message: str, code: int = 1) -> int:
        line = message.replace("\r", " ").replace("\n", " ")
        print(f"{PROG} status: {line}", file=err, flush=True)
        return code

    account = args.ad_account_id
    if not account:
        return fail(f"say which ad account: --ad-account-id or {ENV_PREFIX}AD_ACCOUNT_ID", 2)
    audience_id, audience_name = _which_audience(args)
    if not audience_id and not audience_name:
        return fail(
            "say which audience: --audience-id or --audience-name (or "
            f"{ENV_PREFIX}AUDIENCE_ID / {ENV_PREFIX}AUDIENCE_NAME)",
            2,
        )
    if audience_id and not _is_pinterest_id(audience_id):
        return fail(f"the audience id must be 1 to 18 digits (0-9), got {audience_id!r}", 2)
    store_path = args.token_cache_path or default_token_cache_path(account)
    try:
        tokens = TokenManager(
            api_url=args.api_url,
            client_id=args.client_id,
            client_secret=args.client_secret,
            access_token=args.access_token,
            refresh_token=args.refresh_token,
            store=TokenStore(store_path),
            logger=logger,
            timeout=30.0,
        )
    except AuthError as exc:
        return fail(str(exc))
    if not tokens.has_credentials:
        return fail(
            f"not connected: no token file at {tokens.store.path if tokens.store else store_path} "
            "and no usable access or refresh token; connect with "
            f"`{PROG} connect --ad-account-id {account}`"
        )
    client = PinterestClient(
        api_url=args.api_url,
        tokens=tokens,
        logger=logger,
        retry=RetryPolicy(budget_seconds=args.retry_seconds),
        timeout=30.0,
    )
    store = SnapshotStore(
        ad_account_id=account,
        logger=logger,
        directory=args.snapshot_path,
        url=args.snapshot_url,
        api_url=args.api_url,
    )
    try:
        status = read_status(
            client, store, account, audience_id=audience_id, audience_name=audience_name
        )
    except PinterestAPIError as exc:
        return fail(_explain_refusal(exc, account, ""))
    except (TargetError, AuthError) as exc:  # also retries exhausted, the snapshot store
        return fail(str(exc))
    except Exception as exc:  # no traceback: one line that names the failure
        return fail(f"unexpected {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        store.close()
    if args.format == "json":
        print(json.dumps(status.as_json()), file=out, flush=True)
    else:
        print(status.table(), file=out, flush=True)
    return 0


# --------------------------------------------------------------------------- CLI


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0..65535 (0: any free port)")
    return value


def _account(text: str) -> str:
    if not _is_pinterest_id(text):
        raise argparse.ArgumentTypeError("an ad account id is 1 to 18 digits (0-9)")
    return text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--ad-account-id",
        type=_account,
        default=_env("AD_ACCOUNT_ID"),
        help=f"Pinterest ad account id (env {ENV_PREFIX}AD_ACCOUNT_ID)",
    )
    common.add_argument(
        "--client-id",
        default=_env("CLIENT_ID"),
        help=f"Pinterest app id (env {ENV_PREFIX}CLIENT_ID)",
    )
    common.add_argument(
        "--client-secret",
        default=_env("CLIENT_SECRET"),
        help=f"Pinterest app secret; prefer env {ENV_PREFIX}CLIENT_SECRET",
    )
    common.add_argument(
        "--api-url",
        default=_env("API_URL") or DEFAULT_API_URL,
        help=f"Pinterest API base URL (env {ENV_PREFIX}API_URL; default {DEFAULT_API_URL})",
    )
    common.add_argument(
        "--token-cache-path",
        default=_env("TOKEN_CACHE_PATH"),
        help="token file (env "
        f"{ENV_PREFIX}TOKEN_CACHE_PATH; default "
        "~/.config/target-pinterest-audiences/tokens-<ad account id>.json)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log more (to stderr)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Connect a Pinterest ad account to target-pinterest-audiences, check a "
        "connection, or see what Pinterest made of the uploads. Flags win over the "
        f"environment variables. ({ALIAS} is the same command under its first name.)",
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    connect = commands.add_parser(
        "connect",
        parents=[common],
        help="authorize with a single-use link and save the tokens (the default)",
        description="Print a single-use Pinterest authorize link (stdout), wait for the "
        "approval on a loopback address and save the tokens to the token file (mode 0600).",
    )
    connect.add_argument(
        "--authorize-url",
        default=DEFAULT_AUTHORIZE_URL,
        help=f"Pinterest's authorize page (default {DEFAULT_AUTHORIZE_URL})",
    )
    connect.add_argument(
        "--redirect-port",
        type=_port,
        default=None,
        help=f"loopback port to listen on (default {DEFAULT_REDIRECT_PORT}; 0: any free port); "
        "the redirect URI http://127.0.0.1:<port>/callback must be registered in the app",
    )
    connect.add_argument(
        "--redirect-uri",
        default=None,
        help="the exact redirect URI registered in the Pinterest app, when it is not "
        "http://127.0.0.1:<port>/callback (it must lead to the loopback listener)",
    )
    connect.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"seconds before the link expires (default {DEFAULT_TIMEOUT_SECONDS:.0f})",
    )
    connect.add_argument("--no-browser", action="store_true", help="do not open a browser")
    # check and status read with the stored or given tokens.
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument(
        "--access-token",
        default=_env("ACCESS_TOKEN"),
        help=f"access token when there is no token file; prefer env {ENV_PREFIX}ACCESS_TOKEN",
    )
    reading.add_argument(
        "--refresh-token",
        default=_env("REFRESH_TOKEN"),
        help=f"refresh token when there is no token file; prefer env {ENV_PREFIX}REFRESH_TOKEN",
    )
    reading.add_argument(
        "--retry-seconds",
        type=_positive,
        default=CHECK_RETRY_SECONDS,
        help=f"give up on a failing Pinterest after this long (default {CHECK_RETRY_SECONDS:.0f})",
    )
    commands.add_parser(
        "check",
        parents=[common, reading],
        help="confirm that uploads would work with the stored or given tokens",
        description="Refresh if needed, then confirm the token works, has ads:read and "
        "ads:write, and reaches the ad account (not under review, not disapproved). "
        "Exit 0 only when uploads would work.",
    )
    status = commands.add_parser(
        "status",
        parents=[common, reading],
        help="what Pinterest made of the uploads: audience status and size, list status and "
        "counters, confirmed members, match rate",
        description="Read one CUSTOMER_LIST Audience and its Customer List, count the "
        "identifiers the target confirmed (the snapshot store) and compute the match rate "
        "(audience size / confirmed members). Reads only. Exit 0 when everything was read.",
    )
    which = status.add_mutually_exclusive_group()
    which.add_argument(
        "--audience-id",
        default=None,
        help=f"the Audience's id (env {ENV_PREFIX}AUDIENCE_ID)",
    )
    which.add_argument(
        "--audience-name",
        default=None,
        help="the name of the one CUSTOMER_LIST Audience to report on "
        f"(env {ENV_PREFIX}AUDIENCE_NAME)",
    )
    status.add_argument(
        "--snapshot-path",
        default=_env("SNAPSHOT_PATH"),
        help=f"directory of the snapshot files, as the target's snapshot_path (env "
        f"{ENV_PREFIX}SNAPSHOT_PATH; default $XDG_STATE_HOME/target-pinterest-audiences)",
    )
    status.add_argument(
        "--snapshot-url",
        default=_env("SNAPSHOT_URL"),
        help=f"PostgreSQL snapshot store, as the target's snapshot_url; prefer env "
        f"{ENV_PREFIX}SNAPSHOT_URL (it may hold a password)",
    )
    status.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default): for people; json: one JSON object on stdout",
    )
    return parser


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if "--check" in args:  # the spelling of the check mode
        args.remove("--check")
        if args and args[0] in {"connect", "check"}:
            args.pop(0)
        return ["check", *args]
    if not args or args[0] not in {*COMMANDS, "-h", "--help"}:
        return ["connect", *args]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 only on success)."""
    parser = build_parser()
    try:
        args = parser.parse_args(_normalize_argv(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    package_logger = logging.getLogger("target_pinterest_audiences")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        if args.command == "check":
            return run_check(args, sys.stdout, sys.stderr)
        if args.command == "status":
            return run_status(args, sys.stdout, sys.stderr)
        return run_connect(args, sys.stdout, sys.stderr)
    finally:
        package_logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
