#!/usr/bin/env python3
"""Make the bundled sample customers: a CRM-style export for the demo and the Meltano tests.

Standard library only, deterministic (fixed seed): running it again rewrites
``sample/customers.csv`` byte for byte. Every address is under the reserved example
domains and every device id is random, so the file holds nobody's real data.

The export has the columns a CRM or warehouse query would give:

    customer_id, segment_name, action, updated_at, email, mobile_ad_id

``mobile_ad_id`` is renamed to the standard audience field ``maid`` by the extractor's
``stream_maps`` in meltano.yml; the other columns already carry standard names.

What is in it, on purpose (``python sample/generate.py --summary`` prints the counts):
- adds and removes ("remove" rows of people who opted out, some of whom were added
  earlier in the same file with a different spelling of their address);
- messy emails: mixed case, surrounding spaces and tabs, and some invalid ones
  (no '@', two '@', a space inside, no dot in the domain, empty local part);
- mobile advertising ids (MAIDs): alone or next to an email, some upper case, a few invalid;
- a few rows with no identifier at all;
- rows sorted by updated_at, as an incremental export would be.

``changes(...)`` makes the next export: rows of existing members flipping to
"remove" with a newer updated_at, new customers, and a few returning customers. The
tests write it next to the first file; ``--changes FILE`` writes it from the command line:

    python sample/generate.py --changes sample/customers_2025-06-05.csv

Name later exports so that they sort after ``customers.csv`` (``customers_<date>.csv``):
the extractor reads the new files of a run in name order, and order matters when one run
reads several exports that touch the same customer.
"""

from __future__ import annotations

import argparse
import csv
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

COLUMNS = ("customer_id", "segment_name", "action", "updated_at", "email", "mobile_ad_id")
SEGMENT_NAME = "Loyal customers"
SEED = 20250601
BASE_ROWS = 1200
START = datetime(2025, 6, 1, 8, 0, 0, tzinfo=timezone.utc)
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "customers.csv"

_FIRST = (  # noqa: SIM905
    "ada alan grace linus barbara ken dennis margaret edsger john donald frances "
    "radia tim vint bjarne guido james anita shafi leslie niklaus tony sophie hedy "
    "katherine claude alonzo kurt emmy mary lisa annie jean karen joan susan ruth"
).split()
_LAST = (  # noqa: SIM905
    "lovelace turing hopper torvalds liskov thompson ritchie hamilton dijkstra "
    "mccarthy knuth allen perlman bernerslee cerf stroustrup rossum gosling borg "
    "goldwasser lamport wirth hoare wilson lamarr johnson shannon church godel "
    "noether keller easley sammet sparck jones clarke"
).split()
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com", "shop.example.org")
_INVALID_EMAILS = (
    "{local}{domain}",  # no '@'
    "{local}@@{domain}",  # two '@'
    "{local} x@{domain}",  # a space inside
    "{local}@localhost",  # no dot in the domain
    "@{domain}",  # empty local part
)
_INVALID_MAIDS = ("not-a-device-id", "00000000-0000-0000-0000", "unknown")


def _timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Maker:
    """Random people, emails and device ids from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def email(self) -> str:
        while True:
            first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
            sep = self.rng.choice((".", "_", "", "-"))
            local = f"{first}{sep}{last}{self.rng.randint(1, 999)}"
            email = f"{local}@{self.rng.choice(_DOMAINS)}"
            if email not in self.used:
                self.used.add(email)
                return email

    def maid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def messy(self, email: str) -> str:
        """The same address as a careless system would export it (still valid)."""
        roll = self.rng.random()
        if roll < 0.30:  # mixed case
            local, domain = email.split("@")
            return f"{local.title()}@{domain.upper()}"
        if roll < 0.45:  # surrounding whitespace
            return (
                self.rng.choice((" ", "  ", "\t", " \t")) + email + self.rng.choice(("", " ", "  "))
            )
        if roll < 0.55:  # both
            return "  " + email.upper() + " "
        return email

    def messy_maid(self, maid: str) -> str:
        roll = self.rng.random()
        if roll < 0.25:
            return maid.upper()
        if roll < 0.35:
            return f" {maid} "
        return maid

    def invalid_email(self) -> str:
        local, domain = self.email().split("@")
        return self.rng.choice(_INVALID_EMAILS).format(local=local, domain=domain)

    def invalid_maid(self) -> str:
        return self.rng.choice(_INVALID_MAIDS)


def _row(customer_id: int, action: str, t: datetime, email: str = "", maid: str = "") -> dict:
    return {
        "customer_id": str(customer_id),
        "segment_name": SEGMENT_NAME,
        "action": action,
        "updated_at": _timestamp(t),
        "email": email,
        "mobile_ad_id": maid,
    }


def base(n: int = BASE_ROWS, seed: int = SEED) -> list[dict]:
    """The first export: ``n`` rows sorted by updated_at."""
    rng = random.Random(seed)
    make = _Maker(rng)
    rows: list[dict] = []
    added: list[tuple[int, str, str]] = []  # (customer_id, email, maid) of valid adds
    t = START
    customer_id = 100000
    while len(rows) < n:
        t += timedelta(seconds=rng.randint(20, 400))
        roll = rng.random()
        if roll < 0.04 and len(added) > 50:
            # An earlier customer opts out later in the same export, spelled differently.
            cid, email, maid = added.pop(rng.randrange(len(added) - 20))
            rows.append(_row(cid, "remove", t, make.messy(email) if email else "", maid))
            continue
        if roll < 0.07 and len(added) > 50:
            # The same person exported twice (another system, another spelling): one member.
            cid, email, maid = rng.choice(added)
            if email:
                rows.append(_row(cid, "add", t, make.messy(email), ""))
                continue
        customer_id += 1
        kind = rng.random()
        email = maid = ""
        if kind < 0.68:
            email = make.email()
        elif kind < 0.80:
            email, maid = make.email(), make.maid()
        elif kind < 0.91:
            maid = make.maid()
        elif kind < 0.95:
            rows.append(_row(customer_id, "add", t, make.invalid_email(), ""))
            continue
        elif kind < 0.965:
            rows.append(_row(customer_id, "add", t, "", make.invalid_maid()))
            continue
        elif kind < 0.975:
            rows.append(_row(customer_id, "add", t, "", ""))  # no identifier at all
            continue
        else:
            # Someone who opted out and was never in the list: a remove of an absent member.
            rows.append(_row(customer_id, "remove", t, make.messy(make.email()), ""))
            continue
        action = "add"
        rows.append(
            _row(
                customer_id,
                action,
                t,
                make.messy(email) if email else "",
                make.messy_maid(maid) if maid else "",
            )
        )
        added.append((customer_id, email, maid))
    return rows


def changes(
    previous: Sequence[dict],
    *,
    seed: int = SEED + 1,
    removals: int = 60,
    new_customers: int = 120,
    returning: int = 5,
) -> list[dict]:
    """The next export after ``previous``: flips to remove, new customers, returning ones.

    Every row is newer than every row of ``previous``; rows are sorted by updated_at.
    """
    rng = random.Random(seed)
    make = _Maker(rng)
    for row in previous:
        if row["email"].strip():
            make.used.add(row["email"].strip().lower())
    latest: dict[str, dict] = {}
    for row in previous:  # the last row per customer decides whether they are a member
        latest[row["customer_id"]] = row
    members = [r for r in latest.values() if r["action"] == "add" and _valid_row(r)]
    gone = [r for r in latest.values() if r["action"] == "remove" and _valid_row(r)]
    t = max(_parse(r["updated_at"]) for r in previous)
    out: list[dict] = []
    for r in rng.sample(members, min(removals, len(members))):
        t += timedelta(seconds=rng.randint(5, 90))
        email = r["email"].strip().lower()
        maid = r["mobile_ad_id"].strip().lower()
        out.append(
            _row(int(r["customer_id"]), "remove", t, make.messy(email) if email else "", maid)
        )
    for r in rng.sample(gone, min(returning, len(gone))):
        t += timedelta(seconds=rng.randint(5, 90))
        out.append(_row(int(r["customer_id"]), "add", t, r["email"], r["mobile_ad_id"]))
    next_id = max(int(r["customer_id"]) for r in previous) + 100000
    for i in range(new_customers):
        t += timedelta(seconds=rng.randint(5, 90))
        next_id += 1
        if i % 40 == 39:
            out.append(_row(next_id, "add", t, make.invalid_email(), ""))
        elif i % 5 == 4:
            out.append(_row(next_id, "add", t, "", make.messy_maid(make.maid())))
        else:
            out.append(_row(next_id, "add", t, make.messy(make.email()), ""))
    out.sort(key=lambda r: r["updated_at"])
    return out


def _parse(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _valid_row(row: dict) -> bool:
    """Rough validity for picking rows in ``changes``; the tests judge with their own rules."""
    email, maid = row["email"].strip(), row["mobile_ad_id"].strip()
    if not email and not maid:
        return False
    if email and (email.count("@") != 1 or " " in email or "." not in email.split("@")[1]):
        return False
    if email and not email.split("@")[0]:
        return False
    return not maid or len(maid) == 36


def write_csv(rows: Iterable[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def summary(rows: Sequence[dict]) -> str:
    actions = Counter(r["action"] for r in rows)
    with_email = sum(1 for r in rows if r["email"])
    with_maid = sum(1 for r in rows if r["mobile_ad_id"])
    messy = sum(1 for r in rows if r["email"] and r["email"] != r["email"].strip().lower())
    invalid = sum(1 for r in rows if not _valid_row(r))
    return (
        f"{len(rows)} rows: {actions['add']} add, {actions['remove']} remove; "
        f"{with_email} with an email ({messy} messy: case or spaces), {with_maid} with a MAID, "
        f"{invalid} invalid or without identifier; "
        f"updated_at {rows[0]['updated_at']} .. {rows[-1]['updated_at']}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the export")
    parser.add_argument("--rows", type=int, default=BASE_ROWS, help="rows in the first export")
    parser.add_argument(
        "--changes",
        type=Path,
        metavar="FILE",
        help="instead, write the next export (changes after --out) to FILE",
    )
    parser.add_argument("--summary", action="store_true", help="print what the file holds")
    args = parser.parse_args(argv)
    if args.changes:
        rows = changes(read_csv(args.out))
        write_csv(rows, args.changes)
        print(f"wrote {args.changes}: {summary(rows)}")
        return
    rows = base(args.rows)
    if args.summary:
        print(summary(rows))
        return
    write_csv(rows, args.out)
    print(f"wrote {args.out}: {summary(rows)}")


if __name__ == "__main__":
    main()
