"""Injected faults: rules that answer with an error, drop the connection or delay a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from target_pinterest_audiences.emulator.errors import (
    MSG_AUTH_FAILED,
    MSG_NOT_PERMITTED,
    MSG_RATE_LIMIT,
    MSG_TOO_LARGE,
)
from target_pinterest_audiences.emulator.transport import _Reply
from target_pinterest_audiences.emulator.validation import _int, _is_int, _opt_int

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


def _pick_fault(faults: list[_Fault], method: str, path: str) -> _Fault | None:
    """First rule that fires wins; call with the emulator's lock held."""
    for fault in faults:
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


def _fault_reply(fault: _Fault) -> _Reply | None:
    """The answer a fault gives instead of the real one (None: it gives none)."""
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
