"""Progress on long runs: one human line at most every `progress_interval_seconds`.

A timer thread of its own writes the line, so it still appears while the main thread is
blocked handing a batch to the writer and while the writer waits on Pinterest or on the
write limit. It only reads counters the run keeps anyway (the report, the client's, two
wait clocks): the record path pays nothing for it. The line holds counts, rates and
times, never an identifier.

What tells a slow source from a slow Pinterest: when reading is paused most of the
interval the writes are behind (and "waiting on the write limit" says whether the limit is
why); when neither wait is large but records per second are low, the source is slow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from target_pinterest_audiences.pinterest.client import PinterestClient
from target_pinterest_audiences.pinterest.limits import WaitClock
from target_pinterest_audiences.sync.report import Report


class Progress:
    """Logs a progress line every `interval` seconds from a daemon thread, until stopped."""

    def __init__(
        self,
        *,
        interval: float,
        report: Report,
        client: PinterestClient | None,
        input_waits: WaitClock,
        phase: Callable[[], str | None],
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        label: str | None = None,
    ) -> None:
        #: The stream's name, in a run of several streams.
        self.label = label
        self.interval = interval
        self.report = report
        self.client = client
        self.input_waits = input_waits
        self.phase = phase
        self.logger = logger
        self.clock = clock
        self._started = self._last_at = clock()
        self._last_records = 0
        self._last_limit_wait = 0.0
        self._last_input_wait = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0 or self._thread is not None:
            return
        self._started = self._last_at = self.clock()
        self._thread = threading.Thread(target=self._run, name="pinterest-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No line after this returns (the summary follows)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.logger.info("%s", self.line())
            except Exception as exc:  # a progress line must never break the run
                self.logger.debug("No progress line: %s", type(exc).__name__)

    def line(self) -> str:
        """The progress since the start and over the interval since the previous line."""
        now = self.clock()
        report = self.report
        records = report.records_received
        skipped = sum(dict(report.records_skipped).values())  # copied: the dict may grow
        requests = self.client.requests_sent if self.client is not None else 0
        limit_wait = self.client.write_limiter.waited_seconds if self.client is not None else 0.0
        input_wait = self.input_waits.seconds
        span = max(now - self._last_at, 1e-9)
        rate = (records - self._last_records) / span
        limit_delta = limit_wait - self._last_limit_wait
        input_delta = input_wait - self._last_input_wait
        self._last_at, self._last_records = now, records
        self._last_limit_wait, self._last_input_wait = limit_wait, input_wait
        phase = self.phase()
        return (
            f"Progress{f' of stream {self.label!r}' if self.label else ''} after "
            f"{_duration(now - self._started)}"
            f"{f' ({phase})' if phase else ''}: records read {records:,} "
            f"({rate:,.0f}/s over the last {_duration(span)}), skipped {skipped:,}; "
            f"identifiers confirmed added {report.identifiers_added:,}, removed "
            f"{report.identifiers_removed:,}; requests {requests:,}; over the last "
            f"{_duration(span)}: {limit_delta:.1f}s waiting on the write limit "
            f"(max_writes_per_minute), reading paused {input_delta:.1f}s for writes to catch up"
        )


def _duration(seconds: float) -> str:
    """1h02m03s, 2m05s, 30s, 0.5s: short and unambiguous in a log line."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
