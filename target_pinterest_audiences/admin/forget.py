"""`forget`: an erasure request (or an opt-out) for the people of a file.

Reads identifiers from a CSV file with a header row or from JSON lines (the standard
identifier fields, the target's rules and hashing), removes them from every Customer List
of the ad account whose type fits (`--only-synced`: only the lists of the snapshot store),
keeps them in the suppression set so that no run adds them again, and prints a receipt:
per list its id, name and how many identifiers were sent for removal, the totals and the
time. Never an identifier: invalid rows are counted by reason, not echoed. `--lift` takes
the identifiers out of the suppression set instead (people who opted back in) and removes
nothing; `--dry-run` prints the receipt without writing anything.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from target_pinterest_audiences.admin.check import explain_refusal
from target_pinterest_audiences.admin.common import (
    ENV_PREFIX,
    _is_pinterest_id,
    failure_printer,
    reading_client,
)
from target_pinterest_audiences.identifiers import (
    EXTERNAL_ID_TYPES,
    IDENTIFIER_FIELDS,
    InvalidRecord,
    parse_identifiers,
)
from target_pinterest_audiences.pinterest.client import (
    PinterestAPIError,
    PinterestClient,
    TargetError,
)
from target_pinterest_audiences.pinterest.tokens import (
    AuthError,
)
from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.store.suppression import (
    SuppressionSet,
    key_kind,
    suppression_key,
)
from target_pinterest_audiences.sync.suppression import ListRemoval, remove_from_lists

logger = logging.getLogger(__name__)

#: Identifiers per removal request (the target's default identifiers_per_request).
PER_REQUEST = 10_000


class InputError(ValueError):
    """The input file cannot be read; the message names the file, never its content."""


class Identifiers:
    """The people of the input: each distinct identifier once, with its kind of key."""

    def __init__(self) -> None:
        self.rows = 0
        self.valid_rows = 0
        self.invalid: dict[str, int] = {}
        #: key -> (key kind, value sent to Pinterest)
        self.entries: dict[str, tuple[str, str]] = {}

    def by_kind(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for kind, value in self.entries.values():
            found.setdefault(kind, []).append(value)
        return found

    def keys(self) -> list[tuple[str, str]]:
        return [(key, kind) for key, (kind, _value) in self.entries.items()]


def read_identifiers(text: TextIO, external_id_type: str | None) -> Identifiers:
    """Every row of a CSV file with a header row, or of JSON lines (told apart by the first
    character that is not blank: `{` begins JSON lines)."""
    found = Identifiers()
    content = text.read()
    if content.startswith("\ufeff"):
        content = content[1:]
    for row in _rows(content):
        found.rows += 1
        if row is None:
            found.invalid["invalid_json"] = found.invalid.get("invalid_json", 0) + 1
            continue
        try:
            parsed = parse_identifiers(row, external_id_type)
        except InvalidRecord as exc:
            found.invalid[exc.reason] = found.invalid.get(exc.reason, 0) + 1
            continue
        found.valid_rows += 1
        for kind, value in parsed:
            external = external_id_type if kind == "external" else None
            key = suppression_key(value, external)
            found.entries[key] = (key_kind(kind, external_id_type), value)
    return found


def _rows(content: str) -> Iterator[dict[str, Any] | None]:
    if content.lstrip().startswith("{"):
        for line in content.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                yield None
                continue
            yield row if isinstance(row, dict) else None
        return
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if header is None:
        return
    names = [name.strip().lower() for name in header]
    if not set(names) & set(IDENTIFIER_FIELDS):
        raise InputError(
            "its header row names no identifier field (need one of: "
            + ", ".join(IDENTIFIER_FIELDS)
            + "); a CSV file needs a header row"
        )
    for values in reader:
        if not any(value.strip() for value in values):
            continue
        yield {name: value for name, value in zip(names, values, strict=False) if value.strip()}


def run_forget(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Remove the file's people from the ad account's lists, suppress them, print a receipt."""

    fail = failure_printer(err, "forget")

    account = args.ad_account_id
    if not account:
        return fail(f"say which ad account: --ad-account-id or {ENV_PREFIX}AD_ACCOUNT_ID", 2)
    external_id_type = args.external_id_type
    if external_id_type and external_id_type not in EXTERNAL_ID_TYPES:
        return fail(f"--external-id-type must be one of {', '.join(EXTERNAL_ID_TYPES)}", 2)
    where = "standard input" if args.input == "-" else f"input file {args.input}"
    try:
        if args.input == "-":
            found = read_identifiers(sys.stdin, external_id_type)
        else:
            with open(args.input, encoding="utf-8", newline="") as handle:
                found = read_identifiers(handle, external_id_type)
    except OSError as exc:
        return fail(f"cannot read the {where} ({exc.strerror}); check the path", 2)
    except UnicodeDecodeError:
        return fail(f"the {where} is not UTF-8 text; save it as UTF-8", 2)
    except (InputError, csv.Error) as exc:
        return fail(f"the {where} cannot be read as CSV with a header row: {exc}", 2)
    store = SnapshotStore(
        ad_account_id=account,
        logger=logger,
        directory=args.snapshot_path,
        url=args.snapshot_url,
        api_url=args.api_url,
    )
    receipt = Receipt(args, found)
    try:
        if args.lift:
            receipt.lifted = _lift(store, found, dry_run=args.dry_run, receipt=receipt)
        else:
            client = reading_client(args, account)
            if isinstance(client, str):
                return fail(client)
            _forget(client, store, account, found, args, receipt)
    except PinterestAPIError as exc:
        return fail(explain_refusal(exc, account, "") + receipt.kept_note())
    except (TargetError, AuthError) as exc:  # retries exhausted, the snapshot store
        return fail(str(exc) + receipt.kept_note())
    finally:
        store.close()
    receipt.print(out)
    return 0 if receipt.complete else 1


def _lift(store: SnapshotStore, found: Identifiers, *, dry_run: bool, receipt: Receipt) -> int:
    suppressed = SuppressionSet(store, readonly=dry_run)
    try:
        if dry_run:
            keys = suppressed.keys()
            lifted = sum(1 for key in found.entries if key in keys)
            receipt.set_size = len(keys) - lifted
            return lifted
        lifted = suppressed.lift(found.entries)
        receipt.set_size = suppressed.size()
        return lifted
    finally:
        suppressed.close()


def _forget(
    client: PinterestClient,
    store: SnapshotStore,
    account: str,
    found: Identifiers,
    args: argparse.Namespace,
    receipt: Receipt,
) -> None:
    suppressed = SuppressionSet(store, readonly=args.dry_run)
    try:
        if args.dry_run:
            keys = suppressed.keys()
            receipt.added = sum(1 for key in found.entries if key not in keys)
            receipt.set_size = len(keys) + receipt.added
        else:
            # Suppressed first: if Pinterest cannot be reached or a removal fails, no run
            # adds them back meanwhile.
            receipt.added = suppressed.add(found.keys(), pinned=True)
            receipt.kept = True
            receipt.set_size = suppressed.size()
        store_ids = set(store.list_ids())
        lists: list[tuple[str, str | None]] = []
        for item in client.paginate(f"/ad_accounts/{account}/customer_lists"):
            list_id = str(item.get("id") or "")
            if not _is_pinterest_id(list_id):
                receipt.unusable_lists += 1
                continue
            if args.only_synced and list_id not in store_ids:
                continue
            name = item.get("name")
            lists.append((list_id, name if isinstance(name, str) else None))
        returned = {list_id for list_id, _ in lists}
        receipt.store_lists_not_returned = len(store_ids - returned)
        receipt.lists = remove_from_lists(
            client=client,
            store=store,
            ad_account_id=account,
            lists=lists,
            identifiers=found.by_kind(),
            store_ids=store_ids,
            logger=logger,
            identifiers_per_request=PER_REQUEST,
            dry_run=args.dry_run,
        )
        if not args.dry_run and all(r.confirmed for r in receipt.lists):
            suppressed.settle(found.keys())
    finally:
        suppressed.close()


class Receipt:
    """What `forget` did (or, in a dry run, would do): counts, lists and time, no identifier."""

    def __init__(self, args: argparse.Namespace, found: Identifiers) -> None:
        self.account = args.ad_account_id
        self.dry_run = bool(args.dry_run)
        self.lift = bool(args.lift)
        self.only_synced = bool(args.only_synced)
        self.format = args.format
        self.found = found
        self.time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.lists: list[ListRemoval] = []
        self.added = 0
        self.lifted = 0
        self.set_size = 0
        self.unusable_lists = 0
        self.store_lists_not_returned = 0
        #: Whether the identifiers are in the suppression set (before any list was read).
        self.kept = False

    def kept_note(self) -> str:
        """Said after an error once the identifiers were suppressed."""
        if not self.kept:
            return ""
        return (
            f" ({len(self.found.entries)} identifiers were kept in the suppression set, so no "
            "run adds them; run forget again to remove them from the lists)"
        )

    @property
    def complete(self) -> bool:
        return all(r.confirmed for r in self.lists)

    def as_json(self) -> dict[str, Any]:
        found = self.found
        answer: dict[str, Any] = {
            "ad_account_id": self.account,
            "time": self.time,
            "action": "lift" if self.lift else "forget",
            "dry_run": self.dry_run,
            "input": {
                "rows": found.rows,
                "valid_rows": found.valid_rows,
                "invalid_rows": dict(sorted(found.invalid.items())),
                "identifiers": len(found.entries),
            },
            "suppression_set": {"size": self.set_size},
        }
        if self.lift:
            answer["suppression_set"]["lifted"] = self.lifted
            answer["suppression_set"]["not_suppressed"] = len(found.entries) - self.lifted
            answer["complete"] = True
            return answer
        answer["suppression_set"]["added"] = self.added
        answer["suppression_set"]["already_suppressed"] = len(found.entries) - self.added
        answer["only_synced"] = self.only_synced
        answer["customer_lists"] = [
            {
                "id": r.list_id,
                "name": r.name,
                "list_type": r.list_type,
                "in_snapshot_store": r.in_store,
                "sent_for_removal": r.sent,
                "confirmed": r.confirmed,
                "problem": r.problem,
            }
            for r in self.lists
        ]
        answer["totals"] = {
            "customer_lists": len(self.lists),
            "sent_for_removal": sum(r.sent for r in self.lists),
            "lists_confirmed": sum(1 for r in self.lists if r.confirmed),
            "lists_failed": sum(1 for r in self.lists if not r.confirmed),
        }
        answer["complete"] = self.complete
        return answer

    def print(self, out: TextIO) -> None:
        if self.format == "json":
            print(json.dumps(self.as_json()), file=out, flush=True)
        else:
            print(self.table(), file=out, flush=True)

    def table(self) -> str:
        found = self.found
        would = "would be " if self.dry_run else ""
        title = "Opt-in receipt (forget --lift)" if self.lift else "Erasure receipt (forget)"
        lines = [
            f"{title}{' - DRY RUN, nothing written' if self.dry_run else ''}",
            f"Ad account {self.account}, {self.time}",
        ]
        invalid = sum(found.invalid.values())
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(found.invalid.items()))
        lines.append(
            f"Input: {found.rows} rows, {found.valid_rows} valid, {invalid} invalid"
            + (f" ({reasons})" if reasons else "")
            + f"; {len(found.entries)} distinct identifiers"
        )
        if self.lift:
            lines.append(
                f"Suppression set: {self.lifted} {would}lifted, "
                f"{len(found.entries) - self.lifted} were not suppressed; "
                f"size {self.set_size}. Nothing is removed or added by a lift."
            )
            return "\n".join(lines)
        lines.append(
            f"Suppression set: {self.added} {would}added, "
            f"{len(found.entries) - self.added} already suppressed; size {self.set_size}"
        )
        scope = (
            "the lists of the snapshot store" if self.only_synced else "every list of the account"
        )
        lines.append(f"Customer Lists ({scope}):")
        header = ("List id", "Name", "Type", "Sent for removal", "Result")
        rows = [
            (
                r.list_id,
                r.name or "-",
                r.list_type or "unknown",
                str(r.sent),
                ("would be sent" if self.dry_run else "confirmed")
                if r.confirmed
                else f"FAILED: {r.problem}",
            )
            for r in self.lists
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            cells = [row[i].ljust(widths[i]) for i in range(4)]
            lines.append("  " + "  ".join([*cells, row[4]]))
        if not rows:
            lines.append("  (none)")
        failed = sum(1 for r in self.lists if not r.confirmed)
        lines.append(
            f"Total: {len(self.lists)} lists, {sum(r.sent for r in self.lists)} identifiers "
            f"{would or ''}sent for removal; "
            + (
                "dry run: nothing was sent"
                if self.dry_run
                else ("every removal confirmed" if not failed else f"{failed} list(s) FAILED")
            )
        )
        if self.store_lists_not_returned:
            lines.append(
                f"{self.store_lists_not_returned} list(s) of the snapshot store were not "
                "returned by Pinterest for this account (skipped)"
            )
        if self.unusable_lists:
            lines.append(f"{self.unusable_lists} list(s) with an unusable id were skipped")
        if failed:
            lines.append(
                "The identifiers stay suppressed (no run adds them); run forget again to "
                "complete the removal"
            )
        return "\n".join(lines)
