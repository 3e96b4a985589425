"""Mirror sync: the source rows are the whole audience; only the difference is written.

Each record of a mirror run says who is a member now (no action, or `add`) or who is not
(`remove`); a skipped record's well-formed identifiers are "seen" and left as they are.
What the run wants is kept on disk (`RunSet`, a throwaway SQLite file), never in Python
sets, so memory stays flat whatever the audience size. While records arrive, members that
the snapshot does not confirm are added; identifiers already confirmed cost no request.
Only once the whole input was read are the snapshot's members that the source no longer
holds removed, and only if they are not too many (the removal cap): a broken source query
that returns 3 rows instead of 3 million must not empty a live audience.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from target_pinterest_audiences.report import Report
from target_pinterest_audiences.snapshot import PAGE_SIZE, KeyCodec, Snapshot
from target_pinterest_audiences.writer import Writer

#: What the source wants for an identifier.
WANT_ABSENT, WANT_MEMBER, WANT_KEEP = 0, 1, 2
#: Meltano's environment variable for allow_large_removal, named in the cap's message.
ALLOW_ENV = "TARGET_PINTEREST_AUDIENCES_ALLOW_LARGE_REMOVAL"


class RunSet:
    """Every identifier this run has seen, what the source wants for it, and whether it was
    a confirmed member when first seen; on disk, deleted when the run ends."""

    def __init__(self, codec: KeyCodec) -> None:
        self.codec = codec
        self._dir = tempfile.mkdtemp(prefix="target-pinterest-audiences-run-")
        self._conn = sqlite3.connect(Path(self._dir) / "run.sqlite", check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16000"):
            self._conn.execute(f"PRAGMA {pragma}")
        self._conn.execute(
            "CREATE TABLE seen (h BLOB PRIMARY KEY, want INTEGER NOT NULL, "
            "was_member INTEGER NOT NULL) WITHOUT ROWID"
        )
        self._conn.execute("CREATE TABLE removals (h BLOB NOT NULL)")

    def put(self, ops: dict[str, bool], keeps: Iterable[str], confirmed: set[str]) -> None:
        """Record one batch: a valid record's action replaces an earlier one; a skipped
        record's identifiers ("keep") never replace anything."""
        encode = self.codec.encode
        with self._conn:
            self._conn.executemany(
                "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT (h) DO UPDATE SET want = "
                "excluded.want",
                [(encode(h), int(is_add), h in confirmed) for h, is_add in ops.items()],
            )
            self._conn.executemany(
                "INSERT INTO seen VALUES (?, 2, ?) ON CONFLICT (h) DO NOTHING",
                [(encode(h), h in confirmed) for h in keeps],
            )

    def counts(self) -> tuple[int, int, int]:
        """(members in the source, of which confirmed before this run, of which new)."""
        members, unchanged = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(was_member), 0) FROM seen WHERE want = 1"
        ).fetchone()
        return int(members), int(unchanged), int(members) - int(unchanged)

    def _pages(self) -> Iterator[list[tuple[bytes, int, int]]]:
        last = b""
        while True:
            rows = self._conn.execute(
                f"SELECT h, want, was_member FROM seen WHERE h > ? ORDER BY h LIMIT {PAGE_SIZE}",
                (last,),
            ).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def plan_removals(self, snapshot: Snapshot | None, *, snapshot_new: bool) -> RemovalPlan:
        """Merge the snapshot with what the run wants (both in key order) into the removals.

        Removed: confirmed or in-doubt members that the source does not hold or says
        `remove`; and, on a list with no snapshot before this run, identifiers the source
        explicitly says `remove` (nobody knows whether the list holds them). Counted against
        the cap: removals of identifiers that were confirmed members before this run.
        """
        plan = RemovalPlan()
        self._conn.execute("DELETE FROM removals")
        out: list[tuple[bytes]] = []

        def remove(key: bytes) -> None:
            out.append((key,))
            plan.total += 1
            if len(out) >= PAGE_SIZE:
                self._conn.executemany("INSERT INTO removals VALUES (?)", out)
                out.clear()

        snap_rows = _rows(snapshot.pages()) if snapshot is not None else iter(())
        run_rows = _rows(self._pages())
        s = next(snap_rows, None)
        r = next(run_rows, None)
        while s is not None or r is not None:
            if r is None or (s is not None and s[0] < r[0]):
                assert s is not None
                # A member the source no longer holds (never seen in this run).
                remove(s[0])
                plan.of_members += s[1]
                s = next(snap_rows, None)
            elif s is None or r[0] < s[0]:
                if r[1] == WANT_ABSENT and snapshot_new:
                    remove(r[0])
                r = next(run_rows, None)
            else:
                if r[1] == WANT_ABSENT:
                    remove(s[0])
                    plan.of_members += s[1] and r[2]
                s = next(snap_rows, None)
                r = next(run_rows, None)
        if out:
            self._conn.executemany("INSERT INTO removals VALUES (?)", out)
        self._conn.commit()
        return plan

    def removals(self, size: int) -> Iterator[list[str]]:
        """The planned removals, `size` at a time."""
        decode = self.codec.decode
        cursor = self._conn.execute("SELECT h FROM removals ORDER BY rowid")
        while True:
            rows = cursor.fetchmany(size)
            if not rows:
                return
            yield [decode(row[0]) for row in rows]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _rows(pages: Iterable[list]) -> Iterator[tuple]:
    for page in pages:
        yield from page


@dataclass
class RemovalPlan:
    total: int = 0
    #: Of which confirmed members before this run (what the cap protects).
    of_members: int = 0


class MirrorSync:
    """The mirror side of the writer thread: what to add while reading, what to remove after."""

    def __init__(
        self,
        *,
        writer: Writer,
        report: Report,
        logger: logging.Logger,
        max_removal_fraction: float,
        allow_large_removal: bool,
        dry_run: bool,
    ) -> None:
        self.writer = writer
        self.report = report
        self.logger = logger
        self.max_removal_fraction = max_removal_fraction
        self.allow_large_removal = allow_large_removal
        self.dry_run = dry_run
        self.runset: RunSet | None = None
        #: Set when the cap held removals back: the run ends non-zero with this message.
        self.held_message: str | None = None
        #: The list type of this run's identifiers, set with its first batch of them: how
        #: the run's keys are stored while its list has no snapshot (the run creates it).
        self.run_list_type: str | None = None

    def _runset(self, *, final: bool = False) -> RunSet | None:
        """The run's set, in the key encoding of the list's kind; None while that kind is
        unknown (no snapshot, no identifier yet), unless the run is over."""
        if self.runset is None:
            snapshot = self.writer.snapshot
            if snapshot is not None:
                codec = snapshot.codec
            elif self.run_list_type is not None or final:
                codec = KeyCodec(self.run_list_type)
            else:
                return None
            self.runset = RunSet(codec)
        return self.runset

    def kind_changed(self) -> None:
        """The snapshot now stores another kind of key (the list's kind was just recorded,
        on a snapshot that held nothing): the run's set so far holds only identifiers of
        skipped records, which protect no member there, so it starts again."""
        if self.runset is not None:
            self.runset.close()
            self.runset = None

    def take(self, ops: dict[str, bool], keeps: list[str]) -> None:
        """One batch of the source: add members the snapshot does not confirm."""
        writer = self.writer
        runset = self._runset()
        if runset is None:
            # Only skipped records so far, and no snapshot: they protect no member.
            assert not ops, "the run's list type is set before its first identifiers"
            return
        if keeps and not runset.codec.text:
            # A skipped record's external id cannot be a member of a list of digests.
            keeps = [key for key in keeps if runset.codec.accepts(key)]
        in_flight = set(writer.in_flight_ids)  # copied BEFORE the lookup: see below
        snapshot = writer.snapshot
        confirmed: set[str] = set()
        if snapshot is not None:
            # An identifier confirmed after the copy was in flight at the copy: either way
            # it is known, so nothing is added twice.
            confirmed = snapshot.confirmed([*ops, *keeps])
        runset.put(ops, keeps, confirmed)
        if self.dry_run:
            return
        adds, in_doubt = writer.adds, writer.in_doubt
        for digest, is_add in ops.items():
            if not is_add:
                adds.pop(digest, None)  # removed, if at all, once the input is complete
            elif digest not in confirmed and digest not in in_flight and digest not in in_doubt:
                adds[digest] = None
        writer.flush(full_only=True)

    def finish(self) -> None:
        """The whole input was read and every add confirmed: count, then remove the rest."""
        runset = self._runset(final=True)
        assert runset is not None
        writer, report = self.writer, self.report
        snapshot = writer.snapshot
        members, unchanged, new = runset.counts()
        report.members_in_source = members
        report.unchanged = unchanged
        snapshot_new = snapshot is None or not snapshot.existed
        report.snapshot = "new" if snapshot_new else "existing"
        at_open = snapshot.members_at_open if snapshot is not None else 0
        plan = runset.plan_removals(snapshot, snapshot_new=snapshot_new)
        reason = self._cap_reason(plan, members, at_open)
        if self.dry_run:
            report.identifiers_added = new
            report.identifiers_removed = 0 if reason else plan.total
            if reason:
                report.removals_held_back = plan.total
                report.removals_held_back_reason = reason
                self.logger.warning("Dry run: a real run would hold back removals: %s", reason)
            return
        if reason:
            report.removals_held_back = plan.total
            report.removals_held_back_reason = reason
            self.held_message = (
                f"Mirror sync held back {plan.total} removals from Customer List "
                f"{writer.list_id}: {reason}. The adds were written; nothing was removed. If "
                "the source is right, run once with allow_large_removal=true (for Meltano: "
                f"{ALLOW_ENV}=true)"
            )
            return
        if plan.total:
            self.logger.info(
                "Removing %d identifiers the source no longer holds from Customer List %s",
                plan.total,
                writer.list_id,
            )
        for chunk in runset.removals(writer.per_request):
            writer.send("REMOVE", chunk)
        writer.wait_in_flight()
        writer.reconcile()

    def _cap_reason(self, plan: RemovalPlan, members: int, at_open: int) -> str | None:
        """Why removals must wait for allow_large_removal, or None."""
        if self.allow_large_removal or not plan.of_members:
            return None
        if members == 0:
            return (
                f"the source holds no members (an empty or failed query looks like this) and "
                f"would remove all {plan.of_members} confirmed members"
            )
        fraction = plan.of_members / at_open if at_open else 1.0
        if fraction > self.max_removal_fraction:
            return (
                f"they would remove {plan.of_members} of the {at_open} confirmed members "
                f"({fraction:.1%}), above max_removal_fraction {self.max_removal_fraction:g}"
            )
        return None

    def close(self) -> None:
        if self.runset is not None:
            self.runset.close()
