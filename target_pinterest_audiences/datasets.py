"""A stream is a dataset: its own Customer List and Audience, record flow, writer thread and report.

Every stream of a run (its name after stream maps) syncs its own segment, with the top-level
settings as defaults and the `audiences` setting's entry for the stream on top. All streams share
the run's Pinterest budget (one client's limits, see pinterest/limits.py), its snapshot store and
its rejected-records file; their tap STATE is passed on only once every stream confirmed the
records before it (sync/checkpoint.py, StateGate).

Two streams of one run never write one Audience or one Customer List: `Claims` stops the run,
naming both streams, as soon as a second stream names an Audience (at its SCHEMA) or a segment
or list (before its first write) that another stream has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from singer_sdk.singerlib.json import serialize_json

from target_pinterest_audiences import settings
from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.pinterest.client import PinterestClient
from target_pinterest_audiences.settings import PER_STREAM_SETTINGS
from target_pinterest_audiences.sink import ActiveStreams, RecordFlow
from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.sync.actalike import ensure_actalikes
from target_pinterest_audiences.sync.checkpoint import StateGate
from target_pinterest_audiences.sync.rejected import RejectedRecords
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.uploader import Uploader
from target_pinterest_audiences.sync.writer import MIN_AUDIENCE_SIZE

#: Placeholders audience_name may hold, filled in per stream.
PLACEHOLDERS = ("{segment_name}", "{stream}")


def stream_settings(config: Mapping[str, Any], stream: str | None) -> dict[str, Any]:
    """The settings of one stream: the top-level ones, then its `audiences` entry's."""
    merged = {key: config.get(key) for key in PER_STREAM_SETTINGS}
    entry = (config.get("audiences") or {}).get(stream) if stream is not None else None
    for key, value in (entry or {}).items():
        if value is not None:
            merged[key] = value
    if entry and (entry.get("audience_id") or entry.get("audience_name")):
        # A stream that names its own Audience does not inherit the other way of naming one.
        if not entry.get("audience_id"):
            merged["audience_id"] = None
        if not entry.get("audience_name"):
            merged["audience_name"] = None
    for key in PER_STREAM_SETTINGS:
        if merged[key] is None:
            merged[key] = settings.default(key)
    merged["sync_mode"] = merged["sync_mode"] or "events"
    return merged


def fill_name(template: str, *, stream: str | None, segment_name: str | None) -> str:
    """audience_name with its placeholders filled in (str.replace: no other brace is special)."""
    name = template.replace("{stream}", stream or "")
    if segment_name is not None:
        name = name.replace("{segment_name}", segment_name)
    return name


class Claims:
    """Which stream writes which Audience, segment and Customer List: two never share one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}

    def rebind(self, old: str, new: str) -> None:
        """The run's first dataset met its stream: its claims are that stream's."""
        with self._lock:
            for what, owner in self._owners.items():
                if owner == old:
                    self._owners[what] = new

    def claim(self, what: str, description: str, stream: str) -> None:
        with self._lock:
            owner = self._owners.setdefault(what, stream)
            if owner == "":  # the run's first dataset, before it met its stream
                owner = self._owners[what] = stream
        if owner != stream:
            raise TargetError(
                f"streams {owner!r} and {stream!r} would both write {description}: each stream "
                "of a run syncs its own Audience and Customer List. Nothing more is written. "
                "Give each stream its own audience_name (the `audiences` setting, or "
                "'{stream}' or '{segment_name}' in audience_name) and its own segment_name"
            )


@dataclass
class RunContext:
    """What every dataset of a run shares."""

    config: Mapping[str, Any]
    client: PinterestClient | None
    store: SnapshotStore
    gate: StateGate
    claims: Claims
    rejected: RejectedRecords | None
    logger: logging.Logger
    dry_run: bool
    skip_invalid: bool
    setting: Callable[[str], Any]
    active: ActiveStreams
    #: The suppression set's keys (sync/suppression.py): every stream's flow skips an ADD of one.
    suppressed: Collection[str] = frozenset()


class Dataset:
    """One stream's sync: its flow (main thread), uploader (its writer thread) and report."""

    def __init__(self, run: RunContext, stream: str | None) -> None:
        self.run = run
        self.stream = stream
        self.settings = cfg = stream_settings(run.config, stream)
        self.name_template: str | None = cfg["audience_name"]
        self.sync_mode: str = cfg["sync_mode"]
        self.report = Report(
            ad_account_id=run.config["ad_account_id"],
            audience_name=self._audience_name(None),
            dry_run=run.dry_run,
            sync_mode=self.sync_mode,
        )
        self.client = run.client.for_stream(stream or "") if run.client is not None else None
        self.uploader = Uploader(
            client=self.client,
            ad_account_id=run.config["ad_account_id"],
            audience_name=self.report.audience_name,
            audience_id=cfg["audience_id"],
            audience_description=cfg["audience_description"],
            identifiers_per_request=int(run.setting("identifiers_per_request")),
            list_type=cfg["list_type"],
            dry_run=run.dry_run,
            report=self.report,
            on_checkpoint=lambda ticket: run.gate.confirmed(self.key, ticket),
            emit_state=run.gate.write,
            logger=run.logger,
            checkpoint_seconds=float(run.setting("checkpoint_interval_seconds")),
            concurrent_writes=int(run.setting("max_concurrent_writes")),
            store=run.store,
            sync_mode=self.sync_mode,
            max_removal_fraction=float(cfg["max_removal_fraction"]),
            allow_large_removal=bool(cfg["allow_large_removal"]),
            progress_seconds=float(run.setting("progress_interval_seconds")),
            external_id_type=cfg["external_id_type"],
            progress_label=None,
            on_list=self._on_list,
        )
        self.flow = RecordFlow(
            uploader=self.uploader,
            report=self.report,
            identifiers_per_request=int(run.setting("identifiers_per_request")),
            skip_invalid=run.skip_invalid,
            logger=run.logger,
            mirror=self.sync_mode == "mirror",
            external_id_type=cfg["external_id_type"],
            rejected=run.rejected,
            on_segment=self._on_segment,
            active=run.active,
            suppressed=run.suppressed,
        )

    # ---- naming ----------------------------------------------------------------------

    @property
    def key(self) -> str:
        """The stream's name in STATE and claims ("" for a run's single unbound dataset)."""
        return self.stream or ""

    def _audience_name(self, segment_name: str | None) -> str | None:
        template = self.name_template
        if not template:
            return None
        if "{segment_name}" in template and segment_name is None:
            return None  # known from the stream's first record
        if "{stream}" in template and self.stream is None:
            return None  # known once the run's first dataset meets its stream
        return fill_name(template, stream=self.stream, segment_name=segment_name)

    def describe(self) -> str:
        return f"stream {self.stream!r}" if self.stream else "the run"

    def check_audience_is_known(self) -> None:
        if not self.settings["audience_id"] and not self.name_template:
            raise TargetError(
                f"{self.describe()} has no Audience: set audience_name or audience_id for it "
                f"under the `audiences` setting (key {self.stream!r}), or a top-level "
                "audience_name (it may hold '{stream}' or '{segment_name}')"
            )

    def bind(self, stream: str) -> None:
        """The run's eagerly started dataset takes the first stream that has no entry of its own."""
        self.stream = stream
        if self.report.audience_name is None and not self.settings["audience_id"]:
            self._name_audience(self._audience_name(None))

    def _name_audience(self, name: str | None) -> None:
        """The Audience's name is known (its placeholders filled in): claim and lock it."""
        if name is None:
            return
        self.report.audience_name = name
        self.uploader.resolver.audience_name = name
        self._claim_audience(name)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Claim and lock the Audience when its name or id is known, read it (audience_id),
        and start the writer thread."""
        self.check_audience_is_known()
        audience = self.settings["audience_id"] or self.report.audience_name
        if audience:
            self._claim_audience(audience)
        self.uploader.check_audience()
        self.uploader.start()

    def _claim_audience(self, audience: str) -> None:
        by = "id" if audience == self.settings["audience_id"] else "name"
        self.run.claims.claim(f"audience-{by}-{audience}", f"the Audience {audience!r}", self.key)
        if not self.run.dry_run:
            # Two runs on one audience at once would corrupt its snapshot: the second stops.
            self.run.store.lock(f"audience-{audience}", f"Audience {audience!r}")

    def _on_list(self, list_id: str) -> None:
        """The writer thread found (or made) the stream's list: no other stream may write it."""
        self.run.claims.claim(f"list-{list_id}", f"Customer List {list_id}", self.key)

    def _on_segment(self, segment_name: str, segment_id: str | None) -> None:
        """The stream's first record named its segment: claim it, and name a templated
        Audience (both before anything of the stream is written)."""
        what = f"segment-id-{segment_id}" if segment_id else f"segment-name-{segment_name}"
        self.run.claims.claim(what, f"the segment {segment_id or segment_name!r}", self.key)
        if self.report.audience_name is None and self.name_template:
            self._name_audience(
                fill_name(self.name_template, stream=self.stream, segment_name=segment_name)
            )

    def on_tap_state(self, ticket: Any) -> None:
        """A tap STATE covers this stream's records so far; an idle stream passes it on now."""
        self.flow.on_state(ticket)
        if self.flow.idle:
            self.flow.cut()

    def request_finish(self, *, complete: bool = True) -> None:
        """End of input: the last batch goes to the writer thread, which ends once it is
        written (every stream's thread finishes at the same time). `complete`: the stream's
        source was read (a run that read only suppression streams has none: its mirror
        dataset must not take the missing records for an empty source)."""
        self.flow.cut()
        self.uploader.request_finish(complete=complete)

    def finish(self) -> str | None:
        """Wait for the end of the writes, then read the Audience; returns the cap's message
        if removals were held back. Raises the writer's error."""
        self.uploader.finish(complete=True)  # as requested (request_finish) if it was
        if self.uploader.error is not None:
            err = self.uploader.error
            if not isinstance(err, TargetError):
                err = TargetError(f"{type(err).__name__}: {err}")
            raise err
        held = self.uploader.held_message
        self.report.complete = held is None
        try:
            self.uploader.report_ids_without_records()
        except TargetError as exc:  # only a report: never fail a finished run for it
            self.run.logger.warning("Could not look up the audience for the report: %s", exc)
        self.uploader.report_audience_status()  # one read; a failure only warns
        if held is None:  # warns on failure; the synced list and its STATE stand
            ensure_actalikes(
                self.client,
                self.report,
                self.report.audience_id,
                self.settings["actalike_audiences"],
                self.run.dry_run,
                self.run.logger,
            )
        return held

    def stop(self, *, after_error: bool) -> None:
        """After a fatal error (what precedes it is written, never a removal) or a signal
        (the requests in flight end, queued batches are dropped)."""
        self.flow.discard_open()
        if after_error and self.uploader.error is None:
            self.uploader.finish(complete=False)
        else:
            self.uploader.abort()

    def abort(self) -> None:
        self.flow.discard_open()
        self.uploader.abort()

    def close(self) -> None:
        self.uploader.close()

    def report_dict(self) -> dict[str, Any]:
        self.uploader.checkpoints.count_requests()
        return self.report.as_dict()

    # ---- the summary -----------------------------------------------------------------

    def log_summary(self, prefix: str, *, failed: bool) -> None:
        r, logger, dry_run = self.report, self.run.logger, self.run.dry_run
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(r.records_skipped.items())) or "none"
        if dry_run:
            logger.info("Dry run report%s: %s", self._of(), serialize_json(self.report_dict()))
        logger.info(
            "%s%s: Customer List %s (%s%s), Audience %s (%s%s); records received %d, skipped %d "
            "(%s); identifiers added %d, removed %d, removes before the list existed %d; "
            "requests %d, retries %d%s",
            prefix,
            self._of(),
            r.segment_id or "-",
            r.segment_name or "no segment",
            ", created" if r.list_created else "",
            r.audience_id or "-",
            r.audience_name or "-",
            ", created" if r.audience_created else "",
            r.records_received,
            sum(r.records_skipped.values()),
            skipped,
            r.identifiers_added,
            r.identifiers_removed,
            r.removes_without_list,
            r.requests,
            r.retries,
            r.audience_summary(),
        )
        if r.sync_mode == "mirror":
            held = (
                f"{r.removals_held_back} ({r.removals_held_back_reason})"
                if r.removals_held_back
                else "0"
            )
            logger.info(
                "%s%s: mirror sync: members in source %d, unchanged %d (no request), %s %d, "
                "%s %d, removals held back %s; snapshot %s (%s)",
                prefix,
                self._of(),
                r.members_in_source,
                r.unchanged,
                "would add" if dry_run else "added",
                r.identifiers_added,
                "would remove" if dry_run else "removed",
                r.identifiers_removed,
                held,
                r.snapshot or "new",
                self.run.store.where,
            )
            if r.complete and r.members_in_source < MIN_AUDIENCE_SIZE and not r.removals_held_back:
                logger.warning(
                    "%sThe source holds %d members: Pinterest needs at least %d matched users "
                    "before an Audience can be targeted (matching takes 24-48 hours)",
                    self._for(),
                    r.members_in_source,
                    MIN_AUDIENCE_SIZE,
                )
            return
        distinct = len(self.uploader.distinct_added)
        if r.records_received and distinct < MIN_AUDIENCE_SIZE and not failed:
            logger.warning(
                "%sOnly %d distinct identifiers were added in this run: Pinterest needs at least "
                "%d matched users before an Audience can be targeted (matching takes 24-48 hours)",
                self._for(),
                distinct,
                MIN_AUDIENCE_SIZE,
            )

    def _of(self) -> str:
        """' (stream x)' in a run of several streams (a single stream's lines stay as before)."""
        return f" (stream {self.stream!r})" if self.stream and self.run.gate.many else ""

    def label(self) -> str:
        """'Stream x: ' before a warning, in a run of several streams."""
        return self._for()

    def _for(self) -> str:
        return f"Stream {self.stream!r}: " if self.stream and self.run.gate.many else ""
