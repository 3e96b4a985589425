"""Fixed vectors for the identifier rules (normalization, validation, hashing)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from target_pinterest_audiences.identifiers import (
    _EMAIL_FAST,
    EXTERNAL_ID_TYPES,
    IDENTIFIER_FIELDS,
    InvalidRecord,
    email_violation,
    external_id_violation,
    hash_identifier,
    identifier_digest,
    normalize_device_id,
    normalize_email,
    normalize_external_id,
    normalize_sha256,
    parse_record,
    salvage_identifiers,
)

# sha256("test@example.com"), a widely published vector.
TEST_AT_EXAMPLE = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
# sha256("6d92078a-8246-4ba4-ae5b-76104861e7dc")
MAID_DIGEST = "31b806b4deec8c4cb1ffb18b9ab4ee1fa82a2b30e1f47902f04d03f5db023376"
# sha256("jöhn.doe@exämple.com") (UTF-8)
UNICODE_DIGEST = "e213b08dc3186e69324030b5631131b6e91be6957e583f7ba8060712b89887f0"


@pytest.mark.parametrize(
    "raw",
    ["test@example.com", "  Test@Example.COM ", "\tTEST@EXAMPLE.COM\n", "test@EXAMPLE.com"],
)
def test_email_is_trimmed_lowercased_and_hashed(raw: str) -> None:
    assert hash_identifier("email", raw) == TEST_AT_EXAMPLE


def test_email_lowercasing_is_unicode_aware() -> None:
    assert normalize_email(" JÖHN.Doe@EXÄMPLE.com ") == "jöhn.doe@exämple.com"
    assert hash_identifier("email", "JÖHN.DOE@EXÄMPLE.COM") == UNICODE_DIGEST


def test_email_keeps_dots_and_plus_tags() -> None:
    # Pinterest asks for no provider-specific rewriting.
    assert normalize_email("First.Last+tag@gmail.com") == "first.last+tag@gmail.com"


@pytest.mark.parametrize(
    "raw",
    [
        "plainaddress",
        "two@@example.com",
        "a@b@example.com",
        "@example.com",
        "user@localhost",
        "user@example.",
        "user@.example.com",
        "user@example..com",
        "us er@example.com",
        "user@exa\tmple.com",
        "user@",
        "",
        "   ",
    ],
)
def test_implausible_emails_are_rejected(raw: str) -> None:
    assert normalize_email(raw) is None
    assert hash_identifier("email", raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        "6d92078a-8246-4ba4-ae5b-76104861e7dc",
        " 6D92078A-8246-4BA4-AE5B-76104861E7DC ",
        "6d92078a-8246-4BA4-ae5b-76104861e7dc\n",
    ],
)
@pytest.mark.parametrize("field", ["maid", "idfa"])
def test_device_ids_are_normalized_then_hashed(field: str, raw: str) -> None:
    assert hash_identifier(field, raw) == MAID_DIGEST


@pytest.mark.parametrize(
    "raw",
    [
        "6d92078a82464ba4ae5b76104861e7dc",  # no hyphens
        "6d92078a-8246-4ba4-ae5b-76104861e7d",  # short
        "6d92078a-8246-4ba4-ae5b-76104861e7dcc",  # long
        "6d92078g-8246-4ba4-ae5b-76104861e7dc",  # not hex
        "{6d92078a-8246-4ba4-ae5b-76104861e7dc}",
        "6d92078a-8246-4ba4-ae5b-76104861 7dc",
    ],
)
def test_malformed_device_ids_are_rejected(raw: str) -> None:
    assert normalize_device_id(raw) is None


def test_prehashed_values_are_lowercased_and_never_hashed_again() -> None:
    upper = " " + TEST_AT_EXAMPLE.upper() + " "
    assert normalize_sha256(upper) == TEST_AT_EXAMPLE
    for field in ("email_sha256", "maid_sha256", "idfa_sha256"):
        assert hash_identifier(field, upper) == TEST_AT_EXAMPLE


@pytest.mark.parametrize(
    "raw", [TEST_AT_EXAMPLE[:-1], TEST_AT_EXAMPLE + "0", "g" * 64, "test@example.com"]
)
def test_malformed_sha256_is_rejected(raw: str) -> None:
    assert hash_identifier("email_sha256", raw) is None


def test_parse_record_collects_every_present_identifier() -> None:
    parsed = parse_record(
        {
            "segment_name": "  VIP customers ",
            "segment_id": " 123 ",
            "action": " ADD ",
            "email": "Test@Example.com",
            "maid": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "idfa": None,
            "idfa_sha256": "",
            "email_sha256": "   ",
            "other": "ignored",
        }
    )
    assert parsed.segment_name == "VIP customers"
    assert parsed.segment_id == "123"
    assert parsed.is_add is True
    assert parsed.identifiers == (("email", TEST_AT_EXAMPLE), ("maid", MAID_DIGEST))


def test_parse_record_remove_and_integer_segment_id() -> None:
    parsed = parse_record(
        {"segment_name": "s", "segment_id": 42, "action": "Remove", "idfa_sha256": MAID_DIGEST}
    )
    assert parsed.is_add is False
    assert parsed.segment_id == "42"
    assert parsed.identifiers == (("idfa", MAID_DIGEST),)


@pytest.mark.parametrize(
    ("record", "field", "reason"),
    [
        ({"action": "add", "email": "a@b.co"}, "segment_name", "missing_segment_name"),
        (
            {"segment_name": " ", "action": "add", "email": "a@b.co"},
            "segment_name",
            "missing_segment_name",
        ),
        (
            {"segment_name": 5, "action": "add", "email": "a@b.co"},
            "segment_name",
            "invalid_segment_name",
        ),
        (
            {"segment_name": "s", "segment_id": "12a", "action": "add", "email": "a@b.co"},
            "segment_id",
            "invalid_segment_id",
        ),
        (
            {"segment_name": "s", "segment_id": -1, "action": "add", "email": "a@b.co"},
            "segment_id",
            "invalid_segment_id",
        ),
        ({"segment_name": "s", "email": "a@b.co"}, "action", "missing_action"),
        ({"segment_name": "s", "action": "delete", "email": "a@b.co"}, "action", "unknown_action"),
        ({"segment_name": "s", "action": 1, "email": "a@b.co"}, "action", "unknown_action"),
        ({"segment_name": "s", "action": "add"}, "identifiers", "no_identifier"),
        (
            {"segment_name": "s", "action": "add", "email": None, "maid": ""},
            "identifiers",
            "no_identifier",
        ),
        (
            {"segment_name": "s", "action": "add", "email": "secret-person@nowhere"},
            "email",
            "invalid_email",
        ),
        (
            {"segment_name": "s", "action": "add", "email": "a@b.co", "maid": "nope"},
            "maid",
            "invalid_maid",
        ),
        ({"segment_name": "s", "action": "add", "idfa": "nope"}, "idfa", "invalid_idfa"),
        (
            {"segment_name": "s", "action": "add", "email_sha256": "abc"},
            "email_sha256",
            "invalid_email_sha256",
        ),
        ({"segment_name": "s", "action": "add", "email": 12345}, "email", "invalid_email"),
    ],
)
def test_invalid_records_name_field_and_reason_but_never_the_value(
    record: dict, field: str, reason: str
) -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse_record(record)
    assert caught.value.field == field
    assert caught.value.reason == reason
    for value in record.values():
        if isinstance(value, str) and len(value.strip()) > 3:
            assert value not in str(caught.value)


SCHEMA_SAMPLES = [
    {"segment_name": "S", "action": "add", "email": "a@b.co"},
    {"segment_name": "S", "action": " Remove ", "maid": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
    {"segment_name": "S", "segment_id": 12, "action": "ADD", "email_sha256": TEST_AT_EXAMPLE},
    {"segment_name": "S", "segment_id": "12", "action": "add", "idfa": None, "email": "a@b.co"},
    {"action": "add", "email": "a@b.co"},
    {"segment_name": 5, "action": "add", "email": "a@b.co"},
    {"segment_name": "S", "action": "delete", "email": "a@b.co"},
    {"segment_name": "S", "action": 1, "email": "a@b.co"},
    {"segment_name": "S", "segment_id": "12a", "action": "add", "email": "a@b.co"},
    {"segment_name": "S", "segment_id": "1" * 19, "action": "add", "email": "a@b.co"},
    {"segment_name": "S", "action": "add", "email": 12345},
    {"segment_name": "S", "action": "add", "maid": ["x"]},
]


@pytest.mark.parametrize("sample", SCHEMA_SAMPLES)
def test_documented_schema_agrees_with_parse_record(sample: dict) -> None:
    """What the published schema rejects, parse_record rejects; what parse_record accepts,
    the schema accepts (parse_record adds the rules a schema cannot say, such as formats)."""
    import jsonschema

    from target_pinterest_audiences.identifiers import STANDARD_AUDIENCE_SCHEMA

    schema_ok = jsonschema.Draft7Validator(STANDARD_AUDIENCE_SCHEMA).is_valid(sample)
    try:
        parse_record(sample)
        parsed_ok = True
    except InvalidRecord:
        parsed_ok = False
    if parsed_ok:
        assert schema_ok
    if not schema_ok:
        assert not parsed_ok


# --- Identifiers that can never match (issue 10) -------------------------------------------

ZEROED = "00000000-0000-0000-0000-000000000000"
MAID = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
# sha256 of the zeroed id, with and without hyphens
ZEROED_DIGEST = "12b9377cbe7e5c94e8a70d9d23929523d14afa954793130f8a3959c7b849aca8"
ZEROED_NO_HYPHENS_DIGEST = "84e0c0eafaa95a34c293f278ac52e45ce537bab5e752a00e6959a13ae103b65a"
# sha256 of placeholders a pipeline hashes when a value is missing
PLACEHOLDER_DIGESTS = {
    "": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "null": "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b",
    "NULL": "fb329000228cc5a24c264c57139de8bf854fc86fc18bf1c04ab61a2b5cb4b921",
    "Null": "fa1d2db62d4d952e2031452e1bc1ddcad0b192c2e29a706f11ce426ae5acddea",
    "none": "140bedbf9c3f6d56a9846d2ba7088798683f4da0c248231336e6a05679e4fdfe",
    "NONE": "c627c09c14e58e44bc51622dac392958ec88244e414b508020634f53cfcd1e69",
    "None": "dc937b59892604f5a86ac96936cd7ff09e25f18ae6b758e8014a24c7fa039e91",
    "nan": "9b2d5b4678781e53038e91ea5324530a03f27dc1d0e5f6c9bc9d493a23be9de0",
    "NaN": "d5b592c05dc25b5032553f1b27f4139be95e881f73db33b02b05ab20c3f9981e",
    "NAN": "0a481a8dc8a8aa0efbf1ee6f2524dfe7c8b5b93369a2f98b4a671da8901e127b",
    "undefined": "eb045d78d273107348b0300c01d29b7552d622abbc6faf81b3ec55359aa9950c",
}
SHA_FIELDS = ("email_sha256", "maid_sha256", "idfa_sha256")


def _rejection(field: str, value: str) -> InvalidRecord:
    """What parse_record raises for a record whose only identifier is field=value."""
    with pytest.raises(InvalidRecord) as caught:
        parse_record({"segment_name": "S", "action": "add", field: value})
    assert caught.value.field == field
    return caught.value


@pytest.mark.parametrize("raw", [ZEROED, f"  {ZEROED}\n", f"\t{ZEROED} "])
@pytest.mark.parametrize("field", ["maid", "idfa"])
def test_zeroed_device_id_is_rejected(field: str, raw: str) -> None:
    exc = _rejection(field, raw)
    assert exc.reason == "zeroed_device_id"
    assert "limits ad tracking" in exc.detail
    assert ZEROED not in str(exc)
    assert hash_identifier(field, raw) is None
    assert normalize_device_id(raw) is None
    # a device id that differs in one digit is an ordinary id
    assert normalize_device_id(ZEROED[:-1] + "1") == ZEROED[:-1] + "1"


@pytest.mark.parametrize("digest", [ZEROED_DIGEST, ZEROED_NO_HYPHENS_DIGEST.upper()])
@pytest.mark.parametrize("field", SHA_FIELDS)
def test_sha256_of_the_zeroed_id_is_rejected_in_every_sha256_field(field: str, digest: str) -> None:
    exc = _rejection(field, digest)
    assert exc.reason == "zeroed_device_id"
    assert "SHA-256 of the all-zero advertising id" in exc.detail
    assert digest not in str(exc) and digest.lower() not in str(exc)
    assert hash_identifier(field, digest) is None
    assert normalize_sha256(digest) is None


@pytest.mark.parametrize(("placeholder", "digest"), PLACEHOLDER_DIGESTS.items())
@pytest.mark.parametrize("field", SHA_FIELDS)
def test_sha256_of_an_empty_or_null_placeholder_is_rejected(
    field: str, placeholder: str, digest: str
) -> None:
    for given in (digest, digest.upper(), f" {digest} "):
        exc = _rejection(field, given)
        assert exc.reason == "hash_of_empty_value"
        assert ("the empty string" if not placeholder else f"'{placeholder}'") in exc.detail
        assert digest not in str(exc)
        assert hash_identifier(field, given) is None
        assert normalize_sha256(given) is None


def test_near_placeholder_digests_stay_valid() -> None:
    empty = PLACEHOLDER_DIGESTS[""]
    near = empty[:-1] + "0"
    assert normalize_sha256(near) == near
    assert parse_record({"segment_name": "S", "action": "add", "email_sha256": near}).identifiers


# Valid addresses: each is accepted, lowercased and hashed as its trimmed lowercase form.
VALID_EMAILS = [
    "test@example.com",
    "First.Last+tag@gmail.com",
    "o'brien@example.ie",
    "user_name-1@mail.sub.example.co.uk",
    "x@a.io",
    "!#$%&'*+-/=?^_`{|}~@example.com",
    "a@b.co",
    "user@123.example.com",
    "user@a-b--c.example",
    "JÖHN.Doe@EXÄMPLE.com",
    "用户@例子.广告",
    "иван@пример.рф",
    "user@xn--exmple-cua.com",
    "user@example.xn--p1ai",
    "a" * 64 + "@example.com",  # local part at the 64-octet limit
    "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 61,  # 254 octets in all
    "user@" + "l" * 63 + ".com",  # a label at the 63-octet limit
    "ä" * 32 + "@example.com",  # 64 octets of UTF-8 in 32 characters
    # a domain of 253 octets in its ASCII (A-label) form
    "a@" + ".".join(["a" * 55 + "é"] * 3 + ["a" * 53 + "é"]),
    "a" * 40 + "." + "b" * 20 + "@example.com",  # longer than the fast path's 64 characters
]


@pytest.mark.parametrize("raw", VALID_EMAILS)
def test_valid_emails_stay_valid_and_are_hashed_lowercase(raw: str) -> None:
    normalized = raw.strip().lower()
    assert email_violation(normalized) is None
    assert normalize_email(raw) == normalized
    expected = hashlib.sha256(normalized.encode()).hexdigest()
    assert hash_identifier("email", raw) == expected
    parsed = parse_record({"segment_name": "S", "action": "add", "email": raw})
    assert parsed.identifiers == (("email", expected),)


# (address, the words of the rule that must be named)
INVALID_EMAILS = [
    ("user\x00@example.com", "control character"),
    ("us\ter@example.com", "control character"),
    ("user@exa\x7fmple.com", "control character"),
    ("user@exa\x85mple.com", "control character"),
    ("us er@example.com", "whitespace"),
    ("user\u00a0name@example.com", "whitespace"),
    ("user@exam\u3000ple.com", "whitespace"),
    ("user\ud800@example.com", "lone surrogate"),
    ("plainaddress", "exactly one '@'"),
    ("a@b@example.com", "exactly one '@'"),
    ("a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 62, "longer than 254 octets"),
    ("a" * 65 + "@example.com", "local part is longer than 64 octets"),
    ("ä" * 33 + "@example.com", "local part is longer than 64 octets"),
    ("@example.com", "local part (before the '@') is empty"),
    (".user@example.com", "starts or ends with a dot"),
    ("user.@example.com", "starts or ends with a dot"),
    ("us..er@example.com", "two dots in a row"),
    ("mailto:user@example.com", "outside RFC 5322 atext"),
    ("<user@example.com>", "outside RFC 5322 atext"),
    ('"john"@example.com', "quoted local parts are not accepted"),
    ("user(comment)@example.com", "outside RFC 5322 atext"),
    ("us\\er@example.com", "outside RFC 5322 atext"),
    ("user,other@example.com", "outside RFC 5322 atext"),
    ("user@", "domain (after the '@') is empty"),
    ("user@localhost", "at least two dot-separated labels"),
    ("user@.example.com", "empty label"),
    ("user@example..com", "empty label"),
    ("user@example.com.", "empty label"),
    ("user@exam_ple.com", "other than letters, digits and hyphens"),
    ("user@[192.168.0.1]", "other than letters, digits and hyphens"),
    ("user@example.com>", "other than letters, digits and hyphens"),
    ("user@-example.com", "starts or ends with a hyphen"),
    ("user@example-.com", "starts or ends with a hyphen"),
    ("user@example.com-", "starts or ends with a hyphen"),
    ("user@" + "l" * 64 + ".com", "label is longer than 63 octets"),
    # 56 octets of UTF-8, but 65 in its A-label form (what DNS holds)
    ("user@" + "a" * 50 + "é😀" + ".com", "label is longer than 63 octets"),
    # 231 octets of UTF-8, but 255 in its ASCII form
    ("a@" + ".".join(["a" * 55 + "é"] * 4), "domain is longer than 253 octets"),
    ("user@example.123", "top-level domain is all digits"),
    ("user@192.168.0.1", "top-level domain is all digits"),
]


@pytest.mark.parametrize(("raw", "rule"), INVALID_EMAILS)
def test_emails_no_mail_server_accepts_are_rejected_naming_the_rule(raw: str, rule: str) -> None:
    normalized = raw.strip().lower()
    violation = email_violation(normalized)
    assert violation is not None and rule in violation
    assert normalize_email(raw) is None
    assert hash_identifier("email", raw) is None
    exc = _rejection("email", raw)
    assert exc.reason == "invalid_email"
    assert exc.detail == f"is not a valid email address: {violation}"
    local, _, domain = normalized.partition("@")
    for part in (raw, normalized, local, domain):
        if len(part) > 3:
            assert part not in str(exc)


def _fuzz_emails(count: int) -> list[str]:
    """Addresses from a fixed seed, valid ones and near misses (one to three edits away)."""
    rng = random.Random(20240611)
    atoms = ["user", "First", "o'b", "x+tag", "a_b", "9", "jöhn", "例", "Z{|}~", "=?^`", "#$%&*"]
    labels = ["example", "mail", "co", "uk", "a-b", "xn--p1ai", "exämple", "例子", "1", "io"]
    noise = "abcXYZ09.-_+@'!~ \t\x00<>\"(),:;[]\\äé😀例\u00a0İ"
    out = []
    for _ in range(count):
        local = ".".join(rng.choice(atoms) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.1:
            local = "a" * rng.randint(50, 66) + local
        domain = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.05:
            domain = "l" * rng.randint(58, 66) + domain
        text = list(local + "@" + domain)
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            at = rng.randrange(len(text) + 1)
            edit = rng.random()
            if edit < 0.6:
                text.insert(at, rng.choice(noise))
            elif text and edit < 0.8:
                del text[min(at, len(text) - 1)]
            else:
                text.insert(at, rng.choice([".", "-", "@", " "]))
        out.append("".join(text))
    return out


def test_parse_record_fast_path_agrees_with_the_rules() -> None:
    """The inline fast check in parse_record accepts nothing that email_violation rejects,
    and every address it leaves to the rules gets their verdict."""
    verdicts: Counter[str] = Counter()
    for raw in _fuzz_emails(20_000) + VALID_EMAILS + [raw for raw, _ in INVALID_EMAILS]:
        normalized = raw.strip().lower()
        violation = email_violation(normalized)
        try:
            parsed = parse_record({"segment_name": "S", "action": "add", "email": raw})
        except InvalidRecord as exc:
            if not normalized:
                assert exc.reason == "no_identifier"
                continue
            assert exc.reason == "invalid_email"
            assert violation is not None, raw
            assert exc.detail == f"is not a valid email address: {violation}"
            assert normalize_email(raw) is None
            verdicts["rejected"] += 1
        else:
            assert violation is None, (raw, violation)
            assert parsed.identifiers == (("email", hash_identifier("email", raw)),)
            assert normalize_email(raw) == normalized
            fast = len(normalized) <= 64 and _EMAIL_FAST.fullmatch(normalized)
            verdicts["accepted, fast" if fast else "accepted by the rules"] += 1
    # the vectors reach every verdict, many times
    assert min(verdicts.values()) > 1000 and len(verdicts) == 3, verdicts


@pytest.mark.parametrize("field", list(IDENTIFIER_FIELDS))
@pytest.mark.parametrize(
    "raw",
    [
        "Test@Example.com",
        MAID_DIGEST.upper(),
        "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        ZEROED,
        ZEROED_DIGEST,
        PLACEHOLDER_DIGESTS["None"],
        "mailto:a@b.co",
        "  ",
        "nope",
    ],
)
def test_public_helpers_agree_with_parse_record(field: str, raw: str) -> None:
    digest = hash_identifier(field, raw)
    try:
        parsed = parse_record({"segment_name": "S", "action": "add", field: raw})
    except InvalidRecord:
        assert digest is None
        assert salvage_identifiers({field: raw}) == ()
    else:
        assert parsed.identifiers == ((IDENTIFIER_FIELDS[field][0], digest),)
        assert salvage_identifiers({field: raw}) == parsed.identifiers
    try:
        assert identifier_digest(field, raw) == digest
    except InvalidRecord:
        assert digest is None


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        # a valid record: exactly parse_record's identifiers
        (
            {"segment_name": "S", "action": "add", "email": " Test@Example.com", "maid": MAID},
            (("email", TEST_AT_EXAMPLE), ("maid", MAID_DIGEST)),
        ),
        # invalid overall (unknown action, no segment): its identifiers are still well formed
        ({"action": "explode", "email": "test@example.com"}, (("email", TEST_AT_EXAMPLE),)),
        # one malformed identifier: the others are kept, in field order
        (
            {"segment_name": "S", "action": "add", "email": "mailto:x@y.co", "idfa": MAID},
            (("idfa", MAID_DIGEST),),
        ),
        (
            {"maid": ZEROED, "email_sha256": TEST_AT_EXAMPLE.upper()},
            (("email", TEST_AT_EXAMPLE),),
        ),
        (
            {"email_sha256": PLACEHOLDER_DIGESTS[""], "maid_sha256": ZEROED_DIGEST, "idfa": MAID},
            (("idfa", MAID_DIGEST),),
        ),
        # nothing well formed: not a string, blank, null, malformed
        ({"email": 12345, "maid": "  ", "idfa": None, "idfa_sha256": "abc"}, ()),
        ({}, ()),
    ],
)
def test_salvage_identifiers_keeps_every_well_formed_identifier(
    record: dict, expected: tuple
) -> None:
    assert salvage_identifiers(record) == expected


# --- Custom external ids (issue 11 section 3) -----------------------------------------------

# md5("pinner-1"), sha1("pinner-1"), sha256("pinner-1")
PINNER_MD5 = "03c57f5d1de3471a18110ee57d8c6e17"
PINNER_SHA1 = "568087eab08ff2c7f53902c2cb2d478f7188b44d"
PINNER_SHA256 = "10fc549d0e3888c440b50073e7725bec62aaeaeab760eb8bc0d17618dd0afa3e"


@pytest.mark.parametrize(
    ("id_type", "raw", "sent"),
    [
        # LR_ID and DLX_ID: trimmed, case and every other character kept, never hashed
        (
            "LR_ID",
            "  XY1005wXyWPB5bqDlrZRVvKfxqa7Kqy5hLjsBJyB0HcSdoBq\t",
            "XY1005wXyWPB5bqDlrZRVvKfxqa7Kqy5hLjsBJyB0HcSdoBq",
        ),
        ("LR_ID", "a", "a"),
        ("LR_ID", "Z" * 256, "Z" * 256),
        ("LR_ID", "Xi-_.+/=:;!#ÄöÜ", "Xi-_.+/=:;!#ÄöÜ"),
        ("DLX_ID", " DLX-00001_ab ", "DLX-00001_ab"),
        ("DLX_ID", "nullish", "nullish"),  # only the placeholder words themselves
        # HASHED_PINNER_ID: a hex SHA-256, SHA-1 or MD5 digest, lowercased, never hashed again
        ("HASHED_PINNER_ID", PINNER_SHA256.upper(), PINNER_SHA256),
        ("HASHED_PINNER_ID", f" {PINNER_SHA1} ", PINNER_SHA1),
        ("HASHED_PINNER_ID", PINNER_MD5.upper(), PINNER_MD5),
    ],
)
def test_external_ids_are_sent_as_given_after_trimming(id_type: str, raw: str, sent: str) -> None:
    assert normalize_external_id(raw, id_type) == sent
    assert hash_identifier("external_id", raw, id_type) == sent
    parsed = parse_record(
        {"segment_name": "S", "action": "add", "external_id": raw}, external_id_type=id_type
    )
    assert parsed.identifiers == (("external", sent),)
    assert salvage_identifiers({"external_id": raw}, id_type) == (("external", sent),)


@pytest.mark.parametrize(
    ("id_type", "raw", "reason", "rule"),
    [
        ("LR_ID", "XY 1005", "invalid_external_id", "it holds whitespace"),
        ("LR_ID", "XY\u00a01005", "invalid_external_id", "it holds whitespace"),
        ("LR_ID", "XY\u20291005", "invalid_external_id", "it holds whitespace"),
        ("LR_ID", "XY,1005", "invalid_external_id", "it holds a comma"),
        ("LR_ID", "XY\x001005", "invalid_external_id", "it holds a control character"),
        ("DLX_ID", "XY\x7f1005", "invalid_external_id", "it holds a control character"),
        ("DLX_ID", "XY\x851005", "invalid_external_id", "it holds whitespace"),  # NEL
        ("DLX_ID", "XY\x9f1005", "invalid_external_id", "it holds a control character"),
        ("LR_ID", "XY\ud8001005", "invalid_external_id", "it is not valid Unicode"),
        ("LR_ID", "\ufeffXY1005", "invalid_external_id", "invisible formatting character"),
        ("LR_ID", "XY\u200b1005", "invalid_external_id", "invisible formatting character"),
        ("DLX_ID", "Z" * 257, "invalid_external_id", "longer than 256 characters"),
        ("LR_ID", "null", "placeholder_value", "it is a placeholder"),
        ("LR_ID", " NULL ", "placeholder_value", "it is a placeholder"),
        ("DLX_ID", "None", "placeholder_value", "it is a placeholder"),
        ("DLX_ID", "NaN", "placeholder_value", "it is a placeholder"),
        ("LR_ID", "undefined", "placeholder_value", "it is a placeholder"),
        ("HASHED_PINNER_ID", PINNER_SHA256[:-1], "invalid_external_id", "64, 40 or 32 hex"),
        ("HASHED_PINNER_ID", PINNER_MD5 + "0", "invalid_external_id", "64, 40 or 32 hex"),
        ("HASHED_PINNER_ID", "g" * 40, "invalid_external_id", "64, 40 or 32 hex"),
        ("HASHED_PINNER_ID", "XY1005", "invalid_external_id", "64, 40 or 32 hex"),
        (
            "HASHED_PINNER_ID",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "hash_of_empty_value",
            "it is the SHA-256 of the empty string",
        ),
        (
            "HASHED_PINNER_ID",
            "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709",
            "hash_of_empty_value",
            "it is the SHA-1 of the empty string",
        ),
        (
            "HASHED_PINNER_ID",
            "d41d8cd98f00b204e9800998ecf8427e",
            "hash_of_empty_value",
            "it is the MD5 of the empty string",
        ),
        (
            "HASHED_PINNER_ID",
            "37a6259cc0c1dae299a7866489dff0bd",
            "hash_of_empty_value",
            "it is the MD5 of the string 'null'",
        ),
    ],
)
def test_invalid_external_ids_name_the_reason_and_rule_never_the_value(
    id_type: str, raw: str, reason: str, rule: str
) -> None:
    assert normalize_external_id(raw, id_type) is None
    assert hash_identifier("external_id", raw, id_type) is None
    with pytest.raises(InvalidRecord) as caught:
        parse_record(
            {"segment_name": "S", "action": "add", "external_id": raw}, external_id_type=id_type
        )
    assert caught.value.field == "external_id"
    assert caught.value.reason == reason
    assert rule in caught.value.detail
    assert caught.value.detail.startswith(f"is not a valid {id_type}: ")
    if len(raw.strip()) > 4 and not raw.strip().isalpha():
        assert raw.strip() not in str(caught.value)
        assert raw.strip().lower() not in str(caught.value)
    assert salvage_identifiers({"external_id": raw}, id_type) == ()


def test_external_id_violation_takes_the_trimmed_value() -> None:
    assert external_id_violation("XY1005", "LR_ID") is None
    assert external_id_violation(PINNER_MD5, "HASHED_PINNER_ID") is None
    # the caller lowercases a hashed pinner id: upper case is not a lowercase digest
    assert external_id_violation(PINNER_MD5.upper(), "HASHED_PINNER_ID") == (
        "invalid_external_id",
        "it is not a hex SHA-256, SHA-1 or MD5 digest (64, 40 or 32 hex characters)",
    )


@pytest.mark.parametrize("raw", [None, "", "   ", "\t\n"])
@pytest.mark.parametrize("id_type", [*EXTERNAL_ID_TYPES, None])
def test_blank_external_id_is_absent(raw: str | None, id_type: str | None) -> None:
    assert hash_identifier("external_id", raw, id_type) is None  # type: ignore[arg-type]
    parsed = parse_record(
        {"segment_name": "S", "action": "add", "email": "a@b.co", "external_id": raw},
        external_id_type=id_type,
    )
    assert [kind for kind, _ in parsed.identifiers] == ["email"]


def test_external_id_needs_external_id_type() -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse_record({"segment_name": "S", "action": "add", "external_id": "XY1005secret"})
    assert caught.value.field == "external_id"
    assert caught.value.reason == "external_id_type_not_set"
    assert "needs the setting external_id_type (LR_ID, DLX_ID, HASHED_PINNER_ID)" in str(
        caught.value
    )
    assert "XY1005secret" not in str(caught.value)
    assert salvage_identifiers({"external_id": "XY1005secret"}) == ()


@pytest.mark.parametrize(
    "other",
    [
        {"email": "a@b.co"},
        {"maid": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        {"idfa_sha256": TEST_AT_EXAMPLE},
    ],
)
def test_a_record_mixing_an_external_id_with_another_identifier_is_invalid(other: dict) -> None:
    record = {"segment_name": "S", "action": "add", "external_id": "XY1005", **other}
    with pytest.raises(InvalidRecord) as caught:
        parse_record(record, external_id_type="LR_ID")
    assert (caught.value.field, caught.value.reason) == ("external_id", "mixed_identifier_kinds")
    # each identifier still passes its own rule: all are kept as seen in mirror mode
    assert len(salvage_identifiers(record, "LR_ID")) == 2


def test_external_id_is_a_schema_field_and_named_when_no_identifier_is_present() -> None:
    from target_pinterest_audiences.identifiers import STANDARD_AUDIENCE_SCHEMA

    assert STANDARD_AUDIENCE_SCHEMA["properties"]["external_id"] == {"type": ["string", "null"]}
    with pytest.raises(InvalidRecord) as caught:
        parse_record({"segment_name": "S", "action": "add"})
    assert "external_id" in caught.value.detail
