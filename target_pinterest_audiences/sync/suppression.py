"""Suppression: opted-out people taken out of every Customer List, and kept out.

Two parts:
- `remove_from_lists`: sends REMOVE for suppressed identifiers to each Customer List given,
  through the run's Writer (writer.py: request size, concurrency, 413 halving, retries,
  writes in doubt re-sent), and, for a list the snapshot store keeps, through its snapshot
  (journaled before each request, changed on Pinterest's confirmation). Used at the end of a
  run with suppression streams, and by `forget`.
- `SuppressionRun`: one run's records of the suppression streams (the setting
  `suppression_streams`), kept in the suppression set (store/suppression.py) as they arrive,
  and the removals at the end of the input.

What is covered: every identifier whose removal is pending (newly suppressed, or left by a
run that stopped before every list confirmed it) is sent for removal to every list of the
snapshot store that fits its kind, whatever that list's snapshot says: a confirmed member,
an identifier in doubt, or one the snapshot does not know (added before the snapshot
existed, or by another tool) all get the request. Once every list confirmed, the removal is
no longer pending. Lists outside the snapshot store are reached by `forget` (every list of
the ad account Pinterest returns), not by runs.

Which lists fit: an email, MAID or IDFA digest goes to every list of type EMAIL, MAID or
IDFA (Pinterest lets any of them hold any combination of the three, and the target puts
MAID and IDFA digests into EMAIL lists when a run holds several kinds), and to lists whose
type is unknown (made elsewhere: Pinterest's answers do not say a list's type, and EMAIL is
its default); an external id goes to lists the snapshot store knows are of its type.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.identifiers import (
    InvalidRecord,
    parse_identifiers,
    salvage_identifiers,
)
from target_pinterest_audiences.pinterest.client import Interrupted, PinterestClient
from target_pinterest_audiences.pinterest.tokens import AuthError
from target_pinterest_audiences.store.snapshot import Snapshot, SnapshotStore
from target_pinterest_audiences.store.suppression import (
    TEXT_ID_TYPES,
    SuppressionSet,
    key_kind,
    suppression_key,
)
from target_pinterest_audiences.sync.rejected import RejectedRecords
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.resolver import list_kind
from target_pinterest_audiences.sync.writer import Writer

#: Skipped suppression records logged one by one before only the counts are kept.
SKIP_LOG_LIMIT = 20
#: Keys written to the suppression set at once while records arrive.
FLUSH_EVERY = 5000
#: Meltano's environment variable for allow_large_removal, named in the cap's message.
ALLOW_ENV = "TARGET_PINTEREST_AUDIENCES_ALLOW_LARGE_REMOVAL"


def fits(list_type: str | None, kind: str) -> bool:
    """Whether an identifier of key kind `kind` (store/suppression.py) may be in a list of
    `list_type` (None: unknown, made elsewhere)."""
    if list_type is None:
        return kind == "hashed"
    return list_kind(list_type) == ("hashed" if kind == "hashed" else kind)


@dataclass
class ListRemoval:
    """What one Customer List was sent, and whether Pinterest confirmed it."""

    list_id: str
    name: str | None = None
    #: The list's type as the snapshot store knows it (None: unknown).
    list_type: str | None = None
    #: Whether the snapshot store keeps this list.
    in_store: bool = False
    #: Identifiers sent for removal (a dry run: that would be sent).
    sent: int = 0
    confirmed: bool = False
    #: Why the removal is not confirmed (said without any identifier).
    problem: str | None = None


def remove_from_lists(
    *,
    client: PinterestClient | None,
    store: SnapshotStore,
    ad_account_id: str,
    lists: Sequence[tuple[str, str | None]],
    identifiers: Mapping[str, Sequence[str]],
    store_ids: Collection[str],
    logger: logging.Logger,
    identifiers_per_request: int,
    concurrent_writes: int = 1,
    dry_run: bool = False,
    open_snapshots: Mapping[str, Snapshot] | None = None,
) -> list[ListRemoval]:
    """Send REMOVE for `identifiers` (key kind -> values as sent) to each list of `lists`
    ((id, name)) that fits their kind; one ListRemoval per list, in order.

    A list the store keeps (`store_ids`) is locked and its snapshot follows each confirmed
    request; `open_snapshots` are this run's own snapshots, already locked and open. A list
    that fails (busy, refused, retries exhausted) is reported and the next one is tried.
    """
    results = []
    open_snapshots = open_snapshots or {}
    for list_id, name in lists:
        result = ListRemoval(list_id=list_id, name=name, in_store=list_id in store_ids)
        results.append(result)
        snapshot = open_snapshots.get(list_id)
        opened: Snapshot | None = None
        try:
            if snapshot is None and result.in_store:
                if not dry_run:
                    store.lock(f"list-{list_id}", f"Customer List {list_id}")
                opened = store.open(list_id, readonly=dry_run)
                snapshot = opened
            result.list_type = snapshot.list_type if snapshot is not None else None
            chunk: list[str] = []
            for kind, values in identifiers.items():
                if fits(result.list_type, kind):
                    chunk.extend(values)
            result.sent = len(chunk)
            if not chunk or dry_run or client is None:
                result.confirmed = not chunk or dry_run
                if chunk and not dry_run:
                    result.problem = "no credentials to reach Pinterest"
                continue
            writer = Writer(
                client=client,
                ad_account_id=ad_account_id,
                identifiers_per_request=identifiers_per_request,
                concurrent_writes=concurrent_writes,
                dry_run=False,
                report=Report(ad_account_id=ad_account_id, audience_name=None, dry_run=False),
                logger=logger,
                create_list=_never_create,
            )
            writer.list_id = list_id
            writer.snapshot = snapshot if snapshot is not None and not snapshot.readonly else None
            try:
                writer.send("REMOVE", chunk)
                writer.wait_in_flight()
                writer.reconcile()
            finally:
                writer.close()
            result.confirmed = True
        except Interrupted:
            result.problem = "stopped by a signal"
            raise
        except (TargetError, AuthError) as exc:
            result.problem = " ".join(str(exc).split())
            logger.warning("Customer List %s: the removal failed: %s", list_id, result.problem)
        finally:
            if opened is not None:
                opened.close()
    return results


def _never_create(chunk: list[str]) -> int:  # pragma: no cover - removals never create
    raise AssertionError("a removal never creates a list")


class SuppressionRun:
    """One run's suppression streams: their identifiers suppressed as they arrive (so this
    run's record flows skip them at once), kept in the set before any later STATE, and
    removed from every list of the snapshot store at the end of the input."""

    def __init__(
        self,
        *,
        store: SnapshotStore,
        report: Report,
        logger: logging.Logger,
        ad_account_id: str,
        streams: Collection[str],
        dry_run: bool,
        mirror: bool,
        external_id_type: str | None,
        skip_invalid: bool,
        rejected: RejectedRecords | None,
        identifiers_per_request: int,
        concurrent_writes: int,
        max_removal_fraction: float,
        allow_large_removal: bool,
    ) -> None:
        self.store = store
        self.report = report
        self.logger = logger
        self.ad_account_id = ad_account_id
        self.streams = frozenset(streams)
        self.dry_run = dry_run
        self.mirror = mirror
        self.external_id_type = external_id_type
        self.skip_invalid = skip_invalid
        self.rejected = rejected
        self.per_request = identifiers_per_request
        self.concurrent_writes = concurrent_writes
        self.max_removal_fraction = max_removal_fraction
        self.allow_large_removal = allow_large_removal
        # Without suppression streams the set is only read: no file is made for nothing.
        self.set = SuppressionSet(store, readonly=dry_run or not self.streams)
        #: Every suppressed key: the set as stored, plus what this run's streams named. The
        #: record flows receive it and skip any ADD of a key in it.
        self.keys: set[str] = self.set.keys()
        report.suppression_set_size = len(self.keys)
        #: This run's mark (mirror mode: entries it does not name are lifted at the end).
        self.mark = random.getrandbits(62)
        self._buffer: list[tuple[str, str]] = []
        #: Keys first suppressed by this run (for a dry run's report of what it would send).
        self._new: list[tuple[str, str]] = []
        #: Dry run in mirror mode: every key named, to count what would be lifted.
        self._named: set[str] = set()
        #: LR_ID and DLX_ID values named in this run, by key: the set keeps only their
        #: hashes, and a removal must send the value (kept in memory for this run only).
        self._text_values: dict[str, str] = {}
        self._action_said = False
        #: The suppression streams whose SCHEMA came in this run (in mirror mode, only a
        #: stream that came can be the whole set).
        self.streams_read: set[str] = set()

    # ---- records -----------------------------------------------------------------------

    def add(self, record: dict[str, Any], stream: str) -> None:
        """One record of a suppression stream: each of its identifiers is suppressed."""
        report = self.report
        report.suppression_records += 1
        number = report.suppression_records
        action = record.get("action")
        if not self._action_said and isinstance(action, str) and action.strip().lower() == "remove":
            self._action_said = True
            self.logger.warning(
                "Suppression stream '%s': records' action is ignored (every identifier of a "
                "suppression stream is suppressed); to lift someone, use mirror mode (absent "
                "identifiers are lifted) or `forget --lift`",
                stream,
            )
        try:
            found = parse_identifiers(record, self.external_id_type)
        except InvalidRecord as exc:
            where = f"suppression record {number} (stream '{stream}')"
            if not self.skip_invalid:
                raise TargetError(
                    f"{where} is invalid: {exc}. Fix the source, or set on_invalid_record=skip "
                    "to drop such records and go on (their well-formed identifiers are still "
                    "suppressed)"
                ) from None
            skipped = report.records_skipped
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
            if self.rejected is not None:
                self.rejected.add(
                    record_number=number,
                    stream=stream,
                    key_properties=(),
                    record=record,
                    field=exc.field,
                    reason=exc.reason,
                )
            if sum(skipped.values()) <= SKIP_LOG_LIMIT:
                self.logger.warning(
                    "Skipping %s: %s; its well-formed identifiers are suppressed", where, exc
                )
            found = salvage_identifiers(record, self.external_id_type)
        for kind, value in found:
            self._suppress(kind, value)
        if len(self._buffer) >= FLUSH_EVERY:
            self.flush()

    def _suppress(self, kind: str, value: str) -> None:
        if kind == "external" and self.external_id_type is None:
            return
        external_type = self.external_id_type if kind == "external" else None
        key = suppression_key(value, external_type)
        kkind = key_kind(kind, self.external_id_type)
        if kkind in TEXT_ID_TYPES:
            self._text_values[key] = value
        if key not in self.keys:
            self.keys.add(key)
            self._new.append((key, kkind))
        if self.dry_run:
            if self.mirror:
                self._named.add(key)
            return
        self._buffer.append((key, kkind))

    def flush(self) -> None:
        """Keep what arrived in the suppression set (before a later STATE is written)."""
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, []
        self.set.add(buffer, self.mark if self.mirror else None)

    # ---- the end of the input ----------------------------------------------------------

    def finish(
        self,
        *,
        client: PinterestClient | None,
        complete: bool,
        open_snapshots: Mapping[str, Snapshot] | None = None,
    ) -> str | None:
        """Lift (mirror mode, complete input), then remove every pending identifier from
        every list of the snapshot store. Returns why the run must end non-zero, or None."""
        self.flush()
        report = self.report
        if not self.streams:
            return None  # a run without suppression streams only reads the set
        problems = []
        if self.mirror and complete and self.streams_read:
            held = self._lift()
            if held:
                problems.append(held)
        if self.dry_run:
            pending = list(dict.fromkeys([*self._new, *self.set.pending()]))
        else:
            pending = self.set.pending()
        report.suppression_added = len(self._new)
        sendable: dict[str, list[str]] = {}
        settled: list[tuple[str, str]] = []
        unknown = 0
        for key, kind in pending:
            if kind in TEXT_ID_TYPES:
                value = self._text_values.get(key)
                if value is None:
                    unknown += 1  # named by an earlier run only: its value is not kept
                    continue
            else:
                value = key
            sendable.setdefault(kind, []).append(value)
            settled.append((key, kind))
        if unknown:
            self.logger.warning(
                "%d suppressed LR_ID/DLX_ID identifiers wait for their removal since an earlier "
                "run stopped: the set keeps only their hashes, so they are removed when a "
                "suppression stream or `forget` names them again (they are never added)",
                unknown,
            )
        if settled:
            list_ids = self.store.list_ids()
            results = remove_from_lists(
                client=client,
                store=self.store,
                ad_account_id=self.ad_account_id,
                lists=[(list_id, None) for list_id in list_ids],
                identifiers=sendable,
                store_ids=set(list_ids),
                logger=self.logger,
                identifiers_per_request=self.per_request,
                concurrent_writes=self.concurrent_writes,
                dry_run=self.dry_run,
                open_snapshots=open_snapshots,
            )
            report.suppressed_removed = sum(r.sent for r in results if r.confirmed)
            failed = [r for r in results if not r.confirmed]
            if failed:
                problems.append(
                    f"the removal of suppressed identifiers was not confirmed by Customer "
                    f"List(s) {', '.join(r.list_id for r in failed)} ({failed[0].problem}); "
                    "they stay suppressed (never added) and their removal is sent again by the "
                    "next run with a suppression stream"
                )
            elif not self.dry_run:
                self.set.settle(settled)
            self.logger.info(
                "Suppression: %d identifiers %s for removal to %d Customer List(s) of the "
                "snapshot store",
                len(settled),
                "would be sent" if self.dry_run else "sent",
                sum(1 for r in results if r.sent),
            )
        report.suppression_set_size = (
            len(self.keys) - report.suppression_lifted if self.dry_run else self.set.size()
        )
        return "; ".join(problems) or None

    def _lift(self) -> str | None:
        """Mirror mode: entries this run did not name are lifted, unless they are too many
        (an empty or broken source must not let every opted-out person back in)."""
        report = self.report
        if self.dry_run:
            pinned = self.set.pinned_keys()
            lifts = sum(1 for key in self.keys if key not in self._named and key not in pinned)
            named = len(self._named)
        else:
            lifts = self.set.unmarked(self.mark)
            named = self.set.marked(self.mark)
        if not lifts:
            return None
        # Of the entries a suppression stream may lift (not the pinned erasure requests).
        at_start = lifts + named
        reason = None
        if not self.allow_large_removal:
            if named == 0:
                reason = (
                    f"the suppression stream holds no identifier (an empty or failed query looks "
                    f"like this) and would lift all {lifts} suppressed identifiers"
                )
            elif lifts / at_start > self.max_removal_fraction:
                reason = (
                    f"it would lift {lifts} of the {at_start} identifiers the suppression "
                    "streams suppressed "
                    f"({lifts / at_start:.1%}), above max_removal_fraction "
                    f"{self.max_removal_fraction:g}"
                )
        if reason:
            report.suppression_lifted = 0
            return (
                f"Suppression held back: nobody was lifted from the suppression set: {reason}. "
                "If the source is right, run once with allow_large_removal=true (for Meltano: "
                f"{ALLOW_ENV}=true)"
            )
        report.suppression_lifted = lifts
        if not self.dry_run:
            self.set.lift_unmarked(self.mark)
        self.logger.info(
            "Suppression (mirror): %d identifiers no longer in the suppression stream %s lifted "
            "(lifting adds nobody: a later run of a segment that holds them adds them)",
            lifts,
            "would be" if self.dry_run else "were",
        )
        return None

    def close(self) -> None:
        self.set.close()
