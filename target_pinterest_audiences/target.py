"""Settings and wiring: the target class, its settings, STATE output and run lifecycle."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import traceback
import typing as t
from pathlib import Path

from singer_sdk.configuration._dict_config import (
    merge_missing_config_jsonschema as _merge_missing,
)
from singer_sdk.exceptions import (
    ConfigValidationError,
    MissingKeyPropertiesError,
    RecordsWithoutSchemaException,
    StreamMapConfigError,
)
from singer_sdk.helpers.capabilities import (
    TARGET_BATCH_SIZE_ROWS_CONFIG,
    CapabilitiesEnum,
    PluginCapabilities,
)
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.plugin_base import JSONSchemaValidator, _ConfigInput
from singer_sdk.singerlib.exceptions import InvalidInputLine
from singer_sdk.singerlib.json import serialize_json
from singer_sdk.target_base import Target

from target_pinterest_audiences import settings
from target_pinterest_audiences.datasets import Claims, Dataset, RunContext, stream_settings
from target_pinterest_audiences.pinterest.client import PinterestClient, RetryPolicy, TargetError
from target_pinterest_audiences.pinterest.tokens import (
    AuthError,
    TokenManager,
    TokenStore,
)
from target_pinterest_audiences.reader import (
    SafeSingerReader,
    batch_file_problem,
    missing_local_file,
)
from target_pinterest_audiences.settings import DEFAULT_API_URL, SECRET_SETTINGS
from target_pinterest_audiences.sink import ActiveStreams, AudienceSink, SuppressionSink
from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.sync.checkpoint import StateGate
from target_pinterest_audiences.sync.rejected import RejectedRecords
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.suppression import SuppressionRun

if t.TYPE_CHECKING:
    from types import FrameType

    from singer_sdk.sinks import Sink

#: Records between two reads of the clock on the per-record path (see
#: _process_record_message): a read per record cost about 2% of an events run.
CLOCK_CHECK_RECORDS = 512


#: glibc's mallopt() parameters (malloc.h): the cap of malloc arenas, and the size from which
#: a block gets a mapping of its own (returned to the system when freed).
_M_ARENA_MAX, MALLOC_ARENAS = -8, 2
_M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 128 * 1024


def _glibc() -> t.Any:
    """The C library when it is glibc (mallopt applies), else None (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no C library to ask
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def _cap_malloc_arenas() -> None:
    """Let the run's threads share two malloc arenas (glibc makes up to 8 per core).

    The writer's threads each build request bodies of about a megabyte; with an arena each,
    memory one thread freed is not reused by the others, and peak RSS crept up with the
    input: measured, medians of 3, 79 MB at 200,000 records and 100 MB at 2M (1.26x); with
    two arenas 74 MB and 79 MB (1.07x), no slower. Not glibc (macOS, musl): nothing to do.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _map_large_blocks() -> None:
    """Blocks of 128 KiB or more get a mapping of their own, unmapped when freed.

    glibc starts at 128 KiB, but raises its threshold to the size of each mapped block freed
    (up to 32 MiB), so after the first request body, SQLite sort buffer or batch table (up
    to a few MB) every such block came from the heap, and the holes they left between
    long-lived small blocks were never returned: the heap's free space at the peak grew
    with the input (events runs: 4-10 MB at 200,000 records, 11-16 MB at 2M; a steady
    mirror run: 2 MB at 200,000 members, 14 MB at 2M). Fixed at 128 KiB it stays at 1-2 MB.
    The price: such blocks' pages are faulted in anew each time, so the record path makes
    few of them (the input is read in blocks under the threshold, a request body is encoded
    once, see `records_body`). Not glibc: nothing to do.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler (a BaseException, so that no
    `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _ignore_stop_signals() -> None:
    """From here on SIGTERM/SIGINT change nothing: the run's end (its last STATE, or its
    cause on the last log line) is written. Only the main thread may set handlers."""
    with contextlib.suppress(ValueError):
        for each in (signal.SIGTERM, signal.SIGINT):
            signal.signal(each, signal.SIG_IGN)


class TargetPinterestAudiences(Target):
    """Syncs one segment of customers into a Pinterest Customer List and its Audience."""

    name = "target-pinterest-audiences"
    default_sink_class = AudienceSink
    message_reader_class = SafeSingerReader
    capabilities: t.ClassVar[list[CapabilitiesEnum]] = [
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    config_jsonschema = settings.SCHEMA

    # ---- settings --------------------------------------------------------------------

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """Only the built-ins that mean something here (no load_method, no sdc metadata)."""
        _merge_missing(TARGET_BATCH_SIZE_ROWS_CONFIG, config_jsonschema)
        super(Target, cls).append_builtin_config(config_jsonschema)

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """Schema and cross-setting checks; messages name the setting, never a secret value."""
        schema = self.config_jsonschema
        self.append_builtin_config(schema)
        errors: list[str] = []
        for error in JSONSchemaValidator(schema).iter_errors(self._config):
            setting = ".".join(str(p) for p in error.path)
            if not setting:
                errors.append(f"settings: {error.message}")
            elif error.path[0] in SECRET_SETTINGS:
                errors.append(f"setting '{setting}' is invalid: it must be a string")
            else:
                errors.append(f"setting '{setting}': {error.message}")
        errors.extend(self._cross_setting_errors())
        if errors and raise_errors:
            raise ConfigValidationError("Config validation failed", errors=errors, schema=schema)
        return errors

    def _cross_setting_errors(self) -> list[str]:
        return settings.cross_setting_errors(self._config)

    def _setting(self, key: str) -> t.Any:
        """A setting's value, or its default from the settings schema (the one place the
        defaults live) when it is missing or null, as Meltano may pass an unset value."""
        value = self.config.get(key)
        if value is None:
            return settings.default(key)
        return value

    @staticmethod
    def _token_path(config: t.Mapping[str, t.Any]) -> Path:
        return settings.token_path(config)

    # ---- wiring ----------------------------------------------------------------------

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        _cap_malloc_arenas()  # before any thread of ours starts
        _map_large_blocks()
        super().__init__(*args, **kwargs)
        # Records of all streams share one ordered flow; nothing is gained by parallel drains.
        self.max_parallelism = 1
        self._stdout_lock = threading.Lock()
        #: Streams whose records skip singer-sdk's copy-and-transform path (see below).
        self._direct_sinks: dict[str, AudienceSink | None] = {}
        #: Records since the per-record path last read the clock (CLOCK_CHECK_RECORDS).
        self._records_unclocked = 0
        config = self.config
        known = set(self.config_jsonschema["properties"])
        for unknown in sorted(set(config) - known):
            self.logger.warning("Ignoring unknown setting '%s' (a typo?)", unknown)
        self.dry_run = bool(config.get("dry_run"))
        #: Set once the end of input was handled: nothing more to write or report.
        self.finished = False
        self.client = self._make_client()
        self.store = SnapshotStore(
            ad_account_id=config["ad_account_id"],
            directory=config.get("snapshot_path"),
            url=config.get("snapshot_url"),
            api_url=config.get("api_url") or DEFAULT_API_URL,
            logger=self.logger,
        )
        skip_invalid = self._setting("on_invalid_record") == "skip"
        #: The rejected-records file (rejected_records_path), opened before anything is sent.
        self.rejected: RejectedRecords | None = None
        if config.get("rejected_records_path"):
            if skip_invalid:
                self.rejected = RejectedRecords(config["rejected_records_path"], self.logger)
            else:
                self.logger.warning(
                    "rejected_records_path is used only with on_invalid_record=skip (now: "
                    "fail, so an invalid record stops the run, naming it): no file is written"
                )
        suppression_streams = self.suppression_streams
        #: The suppression set and this run's suppression streams (sync/suppression.py); a
        #: suppression stream is in mirror mode by its `audiences` entry or the run's sync_mode.
        self.suppression = SuppressionRun(
            store=self.store,
            report=Report(
                ad_account_id=config["ad_account_id"], audience_name=None, dry_run=self.dry_run
            ),
            logger=self.logger,
            ad_account_id=config["ad_account_id"],
            streams=suppression_streams,
            dry_run=self.dry_run,
            mirror=any(
                stream_settings(config, stream)["sync_mode"] == "mirror"
                for stream in suppression_streams
            ),
            external_id_type=config.get("external_id_type"),
            skip_invalid=skip_invalid,
            rejected=self.rejected,
            identifiers_per_request=int(self._setting("identifiers_per_request")),
            concurrent_writes=int(self._setting("max_concurrent_writes")),
            max_removal_fraction=float(self._setting("max_removal_fraction")),
            allow_large_removal=bool(config.get("allow_large_removal")),
        )
        audiences = config.get("audiences") or {}
        modes = [config.get("sync_mode") or "events"]
        modes += [(entry or {}).get("sync_mode") or modes[0] for entry in audiences.values()]
        self.gate = StateGate(
            write=self._emit_state,
            # A mirror stream must read its whole source every run: no bookmark passes on.
            pass_tap_state="mirror" not in modes,
            reports=self._reports,
            extra=self._suppression_state,
        )
        self.run = RunContext(
            config=config,
            client=self.client,
            store=self.store,
            gate=self.gate,
            claims=Claims(),
            rejected=self.rejected,
            logger=self.logger,
            dry_run=self.dry_run,
            skip_invalid=skip_invalid,
            setting=self._setting,
            active=ActiveStreams(),
            suppressed=self.suppression.keys,
        )
        #: Each stream's dataset, by the stream's name after stream maps.
        self.datasets: dict[str, Dataset] = {}
        #: Without the `audiences` setting, the run's one Audience is read and locked at
        #: start-up, as before streams were datasets; the first stream takes it.
        self.unbound: Dataset | None = None
        if not audiences and (config.get("audience_name") or config.get("audience_id")):
            self.unbound = Dataset(self.run, None)
            self.unbound.start()
        if self.dry_run:
            self.logger.info("Dry run: nothing will be written to Pinterest")

    def dataset_for(self, stream: str) -> Dataset:
        """The stream's dataset, made (and its Audience claimed and locked) at its SCHEMA."""
        dataset = self.datasets.get(stream)
        if dataset is not None:
            return dataset
        if self.unbound is not None:
            dataset, self.unbound = self.unbound, None
            self.run.claims.rebind(dataset.key, stream)
            dataset.bind(stream)
        else:
            dataset = Dataset(self.run, stream)
            dataset.start()
        self.datasets[stream] = dataset
        if len(self.datasets) > 1:
            self.gate.many = True
            for each in self.datasets.values():
                each.uploader.set_label(each.stream)
        return dataset

    @property
    def suppression_streams(self) -> frozenset[str]:
        """The streams whose records are opt-outs (the setting suppression_streams)."""
        return frozenset(self.config.get("suppression_streams") or ())

    def get_sink_class(self, stream_name: str) -> type[Sink]:
        """A suppression stream's records go to the suppression set, not to a dataset."""
        if stream_name in self.suppression_streams:
            return SuppressionSink
        return super().get_sink_class(stream_name)

    def _suppression_state(self) -> dict[str, t.Any]:
        """`pinterest_suppression` on STATE lines of a run with suppression streams: a run
        may have no segment stream at all."""
        if not self.suppression_streams:
            return {}
        r = self.suppression.report
        return {
            "pinterest_suppression": {
                "records": r.suppression_records,
                "newly_suppressed": r.suppression_added,
                "lifted": r.suppression_lifted,
                "suppressed_removed": r.suppressed_removed,
                "suppression_set_size": r.suppression_set_size,
                "records_skipped": dict(r.records_skipped),
            }
        }

    def _all(self) -> list[Dataset]:
        return [*self.datasets.values(), *([self.unbound] if self.unbound else [])]

    def _reports(self) -> dict[str, dict[str, t.Any]]:
        return {dataset.key: dataset.report_dict() for dataset in self._all()}

    def _make_client(self) -> PinterestClient | None:
        config = self.config
        store = TokenStore(self._token_path(config))
        tokens = TokenManager(
            api_url=config.get("api_url") or DEFAULT_API_URL,
            client_id=config.get("client_id"),
            client_secret=config.get("client_secret"),
            access_token=config.get("access_token"),
            refresh_token=config.get("refresh_token"),
            store=store,
            logger=self.logger,
            timeout=float(self._setting("request_timeout_seconds")),
        )
        if not tokens.has_credentials:
            if self.dry_run:
                self.logger.info("Dry run without credentials: Pinterest is not contacted at all")
                return None
            raise TargetError("no usable credentials (see the credentials setting error)")
        if not tokens.can_refresh:
            missing = [
                k for k in ("refresh_token", "client_id", "client_secret") if not config.get(k)
            ]
            self.logger.warning(
                "Only an access token is available; it works until it expires (Pinterest access "
                "tokens last 30 days). To renew it automatically set: %s",
                ", ".join(missing) or "a refresh token",
            )
        tokens.warn_if_refresh_expiring()
        return PinterestClient(
            api_url=config.get("api_url") or DEFAULT_API_URL,
            tokens=tokens,
            logger=self.logger,
            retry=RetryPolicy(
                budget_seconds=float(self._setting("retry_max_seconds")),
                base_delay=float(self._setting("retry_base_delay_seconds")),
                max_delay=float(self._setting("retry_max_delay_seconds")),
            ),
            writes_per_minute=int(self._setting("max_writes_per_minute")),
            reads_per_minute=int(self._setting("max_reads_per_minute")),
            timeout=float(self._setting("request_timeout_seconds")),
            concurrent_writes=int(self._setting("max_concurrent_writes")),
            # Pinterest counts writes per token: runs on one token file share one window.
            shared_window=store.path.with_name(store.path.name + ".writes"),
        )

    # ---- messages --------------------------------------------------------------------

    def _process_schema_message(self, message_dict: dict) -> None:
        super()._process_schema_message(message_dict)
        self._direct_sinks[message_dict["stream"]] = self._direct_sink(message_dict["stream"])

    def _direct_sink(self, stream: str) -> AudienceSink | None:
        """The stream's sink when its records reach it unchanged (no stream map, no
        flattening, no _sdc metadata): then the per-record path can skip the copy and
        transforms singer-sdk makes for every record, which cost more than our own work."""
        maps = self.mapper.stream_maps.get(stream) or []
        sink = self._sinks_active.get(stream)
        if (
            len(maps) == 1
            and type(maps[0]) is SameRecordTransform
            and not maps[0].flattening_enabled
            and maps[0].stream_alias == stream
            and type(sink) is AudienceSink  # a subclass may add per-record hooks
            and sink.flow is not None
            and not sink.include_sdc_metadata_properties
        ):
            return sink
        return None

    def _process_record_message(self, message_dict: dict) -> None:
        """singer-sdk's per-record path, minus what cannot change anything for a plain stream.

        Read from singer-sdk 0.54 (`Target._process_record_message`, `Sink.tally_record_read`,
        `Sink.is_full`, `metrics.Counter.increment`, `Target._handle_max_record_age`).
        Kept: the message's required keys, the key-property check, the batch context and
        counters, the record_count metric, the row-count drain and the max-age drain.
        Skipped: the record copy, the identity map, the _sdc key pops, the no-op date
        parsing and preprocess hook, and a debug log call per record. The two checks that
        read the clock (is the metric due to be logged, are records too old) run every
        CLOCK_CHECK_RECORDS records, not on each: a record takes microseconds, both
        intervals are seconds to minutes.
        """
        sink = self._direct_sinks.get(message_dict.get("stream"))  # type: ignore[arg-type]
        record = message_dict.get("record")
        if sink is None or not isinstance(record, dict):
            super()._process_record_message(message_dict)
            return
        for key in sink.key_properties:
            if key not in record:
                raise self._missing_key_property()
        if sink._pending_batch is None:
            sink._get_context(record)
        sink._total_records_read += 1  # Sink.tally_record_read, inlined
        sink._batch_records_read += 1
        sink.flow.add(record, sink.stream_name)  # type: ignore[union-attr]
        counter = sink.record_counter_metric
        counter.value += 1
        self._records_unclocked += 1
        if self._records_unclocked >= CLOCK_CHECK_RECORDS:
            self._records_unclocked = 0
            counter.increment(0)  # logs the metric when its interval has passed
            self._handle_max_record_age()
        if sink._batch_records_read >= sink.full_at:
            self.logger.info(
                "Target sink for '%s' is full. Current size is '%s'. Draining...",
                sink.stream_name,
                sink.current_size,
            )
            self.drain_one(sink)

    def _process_activate_version_message(self, message_dict: dict) -> None:
        """Accepted and ignored in both modes: taps send it at the START of a full-table
        sync, and a mirror run removes only at the end of its input, whatever the version."""
        self._assert_line_requires(message_dict, requires={"stream", "version"})
        if not getattr(self, "_activate_version_seen", False):
            self._activate_version_seen = True
            self.logger.info(
                "ACTIVATE_VERSION received (a full-table sync): nothing to do; %s",
                "mirror mode removes members the source no longer holds at the end of the input"
                if not self.gate.pass_tap_state
                else "events mode applies each record's action",
            )

    def _input_line(self) -> int:
        """The number of the input line being processed (SafeSingerReader counts them)."""
        return int(getattr(self.message_reader, "line_number", 0))

    def _missing_key_property(self) -> MissingKeyPropertiesError:
        """singer-sdk's own error spans lines and lists the record's keys: say it in one."""
        return MissingKeyPropertiesError(
            f"input line {self._input_line()}: the record lacks a key property "
            "that its stream's SCHEMA declares (key_properties); fix the tap's SCHEMA or records"
        )

    def _process_batch_message(self, message_dict: dict) -> None:
        """One manifest entry at a time, so that a file that cannot be read is named by its
        index: its path may hold data (a file named after a customer), so it is never shown.
        Records of the entries before it are handled like records of earlier lines."""
        manifest = message_dict["manifest"]
        for index, url in enumerate(manifest):
            where = (
                f"input line {self._input_line()}: BATCH manifest entry {index} "
                f"(counted from 0, of {len(manifest)})"
            )
            if missing_local_file(url):
                raise InvalidInputLine(
                    f"{where} cannot be read: the file does not exist (its path is not shown: "
                    "it may hold data); check that the tap's batch files are kept until the "
                    "target has read them"
                )
            try:
                super()._process_batch_message({**message_dict, "manifest": [url]})
            except (TargetError, InvalidInputLine):
                raise  # about a record of the file, or Pinterest: already says where
            except Exception as exc:
                raise InvalidInputLine(
                    f"{where} cannot be read as JSON Lines of record objects: "
                    f"{batch_file_problem(exc)}; check the file the tap wrote"
                ) from None

    def _process_state_message(self, message_dict: dict) -> None:
        """Never echo tap state at once: it waits until its records are written."""
        self._assert_line_requires(message_dict, requires={"value"})
        # The suppression streams' records before it are kept before it can be written.
        self.suppression.flush()
        ticket = self.gate.issue(message_dict["value"], list(self.datasets))
        if ticket is not None:
            for dataset in self.datasets.values():
                dataset.on_tap_state(ticket)

    def _emit_state(self, state: dict[str, t.Any]) -> None:  # StateGate's writer
        if self.dry_run:
            # A dry run wrote nothing, so it writes no STATE: Meltano would store even a
            # bookmark-less line as the job's state and the next real run would resync.
            return
        self._write_state_message(state)

    def _write_state_message(self, state: dict) -> None:
        # singer-sdk's serializer writes the Decimals it parsed the tap's numbers into
        # exactly as they came (1.0 stays 1.0), and datetimes as ISO 8601.
        line = serialize_json(state)
        with self._stdout_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    # ---- end of run ------------------------------------------------------------------

    def process_endofpipe(self) -> None:
        super().process_endofpipe()
        datasets = self._all()
        # A run that read only suppression streams has no segment source: a mirror dataset
        # must not take the missing records for an empty source.
        segment_source = not self.suppression_streams or any(
            stream not in self.suppression_streams for stream in self._direct_sinks
        )
        for dataset in datasets:  # every stream finishes its writes at once
            dataset.request_finish(complete=segment_source)
        held = [(dataset, dataset.finish()) for dataset in datasets]
        suppression_problem = self._finish_suppression(datasets, complete=True)
        self.finished = True
        self.gate.write()
        self._log_summary()
        self._close()
        held_back = [(dataset, message) for dataset, message in held if message is not None]
        also = f" Suppression: {suppression_problem}" if suppression_problem else ""
        if held_back:
            if len(held_back) == 1 and not self.gate.many:
                raise TargetError(held_back[0][1] + also)
            names = ", ".join(repr(dataset.stream) for dataset, _ in held_back)
            raise TargetError(
                f"removals were held back for {len(held_back)} stream(s) ({names}); every "
                "other stream finished. "
                + " ".join(f"Stream {d.stream!r}: {message}" for d, message in held_back)
                + also
            )
        if suppression_problem:
            raise TargetError(suppression_problem)
        for dataset in datasets:
            r = dataset.report
            if r.segment_name and not r.segment_id and not self.dry_run:
                self.logger.warning(
                    "%sNo Customer List named %r exists and this run had no adds to create it "
                    "with: nothing was written",
                    dataset.label(),
                    r.segment_name,
                )

    def _finish_suppression(self, datasets: list[Dataset], *, complete: bool) -> str | None:
        """After every stream's writes: the suppression streams' lifts and removals (an
        identifier suppressed by a record that came after a stream added it is removed too);
        the set's counts go into every stream's report."""
        snapshots = {}
        for dataset in datasets:
            snapshot = dataset.uploader.writer.snapshot
            if snapshot is not None and not snapshot.readonly:
                snapshots[snapshot.list_id] = snapshot
        client = self.client.for_stream("") if self.client is not None else None
        problem = self.suppression.finish(
            client=client, complete=complete, open_snapshots=snapshots
        )
        summary = self.suppression.report
        for dataset in datasets:
            dataset.report.suppressed_removed = summary.suppressed_removed
            dataset.report.suppression_set_size = summary.suppression_set_size
            if problem:
                dataset.report.complete = False
        return problem

    def _keep_suppressed(self) -> None:
        """A stopping run still keeps the opt-outs it read (their removal waits for the next
        run with a suppression stream); never fails the stop."""
        try:
            self.suppression.flush()
        except Exception as exc:
            self.logger.error(
                "Could not keep the suppression stream's last identifiers in the suppression "
                "set (%s): send them again",
                exc if isinstance(exc, TargetError) else type(exc).__name__,
            )

    #: Set once a fatal error stops the run: its summary then gives no advice for a good run.
    failed = False

    def stop_after_error(self) -> None:
        """After a fatal error: write what precedes it (never a removal), checkpoint, report."""
        self.failed = True
        if self.finished:
            return  # the end of input was handled; the error came after its STATE
        self.finished = True
        self._keep_suppressed()
        for dataset in self._all():
            dataset.stop(after_error=True)
        self.gate.write()
        self._log_summary()
        self._close()

    def _close(self) -> None:
        for dataset in self._all():
            dataset.close()
        self.suppression.close()
        if self.rejected is not None:
            self.rejected.close()

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: unwind the main thread to `invoke`, which stops the run there.

        The handler only raises: stopping from inside it could re-enter a thread join or
        the STATE lock held by the code it interrupted, and hang.
        """
        if self.failed or getattr(self, "_terminating", False):
            # A stop is under way: it checkpoints and ends the log with its cause.
            self.logger.warning("Received signal %d while stopping: that stop goes on", signum)
            return
        if getattr(self, "finished", False):
            # The run is over and its STATE written; raising now would only break the
            # process's exit (a traceback from an atexit hook) without stopping anything.
            with contextlib.suppress(Exception):
                self.logger.warning("Received signal %d after the run finished", signum)
            return
        self._terminating = True
        raise Terminated(signum)

    def stop_after_signal(self, signum: int) -> None:
        """Stop reading, let the request in flight finish, checkpoint what Pinterest
        confirmed (never a removal), and report."""
        self.logger.warning(
            "Received signal %d: stopping after the request in flight; records not yet written "
            "are left for the next run (state is written only for what Pinterest confirmed)",
            signum,
        )
        self.failed = True
        if self.finished:
            return  # the end of input was handled and checkpointed already
        self.finished = True
        self._keep_suppressed()
        for dataset in self._all():
            dataset.stop(after_error=False)
        self.gate.write()
        self._log_summary()
        self._close()

    def _log_summary(self) -> None:
        prefix = "Dry run (nothing written; no STATE)" if self.dry_run else "Run summary"
        datasets = self._all()
        for dataset in datasets:
            dataset.log_summary(prefix, failed=self.failed)
        if self.gate.many:
            reports = [dataset.report for dataset in datasets]
            self.logger.info(
                "%s: %d streams in all; records received %d, skipped %d; identifiers added %d, "
                "removed %d; requests %d, retries %d",
                prefix,
                len(datasets),
                sum(r.records_received for r in reports),
                sum(sum(r.records_skipped.values()) for r in reports),
                sum(r.identifiers_added for r in reports),
                sum(r.identifiers_removed for r in reports),
                sum(r.requests for r in reports),
                sum(r.retries for r in reports),
            )
        s = self.suppression.report
        if (
            self.suppression_streams
            or s.suppression_set_size
            or any("suppressed" in dataset.report.records_skipped for dataset in datasets)
        ):
            self.logger.info(
                "%s: suppression: set size %d, records of suppression streams %d, newly "
                "suppressed %d, lifted %d, records skipped as suppressed %d, removals %s %d",
                prefix,
                s.suppression_set_size,
                s.suppression_records,
                s.suppression_added,
                s.suppression_lifted,
                sum(dataset.report.records_skipped.get("suppressed", 0) for dataset in datasets),
                "that would be sent" if self.dry_run else "confirmed",
                s.suppressed_removed,
            )
        if self.rejected is not None:
            lines = self.rejected.lines
            self.logger.info(
                "%s: rejected records: %d line%s appended to %s",
                prefix,
                lines,
                "" if lines == 1 else "s",
                self.rejected.path,
            )

    # ---- CLI -------------------------------------------------------------------------

    @classmethod
    def invoke(  # type: ignore[override]
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: _ConfigInput | None = None,
        file_input: t.IO[str] | None = None,
    ) -> None:
        """As singer-sdk's, but errors a user can act on end the run cleanly (no traceback)."""
        super(Target, cls).invoke(about=about, about_format=about_format)
        cls.print_version(print_fn=cls.logger.info)
        config = config or _ConfigInput()
        target: TargetPinterestAudiences | None = None
        try:
            target = cls(
                config=config.config, validate_config=True, parse_env_config=config.parse_env
            )
            target.listen(file_input)
            # The run is over (its last STATE written): Python's shutdown would put back
            # the default handlers, and a signal then would kill a successful run (-15).
            _ignore_stop_signals()
        except (
            TargetError,
            AuthError,
            InvalidInputLine,
            RecordsWithoutSchemaException,
        ) as exc:
            cls._stop(target, str(exc))
        except MissingKeyPropertiesError:  # singer-sdk's (from a mapped stream) or ours
            cause = target._missing_key_property() if target else "a record lacks a key property"
            cls._stop(target, str(cause))
        except StreamMapConfigError as exc:
            # Built from the setting and the SCHEMA's property names, never from a record.
            where = f"input line {target._input_line()}: " if target else ""
            cls._stop(target, f"{where}setting 'stream_maps' cannot work: {exc}")
        except ConfigValidationError as exc:
            # singer-sdk's CLI would end the log with "Config validation failed", naming
            # no setting: the cause goes last instead (the messages never hold a secret).
            errors = "; ".join(exc.errors) or str(exc)
            cls._stop(target, f"invalid settings: {errors}. Fix the settings and run again")
        except Terminated as exc:
            cls._terminate(target, exc.signum)
        except Exception as exc:
            cls._stop(target, cls._unexpected(exc, target))

    @classmethod
    def _terminate(cls, target: TargetPinterestAudiences | None, signum: int) -> t.NoReturn:
        logger = logging.getLogger(cls.name)
        if target is not None and hasattr(target, "datasets"):
            try:
                target.stop_after_signal(signum)
            except Exception as second:
                logger.error(
                    "While stopping: %s",
                    second if isinstance(second, TargetError) else type(second).__name__,
                )
        _ignore_stop_signals()  # nothing may follow the cause
        logger.error(
            "Run stopped by signal %d: records after the last checkpoint were not written; "
            "the next run sends them",
            signum,
        )
        sys.exit(128 + signum)

    @staticmethod
    def _unexpected(exc: BaseException, target: TargetPinterestAudiences | None) -> str:
        """The message of an unexpected error (from a stream map expression, say) may quote
        input data, so only its type, the input line and where in the code are given."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = " <- ".join(
            f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1][:6]
        )
        reader = getattr(target, "message_reader", None)
        if not isinstance(reader, SafeSingerReader) or reader.line_number == 0:
            during, advice = "while starting", "report this as a bug"
        elif reader.finished:
            during, advice = "after reading the whole input", "report this as a bug"
        elif any(Path(f.filename).name == "mapper.py" for f in frames):
            during = f"in a stream map, at input line {reader.line_number}"
            advice = "check the stream_maps expressions against that line's record"
        else:
            during = f"while processing input line {reader.line_number}"
            advice = "check that line, and report this as a bug if it is a valid Singer message"
        return (
            f"Unexpected {type(exc).__name__} {during} (message withheld: it may quote input "
            f"data) at {where}; {advice}"
        )

    @classmethod
    def _stop(cls, target: TargetPinterestAudiences | None, cause: str) -> t.NoReturn:
        """Write what came before the error, then end the log with its cause, on one line:
        the tail of a Meltano log is what a reader sees first."""
        logger = logging.getLogger(cls.name)
        if target is not None and hasattr(target, "datasets"):
            target.failed = True  # from here on, a signal lets this stop go on
            logger.info(
                "Stopping early (the cause is on the last line): writing what came before "
                "it, then the final checkpoint"
            )
            try:
                target.stop_after_error()
            except Exception as second:
                logger.error(
                    "While stopping: %s",
                    second if isinstance(second, TargetError) else type(second).__name__,
                )
        _ignore_stop_signals()  # nothing may follow the cause
        logger.error("Run failed: %s", " ".join(cause.split()))
        sys.exit(1)


if __name__ == "__main__":
    TargetPinterestAudiences.cli()
