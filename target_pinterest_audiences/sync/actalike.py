"""ACTALIKE (lookalike) audiences seeded with the run's CUSTOMER_LIST Audience.

At the end of a run that leaves the Audience in place, each configured actalike
(`actalike_audiences`: country, percentage, optional name) is made sure of: adopted when an
ACTALIKE audience of its name exists in the ad account (Pinterest has no name filter: one
listing of the account's audiences), else created with
``rule: {seed_id: [<Audience id>], country, percentage}``. Never a duplicate: a create whose
answer is lost is looked for before the next run creates it again. An adopted one whose rule
differs from the setting is reported and left as it is (changing a live audience's rule under
running campaigns is the marketer's call).

Pinterest refuses an actalike while its seed is not READY (fewer than 100 matched users, or
still matching: 24-48 hours after an upload). That is no failure of the run: it warns once with
Pinterest's reason and the next run tries again. Any other failure here warns too: the list is
synced and its STATE stands; the next run tries again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.pinterest.client import (
    AmbiguousWrite,
    PinterestAPIError,
    PinterestClient,
)
from target_pinterest_audiences.pinterest.tokens import AuthError
from target_pinterest_audiences.sync.report import Report


@dataclass(frozen=True)
class Actalike:
    """One configured actalike audience, its name resolved."""

    name: str
    country: str
    percentage: int

    def rule(self, seed_id: str) -> dict[str, Any]:
        return {"seed_id": [seed_id], "country": self.country, "percentage": self.percentage}


def default_name(audience_name: str, country: str, percentage: int) -> str:
    """'VIP customers' -> 'VIP customers US 5%'."""
    return f"{audience_name} {country} {percentage}%"


def resolve_configs(configs: list[dict[str, Any]], audience_name: str | None) -> list[Actalike]:
    """The settings' entries with their names (a missing name needs the Audience's name)."""
    out = []
    for entry in configs:
        country, percentage = str(entry["country"]), int(entry["percentage"])
        name = entry.get("name") or default_name(audience_name or "Audience", country, percentage)
        out.append(Actalike(name=name, country=country, percentage=percentage))
    return out


def rule_differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """How an existing audience's rule differs from the wanted one ([]: it does not)."""
    rule = found.get("rule") or {}
    differences = []
    seeds = rule.get("seed_id")
    seeds = [str(s) for s in seeds] if isinstance(seeds, list) else seeds
    if seeds != wanted["seed_id"]:
        differences.append(f"seed_id {seeds} (wanted {wanted['seed_id']})")
    if rule.get("country") != wanted["country"]:
        differences.append(f"country {rule.get('country')} (wanted {wanted['country']})")
    if str(rule.get("percentage")) != str(wanted["percentage"]):
        differences.append(f"percentage {rule.get('percentage')} (wanted {wanted['percentage']})")
    return differences


def _entry(actalike: Actalike, item: dict[str, Any] | None, outcome: str) -> dict[str, Any]:
    status = (item or {}).get("status")
    return {
        "id": str(item["id"]) if item else None,
        "name": actalike.name,
        "country": actalike.country,
        "percentage": actalike.percentage,
        "status": status if isinstance(status, str) else None,
        "outcome": outcome,
    }


def ensure_actalikes(
    client: PinterestClient | None,
    report: Report,
    audience_id: str | None,
    configs: list[dict[str, Any]] | None,
    dry_run: bool,
    logger: logging.Logger,
) -> None:
    """Make sure each configured actalike of the Audience `audience_id` exists; the outcome of
    each goes to `report.actalike_audiences`. Never raises for Pinterest's answers: a refusal
    or failure warns, and the next run tries again."""
    if not configs:
        return
    try:
        _ensure(client, report, audience_id, configs, dry_run, logger)
    except (TargetError, AuthError) as exc:
        logger.warning(
            "Could not make sure of the actalike audiences (the list is synced; the next run "
            "tries again): %s",
            exc,
        )
        if report.actalike_audiences is None:  # the listing failed
            actalikes = resolve_configs(configs, report.audience_name)
            report.actalike_audiences = [_entry(a, None, "failed") for a in actalikes]
        for entry in report.actalike_audiences:
            if entry["outcome"] == "pending":
                entry["outcome"] = "failed"


def _ensure(
    client: PinterestClient | None,
    report: Report,
    audience_id: str | None,
    configs: list[dict[str, Any]],
    dry_run: bool,
    logger: logging.Logger,
) -> None:
    if client is None or audience_id is None:
        # A dry run without credentials, or an Audience this (dry) run would create.
        actalikes = resolve_configs(configs, report.audience_name)
        outcome = "would_create" if dry_run else "not_created"
        report.actalike_audiences = [_entry(a, None, outcome) for a in actalikes]
        for actalike in actalikes:
            if dry_run:
                logger.info(_would_create(actalike))
            else:
                logger.info(
                    "Actalike audience %r not created: this run left no Audience to seed it",
                    actalike.name,
                )
        return
    path = f"/ad_accounts/{report.ad_account_id}/audiences"
    audiences = list(client.paginate(path))
    seed_name = next((a.get("name") for a in audiences if str(a.get("id")) == audience_id), None)
    actalikes = resolve_configs(configs, seed_name or report.audience_name)
    entries = [_entry(a, None, "pending") for a in actalikes]
    report.actalike_audiences = entries
    refusal: PinterestAPIError | None = None
    for actalike, entry in zip(actalikes, entries, strict=True):
        wanted = actalike.rule(audience_id)
        named = sorted(
            (
                a
                for a in audiences
                if a.get("name") == actalike.name and a.get("audience_type") == "ACTALIKE"
            ),
            key=lambda a: int(a["id"]),
        )
        if named:
            entry.update(_entry(actalike, named[0], "adopted"))
            if len(named) > 1:
                logger.warning(
                    "%d ACTALIKE audiences are named %r (ids %s): the target keeps %s",
                    len(named),
                    actalike.name,
                    ", ".join(str(a["id"]) for a in named),
                    named[0]["id"],
                )
            differences = rule_differences(named[0], wanted)
            if differences:
                entry["rule_differs"] = differences
                logger.warning(
                    "Actalike audience %s %r has a rule other than the setting's: %s. The target "
                    "leaves it as it is: change it in Ads Manager, or give this entry of "
                    "actalike_audiences another name to have a new one made",
                    named[0]["id"],
                    actalike.name,
                    "; ".join(differences),
                )
            else:
                logger.info(
                    "Actalike audience %s %r (%s %d%%): status %s",
                    named[0]["id"],
                    actalike.name,
                    actalike.country,
                    actalike.percentage,
                    entry["status"],
                )
            continue
        if dry_run:
            entry["outcome"] = "would_create"
            logger.info(_would_create(actalike))
            continue
        if refusal is not None:  # the same seed: Pinterest would refuse again
            entry.update(outcome="refused", reason=refusal.api_message)
            continue
        try:
            created = _create(client, path, actalike, wanted)
        except PinterestAPIError as exc:
            if exc.status != 400:
                raise
            refusal = exc
            entry.update(outcome="refused", reason=exc.api_message)
            continue
        if created is None:
            entry["outcome"] = "failed"
            continue
        entry.update(_entry(actalike, created, "created"))
        logger.info(
            "Created actalike audience %s %r (%s %d%% of Pinners like Audience %s): status %s",
            created["id"],
            actalike.name,
            actalike.country,
            actalike.percentage,
            audience_id,
            entry["status"],
        )
    if refusal is not None:
        refused = [e["name"] for e in entries if e["outcome"] == "refused"]
        logger.warning(
            "Pinterest refused to create actalike audience(s) %s from Audience %s: %r "
            "(HTTP %d, code %s, x-pinterest-rid %s). A seed must be READY, with at least 100 "
            "matched users (matching takes 24-48 hours after an upload): the run goes on and "
            "the next run tries again",
            ", ".join(repr(n) for n in refused),
            audience_id,
            refusal.api_message,
            refusal.status,
            refusal.code,
            refusal.rid,
        )


def _would_create(actalike: Actalike) -> str:
    return (
        f"Dry run: would create actalike audience {actalike.name!r} "
        f"({actalike.country} {actalike.percentage}%)"
    )


def _create(
    client: PinterestClient, path: str, actalike: Actalike, wanted: dict[str, Any]
) -> dict[str, Any] | None:
    """POST the create; when its answer is lost, look for it once (None: not there yet, the
    next run adopts or creates it: never two)."""
    body = {"name": actalike.name, "audience_type": "ACTALIKE", "rule": wanted}
    try:
        return client.request("POST", path, json=body, idempotent=False)
    except AmbiguousWrite as exc:
        for item in client.paginate(path):
            if item.get("name") == actalike.name and item.get("audience_type") == "ACTALIKE":
                return dict(item)
        client.logger.warning(
            "%s; actalike audience %r was not found after it: the next run looks again before "
            "creating it",
            exc,
            actalike.name,
        )
        return None
