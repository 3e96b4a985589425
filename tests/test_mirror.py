"""Mirror sync end to end: the real CLI over HTTP against the emulator.

In mirror mode a run's records are the whole audience: the list ends exactly equal to
them, only the difference from the snapshot is written, removals wait for the end of
the input, and a removal cap stops a broken source from emptying a live audience.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SCHEMA,
    confirmed_in_store,
    drop_test_database,
    email_hash,
    lists_named,
    record,
    start_cli,
    state,
)

SEGMENT = "Mirror VIP"


def emails(ids: range | list[int]) -> list[str]:
    return [f"Member{i}@Example.com" for i in ids]


def rows(addresses: list[str], **extra: Any) -> list[dict[str, Any]]:
    """Member records: no action at all (mirror's default)."""
    return [
        record(id=i + 1, segment_name=SEGMENT, email=f"  {a} ", **extra)
        for i, a in enumerate(addresses)
    ]


def hashed(addresses: list[str]) -> set[str]:
    return {email_hash(a) for a in addresses}


def mirror_config(base_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**base_config, "sync_mode": "mirror", "identifiers_per_request": 10_000, **extra}


def the_list(emulator) -> dict[str, Any]:
    (found,) = lists_named(emulator, SEGMENT)
    return found


def write_log(emulator) -> list[dict[str, Any]]:
    return [
        r
        for r in emulator.state(members=False)["requests"]
        if r["method"] in ("POST", "PATCH") and "customer_lists" in r["path"]
    ]


def patches_since(emulator, before: int) -> list[tuple[str, int]]:
    return [
        (r.get("operation_type"), r.get("n_records"))
        for r in write_log(emulator)[before:]
        if r["method"] == "PATCH" and r.get("status") == 200
    ]


def assert_no_raw_identifier(text: str) -> None:
    assert "@example.com" not in text.lower()
    assert "Traceback" not in text


def test_mirror_creates_then_writes_only_the_difference_then_nothing(
    emulator, base_config, run_target
):
    config = mirror_config(base_config)
    first = emails(range(400))
    run1 = run_target(config, rows(first))
    assert run1.returncode == 0, run1.stderr
    report = run1.final
    assert report["list_created"] and report["sync_mode"] == "mirror"
    assert report["snapshot"] == "new"
    assert report["members_in_source"] == 400 and report["unchanged"] == 0
    assert report["identifiers_added"] == 400 and report["identifiers_removed"] == 0
    assert set(the_list(emulator)["members"]) == hashed(first)

    # 5% of the members left, 5% are new: only those 40 identifiers are written.
    second = emails(range(20, 420))
    before = len(write_log(emulator))
    run2 = run_target(config, rows(second))
    assert run2.returncode == 0, run2.stderr
    assert set(the_list(emulator)["members"]) == hashed(second)
    assert sorted(patches_since(emulator, before)) == [("ADD", 20), ("REMOVE", 20)]
    report = run2.final
    assert report["snapshot"] == "existing"
    assert report["members_in_source"] == 400 and report["unchanged"] == 380
    assert report["identifiers_added"] == 20 and report["identifiers_removed"] == 20
    assert report["removals_held_back"] == 0 and report["complete"] is True

    # The same source again: not a single write request.
    before = len(write_log(emulator))
    run3 = run_target(config, rows(second))
    assert run3.returncode == 0, run3.stderr
    assert write_log(emulator)[before:] == []
    assert run3.final["unchanged"] == 400
    assert run3.final["identifiers_added"] == 0 and run3.final["identifiers_removed"] == 0
    assert len(lists_named(emulator, SEGMENT)) == 1
    assert len(emulator.state()["audiences"]) == 1
    assert_no_raw_identifier(run1.stderr + run2.stderr + run3.stderr)


def test_mirror_actions_duplicates_and_flips(emulator, base_config, run_target):
    """`add` or no action is a member, `remove` is not; the later record wins."""
    config = mirror_config(base_config)
    addresses = emails(range(10))
    run1 = run_target(config, rows(addresses))
    assert run1.returncode == 0, run1.stderr
    messages = [
        record(id=1, segment_name=SEGMENT, email=addresses[0]),  # member, unchanged
        record(id=2, segment_name=SEGMENT, email=addresses[1], action="ADD "),
        record(id=3, segment_name=SEGMENT, email=addresses[2], action="remove"),  # leaves
        record(id=4, segment_name=SEGMENT, email="new1@example.com"),
        record(id=5, segment_name=SEGMENT, email="new1@example.com"),  # duplicate
        record(id=6, segment_name=SEGMENT, email="new2@example.com"),
        record(id=7, segment_name=SEGMENT, email="new2@example.com", action="remove"),  # flip
        record(id=8, segment_name=SEGMENT, email=addresses[3], action="remove"),
        record(id=9, segment_name=SEGMENT, email=addresses[3], action="add"),  # flip back
        *[record(id=10 + i, segment_name=SEGMENT, email=a) for i, a in enumerate(addresses[4:])],
    ]
    run2 = run_target(config, messages)
    assert run2.returncode == 0, run2.stderr
    expected = [addresses[0], addresses[1], addresses[3], "new1@example.com", *addresses[4:]]
    assert set(the_list(emulator)["members"]) == hashed(expected)
    report = run2.final
    assert report["members_in_source"] == len(expected)
    assert report["unchanged"] == len(expected) - 1
    assert report["identifiers_added"] == 1  # new1, once
    assert report["identifiers_removed"] == 1  # addresses[2]


def test_removal_cap_holds_back_then_allow_large_removal_ends_exact(
    emulator, base_config, run_target
):
    config = mirror_config(base_config)
    members = emails(range(200))
    assert run_target(config, rows(members)).returncode == 0

    # A source with half the members and 10 new ones: 50% removal is above the 20% cap.
    half = emails(range(100)) + emails(range(1000, 1010))
    before = len(write_log(emulator))
    held = run_target(config, rows(half))
    assert held.returncode != 0
    assert patches_since(emulator, before) == [("ADD", 10)]  # the adds were done
    assert set(the_list(emulator)["members"]) == hashed(members + emails(range(1000, 1010)))
    report = held.final
    assert report["removals_held_back"] == 100
    assert "max_removal_fraction" in report["removals_held_back_reason"]
    assert report["identifiers_removed"] == 0 and report["complete"] is False
    last_line = [line for line in held.stderr.splitlines() if line.strip()][-1]
    for fact in ("100", "200", "50.0%", "0.2", "allow_large_removal"):
        assert fact in last_line, (fact, last_line)
    assert "distinct identifiers were added" not in held.stderr  # no audience-size warning

    # An empty source is the extreme case: nothing is removed.
    before = len(write_log(emulator))
    empty = run_target(config, [record(id=1, segment_name=SEGMENT, email="")], timeout=60)
    assert empty.returncode != 0
    assert write_log(emulator)[before:] == []
    assert len(the_list(emulator)["members"]) == 210

    # Allowed for one run (Meltano passes TARGET_PINTEREST_AUDIENCES_ALLOW_LARGE_REMOVAL).
    allowed = run_target({**config, "allow_large_removal": True}, rows(half))
    assert allowed.returncode == 0, allowed.stderr
    assert set(the_list(emulator)["members"]) == hashed(half)
    assert allowed.final["identifiers_removed"] == 100
    assert allowed.final["removals_held_back"] == 0
    assert_no_raw_identifier(held.stderr + empty.stderr + allowed.stderr)


def test_empty_source_on_a_known_audience_removes_nothing_unless_allowed(
    emulator, base_config, run_target
):
    config = mirror_config(base_config)
    members = emails(range(50))
    first = run_target(config, rows(members))
    assert first.returncode == 0
    audience_id = first.final["audience_id"]
    by_id = {**config, "audience_id": audience_id}
    del by_id["audience_name"]
    before = len(write_log(emulator))
    nothing = run_target(by_id, [])
    assert nothing.returncode != 0
    assert "no members" in nothing.stderr
    assert write_log(emulator)[before:] == []
    assert nothing.final["removals_held_back"] == 50
    assert len(the_list(emulator)["members"]) == 50
    allowed = run_target({**by_id, "allow_large_removal": True}, [])
    assert allowed.returncode == 0, allowed.stderr
    assert the_list(emulator)["members"] == []


def test_skipped_records_count_as_seen(emulator, base_config, run_target):
    """With on_invalid_record=skip a skipped record's well-formed identifiers are neither
    added nor removed because of it."""
    config = mirror_config(base_config, on_invalid_record="skip")
    members = emails(range(20))
    assert run_target(config, rows(members)).returncode == 0
    messages = [
        *[record(id=i, segment_name=SEGMENT, email=a) for i, a in enumerate(members[:18])],
        # A member whose row is now broken elsewhere: it stays.
        record(id=30, segment_name=SEGMENT, email=members[18], action="maybe"),
        # A new person in a broken row: not added.
        record(id=31, segment_name=SEGMENT, email="new@example.com", maid="not-a-uuid"),
        # members[19] is absent: removed.
    ]
    run = run_target(config, messages)
    assert run.returncode == 0, run.stderr
    assert set(the_list(emulator)["members"]) == hashed(members[:19])
    assert run.final["records_skipped"] == {"unknown_action": 1, "invalid_maid": 1}
    assert run.final["identifiers_removed"] == 1 and run.final["identifiers_added"] == 0


def test_dry_run_reports_the_exact_diff_without_writing(emulator, base_config, run_target):
    config = mirror_config(base_config)
    assert run_target(config, rows(emails(range(100)))).returncode == 0
    source = rows(emails(range(10, 105)))
    before = len(write_log(emulator))
    dry = run_target({**config, "dry_run": True}, source)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == ""  # a dry run writes no STATE
    (line,) = [x for x in dry.stderr.splitlines() if "Dry run report:" in x]
    report = json.loads(line.split("Dry run report:", 1)[1])
    assert report["identifiers_added"] == 5 and report["identifiers_removed"] == 10
    assert report["unchanged"] == 90 and report["members_in_source"] == 95
    assert write_log(emulator)[before:] == []
    # The snapshot was not changed: the real run finds the same difference.
    real = run_target(config, source)
    assert real.returncode == 0, real.stderr
    assert real.final["identifiers_added"] == 5 and real.final["identifiers_removed"] == 10
    assert set(the_list(emulator)["members"]) == hashed(emails(range(10, 105)))


def test_first_mirror_run_of_a_list_without_snapshot_removes_nothing(
    emulator, base_config, run_target, isolated_state_home
):
    events = run_target(
        base_config,
        [
            record(id=i, segment_name=SEGMENT, action="add", email=a)
            for i, a in enumerate(emails(range(30)))
        ],
    )
    assert events.returncode == 0, events.stderr
    # The snapshot is lost (a new machine, a wiped disk).
    for path in isolated_state_home.rglob("snapshot-*"):
        path.unlink()
    run = run_target(mirror_config(base_config), rows(emails(range(20, 40))))
    assert run.returncode == 0, run.stderr
    assert run.final["snapshot"] == "new"
    assert "cannot be removed automatically" in run.stderr
    assert set(the_list(emulator)["members"]) == hashed(emails(range(40)))
    # Nothing is known of the list: every member is sent (ADD is idempotent), none removed.
    assert run.final["identifiers_removed"] == 0 and run.final["identifiers_added"] == 20
    # From now on the snapshot knows the list: the next run removes what left.
    run2 = run_target(mirror_config(base_config), rows(emails(range(20, 39))))
    assert run2.returncode == 0, run2.stderr
    assert run2.final["identifiers_removed"] == 1


def test_events_runs_keep_the_snapshot_for_a_later_mirror_run(emulator, base_config, run_target):
    adds = [
        record(id=i, segment_name=SEGMENT, action="add", email=a)
        for i, a in enumerate(emails(range(30)))
    ]
    removes = [record(id=99, segment_name=SEGMENT, action="remove", email=emails([0])[0])]
    assert run_target(base_config, adds + removes).returncode == 0
    run = run_target(mirror_config(base_config), rows(emails(range(1, 28))))
    assert run.returncode == 0, run.stderr
    assert run.final["snapshot"] == "existing"
    assert run.final["unchanged"] == 27 and run.final["identifiers_removed"] == 2
    assert set(the_list(emulator)["members"]) == hashed(emails(range(1, 28)))


def test_mirror_does_not_pass_tap_bookmarks_on_and_accepts_activate_version(
    emulator, base_config, run_target
):
    messages = [
        {"type": "ACTIVATE_VERSION", "stream": "customers", "version": 1},
        *rows(emails(range(5))),
        state({"bookmarks": {"customers": {"replication_key_value": 5}}}),
        {"type": "ACTIVATE_VERSION", "stream": "customers", "version": 1},
    ]
    run = run_target(mirror_config(base_config), messages)
    assert run.returncode == 0, run.stderr
    assert all(set(s) == {"pinterest_audience", "pinterest_audiences"} for s in run.states)
    assert set(the_list(emulator)["members"]) == hashed(emails(range(5)))
    events = run_target(
        base_config,
        [
            {"type": "ACTIVATE_VERSION", "stream": "customers", "version": 2},
            record(id=1, segment_name=SEGMENT, action="remove", email=emails([0])[0]),
            state({"bookmarks": {"customers": {"replication_key_value": 6}}}),
        ],
    )
    assert events.returncode == 0, events.stderr
    assert events.states[-1]["bookmarks"] == {"customers": {"replication_key_value": 6}}
    assert set(the_list(emulator)["members"]) == hashed(emails(range(1, 5)))


def test_a_fatal_error_mid_run_never_removes(emulator, base_config, run_target):
    config = mirror_config(base_config, identifiers_per_request=10)
    assert run_target(config, rows(emails(range(40)))).returncode == 0
    # A partial source followed by an invalid record: adds may happen, removals never.
    messages = [*rows(emails(range(35, 60))), record(id=99, segment_name=SEGMENT, email="bad")]
    run = run_target(config, messages)
    assert run.returncode != 0
    assert hashed(emails(range(40))) <= set(the_list(emulator)["members"])
    assert run.final["identifiers_removed"] == 0


# ---- crash safety and concurrency ------------------------------------------------------------


def _write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(config))
    return path


def _lines(messages: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(m) + "\n" for m in [SCHEMA, *messages])


def _kill_when(emulator, proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(write_log(emulator)):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill: {proc.returncode}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the run never reached the point of the kill")


@pytest.mark.parametrize("phase", ["adds", "removals"])
def test_sigkill_mid_mirror_run_then_the_same_run_is_exact(
    emulator, base_config, run_target, tmp_path, phase
):
    config = mirror_config(base_config, identifiers_per_request=25, max_concurrent_writes=2)
    first = emails(range(300))
    assert run_target(config, rows(first)).returncode == 0
    source = emails(range(150, 400))  # 150 leave (50%: allowed below), 100 new
    config = {**config, "allow_large_removal": True}
    emulator.configure(write_delay_ms=150)
    before = len(write_log(emulator))
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    feeder = threading.Thread(
        target=lambda: (proc.stdin.write(_lines(rows(source))), proc.stdin.close())
    )
    feeder.start()

    def ready(log: list[dict[str, Any]]) -> bool:
        done = [r for r in log[before:] if r.get("status") == 200]
        if phase == "adds":
            return len(done) >= 2
        return any(r.get("operation_type") == "REMOVE" for r in done)

    _kill_when(emulator, proc, ready)
    feeder.join(timeout=30)
    emulator.configure(write_delay_ms=0)
    again = run_target(config, rows(source))
    assert again.returncode == 0, again.stderr
    assert set(the_list(emulator)["members"]) == hashed(source)
    assert len(lists_named(emulator, SEGMENT)) == 1
    assert len(emulator.state()["audiences"]) == 1
    # And the snapshot agrees with Pinterest: one more run writes nothing.
    before = len(write_log(emulator))
    assert run_target(config, rows(source)).returncode == 0
    assert write_log(emulator)[before:] == []


def test_two_runs_on_one_list_at_once_the_second_stops(emulator, base_config, run_target, tmp_path):
    config = mirror_config(base_config, identifiers_per_request=20, max_concurrent_writes=1)
    source = emails(range(200))
    emulator.configure(write_delay_ms=200)
    first = start_cli(_write_config(tmp_path, config))
    assert first.stdin is not None
    first.stdin.write(_lines(rows(source)))
    first.stdin.flush()
    deadline = time.monotonic() + 30
    while not write_log(emulator) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_target(config, rows(source), timeout=60)
    assert second.returncode != 0
    assert "another run is syncing" in second.stderr
    assert "Traceback" not in second.stderr
    first.stdin.close()
    assert first.wait(timeout=120) == 0
    emulator.configure(write_delay_ms=0)
    assert set(the_list(emulator)["members"]) == hashed(source)
    # The lock dies with its run: a later run goes ahead.
    assert run_target(config, rows(source)).returncode == 0


# ---- the PostgreSQL snapshot store -----------------------------------------------------------


@pytest.fixture
def snapshot_database():
    """A fresh database on the test PostgreSQL server (scripts/setup-postgres.sh)."""
    if not any(os.environ.get(v) for v in ("PGHOST", "PGPORT", "PGDATABASE")):
        message = "no PostgreSQL server configured (PGHOST/PGPORT/PGDATABASE are not set)"
        if os.environ.get("TPA_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    psycopg = pytest.importorskip("psycopg")
    name = f"tpa_snapshot_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname=os.environ.get("PGDATABASE", "postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    env = os.environ
    url = (
        f"postgresql://{env.get('PGUSER', 'postgres')}:{env.get('PGPASSWORD', '')}@"
        f"{env.get('PGHOST', '127.0.0.1')}:{env.get('PGPORT', '5432')}/{name}"
    )
    try:
        yield url, name
    finally:
        with psycopg.connect(
            dbname=os.environ.get("PGDATABASE", "postgres"), autocommit=True
        ) as admin:
            drop_test_database(admin, name)


def _scenario(run_target, emulator, config: dict[str, Any]) -> list[Any]:
    """Create, diff, no-op, held removal: what each step wrote and reported."""
    outcome = []
    for source, extra in (
        (emails(range(100)), {}),
        (emails(range(10, 110)), {}),
        (emails(range(10, 110)), {}),
        (emails(range(30)), {}),
        (emails(range(30)), {"allow_large_removal": True}),
    ):
        before = len(write_log(emulator))
        run = run_target({**config, **extra}, rows(source))
        report = run.final
        outcome.append(
            (
                run.returncode,
                sorted(patches_since(emulator, before)),
                {
                    k: report[k]
                    for k in (
                        "identifiers_added",
                        "identifiers_removed",
                        "unchanged",
                        "removals_held_back",
                        "snapshot",
                    )
                },
                len(the_list(emulator)["members"]),
            )
        )
    return outcome


def test_postgres_snapshot_store_gives_the_same_results_as_sqlite(
    emulator, base_config, run_target, snapshot_database
):
    url, name = snapshot_database
    sqlite_outcome = _scenario(run_target, emulator, mirror_config(base_config))
    emulator.reset()
    pg_run = mirror_config(base_config, snapshot_url=url)
    postgres_outcome = _scenario(run_target, emulator, pg_run)
    assert postgres_outcome == sqlite_outcome
    assert sqlite_outcome[2][1] == []  # the no-op run wrote nothing
    assert sqlite_outcome[3][0] != 0 and sqlite_outcome[4][0] == 0

    import psycopg

    # The last run wrote, so its changes wait in the change log; a run that writes nothing
    # counts them for its match rate, merging them into the members.
    quiet = run_target(mirror_config(base_config, snapshot_url=url, sync_mode="events"), [])
    assert quiet.final["match_rate"] == pytest.approx(1.0)
    env = os.environ
    with psycopg.connect(dbname=name) as conn:
        count = confirmed_in_store(conn)
    assert count == 30
    # The store is named in the log, never with its password.
    log = run_target(pg_run, rows(emails(range(30)))).stderr
    assert url not in log and f":{env.get('PGPASSWORD', '')}@" not in log
    assert "snapshot existing (postgresql" in log


def test_sigterm_while_the_run_finishes_its_writes_stops_cleanly(
    emulator, base_config, run_target, tmp_path
):
    """A signal that lands while the main thread waits for the end-of-input writes (here:
    mirror removals after the input was read) stops the run without hanging; the same run
    again ends exact."""
    config = mirror_config(base_config, identifiers_per_request=10, max_concurrent_writes=1)
    assert run_target(config, rows(emails(range(100)))).returncode == 0
    source = emails(range(85))  # 15 leave: under the cap
    emulator.configure(write_delay_ms=300)
    before = len(write_log(emulator))
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(rows(source)))
    proc.stdin.close()  # the whole input: the run is in its end-of-input writes
    proc.stdin = None  # (so that communicate() does not flush it)
    deadline = time.monotonic() + 30
    while not any(r.get("operation_type") == "REMOVE" for r in write_log(emulator)[before:]):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Run stopped by signal 15" in stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    emulator.configure(write_delay_ms=0)
    again = run_target(config, rows(source))
    assert again.returncode == 0, again.stderr
    assert set(the_list(emulator)["members"]) == hashed(source)


def test_a_source_of_removes_only_with_no_list_writes_nothing(emulator, base_config, run_target):
    messages = [
        record(id=i, segment_name=SEGMENT, email=a, action="remove")
        for i, a in enumerate(emails(range(3)))
    ]
    run = run_target(mirror_config(base_config), messages)
    assert run.returncode == 0, run.stderr
    assert write_log(emulator) == []
    assert lists_named(emulator, SEGMENT) == []
    assert run.final["removes_without_list"] == 3 and run.final["identifiers_removed"] == 0


def test_first_run_counts_each_member_once_even_far_apart(emulator, base_config, run_target):
    """A member named again after its ADD went out (batches apart) may be sent twice; the
    report counts distinct identifiers, and the list is exact."""
    config = mirror_config(base_config, identifiers_per_request=5, max_concurrent_writes=1)
    addresses = emails(range(30))
    messages = rows(addresses) + [
        record(id=100 + i, segment_name=SEGMENT, email=a.upper()) for i, a in enumerate(addresses)
    ]
    run = run_target(config, messages)
    assert run.returncode == 0, run.stderr
    assert set(the_list(emulator)["members"]) == hashed(addresses)
    assert run.final["identifiers_added"] == 30 and run.final["members_in_source"] == 30
    again = run_target(config, messages)
    assert again.returncode == 0, again.stderr
    assert again.final["identifiers_added"] == 0 and again.final["unchanged"] == 30


# ---- snapshots kept under a list id that another list reuses ---------------------------------


def _post_list(emulator, name: str, hashes: set[str]) -> str:
    """Create a list straight on the emulator, as another tool would."""
    import requests

    answer = requests.post(
        f"{emulator.api_url}/ad_accounts/549755885175/customer_lists",
        json={"name": name, "records": ",".join(sorted(hashes))},
        headers={"Authorization": "Bearer emu-access-token"},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


def _restart_ids(emulator) -> None:
    """Forget everything and hand out the same ids again, as a restarted emulator does."""
    emulator.reset()
    emulator._next_id = 2542620639001


def test_a_snapshot_of_an_earlier_list_with_the_same_id_is_never_used(
    emulator, base_config, run_target
):
    """A restarted emulator (same address) hands out the same list ids again: the snapshot
    of the earlier list must not make the new one look full."""
    config = mirror_config(base_config)
    first = run_target(config, rows(emails(range(20))))
    assert first.returncode == 0, first.stderr
    old_id = the_list(emulator)["id"]
    _restart_ids(emulator)  # same address, ids start over

    # The run creates the list again under the same id: it starts a new snapshot.
    again = run_target(config, rows(emails(range(10, 30))))
    assert again.returncode == 0, again.stderr
    assert the_list(emulator)["id"] == old_id
    assert set(the_list(emulator)["members"]) == hashed(emails(range(10, 30)))
    assert again.final["snapshot"] == "new" and again.final["identifiers_removed"] == 0
    assert all(op != "REMOVE" for op, _ in patches_since(emulator, 0))

    # A list made elsewhere under a reused id (another created_time) is not the old one.
    _restart_ids(emulator)
    time.sleep(1.1)
    assert _post_list(emulator, SEGMENT, hashed(emails([0]))) == old_id
    adopted = run_target(config, rows(emails(range(10, 30))))
    assert adopted.returncode == 0, adopted.stderr
    assert adopted.final["snapshot"] == "new" and adopted.final["unchanged"] == 0
    assert set(the_list(emulator)["members"]) == hashed(emails(range(10, 30))) | hashed(emails([0]))


def test_runs_against_two_emulators_at_once_share_nothing(base_config, tmp_path):
    """Snapshots and locks are kept per API host: two emulators (two ports) with the same
    ad account, list ids and audience name do not block or confuse each other."""
    from conftest import ACCESS_TOKEN, AD_ACCOUNT, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN

    from target_pinterest_audiences.emulator import Emulator

    emulators = [
        Emulator(
            port=0,
            ad_accounts=(AD_ACCOUNT,),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            access_token=ACCESS_TOKEN,
            refresh_token=REFRESH_TOKEN,
        ).start()
        for _ in range(2)
    ]
    try:
        procs = []
        for i, emu in enumerate(emulators):
            emu.configure(write_delay_ms=300)
            config = mirror_config(
                {
                    **base_config,
                    "api_url": emu.api_url,
                    "token_cache_path": str(tmp_path / f"t{i}"),
                },
                identifiers_per_request=5,
                max_concurrent_writes=1,
            )
            proc = start_cli(_write_config(tmp_path, config))
            assert proc.stdin is not None
            proc.stdin.write(_lines(rows(emails(range(i * 100, i * 100 + 20)))))
            proc.stdin.close()
            proc.stdin = None
            procs.append(proc)
        for proc in procs:
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr
        for i, emu in enumerate(emulators):
            assert set(the_list(emu)["members"]) == hashed(emails(range(i * 100, i * 100 + 20)))
    finally:
        for emu in emulators:
            emu.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_store_remembers_a_create_until_it_is_recorded(backend, tmp_path, request):
    """begin_create / pending_create / end_create, for both stores (a kill between the
    first two leaves the records for the run that adopts the list by name)."""
    import logging

    from target_pinterest_audiences.store.snapshot import SnapshotStore

    url = request.getfixturevalue("snapshot_database")[0] if backend == "postgres" else None
    store = SnapshotStore(
        ad_account_id="549755885175",
        logger=logging.getLogger("test"),
        directory=tmp_path / "snapshots",
        url=url,
        api_url="http://127.0.0.1:1/v5",
    )
    assert store.pending_create("VIP") == []
    store.begin_create("VIP", ["a" * 64, "b" * 64], 123.5)
    again = SnapshotStore(
        ad_account_id="549755885175",
        logger=logging.getLogger("test"),
        directory=tmp_path / "snapshots",
        url=url,
        api_url="http://127.0.0.1:1/v5",
    )
    assert again.pending_create("VIP") == ["a" * 64, "b" * 64]
    assert again.pending_create_settles("VIP") == 123.5
    assert again.pending_create("Other") == [] and again.pending_create_settles("Other") == 0
    again.end_create("VIP")
    assert store.pending_create("VIP") == []
    if backend == "sqlite":
        assert not list((tmp_path / "snapshots").glob("creating-*"))


def test_a_killed_runs_temporary_files_are_removed_by_the_next_run(
    emulator, base_config, run_target, tmp_path
):
    import tempfile

    from target_pinterest_audiences.sync.mirror import RUN_DIR_PREFIX

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = Path(tempfile.gettempdir()) / f"{RUN_DIR_PREFIX}{dead.pid}-test"
    orphan.mkdir()
    (orphan / "run.sqlite").write_bytes(b"x")
    assert run_target(mirror_config(base_config), rows(emails(range(3)))).returncode == 0
    assert not orphan.exists()


def snapshot_store(tmp_path: Path, url: str | None = None) -> Any:
    """A SnapshotStore as a run against the emulator's account makes it (a new object, as a
    new process would)."""
    import logging

    from target_pinterest_audiences.store.snapshot import SnapshotStore

    return SnapshotStore(
        ad_account_id="549755885175",
        logger=logging.getLogger("test"),
        directory=tmp_path / "snapshots",
        url=url,
        api_url="http://127.0.0.1:1/v5",
    )


#: The tables as the first release of the snapshot made them (before list_created_time
#: and settle_until): a store of that release must keep working.
_OLD_TABLES = (
    "CREATE TABLE pinterest_audience_snapshot_lists (list_key {serial} PRIMARY KEY, "
    "ad_account_id TEXT NOT NULL, list_id TEXT NOT NULL, list_type TEXT, created_at TEXT NOT "
    "NULL, UNIQUE (ad_account_id, list_id))",
    "CREATE TABLE pinterest_audience_snapshot_journal (entry {serial} PRIMARY KEY, list_key "
    "{int} NOT NULL, op TEXT NOT NULL, records TEXT NOT NULL)",
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_store_made_by_the_first_release_gains_new_columns_and_keeps_a_landing_write(
    backend, tmp_path, request
):
    """Stores made by the release before keep working: the journal gains settle_until, and
    a write a dead run left in flight is kept (and waited for) until it can no longer land,
    whoever opens the snapshot first."""

    from target_pinterest_audiences.store.snapshot import SnapshotStore

    url = request.getfixturevalue("snapshot_database")[0] if backend == "postgres" else None

    def store() -> SnapshotStore:
        return snapshot_store(tmp_path, url)

    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            for statement in _OLD_TABLES:
                conn.execute(statement.format(serial="BIGSERIAL", int="BIGINT"))
    else:
        made = store()
        made.directory.mkdir(parents=True)
        account = re.sub(r"[^A-Za-z0-9_.@-]+", "_", made.ad_account_id)
        with sqlite3.connect(made.directory / f"snapshot-{account}-77.sqlite") as conn:
            for statement in _OLD_TABLES:
                conn.execute(statement.format(serial="INTEGER", int="INTEGER"))
    digest = "a" * 64
    first = store()
    snapshot = first.open("77")
    assert snapshot is not None
    snapshot.journal("ADD", [digest], time.time() + 60)  # then the run is killed
    first.close()

    for readonly in (True, False, False):  # a dry run first, then two real runs
        later = store()
        again = later.open("77", readonly=readonly, recover=True)
        assert again is not None
        # Taken as in doubt once only: a later run's confirmed writes are not undone.
        assert again.in_doubt_recovered == (1 if readonly else 0)
        assert again.must_wait_before("REMOVE", [digest]) > 50
        assert again.must_wait_before("ADD", [digest]) == 0  # the same action: no wait
        again.close()
        later.close()


#: The tables as releases before issue 18 made them: a log row per identifier, a journal
#: row's identifiers as comma-joined hex text.
_PRE_18_TABLES = (
    "CREATE TABLE pinterest_audience_snapshot_lists (list_key {serial} PRIMARY KEY, "
    "ad_account_id TEXT NOT NULL, list_id TEXT NOT NULL, list_type TEXT, created_at TEXT NOT "
    "NULL, list_created_time TEXT, UNIQUE (ad_account_id, list_id))",
    "CREATE TABLE pinterest_audience_snapshot_members (list_key {int} NOT NULL, h {blob} NOT "
    "NULL, confirmed {int} NOT NULL, PRIMARY KEY (list_key, h))",
    "CREATE TABLE pinterest_audience_snapshot_journal (entry {serial} PRIMARY KEY, list_key "
    "{int} NOT NULL, op TEXT NOT NULL, records TEXT NOT NULL, settle_until {real})",
    "CREATE TABLE pinterest_audience_snapshot_log (seq {serial} PRIMARY KEY, list_key {int} "
    "NOT NULL, h {blob} NOT NULL, state {int} NOT NULL)",
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_store_of_the_release_before_packed_keys_is_migrated(backend, tmp_path, request):
    """A store written before identifiers were packed: its per-identifier log is merged
    into the members (latest state wins) and its text journal rows are taken as in doubt."""
    from target_pinterest_audiences.store.snapshot import SnapshotStore

    url = request.getfixturevalue("snapshot_database")[0] if backend == "postgres" else None
    member, gone, doubtful, dead_write = "a" * 64, "b" * 64, "c" * 64, ["d" * 64, "e" * 64]
    account = SnapshotStore(
        ad_account_id="549755885175",
        logger=logging.getLogger("test"),
        api_url="http://127.0.0.1:1/v5",
    ).ad_account_id
    log_rows = [(member, 1), (gone, 1), (gone, 0), (doubtful, 1), (doubtful, 2)]
    types = {"serial": "INTEGER", "int": "INTEGER", "blob": "BLOB", "real": "REAL"}
    if url:
        import psycopg

        types = {"serial": "BIGSERIAL", "int": "BIGINT", "blob": "BYTEA", "real": "FLOAT8"}
        conn: Any = psycopg.connect(url)
    else:
        directory = tmp_path / "snapshots"
        directory.mkdir()
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", account)
        conn = sqlite3.connect(directory / f"snapshot-{safe}-77.sqlite")

    def sql(statement: str) -> str:
        return statement.replace("?", "%s") if url else statement

    with conn:
        for statement in _PRE_18_TABLES:
            conn.execute(statement.format(**types))
        conn.execute(
            sql(
                "INSERT INTO pinterest_audience_snapshot_lists (list_key, ad_account_id, "
                "list_id, list_type, created_at) VALUES (1, ?, '77', 'EMAIL', '2026-12-01')"
            ),
            (account,),
        )
        for digest, state_ in log_rows:
            conn.execute(
                sql(
                    "INSERT INTO pinterest_audience_snapshot_log (list_key, h, state) "
                    "VALUES (1, ?, ?)"
                ),
                (bytes.fromhex(digest), state_),
            )
        conn.execute(
            sql(
                "INSERT INTO pinterest_audience_snapshot_journal (list_key, op, records, "
                "settle_until) VALUES (1, 'ADD', ?, 0)"
            ),
            (",".join(dead_write),),
        )
    conn.close()

    store = snapshot_store(tmp_path, url)
    snapshot = store.open("77")
    assert snapshot is not None and snapshot.existed
    assert snapshot.in_doubt_recovered == 2
    assert snapshot.count() == 1
    members = {key.hex(): confirmed for page in snapshot.pages() for key, confirmed in page}
    assert members == {member: True, doubtful: False, **dict.fromkeys(dead_write, False)}
    snapshot.close()
    store.close()
    if url:
        import psycopg

        with psycopg.connect(url) as check:
            left = check.execute("SELECT COUNT(*) FROM pinterest_audience_snapshot_log")
            assert left.fetchone() == (0,)
    else:
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", account)
        with sqlite3.connect(tmp_path / "snapshots" / f"snapshot-{safe}-77.sqlite") as check:
            tables = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
        assert "pinterest_audience_snapshot_log" not in tables


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_packed_keys_of_every_width_and_external_ids_survive_journal_log_and_merge(
    backend, tmp_path, request
):
    """Digests of three widths (HASHED_PINNER_ID takes SHA-256, SHA-1 and MD5) and text
    ids (LR_ID) go through the packed journal, the packed change log and the merge."""
    url = request.getfixturevalue("snapshot_database")[0] if backend == "postgres" else None
    digests = ["1" * 64, "2" * 40, "3" * 32, "4" * 64, "5" * 40] + [f"{i:064x}" for i in range(70)]
    external = ["LR-1", "xyz_2", "LR-" + "9" * 200, "ünïcode-id"]
    for list_id, list_type, keys in (
        ("81", "HASHED_PINNER_ID", digests),
        ("82", "LR_ID", external),
    ):
        store = snapshot_store(tmp_path, url)
        snapshot = store.open(list_id, list_type=list_type)
        assert snapshot is not None
        snapshot.journal("ADD", keys, time.time() + 60)  # then the run is killed
        entry = snapshot.journal("ADD", keys[:3], 0.0)
        snapshot.confirm(entry, "ADD", keys[:3], [])
        snapshot.close()
        store.close()
        store = snapshot_store(tmp_path, url)
        again = store.open(list_id)
        assert again is not None
        assert again.in_doubt_recovered == len(keys)
        assert again.must_wait_before("REMOVE", [keys[-1]]) > 50
        entry = again.journal("REMOVE", keys[1:2], 0.0)
        again.confirm(entry, "REMOVE", keys[1:2], [])
        decode = again.codec.decode
        members = {decode(key): ok for page in again.pages() for key, ok in page}
        expected = dict.fromkeys(keys, False)
        del expected[keys[1]]
        assert members == expected  # in doubt: the dead run's write may have undone them
        assert again.count() == 0
        again.close()
        store.close()


def test_a_postgres_role_that_does_not_own_the_tables_can_use_them(snapshot_database, tmp_path):
    """A shared store: the tables made by one role, runs made by another with rights on
    them. Nothing may need the owner (an ALTER, even a no-op one, does)."""

    import psycopg

    from target_pinterest_audiences.store.snapshot import SnapshotStore

    url, _name = snapshot_database

    def store(at: str) -> SnapshotStore:
        return snapshot_store(tmp_path, at)

    made = store(url)
    first = made.open("77")
    assert first is not None
    first.close()
    made.close()
    role = f"tpa_runner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'runner-pw'")
        admin.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
        admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        admin.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    try:
        runner_url = re.sub(r"//[^@]*@", f"//{role}:runner-pw@", url, count=1)
        runner = store(runner_url)
        snapshot = runner.open("77")
        assert snapshot is not None
        entry = snapshot.journal("ADD", ["b" * 64], time.time() + 30)
        snapshot.confirm(entry, "ADD", ["b" * 64], [])
        assert snapshot.count() == 1
        snapshot.close()
        runner.begin_create("VIP", ["c" * 64], time.time() + 30)
        assert runner.pending_create("VIP") == ["c" * 64]
        runner.end_create("VIP")
        runner.close()
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
            admin.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
            admin.execute(f"REVOKE ALL ON SCHEMA public FROM {role}")
            admin.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_confirmed_write_with_identifiers_in_doubt_keeps_their_settle_time(
    backend, tmp_path, request
):
    """A retry answered while an earlier attempt that timed out may still land: the next
    run (after a kill) waits before any action on those identifiers, not on the others,
    and does not take them as in doubt a second time."""

    from target_pinterest_audiences.store.snapshot import SnapshotStore

    url = request.getfixturevalue("snapshot_database")[0] if backend == "postgres" else None

    def store() -> SnapshotStore:
        return snapshot_store(tmp_path, url)

    applied, doubtful = "a" * 64, "b" * 64
    first = store()
    snapshot = first.open("78")
    assert snapshot is not None
    entry = snapshot.journal("REMOVE", [applied, doubtful], time.time() + 60)
    snapshot.confirm(entry, "REMOVE", [applied], [doubtful])
    first.close()  # then the run is killed before it reconciles

    later = store()
    again = later.open("78")
    assert again is not None
    assert again.in_doubt_recovered == 0  # confirm() already recorded the doubt
    assert again.must_wait_before("ADD", [applied]) == 0
    assert again.must_wait_before("ADD", [doubtful]) > 50
    assert again.must_wait_before("REMOVE", [doubtful]) > 50
    again.close()
    later.close()


def test_the_wait_is_for_the_writes_that_conflict_not_the_latest_of_all(tmp_path):
    """Two writes left in flight: an ADD of x that may land for 20 s more, an ADD of y
    retried later (60 s). A REMOVE of x waits for x's write only."""

    from target_pinterest_audiences.store.snapshot import SnapshotStore

    def store() -> SnapshotStore:
        return snapshot_store(tmp_path)

    x, y = "a" * 64, "b" * 64
    first = store()
    snapshot = first.open("79")
    assert snapshot is not None
    now = time.time()
    snapshot.journal("ADD", [x], now + 20)
    snapshot.journal("ADD", [y], now + 60)
    first.close()  # killed

    later = store()
    again = later.open("79")
    assert again is not None
    assert 15 < again.must_wait_before("REMOVE", [x]) <= 20
    assert 55 < again.must_wait_before("REMOVE", [x, y]) <= 60
    assert again.must_wait_before("ADD", [x, y]) == 0
    assert again.must_wait_before("REMOVE", ["c" * 64]) == 0
    again.close()
    later.close()
