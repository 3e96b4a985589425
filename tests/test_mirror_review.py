"""Mirror sync under messy input, crashes and parallel runs (review findings).

Each test drives the installed CLI against the emulator and checks the mirror invariant:
after a run that completed, the list holds exactly the source's members, in one list and
one audience, and the snapshot confirms nothing Pinterest does not hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import lists_named, record, start_cli
from test_mirror import (
    SEGMENT,
    _lines,
    _write_config,
    emails,
    hashed,
    mirror_config,
    rows,
    snapshot_database,  # noqa: F401 - a fixture (test_mirror.py), used by name
    the_list,
    write_log,
)

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.writer import Writer
from target_pinterest_audiences.target import TargetPinterestAudiences, Terminated


def test_a_new_segment_whose_records_all_say_remove_writes_nothing(
    emulator, base_config, run_target
):
    """No list exists and no member creates one: the removes have nothing to remove from
    (as in events mode), instead of a PATCH to customer_lists/None that fails the run."""
    config = mirror_config(base_config)
    messages = [
        record(id=i, segment_name=SEGMENT, email=a, action="remove")
        for i, a in enumerate(emails(range(3)))
    ]
    run = run_target(config, messages)
    assert run.returncode == 0, run.stderr
    assert write_log(emulator) == []
    assert lists_named(emulator, SEGMENT) == []
    assert run.final["removes_without_list"] == 3
    assert run.final["identifiers_removed"] == 0


def test_skipped_records_before_the_first_valid_record_count_as_seen(
    emulator, base_config, run_target
):
    """A skipped record's identifiers are kept even when it arrives before the run knows
    its list (here: one identifier per request, so the skipped record is a batch alone)."""
    config = mirror_config(base_config, on_invalid_record="skip", identifiers_per_request=1)
    members = emails(range(10))
    assert run_target(config, rows(members)).returncode == 0
    messages = [
        # members[0]'s row is now broken elsewhere: it stays a member.
        record(id=1, segment_name=SEGMENT, email=members[0], action="maybe"),
        *[record(id=2 + i, segment_name=SEGMENT, email=a) for i, a in enumerate(members[1:])],
    ]
    run = run_target(config, messages)
    assert run.returncode == 0, run.stderr
    assert set(the_list(emulator)["members"]) == hashed(members)
    assert run.final["identifiers_removed"] == 0
    assert run.final["records_skipped"] == {"unknown_action": 1}


def test_a_source_of_only_skipped_records_removes_none_of_them_even_when_allowed(
    emulator, base_config, run_target
):
    config = mirror_config(base_config, on_invalid_record="skip")
    members = emails(range(10))
    assert run_target(config, rows(members)).returncode == 0
    messages = [
        record(id=i, segment_name=SEGMENT, email=a, action="maybe")
        for i, a in enumerate(members[:4])
    ]
    run = run_target({**config, "allow_large_removal": True}, messages)
    assert run.returncode == 0, run.stderr
    # The six members no record names leave; the four named by skipped records stay.
    assert set(the_list(emulator)["members"]) == hashed(members[:4])
    assert run.final["identifiers_removed"] == 6


def test_two_runs_creating_one_segment_into_two_audiences_make_one_list(
    emulator, base_config, run_target, tmp_path
):
    """Both runs look the list up by name, find none and would each create one."""
    emulator.configure(write_delay_ms=300)
    source = rows(emails(range(30)))
    results: dict[str, Any] = {}

    def go(audience: str) -> None:
        config = mirror_config(base_config, audience_name=audience)
        path = _write_config(tmp_path, config)
        proc = start_cli(path)
        _, err = proc.communicate(_lines(source), timeout=120)
        results[audience] = (proc.returncode, err)

    threads = [threading.Thread(target=go, args=(name,)) for name in ("Audience A", "Audience B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    emulator.configure(write_delay_ms=0)
    assert len(lists_named(emulator, SEGMENT)) == 1
    codes = sorted(code for code, _ in results.values())
    assert codes[0] == 0
    for code, err in results.values():
        assert "Traceback" not in err
        if code:
            assert "another run is syncing" in err.strip().splitlines()[-1]
    assert set(the_list(emulator)["members"]) == hashed(emails(range(30)))


def test_sigkill_during_list_creation_then_a_smaller_source_ends_exact(
    emulator, base_config, run_target, tmp_path
):
    """The records a list is created with are written like any other: a kill while the
    create is unanswered must not leave them unknown to the snapshot for ever."""
    config = mirror_config(base_config, identifiers_per_request=20)
    source = emails(range(100))
    emulator.configure(write_delay_ms=1500)
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(rows(source)))
    proc.stdin.close()
    deadline = time.monotonic() + 60
    while not any(r["method"] == "POST" for r in write_log(emulator)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    while any(r.get("status") is None for r in write_log(emulator)):
        time.sleep(0.05)  # the create lands after the kill
    emulator.configure(write_delay_ms=0)
    assert len(the_list(emulator)["members"]) == 20  # the create's records

    # The next run's source: the first 20 (those the list was created with) have left.
    run = run_target(config, rows(source[20:]))
    assert run.returncode == 0, run.stderr
    assert set(the_list(emulator)["members"]) == hashed(source[20:])


def test_dry_run_after_a_killed_run_reports_the_difference_the_real_run_makes(
    emulator, base_config, run_target, tmp_path
):
    """Writes in doubt after a kill (journaled, unanswered) are part of the difference: the
    dry run must report what the real run then does."""
    config = mirror_config(base_config, identifiers_per_request=50, max_concurrent_writes=1)
    source = rows(emails(range(100)))
    assert run_target(config, source).returncode == 0
    bigger = source + [
        record(id=200 + i, segment_name=SEGMENT, email=a)
        for i, a in enumerate(emails(range(500, 520)))
    ]
    emulator.configure(write_delay_ms=1500)
    before = len(write_log(emulator))
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(bigger))
    proc.stdin.close()
    deadline = time.monotonic() + 60
    while not any(r["method"] == "PATCH" for r in write_log(emulator)[before:]):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=30)
    while any(r.get("status") is None for r in write_log(emulator)):
        time.sleep(0.05)
    emulator.configure(write_delay_ms=0)

    dry = run_target({**config, "dry_run": True}, source)
    assert dry.returncode == 0, dry.stderr
    (line,) = [x for x in dry.stderr.splitlines() if "Dry run report:" in x]
    report = json.loads(line.split("Dry run report:", 1)[1])
    real = run_target(config, source)
    assert real.returncode == 0, real.stderr
    assert set(the_list(emulator)["members"]) == hashed(emails(range(100)))
    assert real.final["identifiers_removed"] == 20
    for key in ("identifiers_added", "identifiers_removed", "unchanged"):
        assert report[key] == real.final[key], key


def test_sigterm_in_the_removal_phase_waits_for_the_request_in_flight(
    emulator, base_config, run_target, tmp_path
):
    """The signal interrupts the main thread while it waits for the end-of-input writes; the
    stop must still wait for the request in flight (here its connection drops, so it logs a
    retry) before the last STATE and the last log line, which names the signal."""
    config = mirror_config(base_config, max_concurrent_writes=2)
    assert run_target(config, rows(emails(range(30)))).returncode == 0
    emulator.configure(write_delay_ms=800)
    emulator.add_fault("drop_after", methods=["PATCH"], count=1)
    before = len(write_log(emulator))
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(rows(emails(range(25)))))  # 5 leave: under the cap
    proc.stdin.close()
    proc.stdin = None  # (so that communicate() does not flush it)
    deadline = time.monotonic() + 60
    while not any(r.get("operation_type") == "REMOVE" for r in write_log(emulator)[before:]):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert "Run stopped by signal 15" in stderr.strip().splitlines()[-1]
    emulator.configure(write_delay_ms=0)
    again = run_target(config, rows(emails(range(25))))
    assert again.returncode == 0, again.stderr
    assert set(the_list(emulator)["members"]) == hashed(emails(range(25)))


def test_sigterm_in_the_removal_phase_reports_the_request_it_let_finish(
    emulator, base_config, run_target, tmp_path
):
    """One request at a time, sent by the writer thread itself: the stop waits for it, so
    the last STATE counts what Pinterest confirmed."""
    config = mirror_config(base_config, max_concurrent_writes=1)
    assert run_target(config, rows(emails(range(30)))).returncode == 0
    emulator.configure(write_delay_ms=800)
    before = len(write_log(emulator))
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(rows(emails(range(25)))))
    proc.stdin.close()
    proc.stdin = None
    deadline = time.monotonic() + 60
    while not any(r.get("operation_type") == "REMOVE" for r in write_log(emulator)[before:]):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    while any(r.get("status") is None for r in write_log(emulator)):
        time.sleep(0.05)
    removed = sum(
        r["n_records"]
        for r in write_log(emulator)[before:]
        if r.get("operation_type") == "REMOVE" and r.get("status") == 200
    )
    assert removed == 5
    final = json.loads(stdout.strip().splitlines()[-1])["pinterest_audience"]
    assert final["identifiers_removed"] == removed


def test_a_signal_after_the_run_finished_does_not_break_its_exit():
    """Once the run finished (its STATE written), a SIGTERM, e.g. from an orchestrator
    stopping a job that is just exiting, must not raise into whatever runs then (an atexit
    hook printed a traceback) nor turn a finished run into a stopped one."""
    logger = logging.getLogger("test")
    done = SimpleNamespace(failed=False, finished=True, _terminating=False, logger=logger)
    TargetPinterestAudiences._handle_termination(done, signal.SIGTERM, None)  # type: ignore[arg-type]
    running = SimpleNamespace(failed=False, finished=False, _terminating=False, logger=logger)
    with pytest.raises(Terminated):
        TargetPinterestAudiences._handle_termination(running, signal.SIGTERM, None)  # type: ignore[arg-type]


def bare_writer() -> Writer:
    """A Writer with no client: its bookkeeping of requests, tested alone."""
    return Writer(
        client=None,
        ad_account_id="1",
        identifiers_per_request=1,
        concurrent_writes=1,
        dry_run=False,
        report=Report(ad_account_id="1", audience_name="a", dry_run=False),
        logger=logging.getLogger("test"),
        create_list=lambda chunk: len(chunk),
    )


class _AnswersWhileLookedAt:
    """A request that answers (with an error) between the writer's first and second look."""

    def __init__(self) -> None:
        self.looks = 0

    def done(self) -> bool:
        self.looks += 1
        return self.looks > 1

    def result(self) -> None:
        raise TargetError("Pinterest refused PATCH: HTTP 400")


def test_a_request_that_fails_while_the_writer_reaps_is_not_lost():
    """Its error must stop the run (else the run ends 0 with a write that never happened)."""
    writer = bare_writer()
    request = _AnswersWhileLookedAt()
    writer.in_flight = [("REMOVE", request)]  # type: ignore[list-item]
    with pytest.raises(TargetError):
        writer._reap()
        writer._reap()


def test_a_damaged_snapshot_file_stops_the_run_naming_the_file(
    emulator, base_config, run_target, isolated_state_home
):
    config = mirror_config(base_config)
    source = rows(emails(range(3000)))
    assert run_target(config, source).returncode == 0
    (path,) = isolated_state_home.rglob("snapshot-*.sqlite")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 4096] = b"\xff" * 4096  # one page of the members lost
    path.write_bytes(bytes(data))
    before = len(write_log(emulator))
    run = run_target(config, source)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert str(path) in last and "move it away" in last, last
    assert "Traceback" not in run.stderr
    assert write_log(emulator)[before:] == []


def test_closing_a_postgres_snapshot_whose_query_was_interrupted_logs_no_traceback(request, caplog):
    """A signal raising in the main thread can leave a query of the snapshot's connection in
    progress (here: sent, never read); closing it then must not log a pool traceback."""
    url, _ = request.getfixturevalue("snapshot_database")
    store = SnapshotStore(ad_account_id="1", logger=logging.getLogger("test"), url=url)
    snapshot = store.open("42")
    assert snapshot is not None
    digest = "ab" * 32
    snapshot.confirm(snapshot.journal("ADD", [digest], 0.0), "ADD", [digest], [])
    snapshot._conn.dbapi_connection.pgconn.send_query(b"SELECT pg_sleep(0.2)")
    with caplog.at_level(logging.INFO):
        snapshot.close()
    store.close()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    # The merge is done by the next run: nothing confirmed was lost.
    again = SnapshotStore(ad_account_id="1", logger=logging.getLogger("test"), url=url).open("42")
    assert again is not None and again.count() == 1
    again.close()


def test_a_stopping_writer_does_not_wait_for_requests_cancelled_before_they_started():
    """close() cancels the queued requests; waiting for them (as for running ones) hung a
    run stopped by SIGTERM for ever."""
    writer = bare_writer()
    cancelled: Future[None] = Future()
    cancelled.cancel()
    finished: Future[None] = Future()
    finished.set_result(None)
    writer.in_flight = [("ADD", cancelled), ("ADD", finished)]
    waiter = threading.Thread(target=writer.wait_stopped, daemon=True)
    waiter.start()
    waiter.join(timeout=5)
    assert not waiter.is_alive()


def _kill_once_a_write_is_held(emulator, proc, method: str) -> None:
    """SIGKILL the run 0.3 s after its first `method` write reached the emulator and is
    held there (the emulator applies it later, as a server may after a client is gone)."""
    deadline = time.monotonic() + 60
    while not any(r["method"] == method and r["status"] is None for r in write_log(emulator)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)


def test_a_create_that_lands_after_a_kill_is_adopted_not_duplicated(
    emulator, base_config, run_target, tmp_path
):
    """The killed run's create lands while the next run is already running: that run
    waits for it (the create is journaled with the time it may land by) instead of
    creating a second list of the same name."""
    config = mirror_config(base_config, identifiers_per_request=20, request_timeout_seconds=3)
    emulator.add_fault(
        "delay", delay_ms=2500, methods=["POST"], path_contains="customer_lists", count=1
    )
    source = emails(range(60))
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(rows(source)))
    proc.stdin.close()
    _kill_once_a_write_is_held(emulator, proc, "POST")

    run = run_target(config, rows(source))  # at once: the create has not landed yet
    assert run.returncode == 0, run.stderr
    assert "looking for it" in run.stderr
    assert len(lists_named(emulator, SEGMENT)) == 1
    assert set(the_list(emulator)["members"]) == hashed(source)
    assert len(emulator.state()["audiences"]) == 1


def test_an_add_that_lands_after_a_kill_never_outlives_the_next_runs_remove(
    emulator, base_config, run_target, tmp_path
):
    """A killed run's ADD still held by Pinterest must land before the next run's REMOVE
    of the same identifiers, or the list keeps members the source no longer has (and the
    snapshot, which saw the REMOVE confirmed, never removes them)."""
    config = mirror_config(
        base_config, request_timeout_seconds=3, max_concurrent_writes=1, allow_large_removal=True
    )
    kept, leaving = emails(range(50)), emails(range(50, 100))
    assert run_target(config, rows(kept)).returncode == 0
    emulator.add_fault("delay", delay_ms=2500, methods=["PATCH"], count=1)
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(rows(kept + leaving)))
    proc.stdin.close()
    _kill_once_a_write_is_held(emulator, proc, "PATCH")

    # A dry run first: it sees the writes in doubt, and must leave the wait to the real run.
    dry = run_target({**config, "dry_run": True}, rows(kept))
    assert dry.returncode == 0, dry.stderr
    run = run_target(config, rows(kept))  # at once: the ADD of `leaving` is still held
    assert run.returncode == 0, run.stderr
    assert "would undo this REMOVE: waiting" in run.stderr
    while any(r.get("status") is None for r in write_log(emulator)):
        time.sleep(0.05)
    assert set(the_list(emulator)["members"]) == hashed(kept)
    again = run_target(config, rows(kept))
    assert again.returncode == 0, again.stderr
    assert set(the_list(emulator)["members"]) == hashed(kept)


def test_signals_after_the_last_state_line_leave_the_exit_status_alone(
    emulator, base_config, tmp_path
):
    """SIGTERMs from the moment the final STATE line is out until the process is gone
    (an orchestrator stopping a job that is just exiting): the run succeeded and exits 0,
    also during interpreter shutdown, when Python puts the default handlers back."""
    import os

    config = mirror_config(base_config)
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(_lines(rows(emails(range(20)))))
    proc.stdin.close()
    for line in proc.stdout:
        if json.loads(line)["pinterest_audience"].get("complete"):
            break
    sent = 0
    while proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
            sent += 1
        time.sleep(0.001)
    assert proc.wait(timeout=30) == 0, (sent, proc.stderr.read() if proc.stderr else "")
    assert sent > 0
    assert set(the_list(emulator)["members"]) == hashed(emails(range(20)))


def test_the_same_run_again_right_after_a_kill_does_not_wait_for_its_adds(
    emulator, base_config, run_target, tmp_path
):
    """Re-sending the action a held write carries is harmless whenever that write lands:
    only an opposite action waits, so re-running the same source starts writing at once."""
    config = mirror_config(base_config, request_timeout_seconds=30, max_concurrent_writes=1)
    kept, joining = emails(range(50)), emails(range(50, 100))
    assert run_target(config, rows(kept)).returncode == 0
    emulator.add_fault("delay", delay_ms=2500, methods=["PATCH"], count=1)
    proc = start_cli(_write_config(tmp_path, config))
    assert proc.stdin is not None
    proc.stdin.write(_lines(rows(kept + joining)))
    proc.stdin.close()
    _kill_once_a_write_is_held(emulator, proc, "PATCH")

    started = time.monotonic()
    run = run_target(config, rows(kept + joining))
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - started < 20  # not the 35 s the held write may take
    assert "waiting" not in run.stderr
    while any(r.get("status") is None for r in write_log(emulator)):
        time.sleep(0.05)
    assert set(the_list(emulator)["members"]) == hashed(kept + joining)
