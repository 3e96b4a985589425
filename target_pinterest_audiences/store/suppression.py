"""The suppression set: the identifiers never to be added to any Customer List of an ad account.

A person who opted out, objected to ad targeting or asked to be erased is *suppressed*: the
target removes them from every Customer List it keeps and never adds them again, in any run,
whichever stream or segment names them. This module keeps the set; sync/suppression.py does
the removing.

What is kept: hashes only. An email, MAID or IDFA is kept as the SHA-256 digest the target
sends (as 32 bytes), a hashed pinner id as its digest, and a LiveRamp or Datalogix id, which
is sent as given, as the SHA-256 of its type and value: never a raw identifier. Beside each
key: its kind (which lists it fits), whether its removal from the lists is still pending
(a run that stopped before every list confirmed it), the mark of the last mirror run that
named it, whether it is pinned (an erasure request: no mirror run lifts it), and when it
was suppressed.

Where: beside the snapshots, in the same store. SQLite: one file per ad account (and API
host, as the snapshots), `suppression-<account>.sqlite`, created private (mode 0600).
PostgreSQL (`snapshot_url`): one table, keyed by the ad account.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from target_pinterest_audiences.private_files import UnsafePath, ensure_private_file
from target_pinterest_audiences.store.snapshot import SnapshotError, SnapshotStore

#: The kinds of key, by the lists they fit: "hashed" (an email, MAID or IDFA digest: lists
#: of type EMAIL, MAID or IDFA), or an external id type (lists of that type).
KIND_CODES = {"hashed": 0, "HASHED_PINNER_ID": 1, "LR_ID": 2, "DLX_ID": 3}
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}
#: External id types sent as given (not digests): kept as the SHA-256 of "TYPE:value".
TEXT_ID_TYPES = frozenset({"LR_ID", "DLX_ID"})
#: Rows per statement when keys are written or read.
CHUNK = 5000

_TABLE = "pinterest_audience_suppression"
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} (ad_account_id TEXT NOT NULL, h {{blob}} NOT NULL, "
    "kind SMALLINT NOT NULL, pending SMALLINT NOT NULL, mark BIGINT, added_at TEXT NOT NULL, "
    "pinned SMALLINT NOT NULL DEFAULT 0, PRIMARY KEY (ad_account_id, h, kind))"
)


def suppression_key(identifier: str, external_id_type: str | None = None) -> str:
    """The key an identifier is kept under, as lowercase hex: the identifier itself when it
    is a digest (email, MAID, IDFA, hashed pinner id), else (an LR_ID or DLX_ID, given with
    its type) the SHA-256 of "TYPE:identifier"."""
    if external_id_type in TEXT_ID_TYPES:
        return hashlib.sha256(f"{external_id_type}:{identifier}".encode()).hexdigest()
    return identifier


def key_kind(kind: str, external_id_type: str | None) -> str:
    """The kind of key (KIND_CODES) of an identifier of `kind` (identifiers.py's kinds)."""
    if kind == "external":
        assert external_id_type is not None
        return external_id_type
    return "hashed"


class SuppressionSet:
    """The suppression set of one ad account in a snapshot store (SQLite file or PostgreSQL).

    `readonly`: nothing is created or written (a dry run, `forget --dry-run`); a missing
    SQLite file is an empty set.
    """

    def __init__(self, store: SnapshotStore, *, readonly: bool = False) -> None:
        self.account = store.ad_account_id
        self.readonly = readonly
        self.where = store.where
        self._conn: Any = None
        self._sqlite = not store.url
        if store.url:
            self._conn = store.connect()
            self._ensure_table()
            return
        path = store.directory / f"suppression-{store.account_file_name}.sqlite"
        self.path = path
        if readonly and not path.exists():
            return
        if not readonly:
            store.make_directory()
            _create_private(path)
        try:
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
            if not readonly:
                self._ensure_table()
            else:
                have = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
                ).fetchone()
                if have is None:
                    conn.close()
                    self._conn = None
        except sqlite3.DatabaseError as exc:
            raise SnapshotError(
                f"the suppression set {path} cannot be opened ({type(exc).__name__}: {exc}); "
                "restore it from a backup: without it, opted-out people are no longer kept out"
            ) from None

    # ---- SQL helpers -------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self._sqlite else statement.replace("?", "%s")

    def _exec(self, statement: str, params: Sequence[Any] = ()) -> Any:
        cursor = self._conn.cursor()
        cursor.execute(self._sql(statement), tuple(params))
        return cursor

    def _ensure_table(self) -> None:
        cursor = self._conn.cursor()
        if not self._sqlite:
            # CREATE TABLE IF NOT EXISTS races between sessions: serialize it (the
            # snapshot store's lock, for its own tables, is the same).
            cursor.execute("SELECT pg_advisory_xact_lock(7312649501)")
        cursor.execute(_DDL.format(blob="BLOB" if self._sqlite else "BYTEA"))
        self._conn.commit()

    def _count(self, where: str = "", params: Sequence[Any] = ()) -> int:
        if self._conn is None:
            return 0
        row = self._exec(
            f"SELECT COUNT(*) FROM {_TABLE} WHERE ad_account_id = ?{where}", (self.account, *params)
        ).fetchone()
        self._conn.rollback()
        return int(row[0])

    # ---- reading -----------------------------------------------------------------------

    def size(self) -> int:
        """How many identifiers are suppressed."""
        return self._count()

    def keys(self) -> set[str]:
        """Every key (lowercase hex), for the record flow's membership test."""
        return {key for key, _kind, _pending in self._rows()}

    def pinned_keys(self) -> set[str]:
        """The keys of erasure requests (`forget`): never lifted by a mirror run."""
        if self._conn is None:
            return set()
        rows = self._exec(
            f"SELECT h FROM {_TABLE} WHERE ad_account_id = ? AND pinned = 1", (self.account,)
        ).fetchall()
        self._conn.rollback()
        return {bytes(h).hex() for (h,) in rows}

    def pending(self) -> list[tuple[str, str]]:
        """(key, kind) of the identifiers whose removal from the lists is not confirmed yet."""
        return [(key, kind) for key, kind, _pending in self._rows(" AND pending = 1")]

    def _rows(self, where: str = "") -> Iterator[tuple[str, str, bool]]:
        if self._conn is None:
            return
        cursor = self._exec(
            f"SELECT h, kind, pending FROM {_TABLE} WHERE ad_account_id = ?{where}",
            (self.account,),
        )
        while True:
            rows = cursor.fetchmany(CHUNK)
            if not rows:
                break
            for h, kind, pending in rows:
                yield bytes(h).hex(), KIND_NAMES.get(int(kind), "hashed"), bool(pending)
        self._conn.rollback()

    # ---- writing -----------------------------------------------------------------------

    def add(
        self, entries: Iterable[tuple[str, str]], mark: int | None = None, *, pinned: bool = False
    ) -> int:
        """Suppress (key, kind) entries; returns how many were not suppressed before (their
        removal from the lists is pending until settle()). `mark`: a mirror run's mark,
        set on every entry named (see lift_unmarked). `pinned` (an erasure request, from
        `forget`): no suppression stream's mirror run lifts the entries, only lift() does."""
        self._writable()
        rows = [(bytes.fromhex(key), KIND_CODES[kind]) for key, kind in entries]
        if not rows:
            return 0
        before = self._count()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if pinned:
            on_conflict = "DO UPDATE SET pinned = 1"
        elif mark is not None:
            on_conflict = "DO UPDATE SET mark = excluded.mark"
        else:
            on_conflict = "DO NOTHING"
        statement = self._sql(
            f"INSERT INTO {_TABLE} (ad_account_id, h, kind, pending, mark, added_at, pinned) "
            f"VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (ad_account_id, h, kind) {on_conflict}"
        )
        flag = int(pinned)
        for i in range(0, len(rows), CHUNK):
            self._conn.cursor().executemany(
                statement,
                [(self.account, h, kind, mark, now, flag) for h, kind in rows[i : i + CHUNK]],
            )
        after = self._count_in_transaction()
        self._conn.commit()
        return after - before

    def _count_in_transaction(self) -> int:
        row = self._exec(
            f"SELECT COUNT(*) FROM {_TABLE} WHERE ad_account_id = ?", (self.account,)
        ).fetchone()
        return int(row[0])

    def settle(self, entries: Iterable[tuple[str, str]]) -> None:
        """Every list confirmed the removal of these (key, kind) entries."""
        self._writable()
        rows = [(self.account, bytes.fromhex(key), KIND_CODES[kind]) for key, kind in entries]
        for i in range(0, len(rows), CHUNK):
            self._conn.cursor().executemany(
                self._sql(
                    f"UPDATE {_TABLE} SET pending = 0 WHERE ad_account_id = ? AND h = ? "
                    "AND kind = ?"
                ),
                rows[i : i + CHUNK],
            )
        self._conn.commit()

    def lift(self, keys: Iterable[str]) -> int:
        """Take keys out of the set (every kind); returns how many entries went."""
        self._writable()
        rows = [(self.account, bytes.fromhex(key)) for key in keys]
        if not rows:
            return 0
        before = self._count()
        for i in range(0, len(rows), CHUNK):
            self._conn.cursor().executemany(
                self._sql(f"DELETE FROM {_TABLE} WHERE ad_account_id = ? AND h = ?"),
                rows[i : i + CHUNK],
            )
        after = self._count_in_transaction()
        self._conn.commit()
        return before - after

    def unmarked(self, mark: int) -> int:
        """How many entries a mirror run with this mark did not name (it would lift them);
        pinned entries (erasure requests) are never counted."""
        return self._count(" AND pinned = 0 AND (mark IS NULL OR mark <> ?)", (mark,))

    def marked(self, mark: int) -> int:
        """How many entries a mirror run with this mark named."""
        return self._count(" AND mark = ?", (mark,))

    def lift_unmarked(self, mark: int) -> int:
        """Mirror mode: the run named the whole set (but the pinned entries); lift every
        entry it did not name."""
        self._writable()
        cursor = self._exec(
            f"DELETE FROM {_TABLE} WHERE ad_account_id = ? AND pinned = 0 AND "
            "(mark IS NULL OR mark <> ?)",
            (self.account, mark),
        )
        lifted = int(cursor.rowcount)
        self._conn.commit()
        return lifted

    def _writable(self) -> None:
        if self.readonly:
            raise SnapshotError("the suppression set was opened read-only")  # a bug if seen

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def _create_private(path: os.PathLike[str]) -> None:
    """Create the file 0600 before SQLite opens it, or check and tighten it: the rules of
    every file the target keeps (private_files.py)."""
    try:
        ensure_private_file(Path(path), "the suppression set")
    except UnsafePath as exc:
        raise SnapshotError(str(exc)) from None
    except OSError as exc:
        raise SnapshotError(
            f"cannot create the suppression set {path} ({exc.strerror}); set snapshot_path to "
            "a writable directory"
        ) from None
