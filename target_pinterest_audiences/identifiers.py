"""Identifier rules: the standard audience schema, normalization and hashing.

Every rule about what a record may hold and how an identifier becomes the value Pinterest
matches on (the SHA-256 hex digest of an email, MAID or IDFA; a custom external id as
given) lives here, as pure functions with no I/O, so that it can be read in one place and
tested with fixed vectors. Nothing here ever puts a raw value into an error message:
errors name the field and the reason only.
"""

from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from typing import Any, NamedTuple

#: The kind of a custom external id (see EXTERNAL_ID_TYPES).
EXTERNAL = "external"

#: Identifier fields of the standard audience schema, in the order they are read.
#: Each maps to (kind, is_pre_hashed); kind is what the identifier is (email, maid, idfa,
#: external). An external id is never hashed by the target: it is sent as given.
IDENTIFIER_FIELDS: dict[str, tuple[str, bool]] = {
    "email": ("email", False),
    "email_sha256": ("email", True),
    "maid": ("maid", False),
    "maid_sha256": ("maid", True),
    "idfa": ("idfa", False),
    "idfa_sha256": ("idfa", True),
    "external_id": (EXTERNAL, True),
}
#: The kinds of custom external id (Pinterest list types) that `external_id` may hold.
EXTERNAL_ID_TYPES = ("LR_ID", "DLX_ID", "HASHED_PINNER_ID")
#: LiveRamp and Datalogix ids: at most this many characters.
MAX_EXTERNAL_ID_LENGTH = 256

ACTIONS = {"add": True, "remove": False}

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Pinterest ids are strings of at most 18 digits.
_ID = re.compile(r"[0-9]{1,18}")

# Emails. An address is valid when email_violation() finds no broken rule. parse_record first
# tries _EMAIL_FAST on addresses of at most 64 characters: ASCII, an atext dot-atom local part,
# letter-digit-hyphen domain labels and a top-level label that starts with a letter. At that
# length no length limit can be reached, so everything it accepts passes every rule; only what
# it does not accept meets the rules one by one (to name the rule, or to accept an
# internationalized or longer address). Possessive quantifiers (Python 3.11+) leave no
# backtracking to pay for; Python 3.10 has none, and there the plain greedy form is used. Both
# accept exactly the same strings: atext holds no dot or "@", a label no dot, so no way of
# giving characters back can make a match the possessive form misses.
_ATEXT = r"a-z0-9!#$%&'*+/=?^_`{|}~\-"  # RFC 5322 atext (ASCII); the value is lowercased
_P = "+" if sys.version_info >= (3, 11) else ""
_EMAIL_FAST = re.compile(
    rf"[{_ATEXT}]+{_P}(?:\.[{_ATEXT}]+{_P})*{_P}"
    rf"@(?:[a-z0-9]+{_P}(?:-+{_P}[a-z0-9]+{_P})*{_P}\.)+{_P}[a-z][a-z0-9]*{_P}(?:-+{_P}[a-z0-9]+{_P})*{_P}"
)
_EMAIL_FAST_MAX_LENGTH = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: C0, DEL, C1
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # not Unicode scalar values: no UTF-8 form
_WHITESPACE = re.compile(r"\s")
#: What trimming removes from an identifier: Unicode White_Space. Python's str.strip() also
#: removes U+001C..U+001F, which are control characters, not whitespace: an identifier
#: holding one breaks a rule instead of being repaired.
_TRIM = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and not "\x1c" <= c <= "\x1f")
#: atext (ASCII letters either case, digits, the listed symbols) plus any non-ASCII character
#: (RFC 6532), and dots; control characters and whitespace are ruled out before this is used.
_LOCAL_PART = re.compile(rf"[A-Z{_ATEXT}.\u0080-\U0010ffff]+")
#: A domain label: ASCII letters, digits and hyphens, or any non-ASCII character (IDN U-labels).
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff-]+")
_DIGITS = re.compile(r"[0-9]+")

#: The highest lengths, in octets (RFC 5321 4.5.3.1, RFC 1035 2.3.4), see email_violation.
MAX_EMAIL_OCTETS = 254
MAX_LOCAL_PART_OCTETS = 64
MAX_DOMAIN_OCTETS = 253
MAX_LABEL_OCTETS = 63

# Values that are well formed but stand for no one: uploading them matches nobody, or
# everybody who opted out. They are rejected with a reason of their own.
#: The advertising id iOS and Android report when the user limits ad tracking.
ZEROED_DEVICE_ID = "00000000-0000-0000-0000-000000000000"
#: What an upstream pipeline hashes when it hashes a missing value: the empty string and the
#: usual spellings of null (SQL, JSON, Python, pandas, JavaScript), lowercase, UPPER and Title.
PLACEHOLDER_VALUES: tuple[str, ...] = (
    "",
    *(v for w in ("null", "none", "nan", "undefined") for v in (w, w.upper(), w.title())),
    "NaN",
)
_ZEROED_DEVICE_ID_RULE = (
    "is the all-zero advertising id, which a device reports when its user limits ad "
    "tracking: it stands for every opted-out user, not one person, and is never uploaded"
)
_ZEROED_DIGEST_RULE = (
    "is the SHA-256 of the all-zero advertising id (a device whose user limits ad tracking): "
    "it stands for every opted-out user, not one person, and is never uploaded"
)
#: Normalized value -> (skip reason, rule text) for the well-formed values that never match.
#: A raw device id is looked up as itself, a pre-hashed value as its digest; whatever the
#: field, the reason says what the value is: the zeroed id (or its SHA-256, with or without
#: hyphens) is zeroed_device_id, the SHA-256 of a placeholder is hash_of_empty_value.
_NEVER_MATCHING: dict[str, tuple[str, str]] = {
    ZEROED_DEVICE_ID: ("zeroed_device_id", _ZEROED_DEVICE_ID_RULE),
    **{
        hashlib.sha256(zeroed.encode()).hexdigest(): ("zeroed_device_id", _ZEROED_DIGEST_RULE)
        for zeroed in (ZEROED_DEVICE_ID, ZEROED_DEVICE_ID.replace("-", ""))
    },
    **{
        hashlib.sha256(placeholder.encode()).hexdigest(): (
            "hash_of_empty_value",
            "is the SHA-256 of "
            + (f"the string '{placeholder}'" if placeholder else "the empty string")
            + ", what a pipeline produces when it hashes a missing value: it matches no one",
        )
        for placeholder in PLACEHOLDER_VALUES
    },
}

# Custom external ids (Pinterest list types LR_ID, DLX_ID, HASHED_PINNER_ID) are sent as
# given after trimming, never hashed by the target: the partner (LiveRamp, Datalogix) or the
# advertiser made them. A hashed pinner id is a hex digest in one of the three algorithms
# Pinterest names for records (SHA-256, SHA-1, MD5), lowercased like every other digest.
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}|[0-9a-f]{40}|[0-9a-f]{32}")
#: What Pinterest's comma-separated `records` string cannot carry inside one id, or what
#: would make the id another string than the partner's: commas, whitespace, control
#: characters (Unicode Cc) and lone surrogates (no UTF-8 form).
_EXTERNAL_ID_BREAKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(","), "it holds a comma, which separates records in Pinterest's requests"),
    (re.compile(r"\s"), "it holds whitespace"),
    (_CONTROL, "it holds a control character"),
    (_SURROGATE, "it is not valid Unicode (it holds a lone surrogate)"),
)
_HASHED_PINNER_ID_RULE = (
    "it is not a hex SHA-256, SHA-1 or MD5 digest (64, 40 or 32 hex characters)"
)
#: Digests, in the three algorithms, of the placeholders a pipeline hashes for a missing
#: value: as hashed pinner ids they match no one.
_PLACEHOLDER_DIGESTS: dict[str, str] = {
    getattr(hashlib, algorithm)(placeholder.encode()).hexdigest(): (
        f"it is the {name} of "
        + (f"the string '{placeholder}'" if placeholder else "the empty string")
        + ", what a pipeline produces when it hashes a missing value: it matches no one"
    )
    for algorithm, name in (("sha256", "SHA-256"), ("sha1", "SHA-1"), ("md5", "MD5"))
    for placeholder in PLACEHOLDER_VALUES
}
#: Placeholders written for a missing value, compared lowercased (LR_ID and DLX_ID).
_PLACEHOLDER_WORDS = frozenset(v.lower() for v in PLACEHOLDER_VALUES if v)


def external_id_violation(external_id: str, external_id_type: str) -> tuple[str, str] | None:
    """(reason, broken rule as text) for a trimmed external id, or None when it may be sent.

    HASHED_PINNER_ID: a lowercase hex SHA-256, SHA-1 or MD5 digest (the caller lowercases
    it), not the digest of an empty or null placeholder. LR_ID and DLX_ID: at most
    MAX_EXTERNAL_ID_LENGTH characters, no comma, whitespace, control or invisible
    formatting character (a byte order mark or a zero-width space would make it another
    id), and not a placeholder word such as 'null'. Never quotes the value.
    """
    if external_id_type == "HASHED_PINNER_ID":
        if _HEX_DIGEST.fullmatch(external_id) is None:
            return "invalid_external_id", _HASHED_PINNER_ID_RULE
        placeholder = _PLACEHOLDER_DIGESTS.get(external_id)
        return ("hash_of_empty_value", placeholder) if placeholder else None
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        return "invalid_external_id", f"it is longer than {MAX_EXTERNAL_ID_LENGTH} characters"
    for pattern, rule in _EXTERNAL_ID_BREAKERS:
        if pattern.search(external_id):
            return "invalid_external_id", rule
    if not external_id.isascii() and any(unicodedata.category(c) == "Cf" for c in external_id):
        return (
            "invalid_external_id",
            "it holds an invisible formatting character (such as a byte order mark or a "
            "zero-width space)",
        )
    if external_id.lower() in _PLACEHOLDER_WORDS:
        return (
            "placeholder_value",
            "it is a placeholder ('null', 'none', 'nan' or 'undefined'), what a pipeline writes "
            "for a missing value: it matches no one",
        )
    return None


def normalize_external_id(value: str, external_id_type: str) -> str | None:
    """The external id as sent: trimmed (and lowercased for HASHED_PINNER_ID, a hex
    digest), never hashed; None when blank or when it breaks a rule of its type."""
    try:
        return _external_id(value, external_id_type)
    except InvalidRecord:
        return None


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
    #: (kind, value sent) pairs, one per present identifier field: a SHA-256 hex digest, or
    #: an external id as given (then the only one: kinds are never mixed in a record).
    identifiers: tuple[tuple[str, str], ...]


def sha256_hex(value: str) -> str:
    """SHA-256 of the UTF-8 bytes, lowercase hex: the form Pinterest matches on."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def email_violation(email: str) -> str | None:
    """The first rule a trimmed, lowercased email breaks (as text, never quoting it), or None.

    Only addresses a mail server accepts can match anyone: an unquoted RFC 5322 dot-atom local
    part (atext and single inner dots; UTF-8 allowed, RFC 6532), '@', and a domain of at least
    two labels of letters, digits and hyphens (non-ASCII allowed: IDN) with no hyphen at either
    end and a top-level label that is not all digits. No invisible formatting character
    (Unicode Cf: a zero-width space, a byte order mark), which makes another address than the
    one its owner signed up with. Nothing is repaired: `<a@b.com>` and
    `mailto:a@b.com` are rejected, not stripped. Lengths are octets, as the RFCs count them:
    the address and its local part in UTF-8 (RFC 5321, RFC 6531), domain labels and the domain
    in their DNS (ASCII) form, a non-ASCII label as its Punycode A-label `xn--...` (RFC 1035).
    """
    if _CONTROL.search(email):
        return "it holds a control character"
    if _SURROGATE.search(email):
        return "it is not valid Unicode (it holds a lone surrogate)"
    if not email.isascii() and any(unicodedata.category(c) == "Cf" for c in email):
        return (
            "it holds an invisible formatting character (such as a zero-width space, a byte "
            "order mark or a soft hyphen)"
        )
    if _WHITESPACE.search(email):
        return "it holds whitespace"
    if email.count("@") != 1:
        return "it must hold exactly one '@'"
    if len(email.encode("utf-8")) > MAX_EMAIL_OCTETS:
        return f"it is longer than {MAX_EMAIL_OCTETS} octets (UTF-8), the SMTP limit"
    local, _, domain = email.partition("@")
    if not local:
        return "its local part (before the '@') is empty"
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        return f"its local part is longer than {MAX_LOCAL_PART_OCTETS} octets (UTF-8)"
    if local[0] == "." or local[-1] == "." or ".." in local:
        return "its local part starts or ends with a dot or holds two dots in a row"
    if not _LOCAL_PART.fullmatch(local):
        return (
            "its local part holds a character outside RFC 5322 atext (letters, digits, "
            "!#$%&'*+-/=?^_`{|}~ and non-ASCII) and dots; quoted local parts are not accepted"
        )
    if not domain:
        return "its domain (after the '@') is empty"
    labels = domain.split(".")
    if len(labels) < 2:
        return "its domain needs at least two dot-separated labels (like example.com)"
    if "" in labels:
        return "its domain has an empty label (a leading, trailing or double dot)"
    for label in labels:
        if not _DOMAIN_LABEL.fullmatch(label):
            return "a domain label holds a character other than letters, digits and hyphens"
        if label[0] == "-" or label[-1] == "-":
            return "a domain label starts or ends with a hyphen"
    ascii_labels = [
        label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
        for label in labels
    ]
    if any(len(label) > MAX_LABEL_OCTETS for label in ascii_labels):
        return f"a domain label is longer than {MAX_LABEL_OCTETS} octets (in its ASCII form)"
    if len(".".join(ascii_labels)) > MAX_DOMAIN_OCTETS:
        return f"its domain is longer than {MAX_DOMAIN_OCTETS} octets (in its ASCII form)"
    if _DIGITS.fullmatch(labels[-1]):
        return "its top-level domain is all digits (an IP address is not a mail domain)"
    return None


def normalize_email(value: str) -> str | None:
    """Trim and lowercase an email; None when no mail server would accept it.

    The rules are email_violation's. No provider-specific rewriting (such as removing Gmail
    dots): Pinterest does not ask for it.
    """
    email = value.strip(_TRIM).lower()
    return email if email_violation(email) is None else None


def normalize_device_id(value: str) -> str | None:
    """Trim and lowercase a MAID or IDFA; None unless a UUID in 8-4-4-4-12 form, not all zero."""
    device_id = value.strip(_TRIM).lower()
    ok = _UUID.fullmatch(device_id) and device_id not in _NEVER_MATCHING
    return device_id if ok else None


def normalize_sha256(value: str) -> str | None:
    """Trim and lowercase a pre-hashed value; None unless 64 hex characters that can match.

    The SHA-256 of the zeroed device id or of a placeholder (empty, 'null', 'none', ...) is
    well formed but stands for no one.
    """
    digest = value.strip(_TRIM).lower()
    ok = _SHA256_HEX.fullmatch(digest) and digest not in _NEVER_MATCHING
    return digest if ok else None


_IDENTIFIER_RULES = {
    "maid": "is not a UUID in 8-4-4-4-12 hex form",
    "idfa": "is not a UUID in 8-4-4-4-12 hex form",
    "email_sha256": "is not a SHA-256 hex digest (64 hex characters)",
    "maid_sha256": "is not a SHA-256 hex digest (64 hex characters)",
    "idfa_sha256": "is not a SHA-256 hex digest (64 hex characters)",
}


def identifier_digest(field: str, value: object, external_id_type: str | None = None) -> str | None:
    """The value to send for one identifier field (a SHA-256 hex digest, or an external id
    as given); None when absent.

    Every identifier rule, field by field: null, empty and blank are absent; anything else
    that breaks a rule raises InvalidRecord naming the field, the reason and the rule, never
    the value. Pre-hashed fields are passed through lowercased and are never hashed again.
    `external_id` needs `external_id_type` (the setting), which says what kind of id it is.
    """
    kind, pre_hashed = IDENTIFIER_FIELDS[field]
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRecord(field, f"invalid_{field}", "must be a string")
    if kind == EXTERNAL:
        return _external_id(value, external_id_type)
    value = value.strip(_TRIM).lower()
    if not value:
        return None
    if kind == "email" and not pre_hashed:
        rule = email_violation(value)
        if rule is not None:
            raise InvalidRecord(field, "invalid_email", f"is not a valid email address: {rule}")
        return sha256_hex(value)
    if (_SHA256_HEX if pre_hashed else _UUID).fullmatch(value) is None:
        raise InvalidRecord(field, f"invalid_{field}", _IDENTIFIER_RULES[field])
    never = _NEVER_MATCHING.get(value)
    if never is not None:
        raise InvalidRecord(field, *never)
    return value if pre_hashed else sha256_hex(value)


def _external_id(value: str, external_id_type: str | None) -> str | None:
    external_id = value.strip(_TRIM)
    if not external_id:
        return None
    if external_id_type is None:
        raise InvalidRecord(
            "external_id",
            "external_id_type_not_set",
            "needs the setting external_id_type (" + ", ".join(EXTERNAL_ID_TYPES) + ") to say "
            "what kind of id it holds: set it, or drop the field with stream_maps",
        )
    if external_id_type == "HASHED_PINNER_ID":
        external_id = external_id.lower()
    broken = external_id_violation(external_id, external_id_type)
    if broken is not None:
        reason, rule = broken
        raise InvalidRecord("external_id", reason, f"is not a valid {external_id_type}: {rule}")
    return external_id


def hash_identifier(field: str, value: str, external_id_type: str | None = None) -> str | None:
    """The value to send for one identifier field, or None if absent or invalid."""
    try:
        return identifier_digest(field, value, external_id_type)
    except InvalidRecord:
        return None


def salvage_identifiers(
    record: dict[str, Any], external_id_type: str | None = None
) -> tuple[tuple[str, str], ...]:
    """(kind, value sent) of every identifier field of a record that passes its own rule.

    For a record that may be invalid as a whole (a bad action, a second malformed
    identifier): its well-formed identifiers still name people, which matters when a skipped
    record's identifiers must count as seen. For a valid record it equals
    parse_record(record).identifiers.
    """
    found = []
    for field, (kind, _) in IDENTIFIER_FIELDS.items():
        try:
            digest = identifier_digest(field, record.get(field), external_id_type)
        except InvalidRecord:
            continue
        if digest is not None:
            found.append((kind, digest))
    return tuple(found)


#: Per hashed identifier field (external_id has rules of its own): (kind, is_pre_hashed,
#: fast check on the trimmed lowercased value, highest length the fast check may accept).
#: What the fast check accepts, at most that long and not in _NEVER_MATCHING, passes
#: identifier_digest; anything else goes through it.
_FIELD_RULES: dict[str, tuple[str, bool, Any, int]] = {
    field: (
        kind,
        pre_hashed,
        _SHA256_HEX.fullmatch
        if pre_hashed
        else (_EMAIL_FAST.fullmatch if kind == "email" else _UUID.fullmatch),
        _EMAIL_FAST_MAX_LENGTH if kind == "email" and not pre_hashed else 64,
    )
    for field, (kind, pre_hashed) in IDENTIFIER_FIELDS.items()
    if kind != EXTERNAL
}
_NO_IDENTIFIER = "no identifier present (need one of: " + ", ".join(IDENTIFIER_FIELDS) + ")"
_MIXED_KINDS = (
    "is present together with an email, MAID or IDFA identifier: a Customer List holds one "
    "kind of identifier (its list_type), so external ids and the others go in separate runs "
    "(separate segment names)"
)
_sha256 = hashlib.sha256


def parse_record(
    record: dict[str, Any],
    default_action: bool | None = None,
    external_id_type: str | None = None,
) -> ParsedRecord:
    """Validate a record against the standard audience schema and hash its identifiers.

    Raises InvalidRecord naming the first field at fault. `default_action` stands for a
    missing or blank action (mirror mode: a record without one is a member). Fields outside
    the schema are ignored; null, empty and whitespace-only values count as absent. It runs
    once per record, so each identifier first meets a fast check inline that accepts the
    common case (a subset of what identifier_digest accepts); only what it does not accept
    goes through identifier_digest, the rules one by one. The result and the errors are
    identifier_digest's. `external_id_type` is the setting of that name; a record holding
    an external id and another identifier is invalid (mixed_identifier_kinds).
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
    for field, (kind, pre_hashed, fast_check, max_length) in _FIELD_RULES.items():
        value = get(field)
        if value is None:
            continue
        if isinstance(value, str):
            value = value.strip(_TRIM).lower()
            if not value:
                continue
            if (
                len(value) <= max_length
                and fast_check(value) is not None
                and value not in _NEVER_MATCHING
            ):
                digest = value if pre_hashed else _sha256(value.encode()).hexdigest()
                identifiers.append((kind, digest))
                continue
        # Not the common case: the rules one by one accept it (an internationalized email)
        # or raise, naming the rule it breaks.
        slow_digest = identifier_digest(field, value)
        if slow_digest is not None:
            identifiers.append((kind, slow_digest))
    external = get("external_id")
    if external is not None:
        external = identifier_digest("external_id", external, external_id_type)
        if external is not None:
            if identifiers:
                raise InvalidRecord("external_id", "mixed_identifier_kinds", _MIXED_KINDS)
            identifiers.append((EXTERNAL, external))
    if not identifiers:
        raise InvalidRecord("identifiers", "no_identifier", _NO_IDENTIFIER)
    return ParsedRecord(name, segment_id, is_add, tuple(identifiers))


def parse_identifiers(
    record: dict[str, Any], external_id_type: str | None = None
) -> tuple[tuple[str, str], ...]:
    """(kind, value sent) of a record that names people without a segment or an action (a
    suppression stream's, a `forget` file's row): parse_record's rules, hashing and errors
    for the identifier fields; every other field is ignored."""
    fields = {field: record.get(field) for field in IDENTIFIER_FIELDS}
    fields.update(segment_name="-", action="add")
    return parse_record(fields, None, external_id_type).identifiers
