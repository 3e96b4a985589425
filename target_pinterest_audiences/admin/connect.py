"""`connect`: Pinterest's OAuth authorization-code flow. It prints a single-use authorize link
(stdout, so it can be sent to the business admin who approves it), listens on a loopback address
for Pinterest's redirect, exchanges the code for a token pair and writes it to the token file the
target reads (mode 0600). The code and the tokens are never printed or logged.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import hmac
import html
import ipaddress
import logging
import os
import secrets
import socket
import sys
import threading
import time
import urllib.parse
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from target_pinterest_audiences.admin.common import (
    _LOOPBACK_HOSTS,
    _NEW_LINK,
    DEFAULT_REDIRECT_PORT,
    ENV_PREFIX,
    EXCHANGE_ATTEMPTS,
    PLUGIN,
    PROG,
    REQUIRED_SCOPES,
    SCOPE,
    _when,
    granted_scopes,
)
from target_pinterest_audiences.pinterest.client import (
    TargetError,
)
from target_pinterest_audiences.pinterest.tokens import (
    AuthError,
    TokenStore,
    TransientAuthError,
    default_token_cache_path,
    request_token,
    token_record,
)

logger = logging.getLogger(__name__)


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


def _listen_address(args: argparse.Namespace) -> tuple[list[str], int, str, str | None]:
    """(hosts to bind, port, callback path, fixed redirect URI or None to derive from the port).

    For a redirect URI naming `localhost`, every loopback address the name may stand for
    (127.0.0.1 and ::1, and whatever the resolver adds): a browser may try either, and an
    address left free could be bound by another local user, who would receive the code.
    """
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
        if parsed.hostname == "localhost":
            hosts = _localhost_addresses(port)
        else:
            hosts = ["::1" if parsed.hostname == "::1" else "127.0.0.1"]
        return hosts, port, parsed.path or "/", args.redirect_uri
    port = DEFAULT_REDIRECT_PORT if args.redirect_port is None else args.redirect_port
    return ["127.0.0.1"], port, "/callback", None


def _localhost_addresses(port: int) -> list[str]:
    """127.0.0.1, ::1 and every other address `localhost` resolves to; ValueError when one
    of them is not a loopback address (the callback would then cross a network)."""
    hosts = ["127.0.0.1", "::1"]
    try:
        found = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    except OSError:
        found = []
    for _family, _type, _proto, _name, address in found:
        host = str(address[0]).split("%", 1)[0]
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(
                f"localhost resolves to {host}, which is not a loopback address: use a "
                "redirect URI with 127.0.0.1 (http://127.0.0.1:PORT/...), registered in the app"
            )
        if host not in hosts:
            hosts.append(host)
    return hosts


def _bind_all(hosts: list[str], port: int) -> list[_LoopbackServer]:
    """One server per loopback address, all on one port (the first bound picks it when 0).
    An address this machine does not have (no IPv6) is skipped: nobody can bind it either."""
    servers: list[_LoopbackServer] = []
    try:
        for host in hosts:
            server_class = _LoopbackServer6 if ":" in host else _LoopbackServer
            try:
                server = server_class((host, port), BaseHTTPRequestHandler)
            except OSError as exc:
                absent = exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
                if absent and len(hosts) > 1:
                    continue
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise OSError(exc.errno, f"{where} ({exc.strerror or exc})") from None
            servers.append(server)
            port = server.server_address[1]
    except OSError:
        for server in servers:
            server.server_close()
        raise
    return servers


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
        hosts, port, path, fixed_uri = _listen_address(args)
    except ValueError as exc:
        say(str(exc))
        return 2

    try:
        # The real handler is set once the port, hence the redirect URI, is known.
        servers = _bind_all(hosts, port)
    except OSError as exc:
        say(
            f"Cannot listen for Pinterest's redirect on {exc.strerror}. Free that port, or "
            "choose another with --redirect-port (the redirect URI registered in your "
            "Pinterest app must use the same port)."
        )
        return 1
    actual_port = servers[0].server_address[1]
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
    link = build_authorize_url(args.authorize_url, client_id, redirect_uri, state)
    for server in servers:
        server.RequestHandlerClass = _handler_class(session, path)
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
        for server in servers:
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
