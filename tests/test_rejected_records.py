"""The rejected-records file (rejected_records_path), through the installed CLI.

With on_invalid_record=skip every skipped record is appended as one JSON line naming its
record number, stream, key properties and their values, the field and the reason, so that
the rows can be found and fixed. Identifier values never reach the file, even as key
properties; the file is private (0600) whatever the umask; the summary names it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import email_hash, lists_named, sha

ZEROED = "00000000-0000-0000-0000-000000000000"
MAID = "6D92078A-8246-4BA4-AE5B-76104861E7DC"

CUSTOMERS = {
    "type": "SCHEMA",
    "stream": "customers",
    "schema": {"type": "object", "properties": {}},
    # An identifier field as a key property: its values must still never be written.
    "key_properties": ["customer_id", "email", "updated_at"],
}
PARTNERS = {
    "type": "SCHEMA",
    "stream": "partners",
    "schema": {"type": "object", "properties": {}},
    "key_properties": ["external_id", "row"],
}


def customer(**fields: Any) -> dict[str, Any]:
    # singer-sdk wants every key property in a record: email is null when absent
    record = {"segment_name": "S", "email": None, **fields}
    return {"type": "RECORD", "stream": "customers", "record": record}


def partner(**fields: Any) -> dict[str, Any]:
    # another stream: its own segment (a stream is its own Customer List and Audience)
    return {"type": "RECORD", "stream": "partners", "record": {"segment_name": "P", **fields}}


def as_text(messages: list[dict[str, Any]]) -> str:
    # 3.50 as a tap sends it (json.dumps would write 3.5): it must come back as 3.50.
    text = "".join(json.dumps(m) + "\n" for m in messages)
    return text.replace('"customer_id": 3.5,', '"customer_id": 3.50,')


#: (message, expected line or None for a record that is not skipped), in input order.
ROWS: list[tuple[dict[str, Any], dict[str, Any] | None]] = [
    (customer(customer_id=1, updated_at="2024-05-01", action="add", email="ok1@example.com"), None),
    (
        customer(
            customer_id=2,
            updated_at="2024-05-02T10:00:00Z",
            action="add",
            email="sentinel.rejected.two@example.com>",
        ),
        {
            "record_number": 2,
            "stream": "customers",
            "keys": {"customer_id": 2, "updated_at": "2024-05-02T10:00:00Z"},
            "field": "email",
            "reason": "invalid_email",
        },
    ),
    (
        customer(customer_id=3.50, updated_at=None, action="add", maid=ZEROED),
        {
            "record_number": 3,
            "stream": "customers",
            "keys": {"customer_id": 3.50, "updated_at": None},
            "field": "maid",
            "reason": "zeroed_device_id",
        },
    ),
    (customer(customer_id=4, updated_at="x", action="add", maid=MAID), None),
    (
        customer(
            customer_id="C-5",
            updated_at="2024-05-05",
            action="explode",
            email="Sentinel.Rejected.Five@Example.com",
        ),
        {
            "record_number": 5,
            "stream": "customers",
            "keys": {"customer_id": "C-5", "updated_at": "2024-05-05"},
            "field": "action",
            "reason": "unknown_action",
        },
    ),
    (
        partner(row=6, action="add", external_id="XYsentinelRejectedLR06"),
        {
            "record_number": 6,
            "stream": "partners",
            "keys": {"row": 6},
            "field": "external_id",
            "reason": "external_id_type_not_set",
        },
    ),
    (
        customer(customer_id=7, updated_at="2024-05-07", action="add", email="   "),
        {
            "record_number": 7,
            "stream": "customers",
            "keys": {"customer_id": 7, "updated_at": "2024-05-07"},
            "field": "identifiers",
            "reason": "no_identifier",
        },
    ),
    (
        customer(customer_id=8, updated_at="2024-05-08", action="remove", email="ok1@example.com"),
        None,
    ),
    (
        customer(
            customer_id=9,
            updated_at="2024-05-09",
            action="add",
            email_sha256=sha("sentinel.rejected.nine@example.com")[:-1],
        ),
        {
            "record_number": 9,
            "stream": "customers",
            "keys": {"customer_id": 9, "updated_at": "2024-05-09"},
            "field": "email_sha256",
            "reason": "invalid_email_sha256",
        },
    ),
    (customer(customer_id=10, updated_at="y", action="add", email="ok10@example.com"), None),
]
#: Every identifier value of the input, as given and as sent (none may reach the file).
IDENTIFIER_VALUES = [
    "ok1@example.com",
    email_hash("ok1@example.com"),
    "sentinel.rejected.two@example.com",
    "sentinel.rejected",
    "Sentinel.Rejected",
    ZEROED,
    MAID,
    MAID.lower(),
    "XYsentinelRejectedLR06",
    sha("sentinel.rejected.nine@example.com")[:-1],
    "ok10@example.com",
    "@example.com",
]


def per_stream_numbers() -> list[dict[str, Any]]:
    """The expected lines: records are numbered within their stream (a stream is a dataset)."""
    seen: dict[str, int] = {}
    lines = []
    for message, line in ROWS:
        seen[message["stream"]] = seen.get(message["stream"], 0) + 1
        if line is not None:
            lines.append({**line, "record_number": seen[message["stream"]]})
    return lines


def messages() -> list[dict[str, Any]]:
    return [CUSTOMERS, PARTNERS, *(message for message, _ in ROWS)]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_skipped_records_are_written_with_their_keys_and_no_identifier(
    emulator, base_config, run_target, tmp_path
):
    path = tmp_path / "rejected.jsonl"
    config = {
        **base_config,
        "audience_name": "{stream} audience",
        "on_invalid_record": "skip",
        "rejected_records_path": str(path),
    }
    run = run_target(config, as_text(messages()))
    assert run.returncode == 0, run.stderr

    text = path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    expected = per_stream_numbers()
    assert lines == expected
    # numbers are written as the tap sent them (3.50 stays 3.50, not 3.5)
    assert '"customer_id":3.50' in text
    for value in IDENTIFIER_VALUES:
        assert value not in text, value
        assert value.lower() not in text.lower(), value
    assert mode_of(path) == 0o600

    reports = run.states[-1]["pinterest_audiences"].values()
    assert sum(sum(r["records_skipped"].values()) for r in reports) == len(expected)
    made = [*lists_named(emulator, "S"), *lists_named(emulator, "P")]
    assert set().union(*(m["members"] for m in made)) == {
        email_hash("ok10@example.com"),
        sha(MAID.lower()),
    }
    assert f"Run summary: rejected records: {len(expected)} lines appended to {path}" in run.stderr
    # identifier key properties: left out, and said once per stream
    assert run.stderr.count("key properties 'email' of stream 'customers'") == 1
    assert run.stderr.count("key properties 'external_id' of stream 'partners'") == 1
    for value in IDENTIFIER_VALUES:
        assert value not in run.stderr, value

    # A second run appends to the same file, and counts only its own lines.
    again = run_target(config, as_text(messages()))
    assert again.returncode == 0, again.stderr
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == expected + expected
    assert f"rejected records: {len(expected)} lines appended to {path}" in again.stderr
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_the_file_is_private_whatever_the_umask_and_an_existing_one_is_made_private(
    emulator, base_config, run_target, tmp_path, umask
):
    new = tmp_path / "new" / "rejected.jsonl"
    new.parent.mkdir()
    existing = tmp_path / "existing.jsonl"
    existing.write_text('{"earlier": "line"}\n', encoding="utf-8")
    existing.chmod(0o644)
    rows = as_text(messages())
    old = os.umask(umask)
    try:
        for path in (new, existing):
            config = {
                **base_config,
                "audience_name": "{stream} audience",
                "on_invalid_record": "skip",
                "rejected_records_path": str(path),
            }
            run = run_target(config, rows)
            assert run.returncode == 0, run.stderr
            assert mode_of(path) == 0o600, (oct(umask), path)
    finally:
        os.umask(old)
    assert existing.read_text(encoding="utf-8").splitlines()[0] == '{"earlier": "line"}'
    assert len(existing.read_text(encoding="utf-8").splitlines()) == 1 + 6


def test_a_umask_that_takes_the_owners_bits_still_gives_0600(tmp_path):
    """Unit test of the one writer of the file: os.open's mode passes through the umask, so a
    umask such as 0377 would leave a new file 0400; the writer sets 0600 itself."""
    import logging

    from target_pinterest_audiences.sync.rejected import RejectedRecords

    path = tmp_path / "rejected.jsonl"
    old = os.umask(0o377)
    try:
        rejected = RejectedRecords(path, logging.getLogger("test"))
    finally:
        os.umask(old)
    rejected.add(
        record_number=1,
        stream="s",
        key_properties=["id", " Email "],
        record={"id": 1, " Email ": "never.written@example.com"},
        field="email",
        reason="invalid_email",
    )
    rejected.close()
    assert mode_of(path) == 0o600
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "record_number": 1,
        "stream": "s",
        "keys": {"id": 1},
        "field": "email",
        "reason": "invalid_email",
    }


def test_the_setting_needs_skip_and_a_usable_path(emulator, base_config, run_target, tmp_path):
    # With on_invalid_record=fail the run stops at the first invalid record: no file.
    path = tmp_path / "rejected.jsonl"
    failing = run_target({**base_config, "rejected_records_path": str(path)}, as_text(messages()))
    assert failing.returncode != 0
    assert "rejected_records_path is used only with on_invalid_record=skip" in failing.stderr
    assert not path.exists()

    # A file in a directory that does not exist: the run stops at start-up, before any request.
    missing = tmp_path / "no-such-dir" / "rejected.jsonl"
    config = {**base_config, "on_invalid_record": "skip", "rejected_records_path": str(missing)}
    before = len(emulator.state()["requests"])
    run = run_target(config, as_text(messages()))
    assert run.returncode != 0
    assert f"setting 'rejected_records_path' ({missing}): cannot open the file" in run.stderr
    assert emulator.state()["requests"][before:] == []
    assert "Traceback" not in run.stderr
