"""Checkpoints: STATE that never runs ahead of what Pinterest confirmed.

The tap's state covers every record before it. It is held until every identifier of those
records was sent and every request carrying them answered (and any write in doubt was
settled); only then is it written, with the report, as a STATE line. In mirror mode the
tap's bookmarks are never passed on: a mirror run must read the whole source every time,
and a bookmark would make the next run read only part of it, which mirror would take for
the whole audience.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from target_pinterest_audiences.pinterest.client import PinterestClient
from target_pinterest_audiences.sync.report import Report


class Checkpoints:
    """Tap state waiting for its writes, and the latest state Pinterest confirmed."""

    def __init__(
        self,
        *,
        report: Report,
        client: PinterestClient | None,
        emit_state: Callable[[dict[str, Any]], None],
        keep_tap_state: bool,
    ) -> None:
        self.report = report
        self.client = client
        self.emit_state = emit_state
        self.keep_tap_state = keep_tap_state
        self.confirmed_state: dict[str, Any] | None = None
        #: Tap state (and record count) that becomes confirmed once the buffers are empty.
        self.pending_state: dict[str, Any] | None = None
        self.pending_record = 0
        #: Checkpoints waiting for the requests sent before them: (state, records, requests).
        self._markers: deque[tuple[dict[str, Any] | None, int, list[Future[None]]]] = deque()

    def received(self, state_after: dict[str, Any] | None, last_record: int) -> None:
        """A batch was taken in; its tap state waits for its writes."""
        if state_after is not None and self.keep_tap_state:
            self.pending_state = state_after
        self.pending_record = last_record or self.pending_record

    def all_sent(self, in_flight: list[Future[None]]) -> None:
        """Everything received is sent: confirmed once these requests answer."""
        self._markers.append((self.pending_state, self.pending_record, in_flight))

    def emit_ready(self, before_emit: Callable[[], None]) -> None:
        """Write the checkpoints whose requests have all answered, oldest first."""
        while self._markers and all(f.done() for f in self._markers[0][2]):
            state, record, futures = self._markers.popleft()
            for future in futures:
                future.result()  # a failed request stops the run before its checkpoint
            # A straggler of a timed-out write must not undo what this checkpoint covers.
            before_emit()
            self.confirm(state, record)
            self.emit_state(self.state_line())

    def confirm(self, state: dict[str, Any] | None, record: int) -> None:
        if state is not None:
            self.confirmed_state = state
        self.report.records_written = max(self.report.records_written, record)

    def confirm_pending(self) -> None:
        """At the end of a complete run: everything received is confirmed."""
        self.confirm(self.pending_state, self.pending_record)

    def state_line(self) -> dict[str, Any]:
        """The latest confirmed tap state plus our report."""
        state = dict(self.confirmed_state or {})
        if self.client is not None:
            self.report.requests = self.client.requests_sent
            self.report.retries = self.client.retries
            self.report.token_refreshes = self.client.tokens.refreshes
        state["pinterest_audience"] = self.report.as_dict()
        return state
