"""A failed run ends with its cause (issue 10, section 5): the tail of a Meltano log is what a
reader sees first, so after a fatal error the last log line repeats the cause on one line, and
no audience-size advice (meant for a run that finished) is given."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from conftest import (
    AD_ACCOUNT,
    SCHEMA,
    email_hash,
    lists_named,
    record,
    records,
    start_cli,
    state,
)

SIZE_ADVICE = "distinct identifiers were added"


def rows(n: int, segment: str = "F") -> list[dict]:
    return [
        {"segment_name": segment, "action": "add", "email": f"f{i}@example.com"} for i in range(n)
    ]


def last_line(stderr: str) -> str:
    return [x for x in stderr.splitlines() if x.strip()][-1]


def assert_ends_with_cause(stderr: str, *words: str) -> None:
    last = last_line(stderr)
    assert "| ERROR" in last and "Run failed: " in last, stderr
    for word in words:
        assert word in last, last
    assert [x for x in stderr.splitlines() if "| ERROR" in x] == [last]  # said once, last
    assert SIZE_ADVICE not in stderr
    assert "Traceback" not in stderr


def test_invalid_record_with_fail(emulator, base_config, run_target):
    bad = {"segment_name": "F", "action": "add", "email": "secret.person@nowhere"}
    run = run_target({**base_config, "identifiers_per_request": 2}, records([*rows(2), bad]))
    assert run.returncode == 1
    assert_ends_with_cause(run.stderr, "record 3", "'email'", "on_invalid_record=skip")
    assert "Run summary:" in run.stderr  # the summary comes first, the cause after it
    assert "secret.person" not in run.stderr
    (created,) = lists_named(emulator, "F")
    assert set(created["members"]) == {email_hash(f"f{i}@example.com") for i in range(2)}


def test_pinterest_refusal_mid_run(emulator, base_config, run_target):
    emulator.configure(under_review=[AD_ACCOUNT])
    run = run_target(base_config, records(rows(3)))
    assert run.returncode == 1
    assert_ends_with_cause(run.stderr, "under review", "2626", "x-pinterest-rid")
    assert "Run summary:" in run.stderr
    assert run.final["complete"] is False


def test_pinterest_refusal_at_start_up(emulator, base_config, run_target):
    first = run_target(base_config, records(rows(1)))
    assert first.returncode == 0, first.stderr
    emulator.configure(under_review=[AD_ACCOUNT])
    config = {**base_config, "audience_id": first.final["audience_id"]}
    run = run_target(config, records(rows(3)))  # the audience is read before any record
    assert run.returncode == 1
    assert_ends_with_cause(run.stderr, "under review", "2626")


def test_retries_exhausted(emulator, base_config, run_target):
    emulator.add_fault("status", status=503, path_contains="customer_lists")
    run = run_target({**base_config, "retry_max_seconds": 0.5}, records(rows(3)))
    assert run.returncode == 1
    assert_ends_with_cause(run.stderr, "HTTP 503", "retry_max_seconds")


def test_malformed_input(emulator, base_config, run_target):
    text = "".join(json.dumps(m) + "\n" for m in [SCHEMA, *records(rows(2))]) + '{"type": "REC'
    run = run_target(base_config, text)
    assert run.returncode == 1
    assert_ends_with_cause(run.stderr, "last input line (4)", "truncated")


@pytest.fixture
def cli(tmp_path):
    """Start the CLI as a live process; never leave it running after the test."""
    procs = []

    def _start(config: dict) -> subprocess.Popen[str]:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        procs.append(start_cli(config_path))
        return procs[-1]

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_stopped_by_a_signal(emulator, base_config, cli):
    proc = cli({**base_config, "identifiers_per_request": 1})
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps(SCHEMA) + "\n")
    for i, message in enumerate(records(rows(4)), start=1):
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.write(json.dumps(state({"bookmarks": {"id": i}})) + "\n")
    proc.stdin.flush()  # and the input stays open: the run is under way
    while "bookmarks" not in json.loads(proc.stdout.readline() or '{"bookmarks": "EOF"}'):
        pass  # until a checkpoint
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    last = last_line(stderr)
    assert "Run stopped by signal 15" in last and "next run" in last, stderr
    assert SIZE_ADVICE not in stderr


def test_a_signal_while_stopping_after_an_error_keeps_the_cause_last(emulator, base_config, cli):
    """The stop goes on (re-entering it from the signal handler could deadlock)."""
    emulator.configure(write_delay_ms=700)  # the stop has writes to wait for
    proc = cli({**base_config, "identifiers_per_request": 1})
    assert proc.stdin and proc.stderr
    bad = record(id=3, segment_name="F", action="add", email="secret.person@nowhere")
    for message in (SCHEMA, *records(rows(2)), bad):
        proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()
    seen = []
    while not any("Stopping early" in x for x in seen):
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert proc.returncode == 1, stderr
    assert "Received signal 15 while stopping: that stop goes on" in stderr
    assert_ends_with_cause(stderr, "record 3", "on_invalid_record=skip")
    (created,) = lists_named(emulator, "F")
    assert set(created["members"]) == {email_hash(f"f{i}@example.com") for i in range(2)}


def test_stream_map_error_names_the_line_and_the_setting(emulator, base_config, run_target):
    config = {**base_config, "stream_maps": {"customers": {"segment_name": "str(int(grp))"}}}
    rows_ = [
        {"grp": "1", "action": "add", "email": "fine@example.com"},
        {"grp": "Raw.Secret@X.com", "action": "add", "email": "a@example.com"},
    ]
    run = run_target(config, records(rows_))
    assert run.returncode == 1
    assert_ends_with_cause(run.stderr, "Unexpected ValueError", "input line 3", "stream_maps")
    assert "raw.secret" not in run.stderr.lower()
