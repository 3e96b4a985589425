"""Progress on long runs: one line per progress_interval_seconds, counts only, never an id.

The runs are made slow on purpose (the emulator delays every write) so that they last
several intervals; each drives the installed CLI against the emulator.
"""

from __future__ import annotations

import itertools
import re
import uuid
from typing import Any

from conftest import email_hash, records

PROGRESS = re.compile(
    r"Progress after [0-9.hms]+(?: \((?P<phase>[^)]*)\))?: records read (?P<read>[0-9,]+) "
    r"\([0-9,]+/s over the last [0-9.hms]+\), skipped (?P<skipped>[0-9,]+); identifiers "
    r"confirmed added (?P<added>[0-9,]+), removed (?P<removed>[0-9,]+); requests "
    r"(?P<requests>[0-9,]+); over the last [0-9.hms]+: (?P<limit>[0-9.]+)s waiting on the "
    r"write limit \(max_writes_per_minute\), reading paused (?P<paused>[0-9.]+)s for writes "
    r"to catch up$"
)


def progress_lines(stderr: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        if "Progress after" not in line:
            continue
        text = line[line.index("Progress after") :]
        match = PROGRESS.match(text)
        assert match, f"a progress line in an unexpected form: {text}"
        fields: dict[str, Any] = {
            k: int(v.replace(",", ""))
            for k, v in match.groupdict().items()
            if k in ("read", "skipped", "added", "removed", "requests")
        }
        fields.update(
            phase=match["phase"], limit=float(match["limit"]), paused=float(match["paused"])
        )
        found.append(fields)
    return found


def sentinel_rows(tag: str, n: int) -> list[dict[str, Any]]:
    """Adds and removes of unique sentinel emails, and a few invalid ones to skip."""
    rows = []
    for i in range(n):
        email = f"Progress.Sentinel.{tag}.{i}@Example.com" if i % 50 else f"not-an-email-{tag}-{i}"
        action = "remove" if i % 7 == 0 else "add"
        rows.append({"segment_name": "Progress", "action": action, "email": email})
    return rows


def assert_no_identifier(text: str, rows: list[dict[str, Any]], tag: str) -> None:
    assert tag not in text  # no sentinel, in whatever case or form
    assert tag.upper() not in text
    for row in rows:
        assert email_hash(row["email"]) not in text


def slow_config(base_config: dict[str, Any], interval: float) -> dict[str, Any]:
    return {
        **base_config,
        "identifiers_per_request": 40,
        "max_concurrent_writes": 1,
        "on_invalid_record": "skip",
        "progress_interval_seconds": interval,
    }


def test_a_long_run_logs_progress_with_counts_and_no_identifier(
    emulator, base_config, run_target
) -> None:
    emulator.configure(write_delay_ms=150)
    tag = uuid.uuid4().hex
    rows = sentinel_rows(tag, 600)
    run = run_target(slow_config(base_config, 0.4), records(rows))
    assert run.returncode == 0, run.stderr[-3000:]
    final = run.final
    lines = progress_lines(run.stderr)
    # 600 records in 40-identifier requests of 150 ms each: about 2.5 s, several intervals.
    assert len(lines) >= 3, run.stderr[-3000:]
    for earlier, later in itertools.pairwise(lines):
        for key in ("read", "skipped", "added", "removed", "requests"):
            assert earlier[key] <= later[key], (key, earlier, later)
    last = lines[-1]
    assert 0 < last["read"] <= final["records_received"] == 600
    assert last["skipped"] <= sum(final["records_skipped"].values()) == 12
    assert 0 < last["added"] <= final["identifiers_added"]
    assert last["removed"] <= final["identifiers_removed"]
    assert 0 < last["requests"] <= final["requests"]
    # The writes are slow, not the source: reading waited for them.
    assert any(line["paused"] > 0 for line in lines), lines
    assert {line["phase"] for line in lines} <= {"reading", "input read, finishing writes"}
    assert lines[0]["phase"] == "reading"
    # At most one line per interval: never one per record or per request.
    assert len(lines) < final["requests"]
    assert_no_identifier(run.stderr + run.stdout, rows, tag)


def test_interval_zero_logs_no_progress(emulator, base_config, run_target) -> None:
    emulator.configure(write_delay_ms=150)
    rows = sentinel_rows(uuid.uuid4().hex, 240)
    run = run_target(slow_config(base_config, 0), records(rows))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.final["requests"] >= 6  # the run lasted over a second
    assert progress_lines(run.stderr) == []


def test_mirror_progress_says_the_phase(emulator, base_config, run_target) -> None:
    tag = uuid.uuid4().hex
    emails = [f"mirror.{tag}.{i}@example.com" for i in range(240)]
    config = {**slow_config(base_config, 0), "sync_mode": "mirror"}
    first = run_target(config, records({"segment_name": "M", "email": e} for e in emails))
    assert first.returncode == 0, first.stderr[-3000:]
    # The source shrinks to its first 40 members: 200 removals, in 5 slow requests.
    emulator.configure(write_delay_ms=250)
    config.update(progress_interval_seconds=0.3, allow_large_removal=True)
    second = run_target(config, records({"segment_name": "M", "email": e} for e in emails[:40]))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.final["identifiers_removed"] == 200
    phases = [line["phase"] for line in progress_lines(second.stderr)]
    assert "mirror, removing 200 identifiers" in phases, phases
    assert all(p.startswith("mirror, ") for p in phases), phases
    assert tag not in second.stderr
