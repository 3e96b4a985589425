"""What is written where: resolving the list and audience, and writing batches in order.

The uploader runs one writer thread. Batches arrive from the record flow in input
order through a bounded queue (so memory stays flat and hashing overlaps with waiting on
Pinterest) and are written strictly one request at a time: a REMOVE can never overtake
an earlier ADD of the same identifier, retries included. After each batch is confirmed,
the tap state that followed it is emitted, so STATE never runs ahead of the data.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from target_pinterest_audiences.client import (
    AmbiguousWrite,
    Interrupted,
    PinterestAPIError,
    PinterestClient,
    RequestTooLarge,
    TargetError,
)

#: Stands for the list a dry run would have created, so later batches count as updates.
DRY_RUN_NEW_LIST = "(new)"
#: After an unanswered create, how long (beyond one request timeout) to look for it.
CREATE_SETTLE_SECONDS = 5.0
#: Rounds of re-sending in-doubt identifiers (each round may time out again) before giving up.
RECONCILE_ROUNDS = 3
#: Pinterest needs this many matched users before an Audience can be targeted.
MIN_AUDIENCE_SIZE = 100


@dataclass
class Batch:
    """Identifiers to write, each with its final action in this batch, plus the state after."""

    ops: dict[str, bool] = field(default_factory=dict)  # sha256 -> True (add) / False (remove)
    kinds: set[str] = field(default_factory=set)
    segment_name: str | None = None
    segment_id: str | None = None
    last_record: int = 0
    #: The latest tap state received after every record of this batch, if any.
    state_after: dict[str, Any] | None = None


@dataclass
class Report:
    """Run counters; they ride on every STATE line as `pinterest_audience`."""

    ad_account_id: str
    audience_name: str | None
    dry_run: bool
    segment_name: str | None = None
    segment_id: str | None = None
    audience_id: str | None = None
    list_created: bool = False
    audience_created: bool = False
    records_received: int = 0
    records_written: int = 0
    records_skipped: dict[str, int] = field(default_factory=dict)
    identifiers_added: int = 0
    identifiers_removed: int = 0
    removes_without_list: int = 0
    requests: int = 0
    retries: int = 0
    token_refreshes: int = 0
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "ad_account_id": self.ad_account_id,
            "segment_id": self.segment_id,
            "segment_name": self.segment_name,
            "audience_id": self.audience_id,
            "audience_name": self.audience_name,
            "list_created": self.list_created,
            "audience_created": self.audience_created,
            "records_received": self.records_received,
            "records_written": self.records_written,
            "records_skipped": dict(self.records_skipped),
            "identifiers_added": self.identifiers_added,
            "identifiers_removed": self.identifiers_removed,
            "removes_without_list": self.removes_without_list,
            "requests": self.requests,
            "retries": self.retries,
            "token_refreshes": self.token_refreshes,
            "dry_run": self.dry_run,
            "complete": self.complete,
        }


_STOP = object()


class Uploader:
    """Owns the writer thread, the list/audience ids and the checkpoint of confirmed state."""

    def __init__(
        self,
        *,
        client: PinterestClient | None,
        ad_account_id: str,
        audience_name: str | None,
        audience_id: str | None,
        audience_description: str | None,
        identifiers_per_request: int,
        list_type: str,
        dry_run: bool,
        report: Report,
        emit_state: Callable[[dict[str, Any]], None],
        logger: logging.Logger,
        checkpoint_seconds: float = 60.0,
        concurrent_writes: int = 1,
        queue_depth: int = 3,
    ) -> None:
        self.client = client
        self.account = ad_account_id
        self.audience_name = audience_name
        self.audience_id = audience_id
        self.audience_description = audience_description
        self.per_request = identifiers_per_request
        self.list_type = list_type
        self.dry_run = dry_run
        self.report = report
        self.emit_state = emit_state
        self.logger = logger
        self.list_id: str | None = None
        self._resolved = False
        self._audience_rule_list: str | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.confirmed_state: dict[str, Any] | None = None
        #: Up to MIN_AUDIENCE_SIZE distinct added identifiers, to warn on tiny audiences.
        self.distinct_added: set[str] = set()
        #: Identifiers in doubt: a write carrying them timed out, so it may still land later,
        #: after a newer opposite action. Each maps to its latest action sent (ADD: True);
        #: they are re-sent with it before the next checkpoint (see _reconcile).
        self._in_doubt: dict[str, bool] = {}
        self._last_timeout_at = 0.0
        #: Identifiers waiting for a full request, each with its latest action (in exactly
        #: one of the two); dicts keep arrival order.
        self._adds: dict[str, None] = {}
        self._removes: dict[str, None] = {}
        self._kinds: set[str] = set()
        #: Tap state (and record count) that becomes confirmed once the buffers are empty.
        self._pending_state: dict[str, Any] | None = None
        self._pending_record = 0
        self._last_checkpoint = time.monotonic()
        self.checkpoint_seconds = checkpoint_seconds
        #: PATCHes of one operation may overlap (their identifiers are disjoint, and ADD and
        #: REMOVE are set operations); a request of the other operation waits for them all.
        self.concurrent_writes = max(1, concurrent_writes)
        self._pool = (
            ThreadPoolExecutor(self.concurrent_writes, thread_name_prefix="pinterest-patch")
            if self.concurrent_writes > 1 and client is not None and not dry_run
            else None
        )
        self._in_flight: list[tuple[str, Future[None]]] = []
        #: Checkpoints waiting for the requests sent before them: (state, records, requests).
        self._markers: deque[tuple[dict[str, Any] | None, int, list[Future[None]]]] = deque()
        self._count_lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pinterest-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        """Queue a batch; blocks while the queue is full (backpressure keeps memory flat)."""
        while True:
            if self.error is not None or self.stopping.is_set():
                return
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every queued batch is written (or the writer failed)."""
        if self._thread is None:
            return
        if self.error is None and not self.stopping.is_set():
            while True:
                try:
                    self._queue.put(_STOP, timeout=0.5)
                    break
                except queue.Full:
                    if self.error is not None or not self._thread.is_alive():
                        break
        self._thread.join()

    def abort(self) -> None:
        """Stop after the request in flight: queued batches are dropped, never half-written."""
        self.stopping.set()
        if self.client:
            self.client.stop_event.set()
        if self._thread is not None:
            self._thread.join()

    # ---- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Interrupted:
            pass
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.stopping.is_set():
                    return
                self._emit_ready_checkpoints()
                continue
            if self.stopping.is_set():
                return
            if item is _STOP:
                self._flush(full_only=False)
                self._wait_in_flight()
                self._emit_ready_checkpoints()
                self._reconcile()
                self._checkpoint(self._pending_state, self._pending_record)
                return
            self.write_batch(item)
            if item.state_after is not None:
                self._pending_state = item.state_after
            self._pending_record = item.last_record or self._pending_record
            if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
                self._flush(full_only=False)
            if not self._adds and not self._removes:
                # Everything received is sent: confirmed once the requests in flight answer.
                in_flight = [future for _, future in self._in_flight]
                self._markers.append((self._pending_state, self._pending_record, in_flight))
                self._last_checkpoint = time.monotonic()
            self._emit_ready_checkpoints()

    def _emit_ready_checkpoints(self) -> None:
        while self._markers and all(f.done() for f in self._markers[0][2]):
            state, record, futures = self._markers.popleft()
            for future in futures:
                future.result()  # a failed request stops the run before its checkpoint
            # A straggler of a timed-out write must not undo what this checkpoint covers.
            self._reconcile()
            self._checkpoint(state, record)
            self.emit_state(self.state_line())

    def _checkpoint(self, state: dict[str, Any] | None, record: int) -> None:
        if state is not None:
            self.confirmed_state = state
        self.report.records_written = max(self.report.records_written, record)

    def state_line(self) -> dict[str, Any]:
        """The latest confirmed tap state plus our report."""
        state = dict(self.confirmed_state or {})
        self._sync_counters()
        state["pinterest_audience"] = self.report.as_dict()
        return state

    def _sync_counters(self) -> None:
        if self.client is not None:
            self.report.requests = self.client.requests_sent
            self.report.retries = self.client.retries
            self.report.token_refreshes = self.client.tokens.refreshes

    # ---- resolving the list and audience ---------------------------------------------

    def check_audience(self) -> None:
        """With audience_id: read the audience first; its rule names the list to update."""
        if not self.audience_id or self.client is None:
            return
        path = f"/ad_accounts/{self.account}/audiences/{self.audience_id}"
        try:
            audience = self.client.request("GET", path)
        except PinterestAPIError as exc:
            if exc.status == 404:
                raise TargetError(
                    f"audience_id {self.audience_id}: no such Audience in ad account "
                    f"{self.account} (HTTP 404, x-pinterest-rid {exc.rid}); fix the audience_id "
                    "setting or remove it to create one"
                ) from None
            raise
        rule = audience.get("rule") or {}
        list_id = rule.get("customer_list_id")
        if audience.get("audience_type") != "CUSTOMER_LIST" or not list_id:
            raise TargetError(
                f"audience_id {self.audience_id} is a {audience.get('audience_type')} audience, "
                "not a CUSTOMER_LIST audience: it has no Customer List to update"
            )
        self._audience_rule_list = str(list_id)
        self.report.audience_id = self.audience_id
        self.report.segment_id = self._audience_rule_list
        self.logger.info(
            "Audience %s uses Customer List %s", self.audience_id, self._audience_rule_list
        )

    def resolve(self, segment_name: str, segment_id: str | None) -> None:
        """Decide which list and audience this run writes to, before its first write."""
        self._resolved = True
        self.report.segment_name = segment_name
        if self._audience_rule_list and segment_id and segment_id != self._audience_rule_list:
            raise TargetError(
                f"the records name Customer List {segment_id} (segment_id) but Audience "
                f"{self.audience_id} references Customer List {self._audience_rule_list}; an "
                "Audience references exactly one Customer List: drop segment_id from the "
                "records or set the audience_id of that list's audience. Nothing was written"
            )
        self.list_id = segment_id or self._audience_rule_list
        if self.client is None:
            self.report.segment_id = self.list_id
            return
        if self.list_id:
            existing = self._get_list(self.list_id)
            if existing.get("name") not in (None, segment_name):
                self.logger.warning(
                    "Customer List %s is named %r, not %r (segment_name): updating it anyway, "
                    "as segment_id or audience_id say",
                    self.list_id,
                    existing.get("name"),
                    segment_name,
                )
        else:
            found = self._find("customer_lists", lambda item: item.get("name") == segment_name)
            if len(found) > 1:
                raise TargetError(
                    f"{len(found)} Customer Lists in ad account {self.account} are named "
                    f"{segment_name!r} (ids {', '.join(found)}); set segment_id in the records "
                    "to say which one to update"
                )
            if found:
                self.list_id = found[0]
                self.logger.info(
                    "Adopting existing Customer List %s named %r", self.list_id, segment_name
                )
        self.report.segment_id = self.list_id
        if self.list_id and not self.audience_id:
            self._ensure_audience()

    def report_ids_without_records(self) -> None:
        """A run with no records still reports the ids: those of the one CUSTOMER_LIST
        Audience named audience_name, if there is exactly one (a single read)."""
        if self._resolved or self.client is None or self.audience_id or not self.audience_name:
            return
        found = [
            item
            for item in self.client.paginate(f"/ad_accounts/{self.account}/audiences")
            if item.get("name") == self.audience_name
            and item.get("audience_type") == "CUSTOMER_LIST"
        ]
        if len(found) == 1:
            self.report.audience_id = str(found[0]["id"])
            self.report.segment_id = (found[0].get("rule") or {}).get("customer_list_id")

    def _get_list(self, list_id: str) -> dict[str, Any]:
        assert self.client is not None
        try:
            return self.client.request(
                "GET", f"/ad_accounts/{self.account}/customer_lists/{list_id}"
            )
        except PinterestAPIError as exc:
            if exc.status == 404:
                raise TargetError(
                    f"segment_id {list_id}: no such Customer List in ad account {self.account} "
                    f"(HTTP 404, x-pinterest-rid {exc.rid}); fix segment_id in the records or "
                    "drop it to create the list by segment_name"
                ) from None
            raise

    def _find(self, kind: str, match: Callable[[dict[str, Any]], bool]) -> list[str]:
        """Ids of every item of a list endpoint that matches (Pinterest has no name filter)."""
        assert self.client is not None
        path = f"/ad_accounts/{self.account}/{kind}"
        return [str(item["id"]) for item in self.client.paginate(path) if match(item)]

    def _audience_matches(self, item: dict[str, Any]) -> bool:
        rule = item.get("rule") or {}
        return (
            item.get("name") == self.audience_name
            and item.get("audience_type") == "CUSTOMER_LIST"
            and str(rule.get("customer_list_id")) == self.list_id
        )

    def _ensure_audience(self) -> None:
        """Adopt the CUSTOMER_LIST audience of this name and list, or create it."""
        assert self.client is not None and self.list_id
        found = self._find("audiences", self._audience_matches)
        if len(found) > 1:
            raise TargetError(
                f"{len(found)} Audiences named {self.audience_name!r} use Customer List "
                f"{self.list_id} (ids {', '.join(found)}); set audience_id to say which one"
            )
        if found:
            self.audience_id = found[0]
            self.logger.info("Adopting existing Audience %s", self.audience_id)
        elif self.dry_run:
            self.logger.info("Dry run: would create Audience %r", self.audience_name)
            return
        else:
            body: dict[str, Any] = {
                "name": self.audience_name,
                "audience_type": "CUSTOMER_LIST",
                "rule": {"customer_list_id": self.list_id},
            }
            if self.audience_description:
                body["description"] = self.audience_description
            created = self._create("audiences", body, self._audience_matches)
            self.audience_id = created
            self.report.audience_created = True
            self.logger.info("Created Audience %s for Customer List %s", created, self.list_id)
        self.report.audience_id = self.audience_id

    def _create(
        self, kind: str, body: dict[str, Any], match: Callable[[dict[str, Any]], bool]
    ) -> str:
        """POST a create; when its outcome is unknown, look before creating again."""
        assert self.client is not None
        path = f"/ad_accounts/{self.account}/{kind}"
        deadline = self.client.deadline()
        while True:
            try:
                answer = self.client.request(
                    "POST", path, json=body, idempotent=False, deadline=deadline
                )
                return str(answer["id"])
            except AmbiguousWrite as exc:
                # A create that timed out may still be running on Pinterest's side: keep
                # looking for a while (longer than one request may take) before creating again.
                look_until = time.monotonic() + self.client.timeout + CREATE_SETTLE_SECONDS
                while True:
                    found = self._find(kind, match)
                    if found:
                        self.logger.warning("%s; it was, adopting %s", exc, found[0])
                        return found[0]
                    if time.monotonic() >= min(look_until, deadline):
                        break
                    if self.client.stop_event.wait(1.0):
                        raise Interrupted(f"stopped while checking {path}") from None
                self.logger.warning("%s; it was not, creating again", exc)

    # ---- writing ---------------------------------------------------------------------

    def write_batch(self, batch: Batch) -> None:
        """Merge a batch into the add and remove buffers and send every full request.

        An identifier sits in at most one buffer, holding its latest action, so requests
        can be filled across batches (a mostly-adds run sends full ADD requests instead of
        two half-empty ones per batch) while the final membership still equals applying
        every action in order: whatever was sent earlier is overridden by what is sent later.
        """
        if batch.ops and not self._resolved:
            assert batch.segment_name is not None
            self.resolve(batch.segment_name, batch.segment_id)
        adds, removes = self._adds, self._removes
        for digest, is_add in batch.ops.items():
            if is_add:
                removes.pop(digest, None)
                adds[digest] = None
            else:
                adds.pop(digest, None)
                removes[digest] = None
        self._kinds |= batch.kinds
        self._flush(full_only=True)

    def _flush(self, *, full_only: bool) -> None:
        """Send full requests from the buffers; with full_only=False, empty them."""
        while len(self._removes) >= self.per_request or (self._removes and not full_only):
            chunk = _take(self._removes, self.per_request)
            if self.list_id is None:
                # Nothing to remove from a list that does not exist yet.
                self.report.removes_without_list += len(chunk)
            else:
                self._send("REMOVE", chunk)
        while len(self._adds) >= self.per_request or (self._adds and not full_only):
            chunk = _take(self._adds, self.per_request)
            if self.list_id is None:
                self._create_list(chunk)
            else:
                self._send("ADD", chunk)
            for digest in chunk:
                if len(self.distinct_added) >= MIN_AUDIENCE_SIZE:
                    break
                self.distinct_added.add(digest)

    def _list_type(self, kinds: set[str]) -> str:
        if self.list_type != "auto":
            return self.list_type
        if kinds == {"maid"}:
            return "MAID"
        if kinds == {"idfa"}:
            return "IDFA"
        return "EMAIL"

    def _create_list(self, adds: list[str]) -> None:
        name = self.report.segment_name
        if self.dry_run or self.client is None:
            self.logger.info(
                "Dry run: would create Customer List %r and Audience %r", name, self.audience_name
            )
            self.report.identifiers_added += len(adds)
            self.list_id = DRY_RUN_NEW_LIST
            return
        first = adds[: self.per_request]
        while True:
            body = {
                "name": name,
                "records": ",".join(first),
                "list_type": self._list_type(self._kinds),
            }
            try:
                self.list_id = self._create(
                    "customer_lists", body, lambda item: item.get("name") == name
                )
                break
            except RequestTooLarge:
                if len(first) == 1:
                    raise
                first = first[: len(first) // 2]
                self.per_request = len(first)
                self.logger.warning(
                    "Pinterest refused the request as too large; sending at most %d identifiers "
                    "per request from now on",
                    self.per_request,
                )
        self.report.list_created = True
        self.report.segment_id = self.list_id
        self.report.identifiers_added += len(first)
        self.logger.info("Created Customer List %s named %r", self.list_id, name)
        if not self.audience_id:
            self._ensure_audience()
        rest = adds[len(first) :]
        if rest:
            self._send("ADD", rest)

    def _send(self, operation: str, hashes: list[str], *, count: bool = True) -> None:
        """PATCH in requests of at most per_request identifiers."""
        if self.dry_run or self.client is None:
            self._count(operation, len(hashes))
            return
        for i in range(0, len(hashes), self.per_request):
            self._dispatch(operation, hashes[i : i + self.per_request], count)

    def _dispatch(self, operation: str, chunk: list[str], count: bool = True) -> None:
        if any(op != operation for op, _ in self._in_flight):
            self._wait_in_flight()  # a REMOVE never overtakes an ADD sent before it
        if self._in_doubt:
            # Requests go out in order: the last one sent for an identifier is its final action.
            with self._count_lock:
                for digest in chunk:
                    if digest in self._in_doubt:
                        self._in_doubt[digest] = operation == "ADD"
        if self._pool is None:
            self._send_chunk(operation, chunk, count)
            return
        while len(self._in_flight) >= self.concurrent_writes:
            wait([f for _, f in self._in_flight], return_when=FIRST_COMPLETED)
            self._reap()
        future = self._pool.submit(self._send_chunk, operation, chunk, count)
        self._in_flight.append((operation, future))

    def _reap(self) -> None:
        done = [(op, f) for op, f in self._in_flight if f.done()]
        self._in_flight = [(op, f) for op, f in self._in_flight if not f.done()]
        for _, future in done:
            future.result()

    def _wait_in_flight(self) -> None:
        wait([f for _, f in self._in_flight])
        self._reap()

    def _send_chunk(self, operation: str, chunk: list[str], count: bool = True) -> None:
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
            body = {"operation_type": operation, "records": ",".join(part)}
            try:
                self.client.request(
                    "PATCH",
                    path,
                    json=body,
                    on_timeout=functools.partial(self._mark_in_doubt, part, is_add),
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
                self._count(operation, len(part))

    def _mark_in_doubt(self, part: list[str], is_add: bool) -> None:
        """An attempt carrying `part` timed out: it may still be applied, later.

        No opposite action on these identifiers can have been sent meanwhile (it would
        wait for this request), so this request's action is their latest.
        """
        with self._count_lock:
            self._last_timeout_at = time.monotonic()
            for digest in part:
                self._in_doubt[digest] = is_add

    def _reconcile(self) -> None:
        """Re-send the latest action of every identifier in doubt, once stragglers have landed.

        A write that timed out may still be applied after a later, opposite write of the same
        identifier. Before a checkpoint covers them, in-doubt identifiers are sent again with
        their latest action, after waiting long enough for any straggler to land; a re-send
        that times out itself puts its identifiers back in doubt for another round.
        """
        if self.client is None or self.dry_run:
            return
        for _ in range(RECONCILE_ROUNDS):
            self._wait_in_flight()
            with self._count_lock:
                doubt = dict(self._in_doubt)
                settle = self._last_timeout_at + self.client.timeout + CREATE_SETTLE_SECONDS
            if not doubt:
                return
            self.logger.info(
                "Re-sending the final action of %d identifiers whose earlier write timed out",
                len(doubt),
            )
            wait_for = settle - time.monotonic()
            if wait_for > 0 and self.client.stop_event.wait(wait_for):
                raise Interrupted("stopped while waiting to reconcile timed-out writes")
            with self._count_lock:
                for digest in doubt:
                    self._in_doubt.pop(digest, None)
            for operation, wanted in (("REMOVE", False), ("ADD", True)):
                hashes = [h for h, is_add in doubt.items() if is_add is wanted]
                self._send(operation, hashes, count=False)
            self._wait_in_flight()
        if self._in_doubt:
            raise TargetError(
                f"{len(self._in_doubt)} identifiers stayed in doubt after {RECONCILE_ROUNDS} "
                "rounds of timed-out writes; no checkpoint covers them, so the next run "
                "sends them again. Pinterest is answering too slowly: raise "
                "request_timeout_seconds or run again later"
            )

    def _count(self, operation: str, n: int) -> None:
        with self._count_lock:
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
