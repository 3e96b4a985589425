"""Identifier rules: the standard audience schema, normalization and hashing.

Every rule about what a record may hold and how an identifier becomes the SHA-256 hex
digest Pinterest matches on lives here, as pure functions with no I/O, so that it can
be read in one place and tested with fixed vectors. Nothing here ever puts a raw value
into an error message: errors name the field and the reason only.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

#: Identifier fields of the standard audience schema, in the order they are read.
#: Each maps to (kind, is_pre_hashed); kind is what the identifier is (email, maid, idfa).
IDENTIFIER_FIELDS: dict[str, tuple[str, bool]] = {
    "email": ("email", False),
    "email_sha256": ("email", True),
    "maid": ("maid", False),
    "maid_sha256": ("maid", True),
    "idfa": ("idfa", False),
    "idfa_sha256": ("idfa", True),
}

ACTIONS = {"add": True, "remove": False}

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: One '@', a non-empty local part, a domain of at least two non-empty dot-separated labels,
#: no whitespace anywhere (normalize_email's rule, as one pattern).
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
#: Pinterest ids are strings of at most 18 digits.
_ID = re.compile(r"[0-9]{1,18}")

#: The JSON schema the target applies to every record, whatever SCHEMA the tap sends.
#: It documents the contract (tests check that it agrees with parse_record); the checks below
#: implement it by hand because a generic validator would quote raw values in its
#: errors and costs more than the whole rest of the record path.
STANDARD_AUDIENCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["segment_name", "action"],
    "properties": {
        "segment_name": {"type": "string", "minLength": 1},
        "segment_id": {"type": ["string", "integer", "null"], "pattern": "^[0-9]{1,18}$"},
        "action": {
            "type": "string",
            "pattern": r"^\s*([Aa][Dd][Dd]|[Rr][Ee][Mm][Oo][Vv][Ee])\s*$",
        },
        **{field: {"type": ["string", "null"]} for field in IDENTIFIER_FIELDS},
    },
    "additionalProperties": True,
}


class InvalidRecord(ValueError):
    """A record breaks the standard audience schema; says which field and why, never the value."""

    def __init__(self, field: str, reason: str, detail: str) -> None:
        super().__init__(f"field '{field}': {detail}")
        self.field = field
        #: Short machine key used to count skipped records, e.g. ``invalid_email``.
        self.reason = reason
        self.detail = detail


class ParsedRecord(NamedTuple):
    """A valid record, reduced to what the target sends: no raw identifier survives."""

    segment_name: str
    segment_id: str | None
    is_add: bool
    #: (kind, sha256 hex) pairs, one per present identifier field.
    identifiers: tuple[tuple[str, str], ...]


def sha256_hex(value: str) -> str:
    """SHA-256 of the UTF-8 bytes, lowercase hex: the form Pinterest matches on."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def normalize_email(value: str) -> str | None:
    """Trim and lowercase an email; None when it is not a plausible address.

    Plausible: exactly one '@', a non-empty local part, a domain of at least two
    non-empty dot-separated labels, and no whitespace inside. No provider-specific
    rewriting (such as removing Gmail dots): Pinterest does not ask for it.
    """
    email = value.strip().lower()
    return email if _EMAIL.fullmatch(email) else None


def normalize_device_id(value: str) -> str | None:
    """Trim and lowercase a MAID or IDFA; None unless it is a UUID in 8-4-4-4-12 form."""
    device_id = value.strip().lower()
    return device_id if _UUID.fullmatch(device_id) else None


def normalize_sha256(value: str) -> str | None:
    """Trim and lowercase a pre-hashed value; None unless it is 64 hex characters."""
    digest = value.strip().lower()
    return digest if _SHA256_HEX.fullmatch(digest) else None


def hash_identifier(field: str, value: str) -> str | None:
    """The SHA-256 hex digest to send for one identifier field, or None if malformed.

    Pre-hashed fields are passed through lowercased and are never hashed again.
    """
    kind, pre_hashed = IDENTIFIER_FIELDS[field]
    if pre_hashed:
        return normalize_sha256(value)
    normalized = normalize_email(value) if kind == "email" else normalize_device_id(value)
    return None if normalized is None else sha256_hex(normalized)


_IDENTIFIER_RULES = {
    "email": "is not a plausible email address (one '@', a local part, a dotted domain)",
    "maid": "is not a UUID in 8-4-4-4-12 hex form",
    "idfa": "is not a UUID in 8-4-4-4-12 hex form",
    "email_sha256": "is not a SHA-256 hex digest (64 hex characters)",
    "maid_sha256": "is not a SHA-256 hex digest (64 hex characters)",
    "idfa_sha256": "is not a SHA-256 hex digest (64 hex characters)",
}


#: Per identifier field: (kind, is_pre_hashed, rule check on the trimmed lowercased value,
#: skip reason, rule text).
_FIELD_RULES: dict[str, tuple[str, bool, Any, str, str]] = {
    field: (
        kind,
        pre_hashed,
        _SHA256_HEX.fullmatch
        if pre_hashed
        else (_EMAIL.fullmatch if kind == "email" else _UUID.fullmatch),
        f"invalid_{field}",
        _IDENTIFIER_RULES[field],
    )
    for field, (kind, pre_hashed) in IDENTIFIER_FIELDS.items()
}
_NO_IDENTIFIER = "no identifier present (need one of: " + ", ".join(IDENTIFIER_FIELDS) + ")"
_sha256 = hashlib.sha256


def parse_record(record: dict[str, Any], default_action: bool | None = None) -> ParsedRecord:
    """Validate a record against the standard audience schema and hash its identifiers.

    Raises InvalidRecord naming the first field at fault. `default_action` stands for a
    missing or blank action (mirror mode: a record without one is a member). Fields outside
    the schema are ignored; null, empty and whitespace-only values count as absent. It runs once per
    record, so the rules of normalize_email, normalize_device_id and normalize_sha256 are
    applied inline, in one pass (same checks, same order, same errors).
    """
    get = record.get
    name = get("segment_name")
    if name is None:
        raise InvalidRecord("segment_name", "missing_segment_name", "is required")
    if not isinstance(name, str):
        raise InvalidRecord("segment_name", "invalid_segment_name", "must be a string")
    name = name.strip()
    if not name:
        raise InvalidRecord("segment_name", "missing_segment_name", "is required")

    segment_id = get("segment_id")
    if segment_id is not None:
        if isinstance(segment_id, str):
            segment_id = segment_id.strip() or None
        elif isinstance(segment_id, int) and not isinstance(segment_id, bool) and segment_id >= 0:
            segment_id = str(segment_id)
        if segment_id is not None and not (
            isinstance(segment_id, str) and _ID.fullmatch(segment_id)
        ):
            raise InvalidRecord(
                "segment_id", "invalid_segment_id", "must be a Pinterest id: 1 to 18 digits"
            )

    action = get("action")
    is_add = ACTIONS.get(action) if isinstance(action, str) else None  # "add", "remove" as is
    if is_add is None:
        if isinstance(action, str):
            action = action.strip()
            is_add = ACTIONS.get(action.lower()) if action else default_action
            if not action and is_add is None:
                raise InvalidRecord("action", "missing_action", "is required ('add' or 'remove')")
        elif action is None:
            if default_action is None:
                raise InvalidRecord("action", "missing_action", "is required ('add' or 'remove')")
            is_add = default_action
        if is_add is None:
            raise InvalidRecord("action", "unknown_action", "must be 'add' or 'remove'")

    identifiers = []
    for field in IDENTIFIER_FIELDS:
        value = get(field)
        if value is None:
            continue
        kind, pre_hashed, check, reason, rule = _FIELD_RULES[field]
        if not isinstance(value, str):
            raise InvalidRecord(field, reason, "must be a string")
        value = value.strip().lower()
        if not value:
            continue
        if check(value) is None:
            raise InvalidRecord(field, reason, rule)
        identifiers.append((kind, value if pre_hashed else _sha256(value.encode()).hexdigest()))
    if not identifiers:
        raise InvalidRecord("identifiers", "no_identifier", _NO_IDENTIFIER)
    return ParsedRecord(name, segment_id, is_add, tuple(identifiers))


def salvage_identifiers(record: dict[str, Any]) -> list[str]:
    """The digests of the well-formed identifier fields of a record that is invalid overall.

    In mirror mode a skipped record's identifiers are "seen": neither added nor removed
    because of it, so a bad field elsewhere in the row never removes a member.
    """
    digests = []
    for field in IDENTIFIER_FIELDS:
        value = record.get(field)
        if isinstance(value, str) and value.strip():
            digest = hash_identifier(field, value)
            if digest is not None:
                digests.append(digest)
    return digests
