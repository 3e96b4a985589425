"""Which Customer List and Audience a run writes to: adopt, check, or create them.

Re-runs must never make a second list or audience, so everything is looked up by name
(every page: Pinterest has no name filter) before anything is created, and a create
whose answer was lost is looked for before it is tried again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from target_pinterest_audiences.identifiers import EXTERNAL
from target_pinterest_audiences.pinterest.client import (
    AmbiguousWrite,
    Interrupted,
    PinterestAPIError,
    PinterestClient,
    RequestTooLarge,
    TargetError,
    upload_exceptions,
)
from target_pinterest_audiences.store.snapshot import MAX_SETTLE_WAIT_SECONDS
from target_pinterest_audiences.sync.report import (
    LIST_STATUS_UNREAD,
    Report,
    as_size,
    match_rate_needs_count,
)

#: A Pinterest id as the API documents it (`^\d+$`): anything else never reaches a URL or a
#: file name (a path such as "../x" in an answer would otherwise change the request or file).
_API_ID = re.compile(r"[0-9]{1,20}")


def api_id(value: Any, what: str) -> str:
    """An id from an API answer, checked: digits only, or a TargetError naming it."""
    text = str(value)
    if isinstance(value, bool) or not _API_ID.fullmatch(text):
        raise TargetError(
            f"Pinterest answered with an id of {what} that is not digits ({text[:40]!r}); it "
            "is never used in a request or a file name. Run again later; if it persists, "
            "report it with the run's log"
        )
    return text


#: Stands for the list a dry run would have created, so later batches count as updates.
DRY_RUN_NEW_LIST = "(new)"
#: List types that take hashed emails, MAIDs and IDFAs alike (Pinterest: records "can be any
#: combination of emails, MAIDs, or IDFAs"); each external id type is a kind of its own.
HASHED_LIST_TYPES = frozenset({"EMAIL", "MAID", "IDFA"})


def list_kind(list_type: str) -> str:
    """What a list of this type holds: one kind for EMAIL, MAID and IDFA, else the type."""
    return "hashed" if list_type in HASHED_LIST_TYPES else list_type


def describe_list_type(list_type: str) -> str:
    """The kind of identifier a list type holds, for messages."""
    if list_type in HASHED_LIST_TYPES:
        return f"email, MAID or IDFA identifiers (list_type {list_type})"
    return f"{list_type} external ids (list_type {list_type})"


#: The end-of-run read of the Audience is only for the report: a finished run does not wait
#: the whole retry budget (retry_max_seconds) for it.
AUDIENCE_READ_SECONDS = 30.0


class Resolver:
    """Finds, checks and creates the Customer List and the Audience of this run."""

    def __init__(
        self,
        *,
        client: PinterestClient | None,
        ad_account_id: str,
        audience_name: str | None,
        audience_id: str | None,
        audience_description: str | None,
        list_type: str,
        dry_run: bool,
        report: Report,
        logger: logging.Logger,
        external_id_type: str | None = None,
    ) -> None:
        self.client = client
        self.account = ad_account_id
        self.audience_name = audience_name
        self.audience_id = audience_id
        self.audience_description = audience_description
        self.list_type = list_type
        self.external_id_type = external_id_type
        self.dry_run = dry_run
        self.report = report
        self.logger = logger
        self.list_id: str | None = None
        #: Pinterest's created_time of the list, when an answer said it: tells a snapshot
        #: kept under a reused id apart (snapshot.py).
        self.list_created_time: Any = None
        #: created_time of the last item this run created (None when its answer was lost).
        self.created_time: Any = None
        #: Whether the list was adopted by its name (not named by segment_id or audience_id).
        self.found_by_name = False
        #: Whether the records' segment was resolved (done before the first write).
        self.resolved = False
        #: The list named by the rule of the audience_id setting's Audience.
        self.audience_rule_list: str | None = None

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
        self.audience_rule_list = api_id(list_id, "the Audience's customer_list_id")
        # Its created_time tells a snapshot kept under a reused id apart (snapshot.py).
        try:
            rule_list = self.client.request(
                "GET", f"/ad_accounts/{self.account}/customer_lists/{self.audience_rule_list}"
            )
        except PinterestAPIError as exc:
            if exc.status == 404:
                raise TargetError(
                    f"Audience {self.audience_id} uses Customer List {self.audience_rule_list}, "
                    f"which ad account {self.account} does not have (HTTP 404, x-pinterest-rid "
                    f"{exc.rid}): the list was deleted. Remove audience_id to create a new "
                    "list and audience"
                ) from None
            raise
        self.list_created_time = rule_list.get("created_time")
        self.report.audience_id = self.audience_id
        self.report.segment_id = self.audience_rule_list
        self.logger.info(
            "Audience %s uses Customer List %s", self.audience_id, self.audience_rule_list
        )

    def resolve(
        self,
        segment_name: str,
        segment_id: str | None,
        on_list: Callable[[str], None] | None = None,
        create_settles: float = 0.0,
    ) -> None:
        """Decide which list and audience this run writes to, before its first write.

        `on_list` is called with an existing list's id before anything is written (the
        audience is created only after it returned), so that it may still stop the run.
        `create_settles` (time.time()): a create of this name left unanswered by a run that
        stopped may land until then; the list is looked for until then before a new one
        would be created (two lists of one name otherwise).
        """
        self.resolved = True
        self.report.segment_name = segment_name
        if self.audience_rule_list and segment_id and segment_id != self.audience_rule_list:
            raise TargetError(
                f"the records name Customer List {segment_id} (segment_id) but Audience "
                f"{self.audience_id} references Customer List {self.audience_rule_list}; an "
                "Audience references exactly one Customer List: drop segment_id from the "
                "records or set the audience_id of that list's audience. Nothing was written"
            )
        self.list_id = segment_id or self.audience_rule_list
        if self.client is None:
            self.report.segment_id = self.list_id
            return
        if self.list_id:
            existing = self._get_list(self.list_id)
            self.list_created_time = existing.get("created_time")
            if existing.get("name") not in (None, segment_name):
                self.logger.warning(
                    "Customer List %s is named %r, not %r (segment_name): updating it anyway, "
                    "as segment_id or audience_id say",
                    self.list_id,
                    existing.get("name"),
                    segment_name,
                )
        else:
            created_times: dict[str, Any] = {}

            def named(item: dict[str, Any]) -> bool:
                created_times[str(item.get("id"))] = item.get("created_time")
                return item.get("name") == segment_name

            found = self._find("customer_lists", named)
            wait = min(create_settles - time.time(), MAX_SETTLE_WAIT_SECONDS)
            if not found and wait > 0:
                self.logger.warning(
                    "A run that stopped was creating the Customer List named %r and its answer "
                    "never came: looking for it for up to %.0f s before creating it",
                    segment_name,
                    wait,
                )
                found = self._look_for("customer_lists", named, time.monotonic() + wait)
            if len(found) > 1:
                raise TargetError(
                    f"{len(found)} Customer Lists in ad account {self.account} are named "
                    f"{segment_name!r} (ids {', '.join(found)}); set segment_id in the records "
                    "to say which one to update"
                )
            if found:
                self.list_id = found[0]
                self.list_created_time = created_times.get(found[0])
                self.found_by_name = True
                self.logger.info(
                    "Adopting existing Customer List %s named %r", self.list_id, segment_name
                )
        self.report.segment_id = self.list_id
        ours = None if self.audience_id else self._audiences_of_this_name()
        if self.list_id and on_list is not None:
            on_list(self.list_id)
        if self.list_id and not self.audience_id:
            self.ensure_audience(ours)

    def list_of_audience(self) -> str | None:
        """For a run without records: the list of the audience_id setting's Audience, or of
        the one CUSTOMER_LIST Audience named audience_name (a single read), and report the ids.
        """
        if self.audience_rule_list or self.client is None:
            return self.audience_rule_list
        if self.resolved or self.audience_id or not self.audience_name:
            return self.list_id
        found = [
            item
            for item in self.client.paginate(f"/ad_accounts/{self.account}/audiences")
            if item.get("name") == self.audience_name
            and item.get("audience_type") == "CUSTOMER_LIST"
        ]
        if len(found) != 1:
            return None
        self.report.audience_id = api_id(found[0].get("id"), "audiences")
        list_id = (found[0].get("rule") or {}).get("customer_list_id")
        self.report.segment_id = (
            api_id(list_id, "the Audience's customer_list_id") if list_id else None
        )
        return self.report.segment_id

    def read_audience_status(self, confirmed_members: Callable[[str], int | None]) -> None:
        """End of a real run: one read of the Audience for the report's status, size and
        match rate, and one of its list, whose status says whether the size already counts
        the latest upload. `confirmed_members(list_id)` counts the snapshot (None: none),
        only when the size is known and counts the latest upload, and this run wrote nothing
        to the list (Pinterest sizes an audience 24-48 hours after an upload).

        Raises what the reads raise: the caller only warns, a finished run stays finished.
        """
        if self.client is None or self.dry_run or not self.report.audience_id:
            return
        deadline = min(self.client.deadline(), time.monotonic() + AUDIENCE_READ_SECONDS)
        audience = self.client.request(
            "GET",
            f"/ad_accounts/{self.account}/audiences/{self.report.audience_id}",
            deadline=deadline,
        )
        list_id = (audience.get("rule") or {}).get("customer_list_id") or self.report.segment_id
        list_id = api_id(list_id, "the Audience's customer_list_id") if list_id else None
        list_status = None
        if list_id:
            try:
                customer_list = self.client.request(
                    "GET",
                    f"/ad_accounts/{self.account}/customer_lists/{list_id}",
                    deadline=deadline,
                )
            except TargetError as exc:  # the Audience's own figures still stand
                self.logger.warning("Could not read the Customer List's status: %s", exc)
                list_status = LIST_STATUS_UNREAD
            else:
                found = customer_list.get("status")
                list_status = found if isinstance(found, str) else None
        status = audience.get("status")
        size = as_size(audience.get("size"))
        # Counting merges the snapshot's change log: only when a match rate can come of it.
        changed = bool(self.report.identifiers_added or self.report.identifiers_removed)
        counted = not list_id or match_rate_needs_count(size, list_status, changed=changed)
        self.report.record_audience(
            status if isinstance(status, str) else None,
            size,
            confirmed_members(str(list_id)) if list_id and counted else None,
            list_status,
            counted=counted,
            changed=changed,
        )

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
        return [api_id(item.get("id"), kind) for item in self.client.paginate(path) if match(item)]

    def _look_for(
        self, kind: str, match: Callable[[dict[str, Any]], bool], until: float
    ) -> list[str]:
        """A create that may still land: look for it every second until `until`
        (time.monotonic()); the ids found, or none. A signal ends the search."""
        assert self.client is not None
        while True:
            found = self._find(kind, match)
            left = until - time.monotonic()
            if found or left <= 0:
                return found
            if self.client.stop_event.wait(min(1.0, left)):
                raise Interrupted(f"stopped while looking for one of the {kind} being created")

    def _audience_matches(self, item: dict[str, Any]) -> bool:
        rule = item.get("rule") or {}
        return (
            item.get("name") == self.audience_name
            and item.get("audience_type") == "CUSTOMER_LIST"
            and str(rule.get("customer_list_id")) == self.list_id
        )

    def _audiences_of_this_name(self) -> list[str] | None:
        """Before any write: the ids of this name's Audiences on this run's list; stops the
        run when the name is taken only by Audiences of other lists (or of another type).

        Creating one more would leave two Audiences of one name (one segment's audience_name
        copied to another, or a list deleted in Ads Manager): ads would target the wrong one.
        """
        if self.client is None or not self.audience_name:
            return None
        path = f"/ad_accounts/{self.account}/audiences"
        named = [i for i in self.client.paginate(path) if i.get("name") == self.audience_name]
        ours = [
            api_id(item.get("id"), "audiences") for item in named if self._audience_matches(item)
        ]
        if ours or not named:
            return ours
        others = "; ".join(
            f"Audience {item.get('id')} ({item.get('audience_type')}"
            + (
                f", Customer List {(item.get('rule') or {}).get('customer_list_id')}"
                if item.get("audience_type") == "CUSTOMER_LIST"
                else ""
            )
            + ")"
            for item in named[:5]
        )
        this_list = (
            f"Customer List {self.list_id}" if self.list_id else "the new list this run creates"
        )
        raise TargetError(
            f"audience_name {self.audience_name!r} is taken in ad account {self.account} by "
            f"{others}, not by an Audience of {this_list} (segment_name "
            f"{self.report.segment_name!r}); a new Audience would share its name. Give this "
            "segment its own audience_name, or rename or delete that Audience in Ads Manager "
            "(set audience_id to update the list it uses instead). Nothing was written"
        )

    def ensure_audience(self, found: list[str] | None = None) -> None:
        """Adopt the CUSTOMER_LIST audience of this name and list, or create it.

        `found`: the matching ids when the caller has just listed them (saves a listing).
        """
        assert self.client is not None and self.list_id
        if found is None:
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

    def new_list_type(self, kinds: set[str]) -> str:
        """The list_type of a list created now from identifiers of these kinds: the
        external_id_type setting for external ids (a run never mixes them with others)."""
        if EXTERNAL in kinds:
            assert self.external_id_type is not None  # else every external id was invalid
            return self.external_id_type
        if self.list_type != "auto":
            return self.list_type
        if kinds == {"maid"}:
            return "MAID"
        if kinds == {"idfa"}:
            return "IDFA"
        return "EMAIL"

    def create_list(
        self,
        adds: list[str],
        kinds: set[str],
        per_request: int,
        on_send: Callable[[], None] | None = None,
    ) -> int:
        """Create the list with the first adds, then its audience; returns how many of
        `adds` the create carried (fewer when Pinterest refused the request as too large)."""
        name = self.report.segment_name
        if self.dry_run or self.client is None:
            self.logger.info(
                "Dry run: would create Customer List %r and Audience %r", name, self.audience_name
            )
            self.list_id = DRY_RUN_NEW_LIST
            return len(adds)
        first = adds[:per_request]
        while True:
            list_type = self.new_list_type(kinds)
            body = {"name": name, "records": ",".join(first), "list_type": list_type}
            try:
                self.list_id = self._create(
                    "customer_lists", body, lambda item: item.get("name") == name, on_send
                )
                break
            except RequestTooLarge:
                if len(first) == 1:
                    raise
                first = first[: len(first) // 2]
                self.logger.warning(
                    "Pinterest refused the request as too large; sending at most %d identifiers "
                    "per request from now on",
                    len(first),
                )
        self.list_created_time = self.created_time
        self.report.list_created = True
        self.report.segment_id = self.list_id
        self.logger.info("Created Customer List %s named %r", self.list_id, name)
        if not self.audience_id:
            self.ensure_audience()
        return len(first)

    def _create(
        self,
        kind: str,
        body: dict[str, Any],
        match: Callable[[dict[str, Any]], bool],
        on_send: Callable[[], None] | None = None,
    ) -> str:
        """POST a create; when its outcome is unknown, look before creating again."""
        assert self.client is not None
        path = f"/ad_accounts/{self.account}/{kind}"
        deadline = self.client.deadline()
        while True:
            try:
                answer = self.client.request(
                    "POST", path, json=body, idempotent=False, deadline=deadline, on_send=on_send
                )
                self.report.note_upload_exceptions(
                    upload_exceptions(answer), self.client.last_rid, self.logger
                )
                self.created_time = answer.get("created_time")
                return api_id(answer.get("id"), kind)
            except AmbiguousWrite as exc:
                # A create that timed out may still be running on Pinterest's side: keep
                # looking for a while (longer than one request may take) before creating again.
                look_until = min(time.monotonic() + self.client.straggle_seconds(), deadline)
                found = self._look_for(kind, match, look_until)
                if found:
                    self.logger.warning("%s; it was, adopting %s", exc, found[0])
                    self.created_time = None
                    return found[0]
                self.logger.warning("%s; it was not, creating again", exc)
