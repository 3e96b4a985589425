"""Checkpoints: STATE that never runs ahead of what Pinterest confirmed.

The tap's state covers every record before it, of every stream. Each stream's `Checkpoints`
holds it (as a ticket from the run's `StateGate`) until every identifier of those records was
sent and every request carrying them answered (and any write in doubt was settled); the gate
passes the tap state on once every stream that had records before it confirmed it, and writes
it, with every stream's report, as a STATE line. When a stream of the run syncs in mirror mode,
the tap's bookmarks are never passed on: a mirror run must read the whole source every time,
and a bookmark would make the next run read only part of it, which mirror would take for the
whole audience.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from target_pinterest_audiences.pinterest.client import PinterestClient
from target_pinterest_audiences.sync.report import Report


@dataclass(eq=False)
class Ticket:
    """A tap STATE message, waiting for the streams that had records before it."""

    seq: int
    state: dict[str, Any]
    waiting: set[str] = field(default_factory=set)


class StateGate:
    """The run's STATE lines: the latest tap state every stream confirmed, plus the reports.

    `reports()` gives each stream's report (its key: the stream's name, "" for a run's single
    dataset before it met a stream). A run of one stream keeps the key `pinterest_audience`
    of earlier releases beside `pinterest_audiences`.
    """

    def __init__(
        self,
        *,
        write: Callable[[dict[str, Any]], None],
        pass_tap_state: bool,
        reports: Callable[[], dict[str, dict[str, Any]]],
        extra: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self._write = write
        #: Keys of the run beside the streams' reports (the suppression set's figures).
        self.extra = extra
        self.pass_tap_state = pass_tap_state
        self.reports = reports
        self._lock = threading.RLock()
        self._tickets: deque[Ticket] = deque()
        self._seq = 0
        self.confirmed_state: dict[str, Any] | None = None
        #: Set once a run has more than one stream (the summary then names each stream).
        self.many = False

    def issue(self, state: dict[str, Any], streams: list[str]) -> Ticket | None:
        """A tap STATE arrived; None when tap state is never passed on (a mirror run)."""
        if not self.pass_tap_state:
            return None
        with self._lock:
            self._seq += 1
            ticket = Ticket(self._seq, state, set(streams))
            self._tickets.append(ticket)
            self._advance()
            return ticket

    def confirmed(self, stream: str, ticket: Ticket | None) -> None:
        """The stream confirmed every record before this ticket (and before earlier ones)."""
        if ticket is None:
            return
        with self._lock:
            for each in self._tickets:
                if each.seq > ticket.seq:
                    break
                each.waiting.discard(stream)
            self._advance()

    def _advance(self) -> None:
        while self._tickets and not self._tickets[0].waiting:
            self.confirmed_state = self._tickets.popleft().state

    def line(self) -> dict[str, Any]:
        with self._lock:
            state = dict(self.confirmed_state or {})
        reports = self.reports()
        state["pinterest_audiences"] = {key: r for key, r in reports.items() if key}
        state.update(self.extra())
        if len(reports) == 1:
            state["pinterest_audience"] = next(iter(reports.values()))
        return state

    def write(self) -> None:
        """Write a STATE line now (lines leave in the order they are made)."""
        with self._lock:
            self._write(self.line())


class Checkpoints:
    """One stream's tap state waiting for its writes, and the latest it confirmed."""

    def __init__(
        self,
        *,
        report: Report,
        client: PinterestClient | None,
        on_confirmed: Callable[[Any], None],
        emit_state: Callable[[], None],
        keep_tap_state: bool,
    ) -> None:
        self.report = report
        self.client = client
        self.on_confirmed = on_confirmed
        self.emit_state = emit_state
        self.keep_tap_state = keep_tap_state
        #: Tap state (a StateGate ticket) and record count, confirmed once the buffers empty.
        self.pending_state: Any = None
        self.pending_record = 0
        #: Checkpoints waiting for the requests sent before them: (state, records, requests).
        self._markers: deque[tuple[Any, int, list[Future[None]]]] = deque()

    def received(self, state_after: Any, last_record: int) -> None:
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
            self.emit_state()

    def confirm(self, state: Any, record: int) -> None:
        self.on_confirmed(state)
        self.report.records_written = max(self.report.records_written, record)

    def confirm_pending(self) -> None:
        """At the end of a complete run: everything received is confirmed."""
        self.confirm(self.pending_state, self.pending_record)

    def count_requests(self) -> None:
        """The stream's request counters into its report."""
        if self.client is not None:
            self.report.requests = self.client.requests_sent
            self.report.retries = self.client.retries
            self.report.token_refreshes = self.client.tokens.refreshes
