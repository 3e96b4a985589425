"""Checks of requests against Pinterest's OpenAPI shapes: fields, enums, records, queries, pages."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from target_pinterest_audiences.emulator.errors import _bad, _safe_name

if TYPE_CHECKING:
    from target_pinterest_audiences.emulator.transport import _Request

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
# The AudienceRule schema's properties and their types: "id" a string of digits (pattern ^\d+$),
# "ids" an array of them, "str"/"strs" a string or array of strings, "int", "bool", "object", and
# "objectives" an array of ObjectiveType values.
RULE_PROPERTIES: dict[str, str] = {
    "ad_account_id": "id",
    "ad_id": "ids",
    "campaign_id": "ids",
    "country": "str",
    "customer_list_id": "id",
    "engagement_domain": "strs",
    "engagement_type": "str",
    "engager_type": "int",
    "event": "str",
    "event_data": "object",
    "event_source": "object",
    "ingestion_source": "object",
    "objective_type": "objectives",
    "percentage": "int",
    "pin_id": "ids",
    "prefill": "bool",
    "retention_days": "int",
    "seed_id": "ids",
    "url": "strs",
    "visitor_source_id": "id",
}
OBJECTIVE_TYPES = (
    "AWARENESS",
    "CONSIDERATION",
    "WEB_CONVERSION",
    "CATALOG_SALES",
    "VIDEO_COMPLETION",
)
# ACTALIKE rules (AudienceRule's description): "Valid countries include: US, CA, and GB.
# Percentage should be 1-10."
ACTALIKE_COUNTRIES = ("US", "CA", "GB")
ACTALIKE_PERCENTAGE = (1, 10)
# The rule format per audience type, from AudienceRule's description (ad_account_id aside).
RULE_FORMATS: dict[str, frozenset[str]] = {
    "CUSTOMER_LIST": frozenset({"customer_list_id"}),
    "ACTALIKE": frozenset({"seed_id", "country", "percentage"}),
}
PAGE_SIZE_DEFAULT = 25
PAGE_SIZE_MAX = 250

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


def _check_rule_shape(rule: Any) -> dict[str, Any]:
    """Check a rule against the AudienceRule schema: each property known and of its type."""
    if not isinstance(rule, dict):
        raise _bad("rule: must be a JSON object")
    for key in sorted(rule):
        kind = RULE_PROPERTIES.get(key)
        if kind is None:
            raise _bad(f"rule: {_safe_name(str(key))} is not a rule field")
        value = rule[key]
        if kind == "id":
            ok = isinstance(value, str) and _ID_RE.fullmatch(value) is not None
            what = "a string of 1 to 18 digits"
        elif kind == "ids":
            ok = isinstance(value, list) and all(
                isinstance(v, str) and _ID_RE.fullmatch(v) for v in value
            )
            what = "an array of strings of 1 to 18 digits"
        elif kind == "str":
            ok, what = isinstance(value, str), "a string"
        elif kind == "strs":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            what = "an array of strings"
        elif kind == "int":
            ok, what = _is_int(value), "an integer"
        elif kind == "bool":
            ok, what = isinstance(value, bool), "true or false"
        elif kind == "object":
            ok, what = isinstance(value, dict), "a JSON object"
        else:  # objectives
            ok = isinstance(value, list) and all(v in OBJECTIVE_TYPES for v in value)
            what = f"an array of {', '.join(OBJECTIVE_TYPES)}"
        if not ok:
            raise _bad(f"rule: {key} must be {what}")
    return dict(rule)


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


def _reject_constant(name: str) -> Any:
    """json.loads hook: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")
