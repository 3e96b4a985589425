"""The run's report: counters that ride on every STATE line as `pinterest_audience`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    """Run counters; keys present in earlier releases keep their meaning."""

    ad_account_id: str
    audience_name: str | None
    dry_run: bool
    sync_mode: str = "events"
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
    # ---- mirror mode only ----
    #: Distinct identifiers of this run's member records.
    members_in_source: int = 0
    #: Members of the source that were confirmed members before this run (no request).
    unchanged: int = 0
    #: Removals the cap (or an empty source) held back, and why.
    removals_held_back: int = 0
    removals_held_back_reason: str | None = None
    #: "new" when the list had no snapshot before this run, else "existing".
    snapshot: str | None = None

    def as_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "ad_account_id": self.ad_account_id,
            "segment_id": self.segment_id,
            "segment_name": self.segment_name,
            "audience_id": self.audience_id,
            "audience_name": self.audience_name,
            "sync_mode": self.sync_mode,
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
        if self.sync_mode == "mirror":
            report.update(
                members_in_source=self.members_in_source,
                unchanged=self.unchanged,
                removals_held_back=self.removals_held_back,
                removals_held_back_reason=self.removals_held_back_reason,
                snapshot=self.snapshot,
            )
        return report
