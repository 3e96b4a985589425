"""A do-nothing singer-sdk target with default settings: the framework's own cost per record.

Its sink is a plain `BatchSink` whose `process_batch` does nothing, so a run measures only
what singer-sdk does for every record by default: reading and parsing each JSON line,
copying the record through the stream map, validating it with the default jsonschema
validator against the tap's SCHEMA, parsing date-time fields, the key-property check,
metrics counters and batching (the default `process_record` keeps records until the
batch drains). `benchmarks/run.py` runs it on the same input as our target.

    python benchmarks/noop_target.py --config config.json < records.jsonl
"""

from __future__ import annotations

from singer_sdk import typing as th
from singer_sdk.sinks import BatchSink
from singer_sdk.target_base import Target


class NoopSink(BatchSink):
    """Keeps nothing beyond the SDK's own batching; writes nothing."""

    def process_batch(self, context: dict) -> None:
        """Drop the batch."""


class TargetNoop(Target):
    """The do-nothing target (default settings, default validation)."""

    name = "target-noop"
    default_sink_class = NoopSink
    config_jsonschema = th.PropertiesList().to_dict()


if __name__ == "__main__":
    TargetNoop.cli()
