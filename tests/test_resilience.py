"""Resilience end to end: faults injected in the emulator, the real CLI over HTTP.

Every scenario ends by checking the emulator's members, one list and one audience, and
that no token, secret or raw identifier reached stderr.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    ACCESS_TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH_TOKEN,
    SCHEMA,
    email_hash,
    lists_named,
    records,
    start_cli,
    state,
    writes,
)

SECRETS = (ACCESS_TOKEN, REFRESH_TOKEN, CLIENT_SECRET, "pina_", "pinr_")


def adds(n: int, segment: str = "R", start: int = 0) -> list[dict]:
    return [
        {"segment_name": segment, "action": "add", "email": f" User{i}@Example.com "}
        for i in range(start, start + n)
    ]


def expected(n: int, start: int = 0) -> set[str]:
    return {email_hash(f"user{i}@example.com") for i in range(start, start + n)}


def assert_clean(emulator, stderr: str, segment: str = "R", n_audiences: int = 1) -> None:
    assert len(lists_named(emulator, segment)) == 1
    assert len(emulator.state()["audiences"]) == n_audiences
    for secret in SECRETS:
        assert secret not in stderr
    assert "@example.com" not in stderr.lower()
    assert "Traceback" not in stderr


def the_members(emulator, segment: str = "R") -> set[str]:
    (found,) = lists_named(emulator, segment)
    return set(found["members"])


def test_429_bursts_with_and_without_retry_after(emulator, base_config, run_target):
    emulator.add_fault("status", status=429, retry_after=1, count=2, methods=["PATCH"])
    emulator.add_fault("status", status=429, count=3, methods=["POST"])
    emulator.add_fault("status", status=429, count=2, methods=["GET"])
    # one request at a time, so both Retry-After waits add up
    config = {**base_config, "identifiers_per_request": 3, "max_concurrent_writes": 1}
    started = time.monotonic()
    run = run_target(config, records(adds(10)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(10)
    assert_clean(emulator, run.stderr)
    assert run.final["retries"] >= 7
    # Retry-After: 1 was honoured twice even though backoff delays are tiny here
    assert time.monotonic() - started >= 2.0
    statuses = [r["status"] for r in emulator.state()["requests"]]
    assert statuses.count(429) == 7


@pytest.mark.parametrize("status", [401, 403])
def test_not_permitted_fails_at_once_without_spending_refresh_tokens(
    emulator, base_config, run_target, status
):
    """Code 29 (FACTS: 401/403, not permitted) is not an expired token: a refresh would
    rotate the refresh token for nothing and the advice would blame the scopes."""
    emulator.add_fault("status", status=status, code=29, message="Not permitted", methods=["GET"])
    config = {
        **base_config,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
    }
    run = run_target(config, records(adds(3)))
    assert run.returncode != 0
    assert "code 29, not permitted" in run.stderr and "Business Access" in run.stderr
    assert "scopes" not in run.stderr.splitlines()[-1]
    requests_seen = emulator.state()["requests"]
    assert not [r for r in requests_seen if r["path"].endswith("/oauth/token")]
    assert len([r for r in requests_seen if r["method"] == "GET"]) == 1
    assert not [r for r in requests_seen if r["method"] in ("POST", "PATCH")]
    for secret in SECRETS:
        assert secret not in run.stderr
    assert "@example.com" not in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(emulator, base_config, run_target, status):
    emulator.add_fault("status", status=status, every=2, count=4)
    run = run_target({**base_config, "identifiers_per_request": 4}, records(adds(12)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(12)
    assert_clean(emulator, run.stderr)


def test_dropped_connections_before_and_after_applying(emulator, base_config, run_target):
    emulator.add_fault("drop_before", methods=["PATCH"], count=2)
    emulator.add_fault("drop_after", methods=["PATCH"], every=2, count=2)
    run = run_target({**base_config, "identifiers_per_request": 3}, records(adds(12)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(12)
    assert_clean(emulator, run.stderr)


@pytest.mark.parametrize("kind", ["customer_lists", "audiences"])
def test_lost_answer_to_a_create_never_duplicates(emulator, base_config, run_target, kind):
    # Pinterest applied the create but the answer never came back.
    emulator.add_fault("drop_after", methods=["POST"], path_contains=kind, count=1)
    run = run_target(base_config, records(adds(5)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(5)
    assert_clean(emulator, run.stderr)
    assert "adopting" in run.stderr


def test_server_error_on_create_never_duplicates(emulator, base_config, run_target):
    emulator.add_fault("status", status=502, methods=["POST"], count=2)
    run = run_target(base_config, records(adds(5)))
    assert run.returncode == 0, run.stderr
    assert_clean(emulator, run.stderr)


def test_slow_answers_time_out_and_are_retried(emulator, base_config, run_target):
    emulator.add_fault("delay", delay_ms=2500, methods=["PATCH"], count=1)
    config = {**base_config, "identifiers_per_request": 3, "request_timeout_seconds": 1}
    run = run_target(config, records(adds(9)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(9)
    assert_clean(emulator, run.stderr)


def test_request_too_large_is_split_until_it_fits(emulator, base_config, run_target):
    emulator.configure(record_cap=3)
    run = run_target({**base_config, "identifiers_per_request": 16}, records(adds(20)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(20)
    assert_clean(emulator, run.stderr)
    applied = [r for r in writes(emulator) if r["status"] == 200 and r.get("n_records")]
    assert applied and all(r["n_records"] <= 3 for r in applied)


def test_other_client_errors_fail_at_once_with_status_code_and_rid(
    emulator, base_config, run_target
):
    emulator.add_fault(
        "status", status=400, code=1, message="Invalid parameters.", methods=["PATCH"]
    )
    run = run_target({**base_config, "identifiers_per_request": 2}, records(adds(4)))
    assert run.returncode != 0
    assert "HTTP 400" in run.stderr and "code 1" in run.stderr and "x-pinterest-rid" in run.stderr
    assert sum(1 for r in writes(emulator) if r["method"] == "PATCH") == 1  # not retried


def test_retry_budget_gives_up_with_what_failed(emulator, base_config, run_target):
    emulator.add_fault("status", status=503, methods=["PATCH"])
    msgs = [
        *records(adds(2)),
        state({"bookmarks": {"b": 2}}),
        *records(adds(2, start=2), start_id=3),
    ]
    config = {**base_config, "identifiers_per_request": 2, "retry_max_seconds": 1}
    run = run_target(config, [*msgs, state({"bookmarks": {"b": 4}})])
    assert run.returncode != 0
    assert "attempts" in run.stderr and "HTTP 503" in run.stderr
    assert "x-pinterest-rid" in run.stderr and "retry_max_seconds" in run.stderr
    # the first batch (the create) was written and checkpointed; the failed one was not
    bookmarks = [s.get("bookmarks") for s in run.states]
    assert {"b": 4} not in bookmarks
    assert {"b": 2} in bookmarks


def test_access_token_expiring_mid_run_is_refreshed_and_saved(
    emulator, base_config, run_target, tmp_path
):
    emulator.configure(access_token_ttl_requests=3)
    config = {
        **base_config,
        "refresh_token": REFRESH_TOKEN,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "identifiers_per_request": 2,
    }
    run = run_target(config, records(adds(14)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(14)
    assert_clean(emulator, run.stderr)
    assert run.final["token_refreshes"] >= 2
    token_file = Path(config["token_cache_path"])
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    saved = json.loads(token_file.read_text())
    assert saved["refresh_token"] != REFRESH_TOKEN
    assert saved["access_token"] != ACCESS_TOKEN


def test_rotated_refresh_token_carries_over_to_the_next_run(emulator, base_config, run_target):
    emulator.configure(refresh_single_use=True, access_token_ttl_requests=4)
    config = {
        **base_config,
        "refresh_token": REFRESH_TOKEN,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "identifiers_per_request": 2,
    }
    del config["access_token"]
    run1 = run_target(config, records(adds(6)))
    assert run1.returncode == 0, run1.stderr
    # the config still holds the original refresh token, which Pinterest no longer accepts
    run2 = run_target(config, records(adds(6, start=6)))
    assert run2.returncode == 0, run2.stderr
    assert the_members(emulator) == expected(12)
    assert_clean(emulator, run1.stderr + run2.stderr)


def test_crash_between_list_and_audience_is_completed_by_the_rerun(
    emulator, base_config, run_target
):
    emulator.add_fault(
        "status", status=403, code=29, methods=["POST"], path_contains="audiences", count=1
    )
    run1 = run_target(base_config, records(adds(3)))
    assert run1.returncode != 0
    assert len(lists_named(emulator, "R")) == 1 and emulator.state()["audiences"] == []
    run2 = run_target(base_config, records(adds(3, start=3)))
    assert run2.returncode == 0, run2.stderr
    assert the_members(emulator) == expected(6)
    assert_clean(emulator, run2.stderr)
    assert run2.final["list_created"] is False and run2.final["audience_created"] is True


def test_mixed_faults_end_with_exact_members(emulator, base_config, run_target):
    emulator.configure(access_token_ttl_requests=5)
    emulator.add_faults(
        [
            {"kind": "status", "status": 429, "every": 3, "count": 4},
            {"kind": "status", "status": 503, "every": 4, "count": 3},
            {"kind": "drop_after", "methods": ["PATCH", "POST"], "every": 5, "count": 3},
            {"kind": "drop_before", "every": 6, "count": 2},
        ]
    )
    rows = adds(30)
    rows += [
        {"segment_name": "R", "action": "remove", "email": f"user{i}@example.com"}
        for i in range(0, 30, 3)
    ]
    rows += [{"segment_name": "R", "action": "add", "email": "user3@example.com"}]
    config = {
        **base_config,
        "refresh_token": REFRESH_TOKEN,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "identifiers_per_request": 4,
    }
    run = run_target(config, records(rows))
    assert run.returncode == 0, run.stderr
    want = expected(30) - {email_hash(f"user{i}@example.com") for i in range(0, 30, 3)}
    want.add(email_hash("user3@example.com"))
    assert the_members(emulator) == want
    assert_clean(emulator, run.stderr)


def test_write_rate_limit_holds_over_any_minute(emulator, base_config, run_target):
    """Slow by nature (a full minute must pass): 6 writes under a limit of 4 per minute."""
    config = {**base_config, "identifiers_per_request": 1, "max_writes_per_minute": 4}
    started = time.monotonic()
    run = run_target(config, records(adds(5)), timeout=180)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(5)
    assert len(writes(emulator)) == 6  # create list, create audience, 4 adds
    assert emulator.state()["max_writes_in_any_60s"] <= 4
    assert elapsed >= 60


def _stream_then_signal(
    config_path: Path, lines: list[str], sig: int, env: dict
) -> tuple[int, list[dict], str]:
    """Feed lines but keep stdin open; send `sig` once a checkpoint with a bookmark appears."""
    proc = start_cli(config_path, env)
    assert proc.stdin and proc.stdout and proc.stderr
    for line in lines:
        proc.stdin.write(line)
    proc.stdin.flush()
    stderr_chunks: list[str] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()))
    reader.start()
    states = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        states.append(json.loads(line))
        if "bookmarks" in states[-1]:
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=60)
    reader.join()
    states += [json.loads(x) for x in rest.splitlines() if x.strip()]
    return proc.returncode, states, "".join(stderr_chunks)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_mid_stream_then_rerun_from_checkpoint(
    emulator, base_config, tmp_path, run_target, sig
):
    emulator.configure(write_delay_ms=150)
    n = 40
    msgs = [SCHEMA]
    for i, rec in enumerate(records(adds(n)), start=1):
        msgs.append(rec)
        msgs.append(state({"bookmarks": {"customers": {"id": i}}}))
    lines = [json.dumps(m) + "\n" for m in msgs]
    config = {**base_config, "identifiers_per_request": 4}
    config_path = tmp_path / "kill-config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    code, states, stderr = _stream_then_signal(config_path, lines, sig, env)
    assert code != 0  # the input was not fully processed
    checkpoint = max(s["bookmarks"]["customers"]["id"] for s in states if "bookmarks" in s)
    assert checkpoint < n
    # state never runs ahead of the data: every record up to the checkpoint is in the list
    assert expected(checkpoint) <= the_members(emulator)
    if sig == signal.SIGTERM:
        assert states[-1]["pinterest_audience"]["complete"] is False
        assert "Traceback" not in stderr

    # the scheduler runs again from the checkpoint
    rest = records(adds(n - checkpoint, start=checkpoint), start_id=checkpoint + 1)
    run = run_target(config, rest)
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(n)
    assert_clean(emulator, run.stderr)


def test_slow_create_that_times_out_is_adopted_not_duplicated(emulator, base_config, run_target):
    emulator.add_fault(
        "delay", delay_ms=2500, methods=["POST"], path_contains="customer_lists", count=1
    )
    run = run_target({**base_config, "request_timeout_seconds": 1}, records(adds(3)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(3)
    assert_clean(emulator, run.stderr)


def test_timed_out_remove_landing_late_does_not_beat_a_later_add(emulator, base_config, run_target):
    run_target(base_config, records(adds(1)))  # user0 is in the list
    emulator.add_fault("delay", delay_ms=2500, methods=["PATCH"], count=1)
    rows = [
        {"segment_name": "R", "action": "remove", "email": "user0@example.com"},
        {"segment_name": "R", "action": "add", "email": "user0@example.com"},
    ]
    config = {
        **base_config,
        "identifiers_per_request": 1,
        "request_timeout_seconds": 1,
        "checkpoint_interval_seconds": 0,  # the remove goes out before the add comes in
    }
    run = run_target(config, records(rows))
    assert run.returncode == 0, run.stderr
    # The late REMOVE lands 2.5 s after it arrived, perhaps after the run ended: read the
    # list only once it has (reading earlier let a target that never re-sends pass).
    deadline = time.monotonic() + 15
    while any(r["status"] is None for r in emulator.state(members=False)["requests"]):
        assert time.monotonic() < deadline, "the emulator still holds unanswered requests"
        time.sleep(0.05)
    assert the_members(emulator) == expected(1)
    assert "Re-sending the final action of 1 identifiers" in run.stderr


def test_too_large_for_a_single_identifier_is_retried(emulator, base_config, run_target):
    run_target(base_config, records(adds(1)))
    emulator.add_fault("too_large", methods=["PATCH"], count=2)
    run = run_target(base_config, records(adds(1, start=1)))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(2)


def test_same_operation_writes_overlap_but_never_cross_an_opposite_one(
    emulator, base_config, run_target
):
    run_target(base_config, records(adds(1)))  # the list exists; user0 is in it
    emulator.configure(write_delay_ms=300)
    rows = adds(16, start=1) + [
        {"segment_name": "R", "action": "remove", "email": f"user{i}@example.com"}
        for i in range(0, 8)
    ]
    config = {**base_config, "identifiers_per_request": 2, "max_concurrent_writes": 4}
    run = run_target(config, records(rows))
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(17) - expected(8)
    patches = [r for r in writes(emulator) if r["method"] == "PATCH"]
    add_times = [r["t"] for r in patches if r["operation_type"] == "ADD"]
    remove_times = [r["t"] for r in patches if r["operation_type"] == "REMOVE"]
    # several ADDs were in flight together (each is answered only after 300 ms) ...
    assert any(b - a < 0.2 for a, b in itertools.pairwise(add_times))
    # ... yet every REMOVE went out only after the ADDs sent before it had answered
    for t_remove in remove_times:
        earlier_adds = [t for t in add_times if t < t_remove]
        assert all(t_remove - t >= 0.3 for t in earlier_adds)


def test_an_older_straggler_never_wins_over_a_newer_timed_out_write(
    emulator, base_config, run_target
):
    """ADD x times out (lands after 4 s), REMOVE x times out too (lands after 1.5 s): the
    ADD lands last, and the target must still end with x removed, before its checkpoint."""
    run_target(base_config, records(adds(1)))  # the list exists with user0
    emulator.add_fault("delay", delay_ms=4000, methods=["PATCH"], count=1)
    emulator.add_fault("delay", delay_ms=1500, methods=["PATCH"], skip=1, count=1)
    rows = [
        {"segment_name": "R", "action": "add", "email": "x@example.com"},
        {"segment_name": "R", "action": "remove", "email": "x@example.com"},
    ]
    config = {
        **base_config,
        "identifiers_per_request": 1,
        "max_concurrent_writes": 1,
        "checkpoint_interval_seconds": 0,
        "request_timeout_seconds": 1,
    }
    run = run_target(config, [*records(rows), state({"bookmarks": {"b": 2}})])
    assert run.returncode == 0, run.stderr
    assert the_members(emulator) == expected(1)
    assert run.states[-1]["bookmarks"] == {"b": 2}
