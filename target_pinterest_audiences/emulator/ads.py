"""The ads endpoints: customer lists and audiences of an ad account, checked against the spec."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from target_pinterest_audiences.emulator.errors import (
    MSG_DISAPPROVED,
    MSG_NOT_PERMITTED,
    MSG_TOO_LARGE,
    MSG_UNDER_REVIEW,
    ApiError,
    _bad,
)
from target_pinterest_audiences.emulator.state import (
    READY_MIN_SIZE,
    EmulatorState,
    _Audience,
    _CustomerList,
)
from target_pinterest_audiences.emulator.transport import _BAD_JSON, _NO_BODY, _Reply, _Request
from target_pinterest_audiences.emulator.validation import (
    _ID_RE,
    ACTALIKE_COUNTRIES,
    ACTALIKE_PERCENTAGE,
    AUDIENCE_OPERATIONS,
    AUDIENCE_TYPES,
    LIST_OPERATIONS,
    LIST_TYPES,
    ORDERS,
    OWNERSHIP_TYPES,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    RULE_FORMATS,
    _check_fields,
    _check_rule_shape,
    _decode_bookmark,
    _encode_bookmark,
    _enum,
    _media_type,
    _nonempty_str,
    _parse_records,
    _single_query,
)


class AdsApi(EmulatorState):
    """Customer lists and audiences: create, update, read, list (a mixin of the Emulator)."""

    def _check_account(self, account: str) -> None:
        if not _ID_RE.fullmatch(account):
            raise _bad("ad_account_id: must be a string of 1 to 18 digits")
        with self._lock:
            if account not in self._ad_accounts:
                raise ApiError(403, 29, MSG_NOT_PERMITTED)
            if account in self._cfg.disapproved:
                raise ApiError(403, 2625, MSG_DISAPPROVED)
            if account in self._cfg.under_review:
                raise ApiError(403, 2626, MSG_UNDER_REVIEW)

    @staticmethod
    def _json_body(req: _Request) -> dict[str, Any]:
        if _media_type(req.headers) != "application/json":
            raise _bad("Content-Type: must be application/json")
        if req.parsed is _NO_BODY:
            raise _bad("body: a JSON object is required")
        if req.parsed is _BAD_JSON:
            raise _bad("body: not valid UTF-8 JSON")
        if not isinstance(req.parsed, dict):
            raise _bad("body: must be a JSON object")
        return req.parsed

    @staticmethod
    def _check_record_cap(req: _Request, body: dict[str, Any]) -> None:
        cap = req.cfg.record_cap
        records = body.get("records")
        if cap is not None and isinstance(records, str) and records.count(",") + 1 > cap:
            raise ApiError(413, 1, MSG_TOO_LARGE)

    # -- customer lists ---------------------------------------------------------------------------

    def _create_list(self, req: _Request, account: str, _item: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        self._check_record_cap(req, body)
        # ad_account_id is not in CustomerListRequest, but Pinterest's own SDK sends it (as the
        # audience request bodies carry it): it is accepted when it names the path's account.
        _check_fields(body, ("ad_account_id", "name", "records", "list_type"), ("name", "records"))
        self._check_body_account(body, account)
        name = _nonempty_str(body, "name")
        list_type = _enum(body, "list_type", LIST_TYPES, default="EMAIL")
        records = _parse_records(body["records"], list_type)
        now = int(time.time())
        with self._lock:
            lst = _CustomerList(
                id=self._new_id(),
                ad_account_id=account,
                name=name,
                list_type=list_type,
                created=now,
                updated=now,
                members=set(records),
                uploaded=len(records),
            )
            lst.wrote(req.cfg)
            self._lists[lst.id] = lst
            return 200, lst.api(self._cfg, just_written=True), {}

    def _update_list(self, req: _Request, account: str, list_id: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        self._check_record_cap(req, body)
        _check_fields(body, ("operation_type", "records"), ("operation_type", "records"))
        operation = _enum(body, "operation_type", LIST_OPERATIONS)
        with self._lock:
            lst = self._find_list(account, list_id)
            # A list keeps the list_type it was created with: its records must be of that kind.
            records = _parse_records(body["records"], lst.list_type)
            lst.settle(self._cfg)  # a matching already due counts the members before this write
            if operation == "ADD":
                lst.members.update(records)
                lst.uploaded += len(records)
            else:
                lst.members.difference_update(records)
                lst.removed += len(records)
            lst.num_batches += 1
            lst.updated = int(time.time())
            lst.wrote(req.cfg)
            return 200, lst.api(self._cfg, just_written=True), {}

    def _get_list(self, req: _Request, account: str, list_id: str) -> _Reply:
        _single_query(req, ())
        with self._lock:
            return 200, self._find_list(account, list_id).api(self._cfg), {}

    def _find_list(self, account: str, list_id: str) -> _CustomerList:
        lst = self._lists.get(list_id)
        if lst is None or lst.ad_account_id != account:
            raise ApiError(404, 404, "Customer list not found.")
        return lst

    def _list_lists(self, req: _Request, account: str, _item: str) -> _Reply:
        query = _single_query(req, ("page_size", "bookmark", "order"))
        with self._lock:
            owned = [lst for lst in self._lists.values() if lst.ad_account_id == account]
            return 200, self._page(query, "customer_lists", account, owned), {}

    # -- audiences ------------------------------------------------------------------------------

    def _check_rule(self, account: str, audience_type: str, rule: Any) -> dict[str, Any]:
        """A rule as the AudienceRule schema allows, with what its audience_type needs.

        CUSTOMER_LIST: customer_list_id, a list of this account. ACTALIKE: seed_id (audiences of
        this account, each READY: Pinterest refuses a seed still matching or too small),
        country (US, CA or GB) and percentage (1 to 10). Any rule's ad_account_id (Pinterest's
        SDK adds it) must be the account in the path. A CUSTOMER_LIST or ACTALIKE rule holds only
        the fields of its format (AudienceRule's description); other types any AudienceRule field.
        """
        rule = _check_rule_shape(rule)
        if "ad_account_id" in rule and rule["ad_account_id"] != account:
            raise _bad("rule: ad_account_id does not match the ad account in the path")
        own = RULE_FORMATS.get(audience_type)
        if own is not None:  # the rule formats the AudienceRule description gives per type
            for key in sorted(set(rule) - own - {"ad_account_id"}):
                raise _bad(f"rule: {key} is not a field of a {audience_type} rule")
        if audience_type == "CUSTOMER_LIST":
            list_id = rule.get("customer_list_id")
            if list_id is None:
                raise _bad("rule: CUSTOMER_LIST needs customer_list_id")
            with self._lock:
                lst = self._lists.get(list_id)
                if lst is None or lst.ad_account_id != account:
                    raise _bad("rule: customer_list_id names no customer list of this ad account")
        elif audience_type == "ACTALIKE":
            self._check_actalike_rule(account, rule)
        return rule

    def _check_actalike_rule(self, account: str, rule: dict[str, Any]) -> None:
        for key in ("seed_id", "country", "percentage"):
            if key not in rule:
                raise _bad(f"rule: ACTALIKE needs {key}")
        if rule["country"] not in ACTALIKE_COUNTRIES:
            raise _bad(f"rule: country must be one of {', '.join(ACTALIKE_COUNTRIES)}")
        low, high = ACTALIKE_PERCENTAGE
        if not low <= rule["percentage"] <= high:
            raise _bad(f"rule: percentage must be an integer from {low} to {high}")
        seeds = rule["seed_id"]
        if not seeds:
            raise _bad("rule: seed_id must name at least one audience")
        with self._lock:
            for seed_id in seeds:
                seed = self._audiences.get(seed_id)
                if seed is None or seed.ad_account_id != account:
                    raise _bad(f"rule: seed_id {seed_id} names no audience of this ad account")
                status = seed.api(self._lists, self._cfg)["status"]
                if status != "READY":
                    raise ApiError(
                        400,
                        1,
                        f"Seed audience {seed_id} is not ready ({status}): an audience must be "
                        f"READY, with at least {READY_MIN_SIZE} matched Pinterest users, before "
                        "an actalike audience can be made from it.",
                    )

    def _check_body_account(self, body: dict[str, Any], account: str) -> None:
        if "ad_account_id" in body and body["ad_account_id"] != account:
            raise _bad("ad_account_id: does not match the ad account in the path")

    def _create_audience(self, req: _Request, account: str, _item: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        _check_fields(
            body,
            ("ad_account_id", "name", "rule", "audience_type", "description"),
            ("name", "rule", "audience_type"),
        )
        self._check_body_account(body, account)
        name = _nonempty_str(body, "name")
        audience_type = _enum(body, "audience_type", AUDIENCE_TYPES)
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad("description: must be a string")
        rule = self._check_rule(account, audience_type, body["rule"])
        now = int(time.time())
        with self._lock:
            audience = _Audience(
                id=self._new_id(),
                ad_account_id=account,
                name=name,
                audience_type=audience_type,
                rule=rule,
                description=description,
                created=now,
                updated=now,
                rule_set_at=time.monotonic(),
            )
            self._audiences[audience.id] = audience
            return 200, audience.api(self._lists, self._cfg), {}

    def _update_audience(self, req: _Request, account: str, audience_id: str) -> _Reply:
        _single_query(req, ())
        body = self._json_body(req)
        _check_fields(body, ("ad_account_id", "name", "rule", "description", "operation_type"), ())
        self._check_body_account(body, account)
        name = _nonempty_str(body, "name") if "name" in body else None
        operation = _enum(body, "operation_type", AUDIENCE_OPERATIONS, default="UPDATE")
        description = body.get("description")
        if "description" in body and not isinstance(description, str):
            raise _bad("description: must be a string")
        with self._lock:
            audience_type = self._find_audience(account, audience_id).audience_type
        rule = self._check_rule(account, audience_type, body["rule"]) if "rule" in body else None
        with self._lock:
            audience = self._find_audience(account, audience_id)
            if operation == "REMOVE":
                del self._audiences[audience_id]
                return 200, audience.api(self._lists, self._cfg), {}
            if name is not None:
                audience.name = name
            if rule is not None:
                audience.rule = rule
                audience.rule_set_at = time.monotonic()
            if "description" in body:
                audience.description = description
            audience.updated = int(time.time())
            return 200, audience.api(self._lists, self._cfg), {}

    def _get_audience(self, req: _Request, account: str, audience_id: str) -> _Reply:
        _single_query(req, ())
        with self._lock:
            return 200, self._find_audience(account, audience_id).api(self._lists, self._cfg), {}

    def _find_audience(self, account: str, audience_id: str) -> _Audience:
        audience = self._audiences.get(audience_id)
        if audience is None or audience.ad_account_id != account:
            raise ApiError(404, 404, "Audience not found.")
        return audience

    def _list_audiences(self, req: _Request, account: str, _item: str) -> _Reply:
        query = _single_query(req, ("page_size", "bookmark", "order", "ownership_type"))
        ownership = query.get("ownership_type", "OWNED")
        if ownership not in OWNERSHIP_TYPES:
            raise _bad(f"ownership_type: must be one of {', '.join(OWNERSHIP_TYPES)}")
        with self._lock:
            owned = [a for a in self._audiences.values() if a.ad_account_id == account]
            if ownership == "RECEIVED":  # nobody shares audiences with the emulator's accounts
                owned = []
            return 200, self._page(query, "audiences", account, owned), {}

    def _page(
        self,
        query: dict[str, str],
        kind: str,
        account: str,
        objects: Sequence[_CustomerList | _Audience],
    ) -> dict[str, Any]:
        """One page ordered by id; the bookmark is an opaque cursor (the last id served).

        Called with the lock held. An id cursor, unlike an offset, stays right when objects are
        created between pages.
        """
        raw_size = query.get("page_size", str(PAGE_SIZE_DEFAULT))
        if not re.fullmatch(r"[0-9]{1,4}", raw_size) or not 1 <= int(raw_size) <= PAGE_SIZE_MAX:
            raise _bad(f"page_size: must be an integer from 1 to {PAGE_SIZE_MAX}")
        page_size = int(raw_size)
        order = query.get("order")
        if order is not None and order not in ORDERS:
            raise _bad(f"order: must be one of {', '.join(ORDERS)}")
        after: int | None = None
        bookmark = query.get("bookmark") or None
        if bookmark is not None:
            mark_order, after = _decode_bookmark(bookmark, kind, account)
            if order is not None and order != mark_order:
                raise _bad("bookmark: was made for another order")
            order = mark_order
        order = order or "ASCENDING"
        descending = order == "DESCENDING"
        ordered = sorted(objects, key=lambda o: int(o.id), reverse=descending)
        if after is not None:
            cut = after
            ordered = [o for o in ordered if (int(o.id) < cut if descending else int(o.id) > cut)]
        page = ordered[:page_size]
        next_mark = None
        if len(ordered) > page_size:
            next_mark = _encode_bookmark(kind, account, order, int(page[-1].id))
        items = [
            o.api(self._cfg) if isinstance(o, _CustomerList) else o.api(self._lists, self._cfg)
            for o in page
        ]
        return {"items": items, "bookmark": next_mark}
