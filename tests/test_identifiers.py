"""Fixed vectors for the identifier rules (normalization, validation, hashing)."""

from __future__ import annotations

import pytest

from target_pinterest_audiences.identifiers import (
    InvalidRecord,
    hash_identifier,
    normalize_device_id,
    normalize_email,
    normalize_sha256,
    parse_record,
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
