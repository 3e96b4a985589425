"""The record flow: from each RECORD to batches of hashed identifiers, in input order.

Each stream of a run (a dataset, see datasets.py) has its own `RecordFlow`: a stream syncs one
segment, and its final membership must equal applying its actions in input order. The flow validates
and hashes each record (identifiers.py), enforces the one-segment rule and the one-kind rule
(a run sends external ids or email/MAID/IDFA identifiers, never both), keeps the final
action per identifier in the open batch (the later action wins), and cuts the batch into
the uploader's queue when it holds `identifiers_per_request` identifiers. Tap STATE is
attached to the open batch, so it is emitted only after every record before it is written.
A record that would add a suppressed identifier (the suppression set, docs/opt-outs.md) is
skipped with the reason `suppressed`. Records of the suppression streams do not enter a flow:
`SuppressionSink` hands them to the run's SuppressionRun (sync/suppression.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from singer_sdk.mapper import RemoveRecordTransform
from singer_sdk.sinks import BatchSink

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.identifiers import (
    EXTERNAL,
    IDENTIFIER_FIELDS,
    InvalidRecord,
    parse_record,
    salvage_identifiers,
)
from target_pinterest_audiences.store.suppression import TEXT_ID_TYPES, suppression_key
from target_pinterest_audiences.sync.rejected import RejectedRecords
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.suppression import SuppressionRun
from target_pinterest_audiences.sync.uploader import Batch, Uploader

if TYPE_CHECKING:
    from singer_sdk.sinks.core import BaseJSONSchemaValidator

#: How many skipped records are logged one by one before only the counts are kept.
SKIP_LOG_LIMIT = 20


class RecordFlow:
    """Turns one stream's records into ordered batches for its uploader."""

    def __init__(
        self,
        *,
        uploader: Uploader,
        report: Report,
        identifiers_per_request: int,
        skip_invalid: bool,
        logger: logging.Logger,
        mirror: bool = False,
        external_id_type: str | None = None,
        rejected: RejectedRecords | None = None,
        on_segment: Callable[[str, str | None], None] | None = None,
        suppressed: Collection[str] = frozenset(),
        active: ActiveStreams | None = None,
    ) -> None:
        self.uploader = uploader
        #: The run's streams holding records in memory (bounded across streams).
        self.active = active
        #: The suppression set's keys (store/suppression.py): a record that would ADD one of
        #: them is skipped (reason `suppressed`). Shared by every stream's flow, so keys a
        #: suppression stream names during the run take effect at once.
        self.suppressed = suppressed
        #: LR_ID and DLX_ID keys are hashes of the value (store/suppression.py).
        self._text_ids = external_id_type if external_id_type in TEXT_ID_TYPES else None
        #: Told the stream's segment at its first record (the run checks that no two
        #: streams sync one segment, before either writes it).
        self.on_segment = on_segment
        #: Mirror mode: a record without an action is a member, and a skipped record's
        #: well-formed identifiers are kept as they are (see mirror.py).
        self.mirror = mirror
        self.default_action: bool | None = True if mirror else None
        self.report = report
        self.per_request = identifiers_per_request
        self.skip_invalid = skip_invalid
        self.logger = logger
        self.record_number = 0
        self.segment: tuple[str, str | None] | None = None
        self.segment_first_record = 0
        #: The external_id_type setting: what kind of id the external_id field holds.
        self.external_id_type = external_id_type
        #: Whether this run sends external ids (None until its first valid record says).
        self.external: bool | None = None
        self.kind_first_record = 0
        #: Where skipped records are written (rejected_records_path), if anywhere.
        self.rejected = rejected
        #: Each stream's key properties (set by its sink), for the rejected-records file.
        self.key_properties: dict[str, tuple[str, ...]] = {}
        self.open = Batch()

    def add(self, record: dict[str, Any], stream: str) -> None:
        if self.active is not None and self.active.last is not self:
            self.active.touch(self)
        if len(self.open.ops) + len(self.open.keeps) >= self.per_request:
            # The open batch is full: it is complete whatever this record turns out to be.
            self.cut()
        self.record_number += 1
        self.report.records_received += 1
        try:
            parsed = parse_record(record, self.default_action, self.external_id_type)
            # A record never mixes kinds (parse_record), so its first identifier says its kind.
            external = parsed.identifiers[0][0] == EXTERNAL
            if external is not self.external:
                if self.external is not None:
                    raise self._mixed_kinds(record, external)
                self.external = external
                self.kind_first_record = self.record_number
        except InvalidRecord as exc:
            self._invalid(exc, stream, record)
            if self.mirror:
                self.open.keeps.extend(
                    digest
                    for kind, digest in salvage_identifiers(record, self.external_id_type)
                    if self.external is None or (kind == EXTERNAL) is self.external
                )
            return
        segment = (parsed.segment_name, parsed.segment_id)
        if self.segment is None:
            if self.on_segment is not None:
                self.on_segment(*segment)
            self.segment = segment
            self.segment_first_record = self.record_number
            self.open.segment_name, self.open.segment_id = segment
        elif segment != self.segment:
            self._second_segment(segment)
        if parsed.is_add and self.suppressed and self._is_suppressed(parsed.identifiers):
            self._skip_suppressed(stream, record)
            return
        # Cut before adding, not after: a STATE that follows the record filling a batch
        # then still rides on that batch instead of waiting for the next one.
        if len(self.open.ops) + len(parsed.identifiers) > self.per_request and self.open.ops:
            self.cut()
        ops = self.open.ops
        is_add = parsed.is_add
        for kind, digest in parsed.identifiers:
            ops[digest] = is_add
            self.open.kinds.add(kind)
        self.open.last_record = self.record_number

    def on_state(self, state: Any) -> None:
        """The tap's state (a StateGate ticket) covers every record so far: it rides on the
        open batch."""
        self.open.state_after = state

    @property
    def idle(self) -> bool:
        """Nothing of this stream waits in the open batch (a tap state may ride on it)."""
        return not self.open.ops and not self.open.keeps

    def cut(self, *, flush: bool = False) -> None:
        """Hand the open batch to the writer (blocking while its queue is full); `flush`:
        the writer sends what it buffers too (the stream went quiet, see ActiveStreams)."""
        if self.uploader.error is not None:
            raise _as_target_error(self.uploader.error)
        batch = self.open
        if not batch.ops and not batch.keeps and batch.state_after is None and not flush:
            return
        batch.flush = flush
        if not batch.ops:
            batch.last_record = self.record_number
        self.open = Batch(segment_name=batch.segment_name, segment_id=batch.segment_id)
        self.uploader.submit(batch)

    def discard_open(self) -> None:
        """Drop the open batch: on a fatal record or a signal, none of it is written."""
        self.open = Batch()

    def _mixed_kinds(self, record: dict[str, Any], external: bool) -> InvalidRecord:
        """The first record of the other kind than the run's (and every later one)."""
        since = f"since record {self.kind_first_record}"
        if external:
            field = "external_id"
            what = (
                "holds an external id, but this run sends email, MAID or IDFA identifiers "
                f"({since})"
            )
        else:
            field = next(
                (
                    name
                    for name in IDENTIFIER_FIELDS
                    if name != "external_id"
                    and isinstance(record.get(name), str)
                    and record[name].strip()
                ),
                "identifiers",
            )
            what = (
                f"holds an email, MAID or IDFA identifier, but this run sends "
                f"{self.external_id_type} external ids ({since})"
            )
        return InvalidRecord(
            field,
            "mixed_identifier_kinds",
            f"{what}: a Customer List holds one kind of identifier (its list_type), so a run "
            "sends one kind; send the other kind in a run of its own (another segment_name)",
        )

    def _invalid(self, exc: InvalidRecord, stream: str, record: dict[str, Any]) -> None:
        where = f"record {self.record_number} (stream '{stream}')"
        if not self.skip_invalid:
            raise TargetError(
                f"{where} is invalid: {exc}. Nothing of the batch holding it was written. Fix "
                "the source, map the field with stream_maps, or set on_invalid_record=skip "
                "to drop such records and go on"
            )
        skipped = self.report.records_skipped
        skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
        if self.rejected is not None:
            self.rejected.add(
                record_number=self.record_number,
                stream=stream,
                key_properties=self.key_properties.get(stream, ()),
                record=record,
                field=exc.field,
                reason=exc.reason,
            )
        total = sum(skipped.values())
        if total <= SKIP_LOG_LIMIT:
            self.logger.warning("Skipping %s: %s", where, exc)
        elif total == SKIP_LOG_LIMIT + 1:
            self.logger.warning(
                "More invalid records are being skipped; only their counts are reported now"
            )

    def _is_suppressed(self, identifiers: tuple[tuple[str, str], ...]) -> bool:
        """Whether any identifier of a record is suppressed: the record names one person."""
        suppressed, text = self.suppressed, self._text_ids
        for kind, digest in identifiers:
            key = suppression_key(digest, text) if text and kind == EXTERNAL else digest
            if key in suppressed:
                return True
        return False

    def _skip_suppressed(self, stream: str, record: dict[str, Any]) -> None:
        """A record that would add a suppressed person: skipped whatever on_invalid_record
        says (it is valid; the person opted out), counted and logged without an identifier."""
        skipped = self.report.records_skipped
        skipped["suppressed"] = skipped.get("suppressed", 0) + 1
        if self.rejected is not None:
            self.rejected.add(
                record_number=self.record_number,
                stream=stream,
                key_properties=self.key_properties.get(stream, ()),
                record=record,
                field="identifiers",
                reason="suppressed",
            )
        total = sum(skipped.values())
        if total <= SKIP_LOG_LIMIT:
            self.logger.info(
                "Skipping record %d (stream '%s'): an identifier of it is in the suppression "
                "set (an opt-out), so it is never added",
                self.record_number,
                stream,
            )

    def _second_segment(self, segment: tuple[str, str | None]) -> None:
        assert self.segment is not None
        raise TargetError(
            f"record {self.record_number} belongs to segment_name {segment[0]!r} "
            f"(segment_id {segment[1] or 'none'}) but record {self.segment_first_record} "
            f"began segment_name {self.segment[0]!r} (segment_id {self.segment[1] or 'none'}); "
            "one run syncs exactly one segment. Nothing of the batch holding this record was "
            "written. Split the data into one run per segment (for example one Meltano job "
            "per segment, filtered with stream_maps)"
        )


class ActiveStreams:
    """The streams whose records wait in memory (an open batch, the writer's buffer).

    A tap reading many tables sends them one after another: each stream's last, partly
    filled batch would wait for the end of the input, and with dozens of streams that is
    dozens of batches in memory. When a record of another stream arrives and more than
    `limit` streams hold records, the one quiet longest hands its records on and its writer
    sends them, so memory stays bounded however many streams a run has. Streams that
    interleave (one table split by stream maps) stay under the limit and keep full batches.
    """

    def __init__(self, limit: int = 4) -> None:
        self.limit = limit
        self.last: RecordFlow | None = None
        self._recent: OrderedDict[RecordFlow, None] = OrderedDict()

    def touch(self, flow: RecordFlow) -> None:
        """`flow` takes a record (called only when the stream changes)."""
        self.last = flow
        recent = self._recent
        recent[flow] = None
        recent.move_to_end(flow)
        while len(recent) > self.limit:
            quiet, _ = recent.popitem(last=False)
            quiet.cut(flush=True)


def _as_target_error(exc: BaseException) -> TargetError:
    return exc if isinstance(exc, TargetError) else TargetError(f"{type(exc).__name__}: {exc}")


class AudienceSink(BatchSink):
    """Hands each record to the run's RecordFlow; batching is by identifiers, not rows."""

    #: Rows are only a secondary limit (the batch_size_rows setting); identifiers decide.
    MAX_SIZE_DEFAULT = 1_000_000

    def get_validator(self) -> BaseJSONSchemaValidator | None:
        """No tap-schema validation: records are checked against our own standard schema,
        by hand, because jsonschema errors quote the offending (raw) value."""
        return None

    def __init__(self, target: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(target, *args, **kwargs)
        #: The stream's dataset is made now, at its SCHEMA (a stream that stream maps drop,
        #: `"name": null`, gets a sink from singer-sdk but never a record, nor a dataset).
        self.flow: RecordFlow | None = None
        #: max_size, read once for the target's per-record path (settings do not change).
        self.full_at = self.max_size
        if not _dropped(target, self.stream_name):
            self.flow = target.dataset_for(self.stream_name).flow
            self.flow.key_properties[self.stream_name] = tuple(self.key_properties or ())

    def _validate_and_parse(self, record: dict) -> dict:
        """Skip singer-sdk's parsing of the tap's date-time fields: no field we read is a
        date, and the parsing costs more per record than our whole validation."""
        return record

    def process_record(self, record: dict, context: dict) -> None:
        if self.flow is not None:
            self.flow.add(record, self.stream_name)

    def process_batch(self, context: dict) -> None:
        """A drain cuts the open batch; records of a Singer BATCH message (read from its
        files by singer-sdk) go through the same flow, in order, first."""
        records = context.pop("records", None) or ()
        if self.flow is None:
            return
        for record in records:
            self.flow.add(record, self.stream_name)
        self.flow.cut()


class SuppressionSink(BatchSink):
    """A suppression stream (setting suppression_streams): each record's identifiers are
    suppressed (sync/suppression.py); no segment_name or action is read, and the stream has
    no dataset of its own."""

    MAX_SIZE_DEFAULT = 1_000_000

    def get_validator(self) -> BaseJSONSchemaValidator | None:
        """No tap-schema validation (its errors would quote raw values): see AudienceSink."""
        return None

    def __init__(self, target: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(target, *args, **kwargs)
        self.suppression: SuppressionRun = target.suppression
        self.suppression.streams_read.add(self.stream_name)

    def _validate_and_parse(self, record: dict) -> dict:
        return record

    def process_record(self, record: dict, context: dict) -> None:
        self.suppression.add(record, self.stream_name)

    def process_batch(self, context: dict) -> None:
        """A drain keeps what arrived in the suppression set."""
        for record in context.pop("records", None) or ():
            self.suppression.add(record, self.stream_name)
        self.suppression.flush()


def _dropped(target: Any, stream: str) -> bool:
    """Whether stream maps drop every record of this stream (its map is `null`)."""
    maps = [m for ms in target.mapper.stream_maps.values() for m in ms if m.stream_alias == stream]
    return bool(maps) and all(isinstance(m, RemoveRecordTransform) for m in maps)
