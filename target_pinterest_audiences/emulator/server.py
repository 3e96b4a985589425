"""A local, strict emulator of the Pinterest API v5 customer-list, audience and OAuth endpoints.

Why it exists: Pinterest is not reachable from CI and its sandbox has no customer lists, so every
test drives the real target against this server over real sockets. It follows a strict reading of
Pinterest's published OpenAPI description (unknown fields, bad enums and malformed records are
rejected), keeps one lock around all state so concurrent clients see consistent results, and does
only O(batch) work per request so benchmarks with millions of identifiers stay fast.

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

Use it in-process (``Emulator(...).start()``) or as a program::

    python -m target_pinterest_audiences.emulator --port 0
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["ApiError", "Emulator", "main", "max_events_in_window"]

# ---------------------------------------------------------------------------------------------
# Constants taken from the published spec (pinterest-audiences-subset.json) and FACTS.md.
# ---------------------------------------------------------------------------------------------

DEFAULT_AD_ACCOUNT = "549755885175"
LIST_TYPES = ("EMAIL", "IDFA", "MAID", "LR_ID", "DLX_ID", "HASHED_PINNER_ID")
LIST_OPERATIONS = ("ADD", "REMOVE")
AUDIENCE_TYPES = ("CUSTOMER_LIST", "VISITOR", "ENGAGEMENT", "ACTALIKE", "PERSONA")
AUDIENCE_OPERATIONS = ("UPDATE", "REMOVE")
ORDERS = ("ASCENDING", "DESCENDING")
OWNERSHIP_TYPES = ("OWNED", "RECEIVED")
# Properties of the AudienceRule schema: rules of non-CUSTOMER_LIST audiences may use only these.
RULE_KEYS = frozenset(
    {
        "ad_account_id",
        "ad_id",
        "campaign_id",
        "country",
        "customer_list_id",
        "engagement_domain",
        "engagement_type",
        "engager_type",
        "event",
        "event_data",
        "event_source",
        "ingestion_source",
        "objective_type",
        "percentage",
        "pin_id",
        "prefill",
        "retention_days",
        "seed_id",
        "url",
        "visitor_source_id",
    }
)
SEEDED_SCOPE = frozenset({"ads:read", "ads:write"})
AUTH_CODE_TTL_S = 600
REFRESH_TOKEN_TTL_S = 60 * 24 * 3600
WRITE_WINDOW_S = 60.0
PAGE_SIZE_DEFAULT = 25
PAGE_SIZE_MAX = 250
MAX_BODY_BYTES = 256 * 1024 * 1024
READY_MIN_SIZE = 100

# ``[0-9]`` rather than ``\d``: ``\d`` also matches non-ASCII digits.
_ID_RE = re.compile(r"[0-9]{1,18}")
# What one record of a list may be, by the list's list_type: EMAIL, MAID and IDFA lists take
# lowercase SHA-256 hex digests (what the target uploads), HASHED_PINNER_ID lists lowercase
# SHA-256, SHA-1 or MD5 digests, and LR_ID/DLX_ID lists partner ids as given: 1 to 256
# characters, none a comma, whitespace, control character or lone surrogate.
_SHA256_RECORD = r"[0-9a-f]{64}"
_PINNER_RECORD = r"(?:[0-9a-f]{64}|[0-9a-f]{40}|[0-9a-f]{32})"
_PARTNER_RECORD = r"[^,\s\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,256}"
_RECORD_RULES: dict[str, tuple[str, str]] = {
    "EMAIL": (_SHA256_RECORD, "a lowercase SHA-256 hex digest"),
    "MAID": (_SHA256_RECORD, "a lowercase SHA-256 hex digest"),
    "IDFA": (_SHA256_RECORD, "a lowercase SHA-256 hex digest"),
    "HASHED_PINNER_ID": (_PINNER_RECORD, "a lowercase hex SHA-256, SHA-1 or MD5 digest"),
    "LR_ID": (
        _PARTNER_RECORD,
        "an id of 1 to 256 characters without comma, whitespace or control character",
    ),
    "DLX_ID": (
        _PARTNER_RECORD,
        "an id of 1 to 256 characters without comma, whitespace or control character",
    ),
}
#: list_type -> (one record, a whole ``records`` string of them, what a record must be).
_RECORD_CHECKS: dict[str, tuple[re.Pattern[str], re.Pattern[str], str]] = {
    list_type: (re.compile(one), re.compile(f"{one}(?:,{one})*"), what)
    for list_type, (one, what) in _RECORD_RULES.items()
}
_FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,39}")
_AD_ACCOUNT_ROUTE = re.compile(r"/v5/ad_accounts/([^/]*)/(customer_lists|audiences)(?:/([^/]*))?")
_WRITE_METHODS = frozenset({"POST", "PATCH"})
_FAULT_KINDS = ("status", "drop_before", "drop_after", "delay", "too_large")
_FAULT_FIELDS = frozenset(
    {
        "kind",
        "status",
        "code",
        "message",
        "retry_after",
        "delay_ms",
        "methods",
        "path_contains",
        "every",
        "count",
        "skip",
    }
)
_CONFIG_KEYS = (
    "under_review",
    "disapproved",
    "record_cap",
    "write_delay_ms",
    "delay_ms",
    "access_token_ttl_requests",
    "refresh_single_use",
    "writes_per_minute_limit",
    "match_delay_seconds",
    "match_fraction",
)

MSG_AUTH_FAILED = "Authentication failed."
MSG_NOT_PERMITTED = "You are not permitted to access that resource."
MSG_UNDER_REVIEW = (
    "We are reviewing your account. You can't create or edit ads and audiences until the review "
    "is complete."
)
MSG_DISAPPROVED = "Your ad account has been disapproved. You can't access ads and audiences."
MSG_TOO_LARGE = "Request entity too large"
MSG_RATE_LIMIT = "You have exceeded your rate limit. Try again later."

# A default that means "not given", so configure() changes only the settings it is passed.
_UNSET: Any = object()
_NO_BODY: Any = object()
_BAD_JSON: Any = object()


class ApiError(Exception):
    """An error answer; raised deep inside a handler so one place turns it into a response."""

    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def _bad(message: str) -> ApiError:
    """400 code 1, Pinterest's 'invalid parameters' answer."""
    return ApiError(400, 1, message)


def _auth_failed() -> ApiError:
    return ApiError(401, 2, MSG_AUTH_FAILED)


def _safe_name(name: str) -> str:
    """A client-sent field name fit to echo: never echo something that may be a record value."""
    return name if _FIELD_NAME_RE.fullmatch(name) else "(field name not shown)"


def max_events_in_window(times: Iterable[float], window: float = WRITE_WINDOW_S) -> int:
    """Return the largest number of events that fall in any half-open window of ``window`` s.

    Why: a client-side limiter that allows N writes per rolling minute keeps this at most N, so
    tests can prove the limit held. Sort plus two pointers keeps it O(n log n) for long logs.
    Two events are in one window when their times differ by less than ``window``.
    """
    ts = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# ---------------------------------------------------------------------------------------------
# State records
# ---------------------------------------------------------------------------------------------


def _matches(identifier: str, fraction: float) -> bool:
    """Whether an identifier belongs to a Pinterest user (deterministic; see the docstring)."""
    return fraction >= 1.0 or zlib.crc32(identifier.encode()) < fraction * 2**32


@dataclass
class _CustomerList:
    id: str
    ad_account_id: str
    name: str
    list_type: str
    created: int
    updated: int
    members: set[str]
    num_batches: int = 1
    uploaded: int = 0
    removed: int = 0
    #: Matched users at the last completed matching; None until the first one completes.
    matched: int | None = None
    #: Whether a write waits to be matched, since when (time.monotonic()), and its share.
    match_pending: bool = False
    written_at: float = 0.0
    match_fraction: float = 1.0

    def wrote(self, cfg: _Config) -> None:
        """After a write: the members as they are now wait to be matched.

        Call settle() before changing the members, so a matching already due counts the
        members it was due for.
        """
        self.match_pending = True
        self.written_at = time.monotonic()
        self.match_fraction = cfg.match_fraction

    def settle(self, cfg: _Config) -> int | None:
        """Matched users now (None: never matched yet); completes a matching that is due."""
        if self.match_pending and time.monotonic() >= self.written_at + cfg.match_delay_seconds:
            self.match_pending = False
            fraction = self.match_fraction
            if fraction >= 1.0:
                self.matched = len(self.members)
            else:
                self.matched = sum(1 for m in self.members if _matches(m, fraction))
        return self.matched

    def api(self, cfg: _Config, *, just_written: bool = False) -> dict[str, Any]:
        """The CustomerList answer; PROCESSING after a write until it is matched."""
        matched = self.settle(cfg)
        if just_written or self.match_pending or matched is None:
            status = "PROCESSING"
        else:
            status = "READY" if matched >= READY_MIN_SIZE else "TOO_SMALL"
        return {
            "id": self.id,
            "ad_account_id": self.ad_account_id,
            "name": self.name,
            "created_time": self.created,
            "updated_time": self.updated,
            "num_batches": self.num_batches,
            "num_uploaded_user_records": self.uploaded,
            "num_removed_user_records": self.removed,
            "status": status,
            "type": "customerlist",
            "exceptions": {},
        }


@dataclass
class _Audience:
    id: str
    ad_account_id: str
    name: str
    audience_type: str
    rule: dict[str, Any]
    description: str | None
    created: int
    updated: int

    def api(self, lists: dict[str, _CustomerList], cfg: _Config) -> dict[str, Any]:
        """The Audience answer; size is the list's matched users (null until matched)."""
        size: int | None = None
        if self.audience_type == "CUSTOMER_LIST":
            lst = lists.get(str(self.rule.get("customer_list_id")))
            size = lst.settle(cfg) if lst is not None else None
        if size is None:
            status = "INITIALIZING"
        else:
            status = "READY" if size >= READY_MIN_SIZE else "TOO_SMALL"
        return {
            "id": self.id,
            "ad_account_id": self.ad_account_id,
            "name": self.name,
            "audience_type": self.audience_type,
            "rule": json.loads(json.dumps(self.rule)),
            "description": self.description,
            "size": size,
            "status": status,
            "type": "audience",
            "created_by_company_name": None,
            "created_timestamp": self.created,
            "updated_timestamp": self.updated,
        }


@dataclass
class _AccessToken:
    scope: frozenset[str]
    expires_at: float
    uses: int = 0


@dataclass
class _RefreshToken:
    scope: frozenset[str]
    expires_at: float


@dataclass
class _AuthCode:
    client_id: str
    redirect_uri: str
    scope: frozenset[str]
    expires_at: float


@dataclass
class _Fault:
    kind: str
    status: int | None = None
    code: int | None = None
    message: str | None = None
    retry_after: int | None = None
    delay_ms: int = 0
    methods: list[str] | None = None
    path_contains: str | None = None
    every: int = 1
    count: int | None = None
    skip: int = 0
    seen: int = 0
    fired: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "retry_after": self.retry_after,
            "delay_ms": self.delay_ms,
            "methods": list(self.methods) if self.methods is not None else None,
            "path_contains": self.path_contains,
            "every": self.every,
            "count": self.count,
            "skip": self.skip,
            "seen": self.seen,
            "fired": self.fired,
        }


@dataclass
class _Config:
    under_review: frozenset[str] = frozenset()
    disapproved: frozenset[str] = frozenset()
    record_cap: int | None = None
    write_delay_ms: int = 0
    delay_ms: int = 0
    access_token_ttl_requests: int | None = None
    refresh_single_use: bool = False
    writes_per_minute_limit: int | None = None
    match_delay_seconds: float = 0.0
    match_fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "under_review": sorted(self.under_review),
            "disapproved": sorted(self.disapproved),
            "record_cap": self.record_cap,
            "write_delay_ms": self.write_delay_ms,
            "delay_ms": self.delay_ms,
            "access_token_ttl_requests": self.access_token_ttl_requests,
            "refresh_single_use": self.refresh_single_use,
            "writes_per_minute_limit": self.writes_per_minute_limit,
            "match_delay_seconds": self.match_delay_seconds,
            "match_fraction": self.match_fraction,
        }


@dataclass
class _Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Any
    body: bytes
    parsed: Any
    arrival: float
    is_write: bool
    cfg: _Config = field(default_factory=_Config)


_Reply = tuple[int, Any, dict[str, str]]


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(body: dict[str, Any], allowed: Iterable[str], required: Iterable[str]) -> None:
    allowed_set = set(allowed)
    for key in sorted(body):
        if key not in allowed_set:
            raise _bad(f"{_safe_name(key)}: unknown field")
    for key in required:
        if key not in body:
            raise _bad(f"{key}: required field is missing")


def _nonempty_str(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{key}: must be a non-empty string")
    return value


def _enum(
    body: dict[str, Any], key: str, choices: Sequence[str], default: str | None = None
) -> str:
    if key not in body and default is not None:
        return default
    value = body[key]
    if not isinstance(value, str) or value not in choices:
        raise _bad(f"{key}: must be one of {', '.join(choices)}")
    return value


def _parse_records(value: Any, list_type: str) -> list[str]:
    """Split and check ``records`` against the list's own list_type; errors name the entry's
    index, never its value."""
    one, whole, what = _RECORD_CHECKS[list_type]
    if not isinstance(value, str):
        raise _bad("records: must be a string of comma-separated records")
    if not value:
        raise _bad("records: must not be empty")
    if whole.fullmatch(value):  # the common case: one C-speed pass over the whole string
        return value.split(",")
    for index, entry in enumerate(value.split(",")):
        if not one.fullmatch(entry):
            raise _bad(f"records: entry at index {index} is not {what} (list_type {list_type})")
    raise _bad(f"records: not a list of {what}s")  # pragma: no cover


def _parse_scope(raw: str) -> frozenset[str]:
    return frozenset(s for s in re.split(r"[,\s]+", raw) if s)


def _format_scope(scope: Iterable[str]) -> str:
    return ",".join(sorted(scope))


def _media_type(headers: Any) -> str:
    return str(headers.get("Content-Type") or "").split(";")[0].strip().lower()


def _query_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def _single_query(req: _Request, allowed: Iterable[str]) -> dict[str, str]:
    allowed_set = set(allowed)
    out: dict[str, str] = {}
    for key, value in req.query:
        if key not in allowed_set:
            raise _bad(f"{_safe_name(key)}: unknown query parameter")
        if key in out:
            raise _bad(f"{key}: query parameter given more than once")
        out[key] = value
    return out


def _opt_int(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    return _int(name, value, minimum)


def _int(name: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}")
    return int(value)


def _number(name: str, value: Any, minimum: float, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name}: must be a number")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name}: must be a number {bounds}")
    return float(value)


def _parse_fault(rule: Any) -> _Fault:
    """Check one fault rule (from Python or the control API); ValueError says what is wrong."""
    if not isinstance(rule, dict):
        raise ValueError("fault rule must be a JSON object")
    unknown = sorted(set(rule) - _FAULT_FIELDS)
    if unknown:
        raise ValueError(f"fault rule: unknown field(s) {', '.join(map(str, unknown))}")
    kind = rule.get("kind")
    if kind not in _FAULT_KINDS:
        raise ValueError(f"kind: must be one of {', '.join(_FAULT_KINDS)}")
    fault = _Fault(kind=kind)
    status = rule.get("status")
    if kind == "status":
        if not isinstance(status, int) or isinstance(status, bool) or status == 200:
            raise ValueError("status: kind 'status' needs an HTTP status code (100-599, not 200)")
        if not 100 <= status <= 599:
            raise ValueError("status: kind 'status' needs an HTTP status code (100-599, not 200)")
        fault.status = status
    elif status is not None:
        raise ValueError("status: only for kind 'status'")
    if rule.get("code") is not None:
        if not _is_int(rule["code"]):
            raise ValueError("code: must be an integer")
        fault.code = rule["code"]
    if rule.get("message") is not None:
        if not isinstance(rule["message"], str):
            raise ValueError("message: must be a string")
        fault.message = rule["message"]
    fault.retry_after = _opt_int("retry_after", rule.get("retry_after"), 0)
    fault.delay_ms = _int("delay_ms", rule.get("delay_ms", 0), 0)
    if kind == "delay" and fault.delay_ms == 0:
        raise ValueError("delay_ms: kind 'delay' needs delay_ms > 0")
    methods = rule.get("methods")
    if methods is not None:
        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise ValueError("methods: must be a list of HTTP method names")
        fault.methods = [m.upper() for m in methods]
    path_contains = rule.get("path_contains")
    if path_contains is not None and not isinstance(path_contains, str):
        raise ValueError("path_contains: must be a string")
    fault.path_contains = path_contains
    fault.every = _int("every", rule.get("every", 1), 1)
    fault.count = _opt_int("count", rule.get("count"), 0)
    fault.skip = _int("skip", rule.get("skip", 0), 0)
    return fault


def _encode_bookmark(kind: str, account: str, order: str, after: int) -> str:
    raw = json.dumps({"k": kind, "a": account, "o": order, "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_bookmark(bookmark: str, kind: str, account: str) -> tuple[str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(bookmark.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        raise _bad("bookmark: invalid bookmark") from None
    if (
        not isinstance(data, dict)
        or data.get("k") != kind
        or data.get("a") != account
        or data.get("o") not in ORDERS
        or not _is_int(data.get("after"))
    ):
        raise _bad("bookmark: invalid bookmark")
    return str(data["o"]), int(data["after"])


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------


class _FramingError(Exception):
    """The request body could not be read (bad Content-Length or chunking)."""


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers open sockets so stop() can end idle keep-alive threads."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._conns: set[Any] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        with self._conns_lock:
            self._conns.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, hands it to the Emulator, writes the answer (or drops the socket)."""

    protocol_version = "HTTP/1.1"  # keep-alive: benchmarks send hundreds of large requests
    disable_nagle_algorithm = True  # else headers and body in two writes cost a 40 ms ACK delay
    server_version = "PinterestEmulator/1.0"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet by default: the CLI's stdout must hold only the listening line."""
        if self.server.emulator.verbose:
            sys.stderr.write(f"emulator: {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self.server.emulator._serve(self)

    def do_POST(self) -> None:
        self.server.emulator._serve(self)

    def do_PATCH(self) -> None:
        self.server.emulator._serve(self)

    def do_PUT(self) -> None:
        self.server.emulator._serve(self)

    def do_DELETE(self) -> None:
        self.server.emulator._serve(self)

    def read_body(self) -> bytes:
        if str(self.headers.get("Transfer-Encoding", "")).lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _FramingError("Content-Length is not a number") from None
        if n < 0 or n > MAX_BODY_BYTES:
            raise _FramingError("Content-Length out of range")
        data = self.rfile.read(n)
        if len(data) != n:
            raise _FramingError("body shorter than Content-Length")
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _FramingError("bad chunk size") from None
            if size == 0:
                while self.rfile.readline(8192).strip():  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _FramingError("body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def send_reply(self, status: int, payload: Any, rid: str, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-pinterest-rid", rid)
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


# ---------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------


class Emulator:
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
        self.host = host
        self.port = port
        self.verbose = verbose
        self._ad_accounts = frozenset(str(a) for a in ad_accounts)
        for account in self._ad_accounts:
            if not _ID_RE.fullmatch(account):
                raise ValueError("ad_accounts: each must be a string of 1 to 18 digits")
        self._client_id = client_id
        self._client_secret = client_secret
        self._seed_access = access_token
        self._seed_refresh = refresh_token
        self._access_ttl_s = int(access_token_expires_in)
        self._lock = threading.Lock()
        self._cfg = _Config()
        self._next_id = 2542620639001
        self._lists: dict[str, _CustomerList] = {}
        self._audiences: dict[str, _Audience] = {}
        self._log: list[dict[str, Any]] = []
        self._write_times: list[float] = []
        self._admitted_writes: deque[float] = deque()
        self._faults: list[_Fault] = []
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._codes: dict[str, _AuthCode] = {}
        self._seed_credentials()
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

    def state(self, *, members: bool = True, requests: bool = True) -> dict[str, Any]:
        """A JSON-ready snapshot; ``members=False`` skips big member lists, ``requests`` the log."""
        with self._lock:
            lists = [
                (lst, list(lst.members) if members else None, len(lst.members))
                for lst in self._lists.values()
            ]
            list_meta: list[dict[str, Any]] = [
                {
                    "id": lst.id,
                    "ad_account_id": lst.ad_account_id,
                    "name": lst.name,
                    "list_type": lst.list_type,
                    "num_batches": lst.num_batches,
                    "num_uploaded_user_records": lst.uploaded,
                    "num_removed_user_records": lst.removed,
                    "num_members": n,
                    "matched_users": lst.settle(self._cfg),
                }
                for lst, _, n in lists
            ]
            audiences = [a.api(self._lists, self._cfg) for a in self._audiences.values()]
            log = [dict(entry) for entry in self._log] if requests else None
            write_times = list(self._write_times)
            faults = [f.to_dict() for f in self._faults]
            config = self._cfg.to_dict()
        # Sorting and the window scan happen outside the lock: they can be slow for big states.
        out_lists = []
        for meta, (_, raw_members, _) in zip(list_meta, lists, strict=True):
            if raw_members is not None:
                meta["members"] = sorted(raw_members)
            out_lists.append(meta)
        result: dict[str, Any] = {
            "lists": out_lists,
            "audiences": audiences,
            "max_writes_in_any_60s": max_events_in_window(write_times),
            "faults": faults,
            "config": config,
        }
        if log is not None:
            result["requests"] = log
        return result

    def add_fault(
        self,
        kind: str,
        *,
        status: int | None = None,
        code: int | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        delay_ms: int = 0,
        methods: Sequence[str] | None = None,
        path_contains: str | None = None,
        every: int = 1,
        count: int | None = None,
        skip: int = 0,
    ) -> dict[str, Any]:
        """Append a fault rule (same fields as POST /_emulator/faults); returns it as a dict."""
        rule = {
            "kind": kind,
            "status": status,
            "code": code,
            "message": message,
            "retry_after": retry_after,
            "delay_ms": delay_ms,
            "methods": list(methods) if methods is not None else None,
            "path_contains": path_contains,
            "every": every,
            "count": count,
            "skip": skip,
        }
        return self.add_faults([rule])[0]

    def add_faults(self, rules: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append several rules at once, all or none (ValueError if any is invalid)."""
        parsed = [_parse_fault(rule) for rule in rules]
        with self._lock:
            self._faults.extend(parsed)
            return [f.to_dict() for f in parsed]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def configure(
        self,
        *,
        under_review: Iterable[str] = _UNSET,
        disapproved: Iterable[str] = _UNSET,
        record_cap: int | None = _UNSET,
        write_delay_ms: int = _UNSET,
        delay_ms: int = _UNSET,
        access_token_ttl_requests: int | None = _UNSET,
        refresh_single_use: bool = _UNSET,
        writes_per_minute_limit: int | None = _UNSET,
        match_delay_seconds: float = _UNSET,
        match_fraction: float = _UNSET,
    ) -> dict[str, Any]:
        """Change only the settings passed; returns the whole configuration.

        Setting ``access_token_ttl_requests`` restarts every token's request count, so the
        limit counts from now (the seeded token is otherwise already in use). The matching
        settings apply to writes from now on.
        """
        given = {
            "under_review": under_review,
            "disapproved": disapproved,
            "record_cap": record_cap,
            "write_delay_ms": write_delay_ms,
            "delay_ms": delay_ms,
            "access_token_ttl_requests": access_token_ttl_requests,
            "refresh_single_use": refresh_single_use,
            "writes_per_minute_limit": writes_per_minute_limit,
            "match_delay_seconds": match_delay_seconds,
            "match_fraction": match_fraction,
        }
        return self._apply_config({k: v for k, v in given.items() if v is not _UNSET})

    def reset(self, *, config: bool = False) -> None:
        """Forget lists, audiences, the request log, faults and issued tokens.

        The seeded credentials are restored (a single-use refresh may have consumed them).
        Settings survive unless ``config=True``.
        """
        with self._lock:
            self._lists.clear()
            self._audiences.clear()
            self._log.clear()
            self._write_times.clear()
            self._admitted_writes.clear()
            self._faults.clear()
            self._codes.clear()
            self._access_tokens.clear()
            self._refresh_tokens.clear()
            if config:
                self._cfg = _Config()
            self._seed_credentials()

    # -- internals: state helpers -----------------------------------------------------------------

    def _seed_credentials(self) -> None:
        now = time.time()
        if self._seed_access:
            self._access_tokens[self._seed_access] = _AccessToken(
                SEEDED_SCOPE, now + self._access_ttl_s
            )
        if self._seed_refresh:
            self._refresh_tokens[self._seed_refresh] = _RefreshToken(
                SEEDED_SCOPE, now + REFRESH_TOKEN_TTL_S
            )

    def _new_id(self) -> str:
        """Ids are digit strings rising with creation time, as the spec's `order` assumes."""
        self._next_id += 1
        return str(self._next_id)

    def _apply_config(self, settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(map(str, unknown))}")
        new: dict[str, Any] = {}
        for key in ("under_review", "disapproved"):
            if key in settings:
                value = settings[key]
                if isinstance(value, str) or not isinstance(value, Iterable):
                    raise ValueError(f"{key}: must be a list of ad account ids")
                ids = frozenset(str(v) for v in value)
                strangers = sorted(ids - self._ad_accounts)
                if strangers:
                    raise ValueError(f"{key}: not a configured ad account: {', '.join(strangers)}")
                new[key] = ids
        for key in ("record_cap",):
            if key in settings:
                new[key] = _opt_int(key, settings[key], 0)
        for key in ("access_token_ttl_requests", "writes_per_minute_limit"):
            if key in settings:
                new[key] = _opt_int(key, settings[key], 1)
        for key in ("write_delay_ms", "delay_ms"):
            if key in settings:
                new[key] = _int(key, settings[key], 0)
        if "match_delay_seconds" in settings:
            new["match_delay_seconds"] = _number(
                "match_delay_seconds", settings["match_delay_seconds"], 0.0
            )
        if "match_fraction" in settings:
            new["match_fraction"] = _number("match_fraction", settings["match_fraction"], 0.0, 1.0)
        if "refresh_single_use" in settings:
            if not isinstance(settings["refresh_single_use"], bool):
                raise ValueError("refresh_single_use: must be true or false")
            new["refresh_single_use"] = settings["refresh_single_use"]
        with self._lock:
            for key, value in new.items():
                setattr(self._cfg, key, value)
            if "access_token_ttl_requests" in new:
                for token in self._access_tokens.values():
                    token.uses = 0
            return self._cfg.to_dict()

    def _pick_fault(self, method: str, path: str) -> _Fault | None:
        """First rule that fires wins; call with the lock held."""
        for fault in self._faults:
            if fault.methods is not None and method not in fault.methods:
                continue
            if fault.path_contains is not None and fault.path_contains not in path:
                continue
            fault.seen += 1
            if fault.seen <= fault.skip or (fault.seen - fault.skip) % fault.every:
                continue
            if fault.count is not None and fault.fired >= fault.count:
                continue
            fault.fired += 1
            return fault
        return None

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
            fault = self._pick_fault(method, path)
            if fault is not None:
                entry["fault"] = fault.kind
            cfg = _Config(**vars(self._cfg))
        if fault is not None:
            reply = self._fault_reply(fault)
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

    @staticmethod
    def _fault_reply(fault: _Fault) -> _Reply | None:
        if fault.kind == "too_large":
            return 413, {"code": fault.code or 1, "message": fault.message or MSG_TOO_LARGE}, {}
        if fault.kind != "status" or fault.status is None:
            return None
        status = fault.status
        default_code = {429: 8, 503: 4197}.get(status, 1)
        code = fault.code if fault.code is not None else default_code
        default_message = {
            401: MSG_AUTH_FAILED,
            403: MSG_NOT_PERMITTED,
            429: MSG_RATE_LIMIT,
            503: "Service unavailable. Please try again later.",
        }.get(status, "Emulated fault.")
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return status, {"code": code, "message": fault.message or default_message}, headers

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

    def _authenticate(self, req: _Request, scope: str) -> None:
        scheme, _, token = str(req.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _auth_failed()
        with self._lock:
            record = self._access_tokens.get(token)
            ttl = self._cfg.access_token_ttl_requests
            if (
                record is None
                or record.expires_at <= time.time()
                or (ttl is not None and record.uses >= ttl)
            ):
                raise _auth_failed()
            record.uses += 1
            if scope not in record.scope:
                raise ApiError(401, 3, f"Authentication failed: missing required scope {scope}.")

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

    def _check_account(self, account: str) -> None:
        if not _ID_RE.fullmatch(account):
            raise _bad("ad_account_id: must be a string of 1 to 18 digits")
        with self._lock:
            if account not in self._ad_accounts:
                raise ApiError(403, 29, MSG_NOT_PERMITTED)
            if account in self._cfg.disapproved:
                raise ApiError(403, 2625, MSG_DISAPPROVED)
            if account in self._cfg.under_review:
                raise ApiError(403, 2626, MSG_UNDER_REVIEW)

    @staticmethod
    def _json_body(req: _Request) -> dict[str, Any]:
        if _media_type(req.headers) != "application/json":
            raise _bad("Content-Type: must be application/json")
        if req.parsed is _NO_BODY:
            raise _bad("body: a JSON object is required")
        if req.parsed is _BAD_JSON:
            raise _bad("body: not valid UTF-8 JSON")
        if not isinstance(req.parsed, dict):
            raise _bad("body: must be a JSON object")
        return req.parsed

    @staticmethod
    def _check_record_cap(req: _Request, body: dict[str, Any]) -> None:
        cap = req.cfg.record_cap
        records = body.get("records")
        if cap is not None and isinstance(records, str) and records.count(",") + 1 > cap:
            raise ApiError(413, 1, MSG_TOO_LARGE)

    # -- customer lists ---------------------------------------------------------------------------

    def _create_list(self, req: _Request, account: str, _item: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        self._check_record_cap(req, body)
        _check_fields(body, ("name", "records", "list_type"), ("name", "records"))
        name = _nonempty_str(body, "name")
        list_type = _enum(body, "list_type", LIST_TYPES, default="EMAIL")
        records = _parse_records(body["records"], list_type)
        now = int(time.time())
        with self._lock:
            lst = _CustomerList(
                id=self._new_id(),
                ad_account_id=account,
                name=name,
                list_type=list_type,
                created=now,
                updated=now,
                members=set(records),
                uploaded=len(records),
            )
            lst.wrote(req.cfg)
            self._lists[lst.id] = lst
            return 200, lst.api(self._cfg, just_written=True), {}

    def _update_list(self, req: _Request, account: str, list_id: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        self._check_record_cap(req, body)
        _check_fields(body, ("operation_type", "records"), ("operation_type", "records"))
        operation = _enum(body, "operation_type", LIST_OPERATIONS)
        with self._lock:
            lst = self._find_list(account, list_id)
            # A list keeps the list_type it was created with: its records must be of that kind.
            records = _parse_records(body["records"], lst.list_type)
            lst.settle(self._cfg)  # a matching already due counts the members before this write
            if operation == "ADD":
                lst.members.update(records)
                lst.uploaded += len(records)
            else:
                lst.members.difference_update(records)
                lst.removed += len(records)
            lst.num_batches += 1
            lst.updated = int(time.time())
            lst.wrote(req.cfg)
            return 200, lst.api(self._cfg, just_written=True), {}

    def _get_list(self, req: _Request, account: str, list_id: str) -> _Reply:
        _single_query(req, ())
        with self._lock:
            return 200, self._find_list(account, list_id).api(self._cfg), {}

    def _find_list(self, account: str, list_id: str) -> _CustomerList:
        lst = self._lists.get(list_id)
        if lst is None or lst.ad_account_id != account:
            raise ApiError(404, 404, "Customer list not found.")
        return lst

    def _list_lists(self, req: _Request, account: str, _item: str) -> _Reply:
        query = _single_query(req, ("page_size", "bookmark", "order"))
        with self._lock:
            owned = [lst for lst in self._lists.values() if lst.ad_account_id == account]
            return 200, self._page(query, "customer_lists", account, owned), {}

    # -- audiences ------------------------------------------------------------------------------

    def _check_rule(self, account: str, audience_type: str, rule: Any) -> dict[str, Any]:
        """CUSTOMER_LIST rules must be exactly {customer_list_id} of a list of this account."""
        if not isinstance(rule, dict):
            raise _bad("rule: must be a JSON object")
        if audience_type == "CUSTOMER_LIST":
            list_id = rule.get("customer_list_id")
            if set(rule) != {"customer_list_id"} or not isinstance(list_id, str):
                raise _bad('rule: CUSTOMER_LIST needs exactly {"customer_list_id": "<id>"}')
            if not _ID_RE.fullmatch(list_id):
                raise _bad("rule: customer_list_id must be a string of 1 to 18 digits")
            with self._lock:
                lst = self._lists.get(list_id)
                if lst is None or lst.ad_account_id != account:
                    raise _bad("rule: customer_list_id names no customer list of this ad account")
            return {"customer_list_id": list_id}
        for key in sorted(rule):
            if key not in RULE_KEYS:
                raise _bad(f"rule: {_safe_name(str(key))} is not a rule field")
        return dict(rule)

    def _check_body_account(self, body: dict[str, Any], account: str) -> None:
        if "ad_account_id" in body and body["ad_account_id"] != account:
            raise _bad("ad_account_id: does not match the ad account in the path")

    def _create_audience(self, req: _Request, account: str, _item: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        _check_fields(
            body,
            ("ad_account_id", "name", "rule", "audience_type", "description"),
            ("name", "rule", "audience_type"),
        )
        self._check_body_account(body, account)
        name = _nonempty_str(body, "name")
        audience_type = _enum(body, "audience_type", AUDIENCE_TYPES)
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad("description: must be a string")
        rule = self._check_rule(account, audience_type, body["rule"])
        now = int(time.time())
        with self._lock:
            audience = _Audience(
                id=self._new_id(),
                ad_account_id=account,
                name=name,
                audience_type=audience_type,
                rule=rule,
                description=description,
                created=now,
                updated=now,
            )
            self._audiences[audience.id] = audience
            return 200, audience.api(self._lists, self._cfg), {}

    def _update_audience(self, req: _Request, account: str, audience_id: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        _check_fields(body, ("ad_account_id", "name", "rule", "description", "operation_type"), ())
        self._check_body_account(body, account)
        name = _nonempty_str(body, "name") if "name" in body else None
        operation = _enum(body, "operation_type", AUDIENCE_OPERATIONS, default="UPDATE")
        description = body.get("description")
        if "description" in body and not isinstance(description, str):
            raise _bad("description: must be a string")
        with self._lock:
            audience_type = self._find_audience(account, audience_id).audience_type
        rule = self._check_rule(account, audience_type, body["rule"]) if "rule" in body else None
        with self._lock:
            audience = self._find_audience(account, audience_id)
            if operation == "REMOVE":
                del self._audiences[audience_id]
                return 200, audience.api(self._lists, self._cfg), {}
            if name is not None:
                audience.name = name
            if rule is not None:
                audience.rule = rule
            if "description" in body:
                audience.description = description
            audience.updated = int(time.time())
            return 200, audience.api(self._lists, self._cfg), {}

    def _get_audience(self, req: _Request, account: str, audience_id: str) -> _Reply:
        _single_query(req, ())
        with self._lock:
            return 200, self._find_audience(account, audience_id).api(self._lists, self._cfg), {}

    def _find_audience(self, account: str, audience_id: str) -> _Audience:
        audience = self._audiences.get(audience_id)
        if audience is None or audience.ad_account_id != account:
            raise ApiError(404, 404, "Audience not found.")
        return audience

    def _list_audiences(self, req: _Request, account: str, _item: str) -> _Reply:
        query = _single_query(req, ("page_size", "bookmark", "order", "ownership_type"))
        ownership = query.get("ownership_type", "OWNED")
        if ownership not in OWNERSHIP_TYPES:
            raise _bad(f"ownership_type: must be one of {', '.join(OWNERSHIP_TYPES)}")
        with self._lock:
            owned = [a for a in self._audiences.values() if a.ad_account_id == account]
            if ownership == "RECEIVED":  # nobody shares audiences with the emulator's accounts
                owned = []
            return 200, self._page(query, "audiences", account, owned), {}

    def _page(
        self,
        query: dict[str, str],
        kind: str,
        account: str,
        objects: Sequence[_CustomerList | _Audience],
    ) -> dict[str, Any]:
        """One page ordered by id; the bookmark is an opaque cursor (the last id served).

        Called with the lock held. An id cursor, unlike an offset, stays right when objects are
        created between pages.
        """
        raw_size = query.get("page_size", str(PAGE_SIZE_DEFAULT))
        if not re.fullmatch(r"[0-9]{1,4}", raw_size) or not 1 <= int(raw_size) <= PAGE_SIZE_MAX:
            raise _bad(f"page_size: must be an integer from 1 to {PAGE_SIZE_MAX}")
        page_size = int(raw_size)
        order = query.get("order")
        if order is not None and order not in ORDERS:
            raise _bad(f"order: must be one of {', '.join(ORDERS)}")
        after: int | None = None
        bookmark = query.get("bookmark") or None
        if bookmark is not None:
            mark_order, after = _decode_bookmark(bookmark, kind, account)
            if order is not None and order != mark_order:
                raise _bad("bookmark: was made for another order")
            order = mark_order
        order = order or "ASCENDING"
        descending = order == "DESCENDING"
        ordered = sorted(objects, key=lambda o: int(o.id), reverse=descending)
        if after is not None:
            cut = after
            ordered = [o for o in ordered if (int(o.id) < cut if descending else int(o.id) > cut)]
        page = ordered[:page_size]
        next_mark = None
        if len(ordered) > page_size:
            next_mark = _encode_bookmark(kind, account, order, int(page[-1].id))
        items = [
            o.api(self._cfg) if isinstance(o, _CustomerList) else o.api(self._lists, self._cfg)
            for o in page
        ]
        return {"items": items, "bookmark": next_mark}

    # -- OAuth ----------------------------------------------------------------------------------

    def _authorize(self, req: _Request) -> _Reply:
        """The consent page, approved at once: 302 to redirect_uri with a single-use code."""
        query = _single_query(req, ("client_id", "redirect_uri", "response_type", "scope", "state"))
        if query.get("client_id") != self._client_id:
            raise _bad("client_id: unknown application")
        redirect_uri = query.get("redirect_uri")
        if not redirect_uri:
            raise _bad("redirect_uri: required")
        if query.get("response_type") != "code":
            raise _bad("response_type: must be code")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _AuthCode(
                client_id=self._client_id,
                redirect_uri=redirect_uri,
                scope=_parse_scope(query.get("scope", "")),
                expires_at=time.time() + AUTH_CODE_TTL_S,
            )
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return 302, None, {"Location": f"{redirect_uri}{sep}{urlencode(params)}"}

    def _basic_auth_ok(self, req: _Request) -> bool:
        scheme, _, credentials = str(req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        client_id, sep, secret = raw.partition(b":")
        return (
            sep == b":"
            and secrets.compare_digest(client_id, self._client_id.encode())
            and secrets.compare_digest(secret, self._client_secret.encode())
        )

    def _token(self, req: _Request) -> _Reply:
        """POST /v5/oauth/token; errors never echo a code or token."""
        if not self._basic_auth_ok(req):
            raise _auth_failed()
        _single_query(req, ())
        if _media_type(req.headers) != "application/x-www-form-urlencoded":
            raise _bad("Content-Type: must be application/x-www-form-urlencoded")
        try:
            pairs = parse_qsl(req.body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise _bad("body: not a valid form") from None
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                raise _bad(f"{_safe_name(key)}: given more than once")
            form[key] = value
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            allowed = ("grant_type", "code", "redirect_uri", "continuous_refresh")
            required: tuple[str, ...] = ("code", "redirect_uri")
        elif grant_type == "refresh_token":
            allowed = ("grant_type", "refresh_token", "scope", "continuous_refresh")
            required = ("refresh_token",)
        elif grant_type is None:
            raise _bad("grant_type: required field is missing")
        else:
            raise _bad("grant_type: must be authorization_code or refresh_token")
        _check_fields(form, allowed, required)
        if form.get("continuous_refresh", "true") not in ("true", "false"):
            raise _bad("continuous_refresh: must be true or false")
        now = time.time()
        with self._lock:
            if grant_type == "authorization_code":
                grant = self._codes.get(form["code"])
                if grant is None or grant.expires_at <= now or grant.client_id != self._client_id:
                    self._codes.pop(form["code"], None)
                    raise ApiError(400, 1104, "Invalid or expired authorization code.")
                if grant.redirect_uri != form["redirect_uri"]:
                    raise ApiError(
                        400, 1104, "redirect_uri does not match the one used to authorize."
                    )
                del self._codes[form["code"]]
                answer = self._issue_tokens(grant.scope, grant.scope, "authorization_code", now)
                return 200, answer, {}
            refresh = self._refresh_tokens.get(form["refresh_token"])
            if refresh is None or refresh.expires_at <= now:
                raise ApiError(400, 1104, "Invalid or expired refresh token.")
            scope = refresh.scope
            if "scope" in form:
                scope = _parse_scope(form["scope"])
                if not scope <= refresh.scope:
                    raise _bad("scope: more than the refresh token was granted")
            if self._cfg.refresh_single_use:
                del self._refresh_tokens[form["refresh_token"]]
            return 200, self._issue_tokens(scope, refresh.scope, "refresh_token", now), {}

    def _issue_tokens(
        self, scope: frozenset[str], refresh_scope: frozenset[str], response_type: str, now: float
    ) -> dict[str, Any]:
        """New access and refresh tokens; the refresh token is always new (continuous refresh)."""
        access = "pina_" + secrets.token_urlsafe(32)
        refresh = "pinr_" + secrets.token_urlsafe(32)
        self._access_tokens[access] = _AccessToken(scope, now + self._access_ttl_s)
        self._refresh_tokens[refresh] = _RefreshToken(refresh_scope, now + REFRESH_TOKEN_TTL_S)
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self._access_ttl_s,
            "scope": _format_scope(scope),
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TOKEN_TTL_S,
            "refresh_token_expires_at": int(now + REFRESH_TOKEN_TTL_S),
            "response_type": response_type,
        }

    # -- control API --------------------------------------------------------------------------

    def _serve_control(self, h: _Handler) -> None:
        """/_emulator: no auth, no log, no faults, no delays."""
        rid = secrets.token_hex(8)
        split = urlsplit(h.path)
        path, method = split.path.rstrip("/"), h.command
        try:
            raw = h.read_body()
            data = json.loads(raw.decode("utf-8")) if raw.strip() else None
            query = dict(parse_qsl(split.query, keep_blank_values=True))
            if path == "/_emulator/state" and method == "GET":
                flags = {}
                for key, value in query.items():
                    if key not in ("members", "requests") or value not in ("0", "1"):
                        raise ValueError("state takes members=0|1 and requests=0|1")
                    flags[key] = value == "1"
                reply: Any = self.state(**flags)
            elif path == "/_emulator/faults" and method == "GET":
                reply = {"faults": self.state(requests=False, members=False)["faults"]}
            elif path == "/_emulator/faults" and method == "POST":
                rules: list[Any] = data if isinstance(data, list) else [data]
                reply = {"faults": self.add_faults(rules)}
            elif path == "/_emulator/faults" and method == "DELETE":
                self.clear_faults()
                reply = {"faults": []}
            elif path == "/_emulator/config" and method == "GET":
                reply = {"config": self._apply_config({})}
            elif path == "/_emulator/config" and method == "POST":
                if not isinstance(data, dict):
                    raise ValueError("config body must be a JSON object")
                reply = {"config": self._apply_config(data)}
            elif path == "/_emulator/reset" and method == "POST":
                options = data if isinstance(data, dict) else {}
                if set(options) - {"config"}:
                    raise ValueError("reset takes only {'config': bool}")
                self.reset(config=bool(options.get("config", False)))
                reply = {"reset": True}
            else:
                h.send_reply(404, {"code": 404, "message": "Not found."}, rid, {})
                return
        except _FramingError as exc:
            h.close_connection = True
            h.send_reply(400, {"code": 1, "message": str(exc)}, rid, {})
            return
        except ValueError as exc:  # also JSON and UTF-8 errors
            h.send_reply(400, {"code": 1, "message": str(exc)}, rid, {})
            return
        h.send_reply(200, reply, rid, {})


def _reject_constant(name: str) -> Any:
    """json.loads hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m target_pinterest_audiences.emulator",
        description="Local Pinterest API v5 emulator (customer lists, audiences, OAuth).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    p.add_argument(
        "--ad-account",
        action="append",
        dest="ad_accounts",
        metavar="ID",
        help=f"a known ad account (repeatable; default {DEFAULT_AD_ACCOUNT})",
    )
    p.add_argument("--client-id", default=None, help="or EMULATOR_CLIENT_ID")
    p.add_argument("--client-secret", default=None, help="or EMULATOR_CLIENT_SECRET")
    p.add_argument("--access-token", default=None, help="or EMULATOR_ACCESS_TOKEN")
    p.add_argument("--refresh-token", default=None, help="or EMULATOR_REFRESH_TOKEN")
    p.add_argument("--access-token-expires-in", type=int, default=2592000)
    p.add_argument(
        "--under-review",
        nargs="*",
        metavar="ID",
        default=None,
        help="ad accounts under review (no ID: all of them)",
    )
    p.add_argument(
        "--disapproved",
        nargs="*",
        metavar="ID",
        default=None,
        help="disapproved ad accounts (no ID: all of them)",
    )
    p.add_argument("--record-cap", type=int, default=None)
    p.add_argument("--write-delay-ms", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--access-token-ttl-requests", type=int, default=None)
    p.add_argument("--refresh-single-use", action="store_true")
    p.add_argument("--writes-per-minute-limit", type=int, default=None)
    p.add_argument(
        "--match-delay-seconds",
        type=float,
        default=0.0,
        help="seconds after a list's latest write until its audience is matched (default 0)",
    )
    p.add_argument(
        "--match-fraction",
        type=float,
        default=1.0,
        help="share of identifiers that match a Pinterest user (0..1, default 1)",
    )
    p.add_argument("--state-file", default=None, help="write state() as JSON here on exit")
    p.add_argument("--verbose", action="store_true", help="log each request to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print exactly one line (the URL) to stdout."""
    args = _build_parser().parse_args(argv)

    def credential(flag: str | None, env: str, default: str) -> str:
        return flag if flag is not None else os.environ.get(env, default)

    ad_accounts = tuple(args.ad_accounts or (DEFAULT_AD_ACCOUNT,))
    emu = Emulator(
        host=args.host,
        port=args.port,
        ad_accounts=ad_accounts,
        client_id=credential(args.client_id, "EMULATOR_CLIENT_ID", "emu-client-id"),
        client_secret=credential(args.client_secret, "EMULATOR_CLIENT_SECRET", "emu-client-secret"),
        access_token=credential(args.access_token, "EMULATOR_ACCESS_TOKEN", "emu-access-token"),
        refresh_token=credential(args.refresh_token, "EMULATOR_REFRESH_TOKEN", "emu-refresh-token"),
        access_token_expires_in=args.access_token_expires_in,
        verbose=args.verbose,
    )
    settings: dict[str, Any] = {
        "record_cap": args.record_cap,
        "write_delay_ms": args.write_delay_ms,
        "delay_ms": args.delay_ms,
        "access_token_ttl_requests": args.access_token_ttl_requests,
        "refresh_single_use": args.refresh_single_use,
        "writes_per_minute_limit": args.writes_per_minute_limit,
        "match_delay_seconds": args.match_delay_seconds,
        "match_fraction": args.match_fraction,
    }
    if args.under_review is not None:
        settings["under_review"] = args.under_review or ad_accounts
    if args.disapproved is not None:
        settings["disapproved"] = args.disapproved or ad_accounts
    try:
        emu._apply_config(settings)
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emu.start()
    print(f"listening on {emu.base_url}", flush=True)
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        emu.stop()
        if args.state_file:
            with open(args.state_file, "w", encoding="utf-8") as fh:
                json.dump(emu.state(), fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
