"""A local, strict emulator of the Pinterest API v5 customer-list, audience and OAuth endpoints.

Why it exists: Pinterest is not reachable from CI and its sandbox has no customer lists, so every
test drives the real target against this server over real sockets. It follows a strict reading of
Pinterest's published OpenAPI description: every request the description allows is accepted
(Pinterest's own Python SDK drives it in tests/test_pinterest_sdk.py); fields it does not name,
bad enums and malformed records are rejected. Records are stricter than the description, on
purpose: EMAIL, MAID and IDFA lists take SHA-256 digests only, so a target that uploads a raw
identifier fails its tests. It keeps one lock around all state so concurrent clients see
consistent results, and does only O(batch) work per request so benchmarks with millions of
identifiers stay fast.

A control API under ``/_emulator`` (no auth, never logged, never hit by faults) lets tests read the
state, inject faults (errors, dropped connections, delays) and change settings while it runs.

Matching, as Pinterest does it: an Audience's ``size`` (matched users) is null and its status
INITIALIZING until its list's uploads are matched; then READY with at least 100 matched users,
else TOO_SMALL. A list reads PROCESSING while an upload waits to be matched, then READY or
TOO_SMALL (UPLOADING, for uploads in parts through Ads Manager, never occurs here). Matching
completes ``match_delay_seconds`` after the list's latest write (default 0: at once; Pinterest
takes 24-48 hours), by the setting's current value: setting it to 0 matches every waiting list
now. Until then a matched audience keeps its previous size. ``match_fraction`` (default 1, taken
when a write arrives) is the share of identifiers that belong to a Pinterest user: identifier
``h`` matches when ``zlib.crc32(h.encode()) < match_fraction * 2**32``.

ACTALIKE audiences: made only from READY seeds (else 400, code 1, naming the seed's status);
INITIALIZING until ``match_delay_seconds`` after their rule was set, then READY with
``percentage`` percent of the country's emulated Pinners (state.COUNTRY_PINNERS).

Use it in-process (``Emulator(...).start()``) or as a program::

    python -m target_pinterest_audiences.emulator --port 0
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from target_pinterest_audiences.emulator.ads import AdsApi
from target_pinterest_audiences.emulator.control import WRITE_WINDOW_S, ControlApi
from target_pinterest_audiences.emulator.errors import MSG_RATE_LIMIT, ApiError, _bad
from target_pinterest_audiences.emulator.faults import _fault_reply, _pick_fault
from target_pinterest_audiences.emulator.oauth import OAuthApi
from target_pinterest_audiences.emulator.state import _Config
from target_pinterest_audiences.emulator.transport import (
    _BAD_JSON,
    _NO_BODY,
    _FramingError,
    _Handler,
    _Reply,
    _Request,
    _Server,
)
from target_pinterest_audiences.emulator.validation import (
    _ID_RE,
    DEFAULT_AD_ACCOUNT,
    _media_type,
    _query_dict,
    _reject_constant,
)

_AD_ACCOUNT_ROUTE = re.compile(r"/v5/ad_accounts/([^/]*)/(customer_lists|audiences)(?:/([^/]*))?")
_WRITE_METHODS = frozenset({"POST", "PATCH"})


class Emulator(AdsApi, OAuthApi, ControlApi):
    """A Pinterest API v5 emulator served on a real socket; see the module docstring.

    All state sits behind one lock; sleeps (delays) happen outside it so requests stay concurrent.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        ad_accounts: Iterable[str] = (DEFAULT_AD_ACCOUNT,),
        client_id: str = "emu-client-id",
        client_secret: str = "emu-client-secret",  # noqa: S107 - a local emulator's fixture
        access_token: str | None = "emu-access-token",  # noqa: S107
        refresh_token: str | None = "emu-refresh-token",  # noqa: S107
        access_token_expires_in: int = 2592000,
        *,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            ad_accounts,
            client_id,
            client_secret,
            access_token,
            refresh_token,
            access_token_expires_in,
        )
        self.host = host
        self.port = port
        self.verbose = verbose
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind and serve in a daemon thread; with port 0 the real port is known afterwards."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _Server((self.host, self.port), self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"pinterest-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open keep-alive connections (so no thread lingers)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Emulator:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The value for the target's ``api_url`` setting."""
        return f"{self.base_url}/v5"

    # -- control (Python side; the /_emulator endpoints call the same methods) -------------------
    # -- internals: request handling --------------------------------------------------------------

    def _serve(self, h: _Handler) -> None:
        if urlsplit(h.path).path.startswith("/_emulator"):
            self._serve_control(h)
        else:
            self._serve_api(h)

    def _serve_api(self, h: _Handler) -> None:
        arrival = time.time()
        rid = secrets.token_hex(8)
        split = urlsplit(h.path)
        path = split.path
        method = h.command
        try:
            body = h.read_body()
        except _FramingError as exc:
            h.close_connection = True
            h.send_reply(400, {"code": 1, "message": f"body: {exc}"}, rid, {})
            return
        parsed: Any = _NO_BODY
        if body and _media_type(h.headers) == "application/json":
            try:
                parsed = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
            except ValueError:  # includes UnicodeDecodeError and json.JSONDecodeError
                parsed = _BAD_JSON
        query = parse_qsl(split.query, keep_blank_values=True)
        entry: dict[str, Any] = {
            "t": arrival,
            "method": method,
            "path": path,
            "query": _query_dict(query),
            "status": None,
            "rid": rid,
        }
        if isinstance(parsed, dict):
            op = parsed.get("operation_type")
            if isinstance(op, str):
                entry["operation_type"] = op
            records = parsed.get("records")
            if isinstance(records, str):
                entry["n_records"] = records.count(",") + 1 if records else 0
        is_write = method in _WRITE_METHODS and path.startswith("/v5/ad_accounts/")
        with self._lock:
            self._log.append(entry)
            if is_write:
                self._write_times.append(arrival)
            fault = _pick_fault(self._faults, method, path)
            if fault is not None:
                entry["fault"] = fault.kind
            cfg = _Config(**vars(self._cfg))
        if fault is not None:
            reply = _fault_reply(fault)
            if fault.kind == "drop_before":
                self._finish(entry, "dropped")
                h.close_connection = True
                return
            if reply is not None:
                self._finish(entry, reply[0])
                h.send_reply(reply[0], reply[1], rid, reply[2])
                return
            if fault.kind == "delay":
                time.sleep(fault.delay_ms / 1000)
        delay_ms = cfg.delay_ms + (cfg.write_delay_ms if is_write else 0)
        if delay_ms:
            time.sleep(delay_ms / 1000)
        req = _Request(method, path, query, h.headers, body, parsed, arrival, is_write, cfg)
        try:
            status, payload, headers = self._route(req)
        except ApiError as err:
            status, payload, headers = err.status, err.body(), err.headers
        except Exception:  # a bug here must not kill the connection silently
            traceback.print_exc(file=sys.stderr)
            status, payload, headers = 500, {"code": 12, "message": "Something went wrong."}, {}
        if fault is not None and fault.kind == "drop_after":
            self._finish(entry, "dropped", applied_status=status)
            h.close_connection = True
            return
        self._finish(entry, status)
        h.send_reply(status, payload, rid, headers)

    def _finish(self, entry: dict[str, Any], status: int | str, **extra: Any) -> None:
        """Record the outcome; under the lock because state() copies entries meanwhile."""
        with self._lock:
            entry["status"] = status
            entry.update(extra)

    def _route(self, req: _Request) -> _Reply:
        if req.path in ("/oauth", "/oauth/"):
            if req.method != "GET":
                raise ApiError(405, 405, "Method not allowed.")
            return self._authorize(req)
        if req.path == "/v5/oauth/token":
            if req.method != "POST":
                raise ApiError(405, 405, "Method not allowed.")
            return self._token(req)
        match = _AD_ACCOUNT_ROUTE.fullmatch(req.path)
        if match is None:
            raise ApiError(404, 404, "Not found.")
        account, collection, item = match.group(1), match.group(2), match.group(3)
        routes: dict[tuple[str, bool, str], Callable[[_Request, str, str], _Reply]] = {
            ("customer_lists", False, "POST"): self._create_list,
            ("customer_lists", False, "GET"): self._list_lists,
            ("customer_lists", True, "GET"): self._get_list,
            ("customer_lists", True, "PATCH"): self._update_list,
            ("audiences", False, "POST"): self._create_audience,
            ("audiences", False, "GET"): self._list_audiences,
            ("audiences", True, "GET"): self._get_audience,
            ("audiences", True, "PATCH"): self._update_audience,
        }
        handler = routes.get((collection, item is not None, req.method))
        if handler is None:
            raise ApiError(405, 405, "Method not allowed.")
        self._authenticate(req, "ads:write" if req.method in _WRITE_METHODS else "ads:read")
        if req.is_write:
            self._rate_limit(req)
        self._check_account(account)
        if item is not None and not _ID_RE.fullmatch(item):
            id_name = "customer_list_id" if collection == "customer_lists" else "audience_id"
            raise _bad(f"{id_name}: must be a string of 1 to 18 digits")
        return handler(req, account, item or "")

    def _rate_limit(self, req: _Request) -> None:
        """Server-side write limit over a trailing 60 s, like Pinterest's (429, no Retry-After)."""
        limit = req.cfg.writes_per_minute_limit
        if limit is None:
            return
        with self._lock:
            window = self._admitted_writes
            while window and req.arrival - window[0] >= WRITE_WINDOW_S:
                window.popleft()
            if len(window) >= limit:
                raise ApiError(429, 8, MSG_RATE_LIMIT)
            window.append(req.arrival)
