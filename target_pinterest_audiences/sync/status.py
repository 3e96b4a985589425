"""`status`: what Pinterest made of the uploads, for one Audience and its Customer List, or for
every Audience the target keeps for an ad account.

Pinterest matches a list's identifiers to its users some time after each upload (24-48 hours):
until then an Audience has no `size` and is INITIALIZING. The list's counters
(`num_uploaded_user_records`, `num_removed_user_records`) rise for every identifier sent, even
one already in (or absent from) the list, so they say nothing about matching. The one count
that does is the target's own: the identifiers Pinterest confirmed, kept in the snapshot store
(snapshot.py). The match rate compares the two (report.py holds the rule).

Also the ACTALIKE audiences seeded with the Audience (sync/actalike.py makes them).

Reads only: a few GETs, and the snapshot opened read-only (no lock, no new file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from target_pinterest_audiences.pinterest.client import (
    PinterestAPIError,
    PinterestClient,
    TargetError,
)
from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.sync.report import as_size, match_rate, match_rate_unknown_reasons
from target_pinterest_audiences.sync.writer import MIN_AUDIENCE_SIZE

_AUDIENCE_STATUS_WORDS = {
    "READY": "targetable",
    "INITIALIZING": "not matched yet",
    "TOO_SMALL": f"fewer than {MIN_AUDIENCE_SIZE} matched users: not targetable yet",
}
_ACTALIKE_STATUS_WORDS = {
    "READY": "targetable",
    "INITIALIZING": "Pinterest is still making it",
    "TOO_SMALL": "too small to target",
}
_LIST_STATUS_WORDS = {
    "PROCESSING": "Pinterest is matching the latest upload",
    "UPLOADING": "an upload is still arriving",
    "READY": "matched",
    "TOO_SMALL": f"fewer than {MIN_AUDIENCE_SIZE} Pinterest users",
}


class StatusError(TargetError):
    """The audience or its list cannot be found or read; the message says what to do."""


@dataclass
class AudienceStatus:
    """One Audience, its Customer List and the target's count of confirmed members."""

    audience: dict[str, Any]
    customer_list: dict[str, Any]
    confirmed_members: int | None
    snapshot_where: str
    #: The account's ACTALIKE audiences seeded with this Audience: id, name, country,
    #: percentage, status, size.
    actalikes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def match_rate(self) -> float | None:
        return match_rate(
            self.audience["size"], self.confirmed_members, self.customer_list["status"]
        )

    def as_json(self) -> dict[str, Any]:
        """The `--format json` object; its shape is a public contract."""
        return {
            "audience": dict(self.audience),
            "customer_list": dict(self.customer_list),
            "confirmed_members": self.confirmed_members,
            "match_rate": self.match_rate,
            "actalike_audiences": [dict(a) for a in self.actalikes],
        }

    def table(self) -> str:
        """A short human table; every unknown says why it is unknown."""
        a, c = self.audience, self.customer_list
        reasons = match_rate_unknown_reasons(
            a["status"], a["size"], self.confirmed_members, c["status"]
        )
        if a["size"] is not None:
            size = f"{a['size']} matched Pinterest users"
        elif a["status"] in (None, "INITIALIZING"):
            size = "unknown until matched (Pinterest shows it 24-48 hours after an upload)"
        else:
            size = "unknown (Pinterest reports none)"
        if self.confirmed_members is not None:
            confirmed = f"{self.confirmed_members} identifiers (snapshot in {self.snapshot_where})"
        else:
            confirmed = f"unknown (no snapshot for this list in {self.snapshot_where})"
        rate = self.match_rate
        rate_text = (
            f"{rate:.1%} (size / confirmed members)"
            if rate is not None
            else "unknown: " + "; ".join(reasons)
        )
        rows = [
            f"Audience          {a['id']} {_name(a['name'])}",
            f"  status          {_with_words(a['status'], _AUDIENCE_STATUS_WORDS)}",
            f"  size            {size}",
            *self._actalike_rows(),
            f"Customer List     {c['id']} {_name(c['name'])}",
            f"  status          {_with_words(c['status'], _LIST_STATUS_WORDS)}",
            f"  uploaded        {_count(c['num_uploaded_user_records'])} user records "
            "(every identifier sent, even one already in the list: not a match count)",
            f"  removed         {_count(c['num_removed_user_records'])} user records "
            "(every identifier sent for removal, even one absent from the list)",
            f"  updated         {_time(c['updated_time'])}",
            f"Confirmed members {confirmed}",
            f"Match rate        {rate_text}",
        ]
        return "\n".join(rows)

    def _actalike_rows(self) -> list[str]:
        if not self.actalikes:
            return [
                "  actalikes       none (the setting actalike_audiences has the target keep some)"
            ]
        rows = []
        for a in self.actalikes:
            size = f"size {a['size']}" if a["size"] is not None else "size unknown until made"
            rows.append(
                f"  actalike        {a['id']} {_name(a['name'])}: {a['country']} "
                f"{a['percentage']}%, {_with_words(a['status'], _ACTALIKE_STATUS_WORDS)}, {size}"
            )
        return rows


def _name(value: Any) -> str:
    return repr(value) if isinstance(value, str) else "(no name)"


def _with_words(status: Any, words: dict[str, str]) -> str:
    if not status:
        return "unknown"
    meaning = words.get(str(status))
    return f"{status} ({meaning})" if meaning else str(status)


def _count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "unknown"
    return str(int(value))


def _time(value: Any) -> str:
    try:
        moment = datetime.fromtimestamp(float(value), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def find_audience(
    client: PinterestClient,
    ad_account_id: str,
    *,
    audience_id: str | None = None,
    audience_name: str | None = None,
) -> dict[str, Any]:
    """The CUSTOMER_LIST Audience given by id, or the only one of that name (else an error)."""
    if audience_id:
        try:
            audience = client.request(
                "GET", f"/ad_accounts/{ad_account_id}/audiences/{audience_id}"
            )
        except PinterestAPIError as exc:
            if exc.status == 404:
                raise StatusError(
                    f"no Audience {audience_id} in ad account {ad_account_id} (HTTP 404, "
                    f"x-pinterest-rid {exc.rid}); check --audience-id, or give --audience-name"
                ) from None
            raise
        if audience.get("audience_type") != "CUSTOMER_LIST":
            raise StatusError(
                f"Audience {audience_id} is a {audience.get('audience_type')} audience, not a "
                "CUSTOMER_LIST audience: it has no Customer List to report on"
            )
        return audience
    found = [
        item
        for item in client.paginate(f"/ad_accounts/{ad_account_id}/audiences")
        if item.get("name") == audience_name and item.get("audience_type") == "CUSTOMER_LIST"
    ]
    if not found:
        raise StatusError(
            f"no CUSTOMER_LIST Audience named {audience_name!r} in ad account {ad_account_id}; "
            "check the name (case and spaces count), or give --audience-id"
        )
    if len(found) > 1:
        ids = ", ".join(str(item.get("id")) for item in found)
        raise StatusError(
            f"{len(found)} CUSTOMER_LIST Audiences are named {audience_name!r} in ad account "
            f"{ad_account_id} (ids {ids}); give --audience-id to say which one"
        )
    return found[0]


def read_status(
    client: PinterestClient,
    store: SnapshotStore,
    ad_account_id: str,
    *,
    audience_id: str | None = None,
    audience_name: str | None = None,
) -> AudienceStatus:
    """Read the Audience, its Customer List and the snapshot's confirmed members."""
    audience = find_audience(
        client, ad_account_id, audience_id=audience_id, audience_name=audience_name
    )
    found_id = str(audience.get("id"))
    list_id = (audience.get("rule") or {}).get("customer_list_id")
    if not list_id:
        raise StatusError(
            f"Audience {found_id} names no Customer List in its rule: nothing to report on"
        )
    list_id = str(list_id)
    try:
        customer_list = client.request(
            "GET", f"/ad_accounts/{ad_account_id}/customer_lists/{list_id}"
        )
    except PinterestAPIError as exc:
        if exc.status == 404:
            raise StatusError(
                f"Audience {found_id} uses Customer List {list_id}, which ad account "
                f"{ad_account_id} does not have (HTTP 404, x-pinterest-rid {exc.rid}): the list "
                "was deleted; a run with the audience's name creates a new list and audience"
            ) from None
        raise
    status = audience.get("status")
    list_status = customer_list.get("status")
    return AudienceStatus(
        audience={
            "id": found_id,
            "name": audience.get("name"),
            "status": status if isinstance(status, str) else None,
            "size": as_size(audience.get("size")),
        },
        customer_list={
            "id": list_id,
            "name": customer_list.get("name"),
            "status": list_status if isinstance(list_status, str) else None,
            "num_uploaded_user_records": customer_list.get("num_uploaded_user_records"),
            "num_removed_user_records": customer_list.get("num_removed_user_records"),
            "updated_time": customer_list.get("updated_time"),
        },
        confirmed_members=confirmed_members(store, list_id),
        snapshot_where=store.where,
        actalikes=actalikes_of(client, ad_account_id, found_id),
    )


def actalikes_of(
    client: PinterestClient, ad_account_id: str, audience_id: str
) -> list[dict[str, Any]]:
    """The account's ACTALIKE audiences whose seed is this Audience (one listing)."""
    found = []
    for item in client.paginate(f"/ad_accounts/{ad_account_id}/audiences"):
        rule = item.get("rule") or {}
        seeds = rule.get("seed_id")
        if item.get("audience_type") != "ACTALIKE" or not isinstance(seeds, list):
            continue
        if audience_id not in [str(s) for s in seeds]:
            continue
        status = item.get("status")
        found.append(
            {
                "id": str(item.get("id")),
                "name": item.get("name"),
                "country": rule.get("country"),
                "percentage": rule.get("percentage"),
                "status": status if isinstance(status, str) else None,
                "size": as_size(item.get("size")),
            }
        )
    return found


def read_account_status(
    client: PinterestClient, store: SnapshotStore, ad_account_id: str
) -> list[AudienceStatus]:
    """Every CUSTOMER_LIST Audience of the lists this store keeps for the ad account: one
    listing of the account's Audiences, then each Audience and its list read as above."""
    kept = set(store.list_ids())
    if not kept:
        return []
    found = [
        str(item.get("id"))
        for item in client.paginate(f"/ad_accounts/{ad_account_id}/audiences")
        if item.get("audience_type") == "CUSTOMER_LIST"
        and str((item.get("rule") or {}).get("customer_list_id")) in kept
    ]
    return [read_status(client, store, ad_account_id, audience_id=each) for each in found]


def account_table(statuses: list[AudienceStatus], ad_account_id: str, where: str) -> str:
    """One row per Audience: a short table for people."""
    if not statuses:
        return (
            f"No Audience of ad account {ad_account_id} is kept by this target (snapshot store "
            f"{where}): run the target, or check --snapshot-path / --snapshot-url"
        )
    header = ("AUDIENCE", "NAME", "STATUS", "SIZE", "LIST", "CONFIRMED", "MATCH RATE")
    rows = [header]
    for each in statuses:
        a, c, rate = each.audience, each.customer_list, each.match_rate
        rows.append(
            (
                a["id"],
                _name(a["name"]),
                a["status"] or "-",
                "-" if a["size"] is None else str(a["size"]),
                c["id"],
                "-" if each.confirmed_members is None else str(each.confirmed_members),
                "-" if rate is None else f"{rate:.1%}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"({len(statuses)} Audiences; snapshot store {where}; '-': not known yet)")
    return "\n".join(line.rstrip() for line in lines)


def confirmed_members(store: SnapshotStore, list_id: str) -> int | None:
    """The snapshot's confirmed members of a list; None when the store has no snapshot of it."""
    try:
        snapshot = store.open(list_id, readonly=True)
        if snapshot is None:
            return None
        try:
            return snapshot.count() if snapshot.existed else None
        finally:
            snapshot.close()
    except TargetError:
        raise
    except Exception as exc:
        raise StatusError(
            f"cannot read the snapshot of Customer List {list_id} in {store.where} "
            f"({type(exc).__name__}); check snapshot_path or snapshot_url"
        ) from None
