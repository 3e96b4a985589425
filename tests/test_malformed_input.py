"""Malformed Singer input (issue 10, section 3): through the real CLI, every kind ends the run
with one error line that names the input line and what is wrong, exits non-zero, prints no
traceback, echoes no input value, and writes nothing past the last complete batch before it.

Every case feeds the same prefix: a SCHEMA (line 1), records 1 and 2 that fill one request
(lines 2-3), a STATE bookmarking record 2 (line 4), record 3 in the open batch (line 5), then
the bad line 6 (holding a sentinel email), then a good record 4 (line 7).
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from conftest import SCHEMA, Run, email_hash, lists_named, record, state
from singer_sdk.singerlib.exceptions import InvalidInputLine

from target_pinterest_audiences.reader import SafeSingerReader

SENTINEL = "secret.person@example.com"
BAD_LINE = 6


def good(i: int) -> dict[str, Any]:
    return record(id=i, segment_name="M", action="add", email=f"user{i}@example.com")


def bad_record(**extra: Any) -> dict[str, Any]:
    return {**record(id=99, segment_name="M", action="add", email=SENTINEL), **extra}


def line(message: object) -> bytes:
    return json.dumps(message).encode() + b"\n"


PREFIX = b"".join(
    line(m) for m in (SCHEMA, good(1), good(2), state({"bookmarks": {"customers": {"id": 2}}}))
) + line(good(3))
AFTER = line(good(4))


def batch_message(*urls: str) -> dict[str, Any]:
    return {
        "type": "BATCH",
        "stream": "customers",
        "encoding": {"format": "jsonl", "compression": "none"},
        "manifest": list(urls),
    }


#: name -> (bad line 6, words the error must hold besides the line number)
CASES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "not UTF-8 in a string": (
        line(bad_record()).replace(b"example.com", b"ex\xe4mple.com"),
        ("UTF-8",),
    ),
    "not UTF-8 between tokens": (b"\xff" + line(bad_record()), ("UTF-8",)),
    "a JSON array": (line([bad_record()]), ("JSON array", "not a Singer message")),
    "a JSON string": (line(SENTINEL), ("JSON string",)),
    "a JSON number": (b"4242\n", ("JSON number",)),
    "not JSON": (
        b'{"type": "RECORD", "record": {' + SENTINEL.encode() + b"}}\n",
        ("not valid JSON",),
    ),
    "RECORD before any SCHEMA of its stream": (
        line(bad_record(stream="other")),
        ("no SCHEMA", "before"),
    ),
    "RECORD whose record is an array": (line(bad_record(record=[SENTINEL])), ("'record'", "array")),
    "RECORD whose record is a string": (line(bad_record(record=SENTINEL)), ("'record'", "string")),
    "RECORD without stream": (
        line({"type": "RECORD", "record": {"email": SENTINEL}}),
        ("'stream'",),
    ),
    "RECORD whose stream is not a string": (line(bad_record(stream=[SENTINEL])), ("'stream'",)),
    "RECORD without its key property": (
        line({"type": "RECORD", "stream": "customers", "record": {"email": SENTINEL}}),
        ("key propert",),
    ),
    "NaN": (
        line(bad_record()).replace(b'"id": 99', b'"id": NaN'),
        ("NaN",),
    ),
    "Infinity": (
        line(bad_record()).replace(b'"id": 99', b'"id": -Infinity'),
        ("Infinity",),
    ),
    "unknown message type": (line({"type": SENTINEL, "stream": "customers"}), ("'type'",)),
    "type that is not a string": (line({"type": [SENTINEL], "stream": "customers"}), ("'type'",)),
    "no type at all": (line({"stream": "customers", "record": {"email": SENTINEL}}), ("'type'",)),
    "STATE whose value is not an object": (
        line({"type": "STATE", "value": [SENTINEL]}),
        ("'value'", "not an object"),
    ),
    "SCHEMA whose schema is not an object": (
        line({"type": "SCHEMA", "stream": "customers", "schema": SENTINEL}),
        ("'schema'", "not an object"),
    ),
    "SCHEMA without properties": (
        line({"type": "SCHEMA", "stream": "customers", "schema": {"type": SENTINEL}}),
        ("'properties'",),
    ),
    "deeply nested JSON": (
        b'{"type": "RECORD", "stream": "customers", "record": {"email": "'
        + SENTINEL.encode()
        + b'", "x": '
        # deeper than any supported Python reads: 3.13 reads 5,000 levels, 3.10 does not
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}\n",
        ("too deeply",),
    ),
    "BATCH with an unsupported encoding": (
        line({**batch_message(), "encoding": {"format": SENTINEL}}),
        ("'encoding'",),
    ),
    "BATCH whose manifest is not a list": (
        line({**batch_message(), "manifest": SENTINEL}),
        ("'manifest'",),
    ),
}


def error_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if "| ERROR" in x]


def assert_stopped_at_line_6(emulator, run: Run, words: tuple[str, ...], where: str) -> None:
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    for stream in (run.stderr, run.stdout):
        assert SENTINEL not in stream.lower()
        assert "secret.person" not in stream.lower()
    errors = error_lines(run.stderr)
    assert len(errors) == 1, run.stderr
    for word in (where, *words):
        assert word in errors[0], errors[0]
    # the cause is the log's last line, and no audience-size advice precedes it
    assert [x for x in run.stderr.splitlines() if x.strip()][-1] == errors[0]
    assert "distinct identifiers were added" not in run.stderr
    # the complete batch before the bad line is written and checkpointed; nothing after it
    (created,) = lists_named(emulator, "M")
    assert set(created["members"]) == {email_hash(f"user{i}@example.com") for i in (1, 2)}
    assert run.states, run.stderr
    assert run.states[-1]["bookmarks"] == {"customers": {"id": 2}}
    assert run.final["records_written"] == 2
    assert run.final["complete"] is False


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_line_stops_the_run_by_its_number(emulator, base_config, run_bytes, name):
    bad, words = CASES[name]
    run = run_bytes({**base_config, "identifiers_per_request": 2}, PREFIX + bad + AFTER)
    assert_stopped_at_line_6(emulator, run, words, f"input line {BAD_LINE}")


def test_truncated_last_line(emulator, base_config, run_bytes):
    cut = line(bad_record())[:-12]  # the input ends mid-message, without a newline
    run = run_bytes({**base_config, "identifiers_per_request": 2}, PREFIX + cut)
    assert_stopped_at_line_6(emulator, run, ("truncated",), f"last input line ({BAD_LINE})")


def test_not_utf8_read_from_an_input_file(emulator, base_config, run_bytes, tmp_path):
    path = tmp_path / "messages.singer"
    path.write_bytes(PREFIX + line(bad_record()).replace(b"example", b"ex\xe4mple") + AFTER)
    run = run_bytes({**base_config, "identifiers_per_request": 2}, b"", "--input", str(path))
    assert_stopped_at_line_6(emulator, run, ("UTF-8",), f"input line {BAD_LINE}")


def test_batch_file_that_does_not_exist_is_named_by_its_index(
    emulator, base_config, run_bytes, tmp_path
):
    gone = tmp_path / "no-such-dir" / f"{SENTINEL}.jsonl"
    run = run_bytes(
        {**base_config, "identifiers_per_request": 2},
        PREFIX + line(batch_message(gone.as_uri())) + AFTER,
    )
    assert_stopped_at_line_6(
        emulator, run, ("manifest entry 0", "does not exist"), f"input line {BAD_LINE}"
    )
    assert "no-such-dir" not in run.stderr
    assert not gone.parent.exists()  # singer-sdk's opener would have created the directory


def test_batch_file_problem_names_the_entry_not_the_path(
    emulator, base_config, run_bytes, tmp_path
):
    fine = tmp_path / "fine.jsonl"
    fine.write_text(json.dumps({"id": 7, "segment_name": "M", "action": "add"}) + "\n")
    broken = tmp_path / "secret.person.jsonl"
    broken.write_text('{"id": 8, "email": "' + SENTINEL + '"\n')  # not valid JSON
    run = run_bytes(
        {**base_config, "identifiers_per_request": 2, "on_invalid_record": "skip"},
        PREFIX + line(batch_message(fine.as_uri(), broken.as_uri())) + AFTER,
    )
    errors = error_lines(run.stderr)
    assert run.returncode == 1 and len(errors) == 1, run.stderr
    assert "input line 6: BATCH manifest entry 1" in errors[0]
    assert "not valid JSON" in errors[0]
    assert "secret.person" not in run.stderr.lower() and "Traceback" not in run.stderr
    assert run.states[-1]["bookmarks"] == {"customers": {"id": 2}}


def test_a_text_stream_that_fails_to_decode_names_the_line_before():
    """A text stream without a byte layer: the error names the last line read."""

    class Undecodable(io.StringIO):
        def __iter__(self):
            yield json.dumps(SCHEMA) + "\n"
            raise UnicodeDecodeError("utf-8", SENTINEL.encode(), 3, 4, "invalid start byte")

    reader = SafeSingerReader()
    with pytest.raises(InvalidInputLine) as caught:
        reader.process_lines(Undecodable(), {"SCHEMA": lambda message: None})
    assert "after line 1" in str(caught.value) and "UTF-8" in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("read_size", [1, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1}\n{"b": 2}\n',
        b'{"a": 1}\n\n{"b": 22222222222}',  # blank line, last line without a line feed
        b"\xef\xbb\xbf" + b"x" * 50 + b"\n" + b"y" * 20 + b"\n",  # lines longer than a read
        b"",
        b"\n",
    ],
)
def test_lines_read_in_blocks_are_the_lines_of_the_input(monkeypatch, data, read_size):
    """The reader takes the input a block at a time (one read per READ_SIZE bytes, not per
    line); the lines it hands on are the input's lines whatever the block boundaries, and a
    last line without a line feed is known as cut short."""
    monkeypatch.setattr("target_pinterest_audiences.reader.READ_SIZE", read_size)
    reader = SafeSingerReader()
    lines = list(reader._binary_lines(io.BufferedReader(io.BytesIO(data), buffer_size=2)))
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert lines == expected
    assert reader.cut_short is (not data.endswith(b"\n") and data != b"")
