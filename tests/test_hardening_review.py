"""Bugs found by an adversarial review of issues 10-12: the installed CLI on messy data against
the emulator, read against a strict reading of the issues and of Pinterest's spec. Each test
fails without its fix."""

from __future__ import annotations

import json

import pytest
from conftest import SCHEMA, email_hash, lists_named, records, state

from target_pinterest_audiences.identifiers import InvalidRecord, parse_record

BOM = b"\xef\xbb\xbf"


def last_line(stderr: str) -> str:
    return [x for x in stderr.splitlines() if x.strip()][-1]


# ---- issue 10.3: a byte order mark at the start of the input is valid input ----------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_a_byte_order_mark_at_the_start_of_the_input_is_valid(
    emulator, base_config, run_bytes, eol
):
    """Windows tools (PowerShell's Out-File, Notepad, Excel's 'UTF-8' export) start a UTF-8
    file with a BOM; RFC 8259 lets a parser ignore it, and singer-sdk's BATCH reader already
    does. Today line 1 is refused as 'not valid JSON (invalid character (byte 0))'."""
    rows = [
        {"segment_name": "B", "action": "add", "email": f"bom{i}@example.com"} for i in range(3)
    ]
    messages = [SCHEMA, *records(rows), state({"bookmarks": {"customers": {"id": 3}}})]
    data = BOM + b"".join(json.dumps(m).encode() + eol for m in messages)
    run = run_bytes(base_config, data)
    assert run.returncode == 0, run.stderr
    (created,) = lists_named(emulator, "B")
    assert set(created["members"]) == {email_hash(f"bom{i}@example.com") for i in range(3)}
    assert run.states[-1]["bookmarks"] == {"customers": {"id": 3}}


# ---- issue 10.2: emails with invisible characters can never match ----------------------------

#: Each address differs from `hidden@example.com` only by a character no one sees (Unicode
#: category Cf). Its hash matches no Pinterest user; external ids already reject them.
INVISIBLE = {
    "zero-width space first": "\u200bhidden@example.com",
    "zero-width space in the local part": "hid\u200bden@example.com",
    "byte order mark first": "\ufeffhidden@example.com",
    "zero-width space in the domain": "hidden@exam\u200bple.com",
    "soft hyphen": "hid\u00adden@example.com",
    "left-to-right mark": "hidden\u200e@example.com",
    "word joiner last": "hidden@example.com\u2060",
}


@pytest.mark.parametrize("raw", list(INVISIBLE.values()), ids=list(INVISIBLE))
def test_emails_with_invisible_formatting_characters_are_invalid(raw: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse_record({"segment_name": "S", "action": "add", "email": raw})
    assert caught.value.reason == "invalid_email"
    assert "invisible formatting character" in caught.value.detail
    assert "hidden" not in str(caught.value)


def test_invisible_characters_in_emails_are_skipped_through_the_cli(
    emulator, base_config, run_target
):
    rows = [
        {"segment_name": "Z", "action": "add", "email": "visible@example.com"},
        {"segment_name": "Z", "action": "add", "email": "\u200bhidden.one@example.com"},
        {"segment_name": "Z", "action": "add", "email": "\ufeffhidden.two@example.com"},
    ]
    run = run_target({**base_config, "on_invalid_record": "skip"}, records(rows))
    assert run.returncode == 0, run.stderr
    assert run.final["records_skipped"] == {"invalid_email": 2}
    (created,) = lists_named(emulator, "Z")
    assert set(created["members"]) == {email_hash("visible@example.com")}
    assert "hidden" not in run.stderr


# ---- issue 10.2: control characters are rejected, not trimmed away -------------------------

#: U+001C..U+001F are control characters (Unicode Cc), not whitespace (Unicode White_Space),
#: but Python's str.strip() removes them: the address was silently repaired and accepted.
EDGE_CONTROLS = ["\x1chidden@example.com", "hidden@example.com\x1f", "\x1ehidden@example.com\x1d"]


@pytest.mark.parametrize("raw", EDGE_CONTROLS, ids=["FS first", "US last", "RS and GS"])
def test_control_characters_at_the_edges_of_an_email_are_not_trimmed(raw: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse_record({"segment_name": "S", "action": "add", "email": raw})
    assert caught.value.reason == "invalid_email"
    assert "control character" in caught.value.detail


def test_control_characters_at_the_edges_of_an_external_id_are_not_trimmed() -> None:
    record = {"segment_name": "S", "action": "add", "external_id": "\x1fXY1234"}
    with pytest.raises(InvalidRecord) as caught:
        parse_record(record, external_id_type="LR_ID")
    assert caught.value.reason == "invalid_external_id"


def test_whitespace_around_identifiers_is_still_trimmed() -> None:
    record = {"segment_name": "S", "action": "add", "email": "\t\u3000User@Example.com \r\n\x85"}
    parsed = parse_record(record)
    assert parsed.identifiers == (("email", email_hash("user@example.com")),)


# ---- issue 10.5: a run stopped by its settings ends with the cause ---------------------------


def test_invalid_settings_end_the_log_with_the_cause(emulator, base_config, run_target):
    """singer-sdk's own handler logs each error, then 'Config validation failed' last: the tail
    of a Meltano log then says neither which setting nor what to do."""
    rows = [{"segment_name": "C", "action": "add", "email": "c@example.com"}]
    run = run_target({**base_config, "on_invalid_record": "sometimes"}, records(rows))
    assert run.returncode == 1
    last = last_line(run.stderr)
    assert "| ERROR" in last and "Run failed: " in last, run.stderr
    assert "on_invalid_record" in last, last
    assert [x for x in run.stderr.splitlines() if "| ERROR" in x] == [last]
    assert "Traceback" not in run.stderr
    assert lists_named(emulator, "C") == []


# ---- issue 11.2: no identifier value in the rejected-records file ---------------------------


def test_a_key_property_renamed_into_an_identifier_field_is_not_written(
    emulator, base_config, run_target, tmp_path
):
    """The README's way to adapt a source: rename its columns with the target's stream_maps.
    A customer table keyed by its email column keeps that column as the key property, and
    the record then holds the same email under both names: the key's value is an
    identifier value, so it must not reach the file."""
    rejected = tmp_path / "rejected.jsonl"
    schema = {
        "type": "SCHEMA",
        "stream": "customers",
        "schema": {"type": "object", "properties": {"customer_email": {"type": "string"}}},
        "key_properties": ["customer_email"],
    }
    messages = [
        schema,
        *[
            {"type": "RECORD", "stream": "customers", "record": row}
            for row in (
                {"segment_name": "R", "action": "add", "customer_email": "kept@example.com"},
                {"segment_name": "R", "action": "maybe", "customer_email": "Valid.Sentinel@x.com"},
                {"segment_name": "R", "action": "add", "customer_email": "Second.Sentinel@x.com>"},
            )
        ],
    ]
    config = {
        **base_config,
        "on_invalid_record": "skip",
        "rejected_records_path": str(rejected),
        # email (the identifier field) computed from the key column, trimmed and lowercased
        "stream_maps": {"customers": {"email": "customer_email.strip().lower()"}},
    }
    run = run_target(config, "".join(json.dumps(m) + "\n" for m in messages))
    assert run.returncode == 0, run.stderr
    assert run.final["records_skipped"] == {"unknown_action": 1, "invalid_email": 1}
    content = rejected.read_text()
    assert "sentinel" not in content.lower(), content
    lines = [json.loads(x) for x in content.splitlines()]
    assert [(x["record_number"], x["keys"], x["reason"]) for x in lines] == [
        (2, {}, "unknown_action"),
        (3, {}, "invalid_email"),
    ]
    assert "customer_email" in run.stderr  # the log says which key property was left out
    assert "sentinel" not in run.stderr.lower()


# ---- issue 10.5: a stream map that cannot work says why -------------------------------------


def test_a_stream_map_config_error_is_shown_not_withheld(emulator, base_config, run_target):
    """singer-sdk refuses a map that removes a key property and says to use
    __key_properties__; that message comes from the setting and the SCHEMA (property names),
    never from a record, yet it was withheld as if it could quote input data."""
    schema = {
        "type": "SCHEMA",
        "stream": "customers",
        "schema": {"type": "object", "properties": {"customer_email": {"type": "string"}}},
        "key_properties": ["customer_email"],
    }
    row = {"segment_name": "M", "action": "add", "customer_email": "map.sentinel@example.com"}
    config = {
        **base_config,
        "stream_maps": {"customers": {"email": "customer_email", "customer_email": None}},
    }
    text = "".join(
        json.dumps(m) + "\n"
        for m in (schema, {"type": "RECORD", "stream": "customers", "record": row})
    )
    run = run_target(config, text)
    assert run.returncode == 1
    last = last_line(run.stderr)
    assert "Run failed: " in last and "input line 1" in last, last
    assert "stream_maps" in last and "__key_properties__" in last, last
    assert "sentinel" not in run.stderr.lower()
    assert lists_named(emulator, "M") == []
