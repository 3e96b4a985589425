"""Pinterest's limits, kept on our side: writes and reads per minute, concurrent writes.

Pinterest counts writes per user and app, that is per token, so every stream of a run shares one
budget (one `SlidingWindowLimiter` for writes, one for reads, one `FairTurns` for the writes in
flight), and processes that share a token file share its write window too (`SharedWriteWindow`,
a file beside the token file, under its own lock).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, so parallel runs there share no window
    fcntl = None  # type: ignore[assignment]


class WaitClock:
    """Wall-clock seconds during which at least one thread was waiting, a wait in progress
    included: concurrent waiters are not counted twice, and a progress line written during
    a long wait already shows it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._total = 0.0
        self._waiting = 0
        self._since = 0.0

    def begin(self) -> None:
        with self._lock:
            if not self._waiting:
                self._since = self.clock()
            self._waiting += 1

    def end(self) -> None:
        with self._lock:
            self._waiting -= 1
            if not self._waiting:
                self._total += max(0.0, self.clock() - self._since)

    @property
    def seconds(self) -> float:
        with self._lock:
            if self._waiting:
                return self._total + max(0.0, self.clock() - self._since)
            return self._total


class SlidingWindowLimiter:
    """At most `limit` calls in any `window` seconds, counted from each call's completion.

    Counting from completion (not from sending) keeps the limit true as Pinterest sees it:
    a later call is sent only once an earlier one has answered and a full window passed.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self._done: collections.deque[float] = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()
        #: How long calls were held back by the limit (read by the progress line).
        self.waits = WaitClock(clock)

    @property
    def waited_seconds(self) -> float:
        return self.waits.seconds

    def acquire(self) -> None:
        with self._cond:
            held = False
            try:
                while True:
                    now = self.clock()
                    while self._done and self._done[0] + self.window <= now:
                        self._done.popleft()
                    if len(self._done) + self._in_flight < self.limit:
                        self._in_flight += 1
                        return
                    if not held:
                        held = True
                        self.waits.begin()
                    if self._done:
                        wait = self._done[0] + self.window - now + 0.01
                        self._cond.release()
                        try:
                            self.sleep(wait)
                        finally:
                            self._cond.acquire()
                    else:
                        self._cond.wait(1.0)
            finally:
                if held:
                    self.waits.end()

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._done.append(self.clock())
            self._cond.notify_all()


class Stopped(Exception):
    """Raised to a thread waiting for a turn once the run stops."""


class FairTurns:
    """At most `capacity` writes in flight for the whole run, handed out in turns.

    A stream that has a request ready waits its turn: when a write ends, the next turn goes to
    the stream after the one served last (round robin over the streams that wait), so a stream
    with millions of adds cannot starve a small segment; with one stream it is a semaphore.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._cond = threading.Condition()
        self._active = 0
        #: Waiting tickets per stream, and the streams in the order their turn comes.
        self._waiting: dict[str, collections.deque[object]] = {}
        self._order: collections.deque[str] = collections.deque()
        self._granted: set[object] = set()

    def acquire(self, key: str, should_stop: Callable[[], bool] = lambda: False) -> None:
        with self._cond:
            if self._active < self.capacity and not self._order:
                self._active += 1
                return
            ticket = object()
            queue = self._waiting.get(key)
            if queue is None:
                queue = self._waiting[key] = collections.deque()
                self._order.append(key)
            queue.append(ticket)
            self._grant()
            while ticket not in self._granted:
                if should_stop():
                    self._withdraw(key, ticket)
                    raise Stopped
                self._cond.wait(0.2)
            self._granted.discard(ticket)

    def release(self) -> None:
        with self._cond:
            self._active -= 1
            self._grant()

    def _grant(self) -> None:
        while self._active < self.capacity and self._order:
            key = self._order.popleft()
            queue = self._waiting[key]
            self._granted.add(queue.popleft())
            self._active += 1
            if queue:
                self._order.append(key)  # its next request waits for the others' turns
            else:
                del self._waiting[key]
        self._cond.notify_all()

    def _withdraw(self, key: str, ticket: object) -> None:
        queue = self._waiting.get(key)
        if queue is None or ticket not in queue:
            return
        queue.remove(ticket)
        if not queue:
            del self._waiting[key]
            self._order.remove(key)


class SharedWriteWindow:
    """The write window of every process that uses one token file, kept in a file beside it.

    Each line is a write: `d <time>` once answered (it counts for `window` seconds from its
    answer, as SlidingWindowLimiter counts), or `f <time> <pid> <id>` while in flight (it counts
    until answered). A write is sent only when fewer than `limit` lines count, read and changed
    under an exclusive flock on the file itself. A line left in flight by a process that died
    counts until its latest possible answer (`in_flight_seconds` after it was sent). Wall-clock
    time, as the processes share no other clock.
    """

    def __init__(
        self,
        path: Path,
        limit: int,
        *,
        window: float = 60.0,
        in_flight_seconds: float = 120.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self.limit = limit
        self.window = window
        self.in_flight_seconds = in_flight_seconds
        self.clock = clock
        self.sleep = sleep
        self._ids = itertools.count(1)
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[list[str]]]:
        """The window's lines, under the lock; what the block leaves in the list is written back."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "r+", encoding="ascii", errors="replace") as handle:
                lines = [line.split() for line in handle.read().splitlines()]
                before = [list(line) for line in lines]
                yield lines
                if lines != before:
                    handle.seek(0)
                    handle.truncate()
                    handle.write("".join(" ".join(line) + "\n" for line in lines))
                    handle.flush()
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def _counting(self, lines: list[list[str]], now: float) -> list[list[str]]:
        """The lines that still count at `now` (malformed ones are dropped)."""
        kept = []
        for line in lines:
            try:
                kind, at = line[0], float(line[1])
            except (IndexError, ValueError):
                continue
            if kind == "d" and at + self.window > now:
                kept.append(line)
            elif kind == "f" and len(line) == 4:
                if int(line[2]) != self._pid and not _alive(int(line[2])):
                    # its answer may have come as late as this: count it from then
                    line = ["d", repr(at + self.in_flight_seconds)]
                    if float(line[1]) + self.window > now:
                        kept.append(line)
                elif at + self.in_flight_seconds + self.window > now:
                    kept.append(line)
        return kept

    def acquire(self, should_stop: Callable[[], bool] = lambda: False) -> str:
        """Wait for room in the window, then take it; returns the write's id for release()."""
        while True:
            with self._locked() as lines:
                now = self.clock()
                lines[:] = self._counting(lines, now)
                if len(lines) < self.limit:
                    write_id = f"{self._pid}-{next(self._ids)}"
                    lines.append(["f", repr(now), str(self._pid), write_id])
                    return write_id
                answered = [float(line[1]) for line in lines if line[0] == "d"]
                wait = min(answered) + self.window - now + 0.01 if answered else 0.2
            if should_stop():
                raise Stopped
            self.sleep(min(max(wait, 0.01), 1.0))

    def release(self, write_id: str) -> None:
        """The write was answered (or never sent): it counts for a window from now."""
        with self._locked() as lines:
            now = self.clock()
            for index, line in enumerate(lines):
                if len(line) == 4 and line[0] == "f" and line[3] == write_id:
                    lines[index] = ["d", repr(now)]
                    break
            lines[:] = self._counting(lines, now)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
