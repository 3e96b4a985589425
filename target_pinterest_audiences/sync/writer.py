"""Writing identifiers to one Customer List, in order: buffers, requests, writes in doubt.

The membership Pinterest ends with must equal applying every action in input order. So:
- each identifier waits in exactly one of two buffers (adds, removes) holding its latest
  action, until the buffer fills a whole request (a mostly-adds run sends full ADD
  requests, not two half-empty ones per batch);
- requests of one operation may overlap (their identifiers are disjoint, and ADD and
  REMOVE are set operations), but a request of the other operation waits until every
  earlier one has answered, retries included;
- a write that timed out may still be applied later, after a newer opposite action: its
  identifiers are "in doubt" until they are sent again with their latest action, once any
  straggler would have landed (see `reconcile`);
- the snapshot (snapshot.py) journals each request before it goes out and records what
  Pinterest confirmed, never more.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from target_pinterest_audiences.pinterest.client import (
    Interrupted,
    PinterestClient,
    RequestTooLarge,
    TargetError,
    records_body,
    upload_exceptions,
)
from target_pinterest_audiences.store.snapshot import Snapshot
from target_pinterest_audiences.sync.report import Report

#: Rounds of re-sending in-doubt identifiers (each round may time out again) before giving up.
RECONCILE_ROUNDS = 3
#: Pinterest needs this many matched users before an Audience can be targeted.
MIN_AUDIENCE_SIZE = 100


class Writer:
    """Sends the adds and removes of one run to its Customer List, in order."""

    def __init__(
        self,
        *,
        client: PinterestClient | None,
        ad_account_id: str,
        identifiers_per_request: int,
        concurrent_writes: int,
        dry_run: bool,
        report: Report,
        logger: logging.Logger,
        create_list: Callable[[list[str]], int],
    ) -> None:
        self.client = client
        self.account = ad_account_id
        self.per_request = identifiers_per_request
        self.dry_run = dry_run
        self.report = report
        self.logger = logger
        #: Creates the list with the first adds; returns how many of them it carried.
        self.create_list = create_list
        self.list_id: str | None = None
        self.snapshot: Snapshot | None = None
        #: Told of every write Pinterest confirmed (operation, identifiers), from the
        #: request threads: mirror mode counts the distinct identifiers it added.
        self.on_confirmed: Callable[[str, list[str]], None] | None = None
        #: Identifiers waiting for a full request, each with its latest action (in exactly
        #: one of the two); dicts keep arrival order.
        self.adds: dict[str, None] = {}
        self.removes: dict[str, None] = {}
        #: Up to MIN_AUDIENCE_SIZE distinct added identifiers, to warn on tiny audiences.
        self.distinct_added: set[str] = set()
        #: Identifiers in doubt: a write carrying them timed out, so it may still land later,
        #: after a newer opposite action. Each maps to its latest action sent (ADD: True);
        #: they are re-sent with it before the next checkpoint (see reconcile).
        self.in_doubt: dict[str, bool] = {}
        self._last_timeout_at = 0.0
        self.concurrent_writes = max(1, concurrent_writes)
        self._pool = (
            ThreadPoolExecutor(self.concurrent_writes, thread_name_prefix="pinterest-patch")
            if self.concurrent_writes > 1 and client is not None and not dry_run
            else None
        )
        self.in_flight: list[tuple[str, Future[None]]] = []
        #: Identifiers of the requests in flight (bounded by concurrency x request size),
        #: kept only when a reader asks for them (a mirror run: mirror.py sets it): per
        #: request, 10,000 inserts and removals and a table of up to a few megabytes.
        self.in_flight_ids: set[str] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- buffers ---------------------------------------------------------------------

    def buffer(self, ops: dict[str, bool]) -> None:
        """Merge identifiers with their latest action; whatever was buffered is overridden."""
        adds, removes = self.adds, self.removes
        for digest, is_add in ops.items():
            if is_add:
                removes.pop(digest, None)
                adds[digest] = None
            else:
                adds.pop(digest, None)
                removes[digest] = None

    @property
    def buffered(self) -> bool:
        return bool(self.adds or self.removes)

    def flush(self, *, full_only: bool) -> None:
        """Send full requests from the buffers; with full_only=False, empty them."""
        while len(self.removes) >= self.per_request or (self.removes and not full_only):
            chunk = _take(self.removes, self.per_request)
            if self.list_id is None:
                # Nothing to remove from a list that does not exist yet.
                self.report.removes_without_list += len(chunk)
            else:
                self.send("REMOVE", chunk)
        while len(self.adds) >= self.per_request or (self.adds and not full_only):
            chunk = _take(self.adds, self.per_request)
            if self.list_id is None:
                carried = self.create_list(chunk)
                self.count("ADD", carried)
                if carried < len(chunk):
                    self.per_request = min(self.per_request, carried)
                rest = chunk[carried:]
                if rest:
                    self.send("ADD", rest)
            else:
                self.send("ADD", chunk)
            for digest in chunk:
                if len(self.distinct_added) >= MIN_AUDIENCE_SIZE:
                    break
                self.distinct_added.add(digest)
        if self.snapshot is not None:
            self.snapshot.merge_if_due()  # the SQL runs while the main thread reads on

    # ---- requests --------------------------------------------------------------------

    def send(self, operation: str, hashes: list[str], *, count: bool = True) -> None:
        """PATCH in requests of at most per_request identifiers."""
        if self.dry_run or self.client is None:
            self.count(operation, len(hashes))
            return
        for i in range(0, len(hashes), self.per_request):
            self._dispatch(operation, hashes[i : i + self.per_request], count)

    def _dispatch(self, operation: str, chunk: list[str], count: bool = True) -> None:
        if any(op != operation for op, _ in self.in_flight):
            self.wait_in_flight()  # a REMOVE never overtakes an ADD sent before it
        if self.in_doubt:
            # Requests go out in order: the last one sent for an identifier is its final action.
            with self._lock:
                for digest in chunk:
                    if digest in self.in_doubt:
                        self.in_doubt[digest] = operation == "ADD"
        if self.snapshot is not None and self.snapshot.landing:
            self._let_dead_runs_writes_land(operation, chunk)
        entry = self.snapshot.journal(operation, chunk, self._lands_by()) if self.snapshot else None
        if self._pool is None:
            self._send_chunk(operation, chunk, count, entry)
            return
        while len(self.in_flight) >= self.concurrent_writes:
            wait([f for _, f in self.in_flight], return_when=FIRST_COMPLETED)
            self._reap()
        if self.in_flight_ids is not None:
            with self._lock:
                self.in_flight_ids.update(chunk)
        future = self._pool.submit(self._send_chunk, operation, chunk, count, entry)
        self.in_flight.append((operation, future))

    def _reap(self) -> None:
        # One look at each request: one that answers between two looks would be in
        # neither list, and its error lost.
        done: list[tuple[str, Future[None]]] = []
        running: list[tuple[str, Future[None]]] = []
        for op, future in self.in_flight:
            (done if future.done() else running).append((op, future))
        self.in_flight = running
        for _, future in done:
            future.result()

    def wait_stopped(self) -> None:
        """Wait for the requests still running, whatever their outcome (a stopping run).

        Only those not done: a request cancelled before it started (close() cancels the
        queued ones) never counts as finished for wait(), which would block for ever.
        """
        wait([f for _, f in self.in_flight if not f.done()])

    def wait_in_flight(self) -> None:
        wait([f for _, f in self.in_flight])
        self._reap()

    def _send_chunk(
        self, operation: str, chunk: list[str], count: bool = True, entry: int | None = None
    ) -> None:
        """One PATCH; a chunk refused as too large is halved until it fits, and a single
        identifier refused as too large is retried as a passing fault."""
        assert self.client is not None
        path = f"/ad_accounts/{self.account}/customer_lists/{self.list_id}"
        is_add = operation == "ADD"
        pending = [chunk]
        deadline = self.client.deadline()
        delays = self.client.retry.delays()
        attempt = 0
        while pending:
            part = pending.pop()
            try:
                answer = self.client.request(
                    "PATCH",
                    path,
                    body=records_body(operation, part),
                    on_timeout=functools.partial(self._mark_in_doubt, part, is_add),
                    on_send=functools.partial(self._journal_attempt, entry),
                )
            except RequestTooLarge as exc:
                if len(part) == 1:
                    attempt += 1
                    problem = f"HTTP {exc.status} 'too large' for a single identifier"
                    self.client.pause("PATCH", path, attempt, deadline, delays, None, problem)
                    pending.append(part)
                    continue
                half = len(part) // 2
                self.per_request = min(self.per_request, half)
                self.logger.warning(
                    "Pinterest refused %d identifiers in one request as too large; sending at "
                    "most %d per request from now on",
                    len(part),
                    self.per_request,
                )
                pending.append(part[half:])
                pending.append(part[:half])
                continue
            if count:
                self.count(operation, len(part))
            entries = upload_exceptions(answer)
            if entries:
                with self._lock:
                    self.report.note_upload_exceptions(entries, self.client.last_rid, self.logger)
        self._confirmed(operation, chunk, entry)

    def _let_dead_runs_writes_land(self, operation: str, chunk: list[str]) -> None:
        """A run that stopped may have left a write of the opposite action in flight for
        some of these: sent now, ours could land first and be undone by it for good."""
        assert self.snapshot is not None and self.client is not None
        wait = self.snapshot.must_wait_before(operation, chunk)
        if wait <= 0:
            return
        self.logger.warning(
            "Customer List %s: a write left unanswered by a run that stopped may still land "
            "and would undo this %s: waiting %.0f s for it first",
            self.list_id,
            operation,
            wait,
        )
        if self.client.stop_event.wait(wait):
            raise Interrupted("stopped while waiting for an earlier run's writes to land")

    def _lands_by(self) -> float:
        """time.time() by which a write sent now has landed or never will: one request
        timeout plus the settle margin, the same bound reconcile() waits for in a run."""
        assert self.client is not None
        return time.time() + self.client.straggle_seconds()

    def _journal_attempt(self, entry: int | None) -> None:
        """A retry or a half of a split goes out later than the journal row says."""
        if entry is not None and self.snapshot is not None:
            self.snapshot.extend_settle(entry, self._lands_by())

    def _confirmed(self, operation: str, chunk: list[str], entry: int | None) -> None:
        """Pinterest confirmed every part of a chunk: the snapshot follows, except for
        identifiers still in doubt (an attempt carrying them timed out)."""
        with self._lock:
            if self.in_flight_ids is not None:
                self.in_flight_ids.difference_update(chunk)
            doubtful = [h for h in chunk if h in self.in_doubt] if self.in_doubt else []
        if self.on_confirmed is not None:
            self.on_confirmed(operation, chunk)
        if self.snapshot is None:
            return
        if doubtful:
            gone = set(doubtful)
            applied = [h for h in chunk if h not in gone]
        else:
            applied = chunk
        self.snapshot.confirm(entry, operation, applied, doubtful)

    def _mark_in_doubt(self, part: list[str], is_add: bool) -> None:
        """An attempt carrying `part` timed out: it may still be applied, later.

        No opposite action on these identifiers can have been sent meanwhile (it would
        wait for this request), so this request's action is their latest.
        """
        with self._lock:
            self._last_timeout_at = time.monotonic()
            for digest in part:
                self.in_doubt[digest] = is_add

    def reconcile(self) -> None:
        """Re-send the latest action of every identifier in doubt, once stragglers have landed.

        A write that timed out may still be applied after a later, opposite write of the same
        identifier. Before a checkpoint covers them, in-doubt identifiers are sent again with
        their latest action, after waiting long enough for any straggler to land; a re-send
        that times out itself puts its identifiers back in doubt for another round.
        """
        if self.client is None or self.dry_run:
            return
        for _ in range(RECONCILE_ROUNDS):
            if not self.in_doubt:
                # Nothing in doubt: no reason to wait for later requests (a checkpoint whose
                # own requests answered must not wait for, or fail with, those sent after it).
                return
            self.wait_in_flight()
            with self._lock:
                doubt = dict(self.in_doubt)
                settle = self._last_timeout_at + self.client.straggle_seconds()
            self.logger.info(
                "Re-sending the final action of %d identifiers whose earlier write timed out",
                len(doubt),
            )
            wait_for = settle - time.monotonic()
            if wait_for > 0 and self.client.stop_event.wait(wait_for):
                raise Interrupted("stopped while waiting to reconcile timed-out writes")
            with self._lock:
                for digest in doubt:
                    self.in_doubt.pop(digest, None)
            for operation, wanted in (("REMOVE", False), ("ADD", True)):
                hashes = [h for h, is_add in doubt.items() if is_add is wanted]
                self.send(operation, hashes, count=False)
            self.wait_in_flight()
        if self.in_doubt:
            raise TargetError(
                f"{len(self.in_doubt)} identifiers stayed in doubt after {RECONCILE_ROUNDS} "
                "rounds of timed-out writes; no checkpoint covers them, so the next run "
                "sends them again. Pinterest is answering too slowly: raise "
                "request_timeout_seconds or run again later"
            )

    def count(self, operation: str, n: int) -> None:
        with self._lock:
            if operation == "ADD":
                self.report.identifiers_added += n
            else:
                self.report.identifiers_removed += n


def _take(buffer: dict[str, None], n: int) -> list[str]:
    """Remove and return the first n keys of an insertion-ordered dict."""
    chunk = list(itertools.islice(buffer, n))
    for key in chunk:
        del buffer[key]
    return chunk
