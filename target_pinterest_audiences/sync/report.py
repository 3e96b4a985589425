"""The run's report: counters that ride on every STATE line as `pinterest_audience`.

Also the one rule for the match rate, shared by the report and the `status` command: Pinterest's
matched users (the Audience's `size`) over the identifiers the target confirmed (its snapshot).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

#: Customer List statuses under which an upload is not matched yet: the audience's size
#: does not count it, so size / confirmed members would be wrong (FACTS: 24-48 h).
MATCHING_LIST_STATUSES = frozenset({"PROCESSING", "UPLOADING"})
#: Said for a list whose status could not be read: whether it still matches is unknown.
LIST_STATUS_UNREAD = "(not read)"


def match_rate(
    size: int | None, confirmed_members: int | None, list_status: str | None = None
) -> float | None:
    """Matched users per confirmed identifier; None unless both are known (and some confirmed)
    and the list's latest upload is matched.

    The list's upload counters cannot stand in for `confirmed_members`: they rise for every
    identifier sent, even one already in (or absent from) the list. While the list still
    matches an upload, `size` counts the members before it, not the confirmed ones.
    """
    if size is None or not confirmed_members:
        return None
    if list_status in MATCHING_LIST_STATUSES or list_status == LIST_STATUS_UNREAD:
        return None
    return size / confirmed_members


def match_rate_needs_count(
    size: int | None, list_status: str | None, *, changed: bool = False
) -> bool:
    """Whether a count of the confirmed members could give a match rate: the size is known
    and counts the latest upload, and the run that asks did not just change the list.
    Otherwise the count (which merges the snapshot's change log, seconds for millions of
    changes) is not made.

    `changed`: the run confirmed writes to the list. Pinterest sizes an audience 24-48 hours
    after an upload (FACTS), whatever the list's status says at once, so the size read right
    after the writes predates them and size / confirmed members would be wrong.
    """
    return (
        not changed
        and size is not None
        and list_status not in MATCHING_LIST_STATUSES | {LIST_STATUS_UNREAD}
    )


def match_rate_unknown_reasons(
    audience_status: str | None,
    size: int | None,
    confirmed_members: int | None,
    list_status: str | None = None,
    *,
    counted: bool = True,
    changed: bool = False,
) -> list[str]:
    """Why the match rate cannot be computed, in words a marketer can act on (empty: known).
    `counted`: False when the confirmed members were not counted (see match_rate_needs_count):
    then nothing is said about them. `changed`: the run asking changed the list."""
    reasons = []
    if size is None:
        if audience_status in (None, "INITIALIZING"):
            reasons.append(
                "the audience is not matched yet (Pinterest shows its size 24-48 hours after "
                "an upload)"
            )
        else:
            reasons.append(f"Pinterest reports no size for the audience (status {audience_status})")
    elif list_status == LIST_STATUS_UNREAD:
        reasons.append(
            "the Customer List's status could not be read, so whether Pinterest still matches "
            "the latest upload is unknown (see the warning above)"
        )
    elif list_status in MATCHING_LIST_STATUSES:
        reasons.append(
            f"Pinterest is still matching the latest upload (Customer List status {list_status}): "
            "the size does not count it yet; read `status` again in 24-48 hours"
        )
    elif changed:
        reasons.append(
            "this run changed the list, and Pinterest counts a change in the audience's size "
            "24-48 hours after the upload; read `status` then"
        )
    if not counted:
        pass
    elif confirmed_members is None:
        reasons.append(
            "no snapshot for this list (the target keeps one from its first real run on a list; "
            "check snapshot_path or snapshot_url)"
        )
    elif confirmed_members == 0:
        reasons.append("the snapshot holds no confirmed members")
    return reasons


def as_size(value: Any) -> int | None:
    """Pinterest's `size` when it is a count (null until the audience is matched)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


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
    # ---- the suppression set (store/suppression.py, sync/suppression.py) ----
    #: Identifiers suppressed (opted out) after this run, for the ad account.
    suppression_set_size: int = 0
    #: Identifier removals sent, and confirmed, because of the suppression set (summed over
    #: the Customer Lists; a dry run: the removals it would send).
    suppressed_removed: int = 0
    #: Records of the suppression streams, identifiers they newly suppressed, and entries a
    #: suppression stream in mirror mode lifted (or would lift, when held back).
    suppression_records: int = 0
    suppression_added: int = 0
    suppression_lifted: int = 0
    # ---- what Pinterest made of the uploads: one read of the Audience at the end ----
    audience_status: str | None = None
    audience_size: int | None = None
    match_rate: float | None = None
    #: The confirmed members the match rate divides by (said in the summary, not in STATE).
    confirmed_members: int | None = None
    #: Whether confirmed_members was counted at the end of the run (see record_audience).
    confirmed_counted: bool = True
    #: Whether this run confirmed writes to the list before the end-of-run read (then no
    #: match rate: see match_rate_needs_count).
    list_changed: bool = False
    #: The Customer List's status at the end (PROCESSING: the size predates the latest
    #: upload); said in the summary, not in STATE.
    list_status: str | None = None
    #: "read" once the end-of-run read answered, "failed" when it did not; None: not tried.
    audience_read: str | None = None
    #: Write answers whose `exceptions` listed errors (warned about once; not in STATE).
    upload_exception_answers: int = 0
    #: The configured ACTALIKE audiences at the end of the run (sync/actalike.py): each with
    #: id, name, country, percentage, status, outcome (created, adopted, would_create,
    #: refused, failed, not_created), and reason / rule_differs when they apply. None: none
    #: configured (then not in STATE).
    actalike_audiences: list[dict[str, Any]] | None = None

    def note_upload_exceptions(self, entries: int, rid: str | None, logger: logging.Logger) -> None:
        """Warn at the first write answer that lists Customer List errors; count them all."""
        if not entries:
            return
        self.upload_exception_answers += 1
        if self.upload_exception_answers == 1:
            logger.warning(
                "Pinterest's answer to a write to Customer List %s lists %d error(s) in its "
                "`exceptions` field (x-pinterest-rid %s): Pinterest may not have taken every "
                "identifier of that request, though it answered 200; the target counts them as "
                "confirmed. Quote the x-pinterest-rid to Pinterest support to learn more",
                self.segment_id or "(new)",
                entries,
                rid or "-",
            )

    def record_audience(
        self,
        status: str | None,
        size: int | None,
        confirmed_members: int | None,
        list_status: str | None = None,
        *,
        counted: bool = True,
        changed: bool = False,
    ) -> None:
        """Keep what the end-of-run reads of the Audience (and its list) said; `counted`:
        False when the confirmed members were not counted (no match rate could come of it);
        `changed`: this run confirmed writes to the list."""
        self.audience_read = "read"
        self.confirmed_counted = counted
        self.list_changed = changed
        self.audience_status = status
        self.audience_size = size
        self.confirmed_members = confirmed_members
        self.list_status = list_status
        self.match_rate = match_rate(size, confirmed_members, list_status)

    def audience_summary(self) -> str:
        """The summary line's words for the Audience's status, size and match rate."""
        if self.audience_read is None:
            return ""
        if self.audience_read == "failed":
            return "; audience status, size and match rate unknown (the read failed, see above)"
        size = "unknown" if self.audience_size is None else str(self.audience_size)
        if self.match_rate is not None:
            rate = (
                f"{self.match_rate:.1%} ({self.audience_size} matched / "
                f"{self.confirmed_members} confirmed identifiers)"
            )
        else:
            reasons = match_rate_unknown_reasons(
                self.audience_status,
                self.audience_size,
                self.confirmed_members,
                self.list_status,
                counted=self.confirmed_counted,
                changed=self.list_changed,
            )
            rate = "unknown: " + "; ".join(reasons)
        return (
            f"; audience status {self.audience_status or 'unknown'}, size {size}, match rate {rate}"
        )

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
            "audience_status": self.audience_status,
            "audience_size": self.audience_size,
            "match_rate": self.match_rate,
            "suppressed_removed": self.suppressed_removed,
            "suppression_set_size": self.suppression_set_size,
        }
        if self.actalike_audiences is not None:
            report["actalike_audiences"] = [dict(entry) for entry in self.actalike_audiences]
        if self.sync_mode == "mirror":
            report.update(
                members_in_source=self.members_in_source,
                unchanged=self.unchanged,
                removals_held_back=self.removals_held_back,
                removals_held_back_reason=self.removals_held_back_reason,
                snapshot=self.snapshot,
            )
        return report
