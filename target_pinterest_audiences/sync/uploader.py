"""The writer thread: batches from the record flow, written in input order.

Batches arrive through a bounded queue, so memory stays flat and hashing overlaps with
waiting on Pinterest. The thread resolves the list and audience before the first write
(resolver.py), hands identifiers to the writer (writer.py): directly in events mode, through
the difference with the snapshot in mirror mode (mirror.py), and writes a checkpoint
(checkpoint.py) once Pinterest confirmed everything before it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from target_pinterest_audiences.identifiers import EXTERNAL
from target_pinterest_audiences.pinterest.client import (
    Interrupted,
    PinterestClient,
    TargetError,
)
from target_pinterest_audiences.pinterest.limits import WaitClock
from target_pinterest_audiences.pinterest.tokens import AuthError
from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.sync.checkpoint import Checkpoints
from target_pinterest_audiences.sync.mirror import MirrorSync
from target_pinterest_audiences.sync.progress import Progress
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.resolver import (
    DRY_RUN_NEW_LIST,
    Resolver,
    describe_list_type,
    list_kind,
)
from target_pinterest_audiences.sync.status import confirmed_members
from target_pinterest_audiences.sync.writer import Writer


@dataclass
class Batch:
    """Identifiers to write, each with its final action in this batch, plus the state after."""

    #: Identifier sent (a sha256 hex digest or an external id) -> True (add) / False (remove)
    ops: dict[str, bool] = field(default_factory=dict)
    #: Mirror mode: well-formed identifiers of skipped records (seen, left as they are).
    keeps: list[str] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)
    segment_name: str | None = None
    segment_id: str | None = None
    last_record: int = 0
    #: The latest tap state received after every record of this batch, if any.
    state_after: dict[str, Any] | None = None


_STOP = object()
_STOP_INCOMPLETE = object()


class Uploader:
    """Owns the writer thread and what it drives: resolver, writer, snapshot, checkpoints."""

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
        on_checkpoint: Callable[[Any], None],
        emit_state: Callable[[], None],
        logger: logging.Logger,
        store: SnapshotStore | None = None,
        sync_mode: str = "events",
        max_removal_fraction: float = 0.2,
        allow_large_removal: bool = False,
        checkpoint_seconds: float = 60.0,
        concurrent_writes: int = 1,
        queue_depth: int = 3,
        progress_seconds: float = 0.0,
        external_id_type: str | None = None,
        progress_label: str | None = None,
        on_list: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        #: Told the list's id once known: the run checks that no two streams write one list.
        self.on_list = on_list
        self.dry_run = dry_run
        self.report = report
        self.logger = logger
        self.store = store
        self.checkpoint_seconds = checkpoint_seconds
        self.resolver = Resolver(
            client=client,
            ad_account_id=ad_account_id,
            audience_name=audience_name,
            audience_id=audience_id,
            audience_description=audience_description,
            list_type=list_type,
            dry_run=dry_run,
            report=report,
            logger=logger,
            external_id_type=external_id_type,
        )
        self.writer = Writer(
            client=client,
            ad_account_id=ad_account_id,
            identifiers_per_request=identifiers_per_request,
            concurrent_writes=concurrent_writes,
            dry_run=dry_run,
            report=report,
            logger=logger,
            create_list=self._create_list,
        )
        self.checkpoints = Checkpoints(
            report=report,
            client=client,
            on_confirmed=on_checkpoint,
            emit_state=emit_state,
            keep_tap_state=sync_mode != "mirror",
        )
        self.mirror = (
            MirrorSync(
                writer=self.writer,
                report=report,
                logger=logger,
                max_removal_fraction=max_removal_fraction,
                allow_large_removal=allow_large_removal,
                dry_run=dry_run,
            )
            if sync_mode == "mirror"
            else None
        )
        self._kinds: set[str] = set()
        #: Whether the kind of this run's identifiers was checked against its list's.
        self._kind_checked = False
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        self._thread: threading.Thread | None = None
        self._stop_sent = False
        #: Set once the writer thread has ended. Waited on instead of join(): in CPython
        #: before 3.13 a join interrupted by a signal (SIGTERM raises in the main thread)
        #: marks the still-running thread as stopped, and every later join returns at once.
        self._ended = threading.Event()
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self._last_checkpoint = time.monotonic()
        #: What the run is doing, for the progress line (mirror.phase takes over at the end).
        self._phase = "reading"
        #: How long the main thread was blocked handing batches to this thread.
        self.input_waits = WaitClock()
        self.progress = Progress(
            interval=progress_seconds,
            report=report,
            client=client,
            input_waits=self.input_waits,
            phase=self.phase,
            logger=logger,
            label=progress_label,
        )

    def set_label(self, label: str | None) -> None:
        """The stream's name in its progress lines (a run of several streams)."""
        self.progress.label = label

    @property
    def distinct_added(self) -> set[str]:
        return self.writer.distinct_added

    def phase(self) -> str:
        phase = (self.mirror.phase if self.mirror else None) or self._phase
        if self.mirror is not None:
            phase = f"mirror, {phase}"
        return f"dry run, {phase}" if self.dry_run else phase

    @property
    def held_message(self) -> str | None:
        """Set when the removal cap held removals back: the run must end non-zero."""
        return self.mirror.held_message if self.mirror else None

    # ---- lifecycle -------------------------------------------------------------------

    def check_audience(self) -> None:
        """With audience_id: read it before any record, and open its list's snapshot."""
        self.resolver.check_audience()
        if self.resolver.audience_rule_list:
            # Known before the first record: lock it now, so a second run stops at start-up.
            self._attach(self.resolver.audience_rule_list)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pinterest-writer", daemon=True)
        self._thread.start()
        self.progress.start()

    def submit(self, batch: Batch) -> None:
        """Queue a batch; blocks while the queue is full (backpressure keeps memory flat)."""
        if self.error is not None or self.stopping.is_set():
            return
        try:
            self._queue.put_nowait(batch)
            return
        except queue.Full:
            pass
        self.input_waits.begin()  # reading is paused until the writes catch up
        try:
            while True:
                if self.error is not None or self.stopping.is_set():
                    return
                try:
                    self._queue.put(batch, timeout=0.5)
                    return
                except queue.Full:
                    continue
        finally:
            self.input_waits.end()

    def request_finish(self, *, complete: bool = True) -> None:
        """Tell the writer thread that no batch follows (it ends once all are written).

        `complete`: the input was read to its end without error, so a mirror run may
        remove; after a fatal error only what precedes it is written, and nothing removed.
        """
        if self._thread is None or self._stop_sent:
            return
        self._stop_sent = True
        self._phase = "input read, finishing writes"
        stop = _STOP if complete else _STOP_INCOMPLETE
        if self.error is None and not self.stopping.is_set():
            while True:
                try:
                    self._queue.put(stop, timeout=0.5)
                    break
                except queue.Full:
                    if self.error is not None or self._ended.is_set():
                        break

    def finish(self, *, complete: bool = True) -> None:
        """Wait until every queued batch is written (or the writer failed)."""
        if self._thread is None:
            return
        self.request_finish(complete=complete)
        self._ended.wait()
        self.progress.stop()

    def abort(self) -> None:
        """Stop after the request in flight: queued batches are dropped, never half-written."""
        self.stopping.set()
        if self.client:
            self.client.stop_event.set()
        if self._thread is not None:
            self._ended.wait()
        # The thread may have stopped on one request's error or interruption while others
        # still run in the pool: they finish (or stop at their next retry) before the run
        # writes its last STATE and log line.
        self.writer.wait_stopped()
        self.progress.stop()

    def close(self) -> None:
        """Release the run's resources (the snapshot store's locks go with the process)."""
        if self.mirror is not None:
            self.mirror.close()
        if self.writer.snapshot is not None:
            self.writer.snapshot.close()

    # ---- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Interrupted:
            pass
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.writer.close()
            self._ended.set()

    def _loop(self) -> None:
        writer, checkpoints = self.writer, self.checkpoints
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.stopping.is_set():
                    return
                checkpoints.emit_ready(writer.reconcile)
                continue
            if self.stopping.is_set():
                return
            if item is _STOP or item is _STOP_INCOMPLETE:
                self._finish_run(complete=item is _STOP)
                return
            self.write_batch(item)
            checkpoints.received(item.state_after, item.last_record)
            if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
                writer.flush(full_only=False)
            if not writer.buffered and self.mirror is None:
                # (A mirror run checkpoints at its end only: no tap state to pass on, and
                # its records are not written until they are compared with the snapshot.)
                checkpoints.all_sent([future for _, future in writer.in_flight])
                self._last_checkpoint = time.monotonic()
            checkpoints.emit_ready(writer.reconcile)

    def _finish_run(self, *, complete: bool) -> None:
        writer = self.writer
        writer.flush(full_only=False)
        writer.wait_in_flight()
        self.checkpoints.emit_ready(writer.reconcile)
        writer.reconcile()
        if complete and self.mirror is not None:
            if not self.resolver.resolved:
                list_id = self.resolver.list_of_audience()
                if list_id:
                    self._attach(list_id)
            self.mirror.finish()
        self.checkpoints.confirm_pending()

    def write_batch(self, batch: Batch) -> None:
        """Resolve the list before the first write, then hand the batch to the writer."""
        self._kinds |= batch.kinds
        if batch.ops and not self.resolver.resolved:
            assert batch.segment_name is not None
            create_settles = 0.0
            if not batch.segment_id and not self.resolver.audience_rule_list:
                self._lock_segment_name(batch.segment_name)
                if self.store is not None and self.client is not None and not self.dry_run:
                    create_settles = self.store.pending_create_settles(batch.segment_name)
            self.resolver.resolve(
                batch.segment_name,
                batch.segment_id,
                on_list=self._attach_existing,
                create_settles=create_settles,
            )
            if self.resolver.list_id:
                self._attach_existing(self.resolver.list_id)
        if self.mirror is not None:
            if batch.ops and self.mirror.run_list_type is None:
                self.mirror.run_list_type = self.resolver.new_list_type(self._kinds)
            if batch.ops or batch.keeps:
                self.mirror.take(batch.ops, batch.keeps)
            return
        self.writer.buffer(batch.ops)
        self.writer.flush(full_only=True)

    def _lock_segment_name(self, name: str) -> None:
        """The list is found, or created, by its name: two runs doing that at once (into
        two audiences) would each create a list of that name; the second stops instead."""
        if self.store is None or self.client is None or self.dry_run:
            return
        self.store.lock(f"segment-{name}", f"the Customer List named {name!r}")

    def _attach(self, list_id: str, *, created: bool = False) -> None:
        """From now on the writer writes to this list, and its snapshot follows."""
        if self.writer.list_id == list_id:
            return
        if self.on_list is not None and list_id != DRY_RUN_NEW_LIST:
            self.on_list(list_id)
        self.writer.list_id = list_id
        if self.store is None or list_id == DRY_RUN_NEW_LIST:
            return
        if self.client is None or self.dry_run:
            self.writer.snapshot = self.store.open(
                list_id,
                readonly=True,
                list_created_time=self.resolver.list_created_time,
                recover=True,  # a dry run reports the difference the real run would make
            )
        else:
            self.store.lock(f"list-{list_id}", f"Customer List {list_id}")
            list_type = self.resolver.new_list_type(self._kinds) if created else None
            self.writer.snapshot = self.store.open(
                list_id,
                list_type=list_type,
                new_list=created,
                list_created_time=self.resolver.list_created_time,
            )
        snapshot = self.writer.snapshot
        made_here = False
        name = self.report.segment_name
        if snapshot is not None and not created and self.resolver.found_by_name and name:
            # A run of ours that died while creating this list: what it was created with
            # may or may not be in it.
            pending = self.store.pending_create(name)
            if pending and not snapshot.readonly:
                snapshot.mark_in_doubt(pending)
                self.store.end_create(name)
                made_here = True
                self.logger.warning(
                    "Customer List %s was created by a run that stopped before its answer: "
                    "the %d identifiers it was created with are in doubt and are sent again "
                    "or removed, as the source says",
                    list_id,
                    len(pending),
                )
        if self.mirror is not None:
            self.report.snapshot = "existing" if snapshot and snapshot.existed else "new"
            if not created and not made_here and (snapshot is None or not snapshot.existed):
                self.logger.warning(
                    "Customer List %s has no snapshot in %s yet: this mirror run adds every "
                    "member and removes nothing; members added earlier outside this snapshot "
                    "cannot be removed automatically (remove them by hand, or with an events "
                    "run that says action=remove)",
                    list_id,
                    self.store.where,
                )

    def _attach_existing(self, list_id: str) -> None:
        """An existing list: its snapshot, then its kind checked against the run's."""
        self._attach(list_id)
        if not self._kind_checked:
            self._kind_checked = True
            self._check_kind(list_id)

    def _check_kind(self, list_id: str) -> None:
        """A list holds one kind of identifier, fixed when it is created: a run of another
        kind stops before any write, naming both.

        Pinterest's answers do not say a list's kind; the snapshot store knows it for the
        lists this target created. A list made elsewhere has an unknown kind: identifiers
        recorded for it by earlier runs (digests, without a kind) say email, MAID or IDFA;
        else the kind of the first external-id run is recorded, so that its keys are
        stored as what they are and a later run of another kind stops.
        """
        snapshot = self.writer.snapshot
        if snapshot is None:
            return
        run_type = self.resolver.new_list_type(self._kinds)
        where = self.store.where if self.store is not None else "the snapshot store"
        known = snapshot.list_type
        if known is not None:
            holds = f"{describe_list_type(known)}, as recorded in the snapshot store {where}"
        elif snapshot.holds_any():
            # Digests recorded without a kind: written by runs of email, MAID or IDFA
            # identifiers (external-id runs record their kind).
            known = "EMAIL"
            holds = (
                "email, MAID or IDFA identifiers, written by earlier runs as recorded in the "
                f"snapshot store {where}"
            )
        else:
            if EXTERNAL in self._kinds:
                snapshot.set_list_type(run_type)
                if self.mirror is not None:
                    self.mirror.kind_changed()
                self.logger.warning(
                    "Customer List %s has no known kind (it was made elsewhere, or its "
                    "snapshot was lost) and Pinterest does not say it: this run's kind, %s, %s "
                    "recorded for it in %s. If the list was made for another kind, these ids "
                    "cannot match anyone: check it in Ads Manager",
                    list_id,
                    run_type,
                    "would be" if self.dry_run else "is",
                    where,
                )
            return
        if list_kind(known) != list_kind(run_type):
            raise TargetError(
                f"Customer List {list_id} holds {holds}, but this run sends "
                f"{describe_list_type(run_type)}: a Customer List holds one kind of "
                "identifier, fixed when it is created. Nothing was written. Send these records "
                "under another segment_name (a new list of their kind is created), or check "
                "external_id_type and the source"
            )

    def _create_list(self, chunk: list[str]) -> int:
        name = self.report.segment_name
        journaled = self.store is not None and name and not self.dry_run and self.client
        on_send = None
        if journaled:
            assert self.store is not None and name is not None
            store, client = self.store, self.client
            assert client is not None

            def on_send() -> None:  # each attempt: a lost answer leaves them in doubt
                store.begin_create(name, chunk, time.time() + client.straggle_seconds())

        carried = self.resolver.create_list(
            chunk, self._kinds, self.writer.per_request, on_send=on_send
        )
        assert self.resolver.list_id is not None
        self._attach(self.resolver.list_id, created=True)
        if self.writer.snapshot is not None and not self.dry_run:
            self.writer.snapshot.confirm(None, "ADD", chunk[:carried], [])
        if journaled:
            assert self.store is not None and name is not None
            self.store.end_create(name)
        if self.writer.on_confirmed is not None and not self.dry_run:
            self.writer.on_confirmed("ADD", chunk[:carried])
        return carried

    def report_ids_without_records(self) -> None:
        """A run with no records still reports the ids of its audience and list."""
        self.resolver.list_of_audience()

    def report_audience_status(self) -> None:
        """End of a real run: the Audience's status, size and match rate into the report.

        Only a report: a failed read warns and the finished run stays finished.
        """
        try:
            self.resolver.read_audience_status(self._confirmed_members)
        except (TargetError, AuthError) as exc:
            self.report.audience_read = "failed"
            self.logger.warning("Could not read the Audience's status and size: %s", exc)
        except Exception as exc:  # never fail a finished run for a report
            self.report.audience_read = "failed"
            self.logger.warning(
                "Could not read the Audience's status and size (%s)", type(exc).__name__
            )

    def _confirmed_members(self, list_id: str) -> int | None:
        """Members the snapshot confirmed for this list: this run's snapshot when it is open
        (it counts this run's writes), else the stored one (None when there is none)."""
        snapshot = self.writer.snapshot
        if snapshot is not None and snapshot.list_id == list_id:
            return snapshot.count()
        return confirmed_members(self.store, list_id) if self.store is not None else None
