"""One write budget: turns between streams, and a write window shared by processes (issue 16)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from target_pinterest_audiences.emulator import max_events_in_window
from target_pinterest_audiences.pinterest.limits import FairTurns, SharedWriteWindow, Stopped


def test_turns_alternate_between_streams_that_wait():
    """A stream with many requests ready cannot starve one with a single request."""
    turns = FairTurns(1)
    turns.acquire("big")  # a write of the big stream is in flight
    served: list[str] = []
    lock = threading.Lock()

    def one(key: str) -> None:
        turns.acquire(key)
        with lock:
            served.append(key)
        time.sleep(0.01)
        turns.release()

    threads = [threading.Thread(target=one, args=("big",)) for _ in range(5)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # the big stream queues five requests first
    small = threading.Thread(target=one, args=("small",))
    small.start()
    time.sleep(0.05)
    turns.release()
    for thread in [*threads, small]:
        thread.join(5)
    assert served.index("small") <= 1, served  # its turn comes after at most one more of big's
    assert sorted(served) == ["big"] * 5 + ["small"]


def test_turns_never_exceed_capacity_and_stop_releases_waiters():
    turns = FairTurns(2)
    active = peak = 0
    lock = threading.Lock()

    def work(key: str) -> None:
        nonlocal active, peak
        for _ in range(10):
            turns.acquire(key)
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.001)
            with lock:
                active -= 1
            turns.release()

    threads = [threading.Thread(target=work, args=(f"s{i % 3}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak == 2

    turns.acquire("a")
    turns.acquire("a")
    stopped = threading.Event()
    with pytest.raises(Stopped):
        turns.acquire("b", should_stop=lambda: stopped.set() or True)
    turns.release()
    turns.acquire("c")  # the withdrawn waiter took no turn


def test_shared_window_counts_writes_of_every_holder_until_a_window_after_their_answer(
    tmp_path: Path,
):
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    path = tmp_path / "tokens.json.writes"
    first = SharedWriteWindow(path, 2, clock=lambda: now[0], sleep=sleep)
    second = SharedWriteWindow(path, 2, clock=lambda: now[0], sleep=sleep)
    one = first.acquire()
    two = second.acquire()
    now[0] += 5
    first.release(one)  # answered at 1005: counts until 1065
    now[0] += 10
    second.release(two)  # answered at 1015: counts until 1075
    second.acquire()  # waits for the first write's window to pass
    assert now[0] >= 1065
    assert path.stat().st_mode & 0o777 == 0o600


def test_shared_window_holds_two_processes_to_one_limit(tmp_path: Path):
    """Two processes, each wanting 6 writes, with a limit of 3 in any 2 seconds: together
    they never exceed it (the window file is the only thing they share)."""
    path = tmp_path / "tokens.json.writes"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from target_pinterest_audiences.pinterest.limits import SharedWriteWindow
        window = SharedWriteWindow(Path({str(path)!r}), 3, window=2.0)
        for _ in range(6):
            write = window.acquire()
            print(time.time(), flush=True)
            time.sleep(0.05)
            window.release(write)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    times = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        times += [float(line) for line in out.split()]
    assert len(times) == 12
    # sends counted against answers of 0.05 s: no 3 + 1 sends within one window
    assert max_events_in_window(sorted(times), window=2.0) <= 3
    assert max(times) - min(times) >= 2 * 3  # the limit did hold them back


def test_a_write_left_in_flight_by_a_dead_process_counts_until_its_latest_answer(
    tmp_path: Path,
):
    path = tmp_path / "w"
    now = [500.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(gone.stdout)
    # sent at 450 by a process that is gone: its answer came at 515 at the latest
    path.write_text(f"f 450.0 {pid} {pid}-1\n")
    window = SharedWriteWindow(path, 1, in_flight_seconds=65.0, clock=lambda: now[0], sleep=sleep)
    window.acquire()
    assert 575.0 <= now[0] < 577.0  # 515 + 60
    # one sent long ago is over: no wait
    path.write_text(f"f 100.0 {pid} {pid}-1\n")
    before = now[0]
    SharedWriteWindow(path, 1, in_flight_seconds=65.0, clock=lambda: now[0], sleep=sleep).acquire()
    assert now[0] == before
