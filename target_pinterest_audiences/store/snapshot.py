"""The snapshot: which identifiers Pinterest confirmed as members of each Customer List.

Pinterest keeps only the matched accounts of a list and deletes the uploaded records after
matching, so nobody, not even Pinterest, can say which identifiers a list holds. To sync a
list by difference (mirror mode) the target keeps its own record, per ad account and
Customer List: every identifier Pinterest confirmed as added and not later removed. It is
changed only by confirmed writes, in both sync modes.

Crash safety: before a write is sent its identifiers are journaled (one row per request);
when Pinterest confirms it, what changed is appended to the change log and the journal row
goes, in one transaction. A journal row found when a snapshot is opened belongs to a write
whose answer was lost (a kill, a crash): its identifiers become *in doubt*, kept but never
claimed as members, so the next mirror run sends them again with the action the source
asks for.

Speed (issue 18): identifiers are stored as their bytes (a SHA-256 digest in 32 bytes), and
a request's identifiers as packed blobs, never one row each: the journal holds one blob per
request, the change log a few rows per confirmed request (CHANGE_ROW_KEYS digests each, small
enough to stay inside a database page), and the confirmed members up to PACKED_ROW_MAX to a
row in key order (about 37 bytes of disk per member; a row each took 45). The change log is
merged into the members (its latest state per identifier sorted by the database, each packed
row it touches found by a seek there and rewritten) only when a reader needs the merged
members (a mirror run's plan, a count, `status`, a dry run), or by the writer thread of a run
that finds a big log left by earlier runs (`merge_if_due`), never when an events run closes.
Writing each identifier into the members as it is confirmed would cost a random B-tree write
per identifier, several times the cost of the whole record path.

Where: SQLite files (the default, one per ad account and list, under `snapshot_path`) or
one PostgreSQL database (`snapshot_url`, a SQLAlchemy URL). The same SQL serves both
through DB-API connections. Locks keep two runs off one list: a file lock (flock) beside
the SQLite files, a session advisory lock in PostgreSQL; both die with the process.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import heapq
import itertools
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.private_files import (
    UnsafePath,
    check_own_directory,
    ensure_private_file,
    make_private_dirs,
    open_private,
)
from target_pinterest_audiences.urls import mask_url

try:  # POSIX only; elsewhere runs are not locked against each other (said in a warning).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: List types whose identifiers are sent as given (not hex digests): kept as UTF-8 text.
TEXT_KEY_LIST_TYPES = frozenset({"LR_ID", "DLX_ID"})
#: Members per page when the snapshot is read in key order.
PAGE_SIZE = 5000

_LISTS = "pinterest_audience_snapshot_lists"
#: Identifiers in doubt (confirmed = 0). Stores made before the members were packed kept
#: every member here, a row each (confirmed = 1): those rows move to the packed members when
#: their list is opened (see Snapshot._migrate_members).
_MEMBERS = "pinterest_audience_snapshot_members"
#: The confirmed members, packed: a row holds up to PACKED_ROW_MAX identifiers of one width,
#: in key order, the first as the row's key `lo` and the others end to end in `keys` (width
#: 0: one identifier of any length, alone in its row). Rows never overlap: a row holds the
#: members from its `lo` up to the next row's. One row per identifier cost 45 bytes of disk
#: per member (40-byte rows in pages about 88% full); packed, about 37 (issue 18).
_PACKED = "pinterest_audience_snapshot_packed"
#: Identifiers per packed row when rows are written afresh, and the most one holds before it
#: is cut into rows of PACKED_ROW_KEYS: a row takes the adds that land in its range without
#: moving to another page (measured: 8 and 16 keep 1M members at 36.6 bytes each through
#: rounds of 1% churn; 16 and 32 grew from 36.6 to 40.8).
PACKED_ROW_KEYS = 8
PACKED_ROW_MAX = 16
#: A rewritten row left with fewer members than this takes in the next row (removals must
#: not leave a list of near-empty rows).
PACKED_ROW_MIN = 4
_JOURNAL = "pinterest_audience_snapshot_journal"
#: The change log: confirmed changes not yet merged into the members, packed.
_CHANGES = "pinterest_audience_snapshot_changes"
#: The change log of releases before issue 18 (one row per identifier): merged into the
#: members and emptied (SQLite: dropped) when a store is opened (see _migrate_old_log).
_OLD_LOG = "pinterest_audience_snapshot_log"
#: Names of PostgreSQL server-side cursors (a query read a page at a time).
_CURSOR_NAMES = itertools.count()
#: Rows written or deleted per batch when packed members are rewritten.
_PACKED_BATCH = 5000
#: Packed rows deleted per statement (one parameter each).
_DELETES_PER_STATEMENT = 500
#: Identifiers per change-log row: 32 SHA-256 digests are 1 KB, inside one page of SQLite
#: and under PostgreSQL's TOAST threshold, so unpacking a row never reads overflow pages.
CHANGE_ROW_KEYS = 32
#: The numbers 0..CHANGE_ROW_KEYS-1 as a table expression: the positions in a packed row.
ROW_POSITIONS_SQL = (
    "nums (n) AS (VALUES " + ", ".join(f"({i})" for i in range(CHANGE_ROW_KEYS)) + ")"
)
#: Journal entries whose encoded identifiers are kept for their confirmation (a few more
#: than the writes in flight at once).
KEEP_ENCODED = 16
#: Values per multi-row INSERT statement (1,000 change-log rows of 4; SQLite takes 32,766
#: parameters since 3.32, PostgreSQL 65,535).
APPEND_VALUES_PER_STATEMENT = 4000
#: A run's writer thread merges the change log when earlier runs left at least this many
#: identifiers in it (see merge_if_due): a log that cannot grow without bound in a pipeline
#: of events runs only, merged in one ordered sweep of the members' B-tree per 2 million
#: changes or so. A run never merges its own writes while it reads: measured, a 2M-record
#: events run that merged them mid-run took 20.1 s against 15.3 s (they compete for the
#: two cores with the reader); merging every 250,000 made a 1M run 11.2 s against 10.5 s.
MERGE_MIN_KEYS = 2_000_000
#: PostgreSQL: lists being created (SQLite stores keep a file per create instead).
_CREATES = "pinterest_audience_snapshot_creates"
#: First line of a SQLite store's create file: when its create has landed or never will.
_SETTLE_PREFIX = "settle_until "
#: Prefix of a journal row's op once a later run took its identifiers as in doubt; the row
#: is kept only while its write may still land (for the wait), never taken as in doubt again.
_RECOVERED = "recovered "
#: The op of a kept row whose identifiers an attempt of either action may still reach.
_EITHER = "ADD or REMOVE"
#: States in the log: confirmed member, confirmed gone, in doubt (may or may not be in).
MEMBER, GONE, IN_DOUBT = 1, 0, 2

_SQLITE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {_LISTS} (list_key INTEGER PRIMARY KEY, ad_account_id TEXT "
    "NOT NULL, list_id TEXT NOT NULL, list_type TEXT, created_at TEXT NOT NULL, "
    "list_created_time TEXT, "
    "UNIQUE (ad_account_id, list_id))",
    f"CREATE TABLE IF NOT EXISTS {_MEMBERS} (list_key INTEGER NOT NULL, h BLOB NOT NULL, "
    "confirmed INTEGER NOT NULL, PRIMARY KEY (list_key, h)) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {_PACKED} (list_key INTEGER NOT NULL, lo BLOB NOT NULL, "
    "width INTEGER NOT NULL, keys BLOB NOT NULL, PRIMARY KEY (list_key, lo)) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS {_JOURNAL} (entry INTEGER PRIMARY KEY, list_key INTEGER NOT "
    "NULL, op TEXT NOT NULL, records TEXT NOT NULL, settle_until REAL, keys BLOB)",
    f"CREATE TABLE IF NOT EXISTS {_CHANGES} (seq INTEGER PRIMARY KEY, list_key INTEGER NOT "
    "NULL, state INTEGER NOT NULL, width INTEGER NOT NULL, keys BLOB NOT NULL)",
)
_POSTGRES_DDL = (
    f"CREATE TABLE IF NOT EXISTS {_LISTS} (list_key BIGSERIAL PRIMARY KEY, ad_account_id TEXT "
    "NOT NULL, list_id TEXT NOT NULL, list_type TEXT, created_at TEXT NOT NULL, "
    "list_created_time TEXT, "
    "UNIQUE (ad_account_id, list_id))",
    f"CREATE TABLE IF NOT EXISTS {_MEMBERS} (list_key BIGINT NOT NULL, h BYTEA NOT NULL, "
    "confirmed SMALLINT NOT NULL, PRIMARY KEY (list_key, h))",
    f"CREATE TABLE IF NOT EXISTS {_PACKED} (list_key BIGINT NOT NULL, lo BYTEA NOT NULL, "
    "width SMALLINT NOT NULL, keys BYTEA NOT NULL, PRIMARY KEY (list_key, lo))",
    f"CREATE TABLE IF NOT EXISTS {_JOURNAL} (entry BIGSERIAL PRIMARY KEY, list_key BIGINT NOT "
    "NULL, op TEXT NOT NULL, records TEXT NOT NULL, settle_until DOUBLE PRECISION, keys BYTEA)",
    f"CREATE TABLE IF NOT EXISTS {_CHANGES} (seq BIGSERIAL PRIMARY KEY, list_key BIGINT NOT "
    "NULL, state SMALLINT NOT NULL, width SMALLINT NOT NULL, keys BYTEA NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {_CREATES} (ad_account_id TEXT NOT NULL, name TEXT NOT NULL, "
    "records TEXT NOT NULL, settle_until DOUBLE PRECISION, PRIMARY KEY (ad_account_id, name))",
)
#: Columns added after the first stores were made: (table, column, SQLite type, PostgreSQL
#: type; None: the table is not in SQLite stores). Added where missing, and only there: in
#: PostgreSQL an ALTER needs the table's owner and an exclusive lock, even a no-op one.
_ADDED_COLUMNS = (
    (_LISTS, "list_created_time", "TEXT", "TEXT"),
    (_JOURNAL, "settle_until", "REAL", "DOUBLE PRECISION"),
    (_CREATES, "settle_until", None, "DOUBLE PRECISION"),
    # Issue 18: a journal row's identifiers packed (pack_keys); `records` stays '' then.
    (_JOURNAL, "keys", "BLOB", "BYTEA"),
)
#: Longest wait for writes left in flight by a run that stopped (a clock that jumped must
#: not hold a run for hours).
MAX_SETTLE_WAIT_SECONDS = 900.0


class SnapshotError(TargetError):
    """The snapshot store cannot be used; the message says which store and what to do."""


class SnapshotBusy(SnapshotError):
    """Another run holds the lock of this audience or list."""


def default_snapshot_dir() -> Path:
    """Under $XDG_STATE_HOME (else ~/.local/state): state the user keeps, not a cache."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "target-pinterest-audiences"


def describe_url(url: str) -> str:
    """A store URL for logs: no password nor other secret is ever shown (urls.mask_url)."""
    return mask_url(url)


class KeyCodec:
    """Identifiers as stored: hex digests as their bytes (half the size), others as UTF-8."""

    def __init__(self, list_type: str | None) -> None:
        self.text = list_type in TEXT_KEY_LIST_TYPES
        self.encode: Callable[[str], bytes] = str.encode if self.text else bytes.fromhex
        self.decode: Callable[[bytes], str] = bytes.decode if self.text else bytes.hex

    def accepts(self, key: str) -> bool:
        """Whether `key` can be stored: any text, or, for digests, lowercase hex pairs."""
        return self.text or _HEX_KEY.fullmatch(key) is not None

    def encode_all(self, keys: Sequence[str]) -> tuple[int, bytes] | list[bytes]:
        """Many keys at once: (width, their bytes end to end) when they are all SHA-256 hex
        digests (one C call, the common case), else the list of each key's bytes."""
        if not self.text and keys:
            joined = "".join(keys)
            if len(joined) == 64 * len(keys) and max(map(len, keys)) == 64:
                return 32, bytes.fromhex(joined)
        return [self.encode(key) for key in keys]

    def pack(
        self, keys: Sequence[str], encoded: tuple[int, bytes] | list[bytes] | None = None
    ) -> bytes:
        """Keys as one blob (a journal row): see pack_keys. `encoded`: encode_all(keys)."""
        if encoded is None:
            encoded = self.encode_all(keys)
        if isinstance(encoded, tuple):
            return bytes((encoded[0],)) + encoded[1]
        return pack_keys(encoded)

    def unpack(self, blob: bytes) -> list[str]:
        return [self.decode(key) for key in unpack_keys(blob)]

    def change_rows(self, keys: Sequence[str]) -> list[tuple[int, bytes]]:
        """Keys as change-log rows (width, packed keys): CHANGE_ROW_KEYS keys of one width
        end to end per row; width 0 holds one key of any length (an external id)."""
        return self.rows_of(self.encode_all(keys))

    def rows_of(self, encoded: tuple[int, bytes] | list[bytes]) -> list[tuple[int, bytes]]:
        """Change-log rows of keys already encoded (encode_all): see change_rows."""
        if isinstance(encoded, tuple):
            width, blob = encoded
            step = width * CHANGE_ROW_KEYS
            return [(width, blob[i : i + step]) for i in range(0, len(blob), step)]
        by_width: dict[int, list[bytes]] = {}
        rows: list[tuple[int, bytes]] = []
        for key in encoded:
            if self.text or not 0 < len(key) < 256:
                rows.append((0, key))
            else:
                by_width.setdefault(len(key), []).append(key)
        for width, same in by_width.items():
            for i in range(0, len(same), CHANGE_ROW_KEYS):
                rows.append((width, b"".join(same[i : i + CHANGE_ROW_KEYS])))
        return rows


def pack_keys(keys: Sequence[bytes]) -> bytes:
    """Stored keys as one blob. First byte: w >= 2, every key is w bytes, end to end; 1,
    each key after its length in 2 bytes (big-endian)."""
    if keys:
        width = len(keys[0])
        if 2 <= width < 256 and all(len(key) == width for key in keys):
            return bytes((width,)) + b"".join(keys)
    return b"\x01" + b"".join(len(key).to_bytes(2, "big") + key for key in keys)


def unpack_keys(blob: bytes) -> list[bytes]:
    """The keys of a pack_keys blob, in order."""
    blob = bytes(blob)
    if not blob:
        return []
    width = blob[0]
    if width >= 2:
        return [blob[i : i + width] for i in range(1, len(blob), width)]
    keys, i = [], 1
    while i < len(blob):
        size = int.from_bytes(blob[i : i + 2], "big")
        keys.append(blob[i + 2 : i + 2 + size])
        i += 2 + size
    return keys


_HEX_KEY = re.compile(r"(?:[0-9a-f]{2})+")
#: A Pinterest id: digits only (it names the list's snapshot file).
_LIST_ID = re.compile(r"[0-9]{1,20}")
#: SQL of a change-log row (with a position n from ROW_POSITIONS_SQL): its key at n, and how many
#: keys it holds (width 0: one key, the whole blob).
ROW_KEY_SQL = "CASE width WHEN 0 THEN keys ELSE substr(keys, 1 + width * n, width) END"
ROW_SIZE_SQL = "CASE width WHEN 0 THEN 1 ELSE length(keys) / width END"
#: Positions 0..PACKED_ROW_MAX-2 in a packed row's `keys`, as a subquery of column n.
_PACKED_POSITIONS = (
    "(SELECT column1 AS n FROM (VALUES "
    + ", ".join(f"({i})" for i in range(PACKED_ROW_MAX - 1))
    + "))"
)


def confirmed_keys_sql(schema: str, list_key: int) -> str:
    """SQL (SQLite) of the confirmed members of a list, column h, in no order: for a reader
    of the members in SQL (a mirror run's plan), `schema` naming the attached store."""
    table, key = f"{schema}{_PACKED}", int(list_key)
    return (
        f"SELECT h FROM (SELECT lo AS h FROM {table} WHERE list_key = {key} UNION ALL "
        f"SELECT substr(keys, 1 + width * n, width) FROM {table} CROSS JOIN {_PACKED_POSITIONS} "
        f"WHERE list_key = {key} AND width > 0 AND n < length(keys) / width)"
    )


def doubtful_keys_sql(schema: str, list_key: int) -> str:
    """SQL of the identifiers in doubt of a list, column h, in key order."""
    return f"SELECT h FROM {schema}{_MEMBERS} WHERE list_key = {int(list_key)} AND confirmed = 0"


def confirmed_count_sql(schema: str, list_key: int) -> str:
    """SQL of the number of confirmed members of a list (one pass over its packed rows)."""
    return (
        f"SELECT COALESCE(SUM(1 + CASE width WHEN 0 THEN 0 ELSE length(keys) / width END), 0) "
        f"FROM {schema}{_PACKED} WHERE list_key = {int(list_key)}"
    )


def is_confirmed_sql(schema: str, list_key: int, key: str) -> str:
    """SQL condition (SQLite): the identifier `key` (an SQL expression) is a confirmed member,
    found by one seek to the packed row whose range holds it."""
    table = f"{schema}{_PACKED}"
    return (
        f"EXISTS (SELECT 1 FROM (SELECT lo, width, keys FROM {table} WHERE list_key = "
        f"{int(list_key)} AND lo <= {key} ORDER BY lo DESC LIMIT 1) AS row WHERE row.lo = {key} "
        f"OR (row.width > 0 AND EXISTS (SELECT 1 FROM {_PACKED_POSITIONS} WHERE n < "
        f"length(row.keys) / row.width AND substr(row.keys, 1 + row.width * n, row.width) = "
        f"{key})))"
    )


def packed_rows(keys: Sequence[bytes]) -> list[tuple[bytes, int, bytes]]:
    """Packed-member rows (lo, width, keys) of keys in key order, up to PACKED_ROW_MAX each:
    keys of one width together; a key of no usable width (empty, 256 bytes or more) alone
    (width 0)."""
    rows: list[tuple[bytes, int, bytes]] = []
    i, n = 0, len(keys)
    while i < n:
        lo = keys[i]
        width = len(lo)
        if not 0 < width < 256:
            rows.append((lo, 0, b""))
            i += 1
            continue
        j = i + 1
        while j < n and j - i < PACKED_ROW_MAX and len(keys[j]) == width:
            j += 1
        rows.append((lo, width, b"".join(keys[i + 1 : j])))
        i = j
    return rows


def unpacked(lo: bytes, width: int, keys: bytes) -> list[bytes]:
    """The identifiers of one packed-member row, in key order."""
    lo, keys = bytes(lo), bytes(keys)
    if not width:
        return [lo]
    return [lo] + [keys[i : i + width] for i in range(0, len(keys), width)]


#: The API whose lists need no qualifier in the store (every other one is named).
PINTEREST_API_HOST = "api.pinterest.com"


def account_key(ad_account_id: str, api_url: str | None) -> str:
    """Whose lists: the ad account, qualified by the API host unless it is Pinterest's.

    List ids are unique per Pinterest, not across APIs: a local emulator hands out the same
    ids again after a restart, and two emulators run side by side. Qualified, their
    snapshots and locks never meet each other's or Pinterest's.
    """
    host = urllib.parse.urlsplit(api_url or "").netloc.lower()
    if not host or host == PINTEREST_API_HOST:
        return ad_account_id
    return f"{ad_account_id}@{host}"


class SnapshotStore:
    """Where the snapshots of one ad account live; hands out one Snapshot per list."""

    def __init__(
        self,
        *,
        ad_account_id: str,
        logger: logging.Logger,
        directory: str | Path | None = None,
        url: str | None = None,
        api_url: str | None = None,
    ) -> None:
        #: The ad account as the store names it (see account_key).
        self.ad_account_id = account_key(ad_account_id, api_url)
        self.logger = logger
        self.url = url or None
        self.directory = Path(directory).expanduser() if directory else default_snapshot_dir()
        self._lock_files: list[int] = []
        #: Names of the locks this store holds (a second lock() of one is a no-op).
        self._held: set[str] = set()
        self._pg_lock_conn: Any = None
        self._pg_engine: Any = None
        self._pg_ready = False

    @property
    def where(self) -> str:
        return describe_url(self.url) if self.url else str(self.directory)

    # ---- locks -----------------------------------------------------------------------

    def lock(self, name: str, what: str) -> None:
        """Hold an exclusive lock named `name` until the process ends, or raise SnapshotBusy.

        `what` says in the error which thing is busy (an audience, a Customer List).
        """
        if name in self._held:
            return  # this process holds it already (a flock on a second fd would refuse)
        busy = SnapshotBusy(
            f"another run is syncing {what} of ad account {self.ad_account_id} right now (its "
            f"lock is held in the snapshot store {self.where}); two runs on one list at once "
            "would corrupt its snapshot. Wait for the other run to finish, then run again"
        )
        if self.url:
            if not self._pg_try_lock(name):
                raise busy
            self._held.add(name)
            return
        if fcntl is None:  # pragma: no cover - Windows
            self.logger.warning("No file locks on this system: parallel runs are not prevented")
            return
        self._make_directory()
        path = self.directory / f"{self._file_stem(name)}.lock"
        try:
            fd = open_private(path, os.O_RDWR | os.O_CREAT, "the snapshot lock file")
        except UnsafePath as exc:
            raise SnapshotError(str(exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise busy from None
        self._lock_files.append(fd)
        self._held.add(name)

    def _file_stem(self, name: str) -> str:
        """A file name for a lock or a list: readable, safe, and unique per name."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        return f"{self.ad_account_id}-{safe}-{digest}"

    def _make_directory(self) -> None:
        try:
            make_private_dirs(self.directory)
            check_own_directory(self.directory, "the snapshot directory")
        except UnsafePath as exc:
            raise SnapshotError(f"{exc} (setting snapshot_path)") from None
        except OSError as exc:
            raise SnapshotError(
                f"cannot create the snapshot directory {self.directory} ({type(exc).__name__}); "
                "set snapshot_path to a writable directory, or snapshot_url to a PostgreSQL "
                "database"
            ) from None

    # ---- lists being created ----------------------------------------------------------

    def begin_create(self, name: str, records: Sequence[str], settle_until: float) -> None:
        """Before a list is created with `records` (and again before each new attempt):
        remember them, durably, by the list's name (it has no id yet), with the time
        (time.time()) by which an attempt sent now has landed or never will. If the answer
        is lost (a kill), the next run waits for that time before creating the list again,
        and the run that adopts the list by name takes the records as in doubt."""
        text = ",".join(records)
        if self.url:
            conn = self._pg_connect()
            try:
                if not self._pg_ready:
                    self._pg_ensure_tables(conn)
                conn.cursor().execute(
                    f"INSERT INTO {_CREATES} (ad_account_id, name, records, settle_until) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (ad_account_id, name) DO UPDATE SET "
                    "records = excluded.records, settle_until = excluded.settle_until",
                    (self.ad_account_id, name, text, settle_until),
                )
                conn.commit()
            finally:
                conn.close()
            return
        self._make_directory()
        path = self._create_path(name)
        fd, tmp = tempfile.mkstemp(prefix=".creating-", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"{_SETTLE_PREFIX}{settle_until!r}\n{text}")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def pending_create(self, name: str) -> list[str]:
        """The records of a create of this name whose outcome was never recorded."""
        return self._pending_create(name)[0]

    def pending_create_settles(self, name: str) -> float:
        """When (time.time()) a create of this name left unanswered by a run that stopped has
        landed or never will; 0 when there is none."""
        records, settle_until = self._pending_create(name)
        return settle_until if records else 0.0

    def _pending_create(self, name: str) -> tuple[list[str], float]:
        settle_until: Any = None
        if self.url:
            conn = self._pg_connect()
            try:
                if not self._pg_ready:
                    self._pg_ensure_tables(conn)
                cursor = conn.cursor()
                cursor.execute(
                    f"SELECT records, settle_until FROM {_CREATES} WHERE ad_account_id = %s "
                    "AND name = %s",
                    (self.ad_account_id, name),
                )
                row = cursor.fetchone()
                conn.rollback()
            finally:
                conn.close()
            text, settle_until = row if row else ("", None)
        else:
            try:
                text = self._create_path(name).read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            if text.startswith(_SETTLE_PREFIX):
                first, _, text = text.partition("\n")
                with contextlib.suppress(ValueError):
                    settle_until = float(first[len(_SETTLE_PREFIX) :])
        return [h for h in text.split(",") if h], float(settle_until or 0.0)

    def end_create(self, name: str) -> None:
        """The create's records are now known to the list's snapshot."""
        if self.url:
            conn = self._pg_connect()
            try:
                conn.cursor().execute(
                    f"DELETE FROM {_CREATES} WHERE ad_account_id = %s AND name = %s",
                    (self.ad_account_id, name),
                )
                conn.commit()
            finally:
                conn.close()
            return
        self._create_path(name).unlink(missing_ok=True)

    def _create_path(self, name: str) -> Path:
        return self.directory / f"creating-{self._file_stem(name)}.txt"

    # ---- snapshots -------------------------------------------------------------------

    def list_ids(self) -> list[str]:
        """The ids of every list this store keeps a snapshot of for its ad account."""
        if self.url:
            conn = self._pg_connect()
            try:
                if not self._pg_ready:
                    self._pg_ensure_tables(conn)
                cur = conn.cursor()
                cur.execute(
                    f"SELECT list_id FROM {_LISTS} WHERE ad_account_id = %s",
                    (self.ad_account_id,),
                )
                ids = [str(row[0]) for row in cur.fetchall()]
                conn.commit()
            finally:
                conn.close()
        else:
            prefix = f"snapshot-{self._sqlite_account()}-"
            ids = [
                path.name[len(prefix) : -len(".sqlite")]
                for path in self.directory.glob(f"{glob.escape(prefix)}*.sqlite")
            ]
        return sorted({i for i in ids if re.fullmatch(r"[0-9]{1,18}", i)}, key=int)

    def _sqlite_account(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.@-]+", "_", self.ad_account_id)

    def open(
        self,
        list_id: str,
        *,
        list_type: str | None = None,
        readonly: bool = False,
        new_list: bool = False,
        list_created_time: Any = None,
        recover: bool = False,
    ) -> Snapshot | None:
        """The snapshot of one list, created when missing (None if missing and readonly).

        A snapshot kept under this id for another list is dropped, never used: when this
        run has just created the list (`new_list`: it cannot have members yet), or when
        Pinterest's `created_time` of the list differs from the one recorded.
        """
        extra: dict[str, Any] = {
            "new_list": new_list,
            "list_created_time": None if list_created_time is None else str(list_created_time),
            "recover": recover or not readonly,
        }
        if self.url:
            conn, paramstyle = self._pg_connect(), "pyformat"
            if not self._pg_ready:
                self._pg_ensure_tables(conn)
        else:
            if not _LIST_ID.fullmatch(str(list_id)):
                raise SnapshotError(
                    f"Customer List id {str(list_id)[:40]!r} is not a Pinterest id (digits "
                    "only): it is never used in a file name"
                )
            path = self.directory / f"snapshot-{self._sqlite_account()}-{list_id}.sqlite"
            if readonly and not path.exists():
                return None
            self._make_directory()
            conn = _sqlite_connect(path)
            try:
                for statement in _SQLITE_DDL:
                    conn.execute(statement)
                for table, column, sqlite_type, _ in _ADDED_COLUMNS:
                    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                    if sqlite_type and column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sqlite_type}")
                old_log = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_OLD_LOG,)
                ).fetchone()
                if old_log:
                    _migrate_old_log(conn.cursor(), sqlite=True)
                conn.commit()
                # A damaged file shows here (recovery), or when the members are read
                # (see Snapshot._named), and is named.
                extra["path"] = path
                return self._snapshot(conn, "qmark", list_id, list_type, readonly, extra)
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(Exception):
                    conn.close()
                raise SnapshotError(_unreadable(path, exc)) from None
        return self._snapshot(conn, paramstyle, list_id, list_type, readonly, extra)

    @property
    def account_file_name(self) -> str:
        """The ad account as it appears in the store's file names."""
        return self._sqlite_account()

    def connect(self) -> Any:
        """A new DB-API connection to the PostgreSQL store (snapshot_url), its tables made."""
        conn = self._pg_connect()
        if not self._pg_ready:
            self._pg_ensure_tables(conn)
        return conn

    def make_directory(self) -> None:
        """Create the directory of a file store (mode 0700) if it is missing."""
        self._make_directory()

    def _snapshot(
        self,
        conn: Any,
        paramstyle: str,
        list_id: str,
        list_type: str | None,
        readonly: bool,
        extra: dict[str, Any],
    ) -> Snapshot:
        return Snapshot(
            conn,
            paramstyle=paramstyle,
            ad_account_id=self.ad_account_id,
            list_id=list_id,
            list_type=list_type,
            readonly=readonly,
            logger=self.logger,
            **extra,
        )

    def close(self) -> None:
        for fd in self._lock_files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lock_files.clear()
        self._held.clear()
        if self._pg_lock_conn is not None:
            with contextlib.suppress(Exception):
                self._pg_lock_conn.close()
            self._pg_lock_conn = None

    # ---- PostgreSQL ------------------------------------------------------------------

    def _pg_connect(self) -> Any:
        """A new DB-API connection from the SQLAlchemy URL (driver: psycopg by default)."""
        if self._pg_engine is None:
            try:
                import sqlalchemy
            except ImportError:  # pragma: no cover - singer-sdk brings it
                raise SnapshotError("snapshot_url needs SQLAlchemy") from None
            url = str(self.url)
            if url.startswith(("postgresql://", "postgres://")):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            if not url.startswith("postgresql"):
                raise SnapshotError(
                    f"snapshot_url {describe_url(url)}: only PostgreSQL is supported "
                    "(postgresql://user:password@host:5432/database)"
                )
            try:
                self._pg_engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
            except Exception as exc:
                raise SnapshotError(
                    f"snapshot_url {describe_url(url)} cannot be used ({type(exc).__name__}); "
                    "install the driver with: pip install 'target-pinterest-audiences[postgres]'"
                ) from None
        try:
            return self._pg_engine.raw_connection()
        except Exception as exc:
            raise SnapshotError(
                f"cannot connect to the snapshot database {self.where} ({type(exc).__name__}); "
                "check snapshot_url and that the database is reachable"
            ) from None

    def _pg_try_lock(self, name: str) -> bool:
        if self._pg_lock_conn is None:
            self._pg_lock_conn = self._pg_connect()
            self._pg_lock_conn.autocommit = True
        key = int.from_bytes(
            hashlib.sha256(f"{self.ad_account_id}:{name}".encode()).digest()[:8], "big", signed=True
        )
        cursor = self._pg_lock_conn.cursor()
        cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        (granted,) = cursor.fetchone()
        return bool(granted)

    def _pg_ensure_tables(self, conn: Any) -> None:
        cursor = conn.cursor()
        # CREATE TABLE IF NOT EXISTS races between sessions: serialize it.
        cursor.execute("SELECT pg_advisory_xact_lock(7312649501)")
        for statement in _POSTGRES_DDL:
            cursor.execute(statement)
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE "
            "table_schema = current_schema() AND table_name LIKE 'pinterest_audience_snapshot_%%'"
        )
        have = {(row[0], row[1]) for row in cursor.fetchall()}
        for table, column, _, postgres_type in _ADDED_COLUMNS:
            if (table, column) not in have:
                cursor.execute(
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {postgres_type}"
                )
        if any(table == _OLD_LOG for table, _ in have):
            cursor.execute(f"SELECT 1 FROM {_OLD_LOG} LIMIT 1")
            if cursor.fetchone():
                _migrate_old_log(cursor, sqlite=False)
        conn.commit()
        self._pg_ready = True


def _migrate_old_log(cursor: Any, *, sqlite: bool) -> None:
    """A store of a release before issue 18 may hold a change log of one row per identifier
    (`_OLD_LOG`): merged into the members, every list at once, then dropped (PostgreSQL:
    emptied, for a role that does not own the table may not drop it). The caller commits:
    the merge and the emptying are one transaction."""
    state = f"CASE state WHEN {MEMBER} THEN 1 WHEN {IN_DOUBT} THEN 0 ELSE -1 END"
    if sqlite:
        rows = f"SELECT list_key, h, {state} FROM {_OLD_LOG} WHERE true ORDER BY list_key, h, seq"
    else:
        rows = (
            f"SELECT list_key, h, confirmed FROM (SELECT DISTINCT ON (list_key, h) list_key, h, "
            f"{state} AS confirmed FROM {_OLD_LOG} ORDER BY list_key, h, seq DESC) AS latest "
            "WHERE true"
        )
    cursor.execute(
        f"INSERT INTO {_MEMBERS} (list_key, h, confirmed) {rows} "
        "ON CONFLICT (list_key, h) DO UPDATE SET confirmed = excluded.confirmed"
    )
    cursor.execute(f"DELETE FROM {_MEMBERS} WHERE confirmed = -1")
    cursor.execute(f"DROP TABLE {_OLD_LOG}" if sqlite else f"DELETE FROM {_OLD_LOG}")


def _unreadable(path: Path, exc: Exception) -> str:
    return (
        f"the snapshot file {path} cannot be opened ({exc.__class__.__name__}: {exc}); "
        "move it away to start a new snapshot (the next mirror run then removes nothing)"
    )


def _sqlite_connect(path: Path) -> Any:
    fresh = not path.exists()
    try:
        # Private before SQLite opens it (SQLite gives its -wal and -shm files the same mode).
        ensure_private_file(path, "the snapshot file")
        for side in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            if os.path.lexists(side):
                ensure_private_file(side, "the snapshot file")
    except UnsafePath as exc:
        raise SnapshotError(str(exc)) from None
    except OSError as exc:
        raise SnapshotError(_unreadable(path, exc)) from None
    try:
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        if fresh:
            # Before any table: lets close() return the pages the log used.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives the process being killed (not a power cut).
        conn.execute("PRAGMA synchronous=NORMAL")
        # A small page cache (SQLite's default is 2 MB): the journal and the change log are
        # appended, a merge writes the members in key order, a count scans them once. A full
        # default cache, filled only by the writes of a large run, made peak RSS grow with
        # the input (issue 18: mirror runs of 200,000 and 2M members).
        conn.execute("PRAGMA cache_size=-512")
        return conn
    except sqlite3.Error as exc:
        raise SnapshotError(_unreadable(path, exc)) from None


class Snapshot:
    """The confirmed members of one Customer List, and the journal of writes in flight.

    Thread-safe: the writer thread looks identifiers up while request threads confirm.
    """

    def __init__(
        self,
        conn: Any,
        *,
        paramstyle: str,
        ad_account_id: str,
        list_id: str,
        list_type: str | None,
        readonly: bool,
        logger: logging.Logger,
        new_list: bool = False,
        list_created_time: str | None = None,
        recover: bool = True,
        path: Path | None = None,
    ) -> None:
        self._conn = conn
        #: The SQLite file (None in PostgreSQL): named when it turns out to be damaged.
        self._path = path
        self._sqlite = paramstyle == "qmark"
        self._lock = threading.Lock()
        self.list_id = list_id
        self.readonly = readonly
        self.logger = logger
        with self._lock:
            row = self._one(
                f"SELECT list_key, list_type, list_created_time FROM {_LISTS} WHERE "
                "ad_account_id = ? AND list_id = ?",
                (ad_account_id, list_id),
            )
            if row is not None and (
                new_list
                or (list_created_time is not None and row[2] not in (None, list_created_time))
            ):
                # Another list had this id (a restarted emulator, a re-created account).
                if readonly:
                    row = None
                else:
                    self.logger.warning(
                        "The snapshot kept for Customer List %s belongs to an earlier list with "
                        "the same id; starting a new snapshot for it",
                        list_id,
                    )
                    self._drop(row[0])
                    self._conn.commit()
                    row = None
            #: Whether this list had a snapshot before this run.
            self.existed = row is not None
            if row is None and not readonly:
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self._exec(
                    f"INSERT INTO {_LISTS} (ad_account_id, list_id, list_type, created_at, "
                    "list_created_time) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (ad_account_id, list_id) DO NOTHING",
                    (ad_account_id, list_id, list_type, created, list_created_time),
                )
                row = self._one(
                    f"SELECT list_key, list_type, list_created_time FROM {_LISTS} WHERE "
                    "ad_account_id = ? AND list_id = ?",
                    (ad_account_id, list_id),
                )
                self._conn.commit()
            elif row is not None and row[2] is None and list_created_time and not readonly:
                self._exec(
                    f"UPDATE {_LISTS} SET list_created_time = ? WHERE list_key = ?",
                    (list_created_time, row[0]),
                )
                self._conn.commit()
            self._key: int = row[0] if row else -1
            #: The list type the list was created with, when this store knows it.
            self.list_type: str | None = (row[1] if row else None) or list_type
            self._codec = KeyCodec(self.list_type)
            #: When (time.time()) the writes a dead run left unanswered have landed or
            #: never will (0: none may still land), and per identifier until when an ADD
            #: and until when a REMOVE of it may still land. Until then the opposite action
            #: may not be sent: the late write would undo it (see must_wait_before).
            self.settle_until = 0.0
            self.landing: dict[str, tuple[float, float]] = {}
            #: Per journal entry of this run: the settle time stored for it.
            self._settles: dict[int, float] = {}
            #: How many times the merged members changed (a merge of the change log, a move
            #: of members kept a row each): a copy made of them is stale once it differs.
            self.generation = 0
            #: Per journal entry in flight: its identifiers and encode_all() of them, for
            #: confirm() (at most KEEP_ENCODED, the oldest dropped).
            self._encoded: dict[int, tuple[Sequence[str], tuple[int, bytes] | list[bytes]]] = {}
            if self.existed:
                self._migrate_members()
            #: Identifiers earlier runs left in the change log (merge_if_due): 0 once merged.
            self._backlog = self._logged() if self._key >= 0 else 0
            # Writes left unanswered by a run that died are in doubt: a dry run must see
            # them too (it reports the difference the real run would make).
            self.in_doubt_recovered = self._recover() if recover and self._key >= 0 else 0
            if self._backlog and readonly:
                self._compact()  # a dry run's counts and plan read merged members

    def unreadable(self, exc: Exception) -> SnapshotError:
        """The error of a damaged snapshot file (found by a reader on another connection),
        naming the file and what to do."""
        return SnapshotError(_unreadable(self._path, exc) if self._path else str(exc))

    def holds_confirmed(self) -> bool:
        """Whether any identifier is a confirmed member now (the change log merged first):
        one row read, not a count (a mirror run asks before its first write)."""
        if self._key < 0:
            return False
        with self._lock, self._named():
            self._compact()  # one read when the log is empty
            row = self._one(f"SELECT 1 FROM {_PACKED} WHERE list_key = ? LIMIT 1", (self._key,))
        return row is not None

    # ---- SQL helpers (callers hold self._lock) ---------------------------------------

    def _drop(self, list_key: int) -> None:
        for table in (_PACKED, _MEMBERS, _CHANGES, _JOURNAL, _LISTS):
            self._exec(f"DELETE FROM {table} WHERE list_key = ?", (list_key,))

    def _sql(self, statement: str) -> str:
        return statement if self._sqlite else statement.replace("?", "%s")

    def _exec(self, statement: str, params: Sequence[Any] = ()) -> Any:
        cursor = self._conn.cursor()
        cursor.execute(self._sql(statement), tuple(params))
        return cursor

    def _one(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._exec(statement, params).fetchone()

    def _stream(self, statement: str, params: Sequence[Any] = ()) -> Iterator[Any]:
        """A query's rows, fetched a page at a time. PostgreSQL: through a server-side cursor,
        for a client-side one holds every row in memory (a merge may read millions)."""
        if self._sqlite:
            cursor = self._conn.cursor()
        else:
            cursor = self._conn.cursor(name=f"pinterest_snapshot_{next(_CURSOR_NAMES)}")
        try:
            cursor.execute(self._sql(statement), tuple(params))
            while True:
                rows = cursor.fetchmany(PAGE_SIZE)
                if not rows:
                    return
                yield from rows
        finally:
            cursor.close()

    def _insert_values(
        self, table: str, columns: str, rows: Sequence[Sequence[Any]], suffix: str = ""
    ) -> None:
        """Rows inserted many per statement: executemany runs a statement per row, and each
        one lets go of Python's lock and waits to get it back from the thread reading the
        input."""
        if not rows:
            return
        marks = "(" + ", ".join(["?"] * len(rows[0])) + ")"
        per_statement = max(1, APPEND_VALUES_PER_STATEMENT // len(rows[0]))
        for start in range(0, len(rows), per_statement):
            part = rows[start : start + per_statement]
            values = ", ".join([marks] * len(part))
            self._exec(
                f"INSERT INTO {table} ({columns}) VALUES {values}{suffix}",
                [value for row in part for value in row],
            )

    def _count_merged(self) -> int:
        """Confirmed members in the packed members (the change log not merged: see count)."""
        if self._key < 0:
            return 0
        return int(self._one(confirmed_count_sql("", self._key))[0])

    def _logged(self) -> int:
        """Identifiers in the change log of this list."""
        row = self._one(
            f"SELECT COALESCE(SUM({ROW_SIZE_SQL}), 0) FROM {_CHANGES} WHERE list_key = ?",
            (self._key,),
        )
        return int(row[0])

    def _recover(self) -> int:
        """Journal rows left by a run that died: their identifiers are now in doubt, and
        `settle_until` says until when one of those writes may still land."""
        entries = self._exec(
            f"SELECT entry, op, records, settle_until, keys FROM {_JOURNAL} WHERE list_key = ?",
            (self._key,),
        ).fetchall()
        doubtful = 0
        now = time.time()
        for entry, op, records, settle_until, keys in entries:
            # A row of an earlier release holds its identifiers as comma-joined text.
            hashes = self._codec.unpack(keys) if keys else [h for h in records.split(",") if h]
            seen_before = op.startswith(_RECOVERED)
            action = op[len(_RECOVERED) :] if seen_before else op
            if not seen_before:
                # Once: later confirmed writes must be able to settle these again.
                self._append(hashes, IN_DOUBT)
                doubtful += len(hashes)
            if float(settle_until or 0.0) > now:
                # May still land: remember what it does, and keep the row until it cannot
                # (a dry run, or a run that stops first, must not take the wait away from
                # the next run).
                until = float(settle_until)
                self.settle_until = max(self.settle_until, until)
                add = until if action in ("ADD", _EITHER) else 0.0
                remove = until if action in ("REMOVE", _EITHER) else 0.0
                landing = self.landing
                for digest in hashes:
                    was_add, was_remove = landing.get(digest, (0.0, 0.0))
                    landing[digest] = (max(was_add, add), max(was_remove, remove))
                if not seen_before:
                    self._exec(
                        f"UPDATE {_JOURNAL} SET op = ? WHERE entry = ?", (_RECOVERED + op, entry)
                    )
            else:
                self._exec(f"DELETE FROM {_JOURNAL} WHERE entry = ?", (entry,))
        self._conn.commit()
        if doubtful:
            self.logger.warning(
                "Customer List %s: %d identifiers were being written when an earlier run "
                "stopped without an answer; they are in doubt and will be sent again",
                self.list_id,
                doubtful,
            )
        return doubtful

    def _append(self, hashes: Sequence[str], state: int) -> None:
        if hashes:
            self._append_rows(self._codec.change_rows(hashes), state)

    def _append_rows(self, rows: list[tuple[int, bytes]], state: int) -> None:
        key = self._key
        self._insert_values(
            _CHANGES,
            "list_key, state, width, keys",
            [(key, state, width, blob) for width, blob in rows],
        )

    def _compact(self) -> None:
        """Merge the change log into the members, each identifier's latest state winning: a
        member goes into the packed rows, one in doubt into the doubt rows, one gone out of
        both. In one transaction, so a crash leaves either the log or its result, and so
        does an error: what was written is rolled back (else the next commit would keep it)."""
        if self._key < 0:
            return
        try:
            self._merge_log()
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            raise

    def _merge_log(self) -> None:
        key = self._key
        (last,) = self._one(f"SELECT MAX(seq) FROM {_CHANGES} WHERE list_key = ?", (key,))
        if last is None:
            return
        # Two integers of ours, inlined.
        where = f"list_key = {int(key)} AND seq <= {int(last)}"
        # Each row unpacked by position (CROSS JOIN: the row outside, so it is read once).
        unpacked_log = f"FROM {_CHANGES} CROSS JOIN nums WHERE {where} AND n < {ROW_SIZE_SQL}"
        if self._one(f"SELECT 1 FROM {_MEMBERS} WHERE list_key = ? LIMIT 1", (key,)):
            # No longer in doubt once the log settles it (the latest row may put it back).
            self._exec(
                f"WITH {ROW_POSITIONS_SQL} DELETE FROM {_MEMBERS} WHERE list_key = ? AND h IN "
                f"(SELECT {ROW_KEY_SQL} {unpacked_log} AND state != {IN_DOUBT})",
                (key,),
            )
        if self._sqlite:
            # Every row, in key order then log order: the last of each key is its latest
            # (kept by _latest). A GROUP BY with max(seq) took 4.4 s per million
            # identifiers against 1.2 s for this sort.
            latest = f"SELECT {ROW_KEY_SQL} AS h, state, seq {unpacked_log}"
            order = "c.h, c.seq"
        else:
            latest = (
                f"SELECT DISTINCT ON (h) h, state FROM (SELECT {ROW_KEY_SQL} AS h, seq, state "
                f"{unpacked_log}) AS log ORDER BY h, seq DESC"
            )
            order = "c.h"
        self._pack(f"WITH {ROW_POSITIONS_SQL}, latest AS ({latest})", "latest", order)
        self._exec(f"DELETE FROM {_CHANGES} WHERE {where}")
        self._conn.commit()
        self.generation += 1

    def _pack(self, with_: str, source: str, order: str) -> None:
        """Apply the states of `source`'s identifiers (columns h, state; sorted by `order`,
        each identifier's rows in log order: its last is its latest) to the members: a
        MEMBER into the packed rows, one IN_DOUBT into the doubt rows, any other out of the
        packed rows. A list with packed rows: each identifier joined to the row whose range
        holds it (found by a seek in the database, so that Python handles only the rows the
        identifiers touch), then merged; a list with none yet (a first run): filled."""
        key = int(self._key)  # an integer of ours, inlined
        doubtful: list[tuple[int, bytes, int]] = []

        def settle_doubt() -> None:
            conflict = " ON CONFLICT (list_key, h) DO NOTHING"
            self._insert_values(_MEMBERS, "list_key, h, confirmed", doubtful, conflict)
            doubtful.clear()

        def doubt(h: bytes) -> None:
            doubtful.append((key, bytes(h), 0))
            if len(doubtful) >= _PACKED_BATCH:
                settle_doubt()

        if self._one(f"SELECT 1 FROM {_PACKED} WHERE list_key = ? LIMIT 1", (key,)):
            rows = self._stream(
                f"{with_} SELECT c.h, c.state, p.lo, p.width, p.keys FROM {source} AS c "
                f"LEFT JOIN {_PACKED} AS p ON p.list_key = {key} AND p.lo = (SELECT lo FROM "
                f"{_PACKED} WHERE list_key = {key} AND lo <= c.h ORDER BY lo DESC LIMIT 1) "
                f"ORDER BY {order}"
            )
            self._merge_packed(self._latest(rows, doubt))
        else:
            rows = self._stream(f"{with_} SELECT c.h, c.state FROM {source} AS c ORDER BY {order}")
            self._fill_packed(self._latest(rows, doubt))
        settle_doubt()

    def _latest(self, rows: Iterable[Any], doubt: Callable[[bytes], None]) -> Iterator[Any]:
        """The last row of each identifier (rows in key order, each identifier's in log
        order); those in doubt also handed to `doubt`. Identifiers out of key order raise
        (they would be packed wrongly), and nothing is merged."""
        held = None
        for row in itertools.chain(rows, (None,)):
            if held is not None and (row is None or row[0] != held[0]):
                if row is not None and row[0] < held[0]:
                    raise self._out_of_order()
                if held[1] == IN_DOUBT:
                    doubt(held[0])
                yield held
            held = row

    def _fill_packed(self, changes: Iterable[Any]) -> None:
        """The packed rows of a list with none yet, from (identifier, state), in key order,
        each identifier once: the members, cut into rows of PACKED_ROW_KEYS. A lean loop: a
        first run of 10M members merges 10M identifiers here."""
        key = self._key
        members: list[bytes] = []

        def flush() -> None:
            rows: list[tuple[int, bytes, int, bytes]] = []
            for start in range(0, len(members), PACKED_ROW_KEYS):
                rows.extend(
                    (key, *r) for r in packed_rows(members[start : start + PACKED_ROW_KEYS])
                )
            self._insert_values(_PACKED, "list_key, lo, width, keys", rows)
            members.clear()

        for h, state in changes:
            if state == MEMBER:
                members.append(bytes(h))
                if len(members) >= PACKED_ROW_KEYS * _PACKED_BATCH:
                    flush()
        flush()

    def _out_of_order(self) -> SnapshotError:
        return SnapshotError(
            f"Customer List {self.list_id}: the snapshot's changes came out of key order, and "
            "were not merged (nothing was lost: the change log is kept). Please report this "
            "as a bug."
        )

    def _migrate_members(self) -> None:
        """Members kept a row each (stores made before the members were packed) move into
        packed rows, in one transaction, the first time their list is opened."""
        key = self._key
        if not self._one(
            f"SELECT 1 FROM {_MEMBERS} WHERE list_key = ? AND confirmed = 1 LIMIT 1", (key,)
        ):
            return
        self._pack(
            "",
            f"(SELECT h, {MEMBER} AS state FROM {_MEMBERS} WHERE list_key = {int(key)} AND "
            "confirmed = 1)",
            "c.h",
        )
        self._exec(f"DELETE FROM {_MEMBERS} WHERE list_key = ? AND confirmed = 1", (key,))
        self._conn.commit()
        self.generation += 1

    def _merge_packed(self, changes: Iterator[Any]) -> None:
        """Apply changes to the packed members: rows (identifier, state, and the packed row
        whose range holds it: lo, width, keys, or NULLs), in key order, each identifier once.
        A MEMBER state puts the identifier in, any other takes it out. Only the rows the
        changes fall in are rewritten (a row left with too few members takes in the next)."""
        key = self._key
        deletes: list[tuple[int, bytes]] = []
        updates: list[tuple[int, bytes, int, bytes]] = []
        inserts: list[tuple[int, bytes, int, bytes]] = []
        out: list[bytes] = []
        replaced: list[bytes] = []  # `lo` of the rows the block replaces, not deleted yet
        last = [b""]  # `lo` of the last row the block took in (its members may still be out)
        previous: list[bytes | None] = [None]  # the last identifier merged: each comes after

        def flush() -> None:
            # Deletes first: a new row may take the `lo` of one it replaces. Many rows per
            # statement, as in _insert_values (executemany waits for Python's lock per row).
            for start in range(0, len(deletes), _DELETES_PER_STATEMENT):
                part = [lo for _, lo in deletes[start : start + _DELETES_PER_STATEMENT]]
                self._exec(
                    f"DELETE FROM {_PACKED} WHERE list_key = ? AND lo IN "
                    f"({', '.join(['?'] * len(part))})",
                    [key, *part],
                )
            columns = "list_key, lo, width, keys"
            rewrite = (
                " ON CONFLICT (list_key, lo) DO UPDATE SET width = excluded.width, "
                "keys = excluded.keys"
            )
            self._insert_values(_PACKED, columns, updates, rewrite)
            self._insert_values(_PACKED, columns, inserts)
            deletes.clear()
            updates.clear()
            inserts.clear()

        def merge(lo: bytes | None, width: int, keys: bytes, row: Any) -> Any:
            """The changes from `row` on that fall in the row `lo` (None: below the first
            row) merged with its members into `out`; returns the first change after them."""
            current = unpacked(lo, width, keys) if lo is not None else []
            if lo is not None:
                replaced.append(lo)
                last[0] = lo
            i, n = 0, len(current)
            while row is not None and row[2] == lo:
                h = bytes(row[0])
                if previous[0] is not None and h <= previous[0]:
                    raise self._out_of_order()
                previous[0] = h
                while i < n and current[i] < h:
                    out.append(current[i])
                    i += 1
                if i < n and current[i] == h:
                    i += 1
                if row[1] == MEMBER:
                    out.append(h)
                row = next(changes, None)
                if len(out) >= PACKED_ROW_KEYS + PACKED_ROW_MAX:
                    # A long run of adds (a first run): written as it comes.
                    deletes.extend((key, old) for old in replaced)
                    replaced.clear()
                    inserts.extend((key, *r) for r in packed_rows(out[:PACKED_ROW_KEYS]))
                    del out[:PACKED_ROW_KEYS]
                    if len(inserts) >= _PACKED_BATCH:
                        flush()
            out.extend(current[i:])
            return row

        row = next(changes, None)
        while row is not None:
            lo = bytes(row[2]) if row[2] is not None else None
            row = merge(lo, row[3], row[4], row)
            while 0 < len(out) < PACKED_ROW_MIN:
                # Too few left: the next row joins (its changes, if any, come next).
                following = self._one(
                    f"SELECT lo, width, keys FROM {_PACKED} WHERE list_key = ? AND lo > ? "
                    "ORDER BY lo LIMIT 1",
                    (key, max(last[0], out[-1])),
                )
                if following is None:
                    break
                row = merge(bytes(following[0]), following[1], following[2], row)
            rows: list[tuple[bytes, int, bytes]] = []
            while len(out) > PACKED_ROW_MAX:
                rows.extend(packed_rows(out[:PACKED_ROW_KEYS]))
                del out[:PACKED_ROW_KEYS]
            rows.extend(packed_rows(out))
            if len(replaced) == 1 and len(rows) == 1 and rows[0][0] == replaced[0]:
                updates.append((key, *rows[0]))  # the common case: one row, same first key
            else:
                deletes.extend((key, old) for old in replaced)
                inserts.extend((key, *r) for r in rows)
            out.clear()
            replaced.clear()
            if max(len(inserts), len(updates), len(deletes)) >= _PACKED_BATCH:
                flush()
        flush()

    def merge_if_due(self) -> None:
        """The writer thread, between batches: merge the change log when earlier runs left
        MERGE_MIN_KEYS identifiers or more in it (alongside the main thread reading the
        input; its sorting and reading run without Python's lock). At most once a run, and never for
        the run's own writes alone: a pipeline of events runs keeps its log bounded (about
        MERGE_MIN_KEYS plus a run's writes), and each run pays for one merge at most."""
        if self._backlog < MERGE_MIN_KEYS or self.readonly:
            return
        with self._lock:
            self._compact()
            self._backlog = 0

    # ---- the API the writer uses -----------------------------------------------------

    @property
    def codec(self) -> KeyCodec:
        return self._codec

    def journal(self, operation: str, hashes: Sequence[str], settle_until: float) -> int:
        """Before a write goes out: remember it, so a lost answer leaves it in doubt, and
        until when (time.time()) an attempt sent now may land."""
        encoded = self._codec.encode_all(hashes)
        packed = self._codec.pack(hashes, encoded)
        with self._lock:
            cursor = self._exec(
                f"INSERT INTO {_JOURNAL} (list_key, op, records, settle_until, keys) VALUES "
                "(?, ?, '', ?, ?)" + ("" if self._sqlite else " RETURNING entry"),
                (self._key, operation, settle_until, packed),
            )
            entry = int(cursor.lastrowid if self._sqlite else cursor.fetchone()[0])
            self._conn.commit()
            self._settles[entry] = settle_until
            if len(self._encoded) >= KEEP_ENCODED:  # entries never confirmed (failed writes)
                del self._encoded[next(iter(self._encoded))]
            self._encoded[entry] = (hashes, encoded)
            return entry

    def must_wait_before(self, operation: str, hashes: Sequence[str]) -> float:
        """Seconds to wait before sending `operation` for `hashes`: until a dead run's write
        of the opposite action, still able to land, has landed (0: send now). Re-sending the
        same action needs no wait: a late duplicate changes nothing."""
        if not self.landing:
            return 0.0
        now = time.time()
        if self.settle_until <= now:
            self.landing.clear()
            return 0.0
        opposite = 1 if operation == "ADD" else 0  # a late REMOVE undoes an ADD, and back
        landing = self.landing
        until = max((landing[h][opposite] for h in hashes if h in landing), default=0.0)
        return min(max(0.0, until - now), MAX_SETTLE_WAIT_SECONDS)

    def extend_settle(self, entry: int, settle_until: float) -> None:
        """Another attempt of a journaled write goes out: it may land until `settle_until`."""
        with self._lock:
            if settle_until <= self._settles.get(entry, 0.0) + 1.0:
                return  # the first attempt, or one right after: the stored time covers it
            self._exec(
                f"UPDATE {_JOURNAL} SET settle_until = ? WHERE entry = ?", (settle_until, entry)
            )
            self._conn.commit()
            self._settles[entry] = settle_until

    def confirm(
        self, entry: int | None, operation: str, applied: Sequence[str], doubtful: Sequence[str]
    ) -> None:
        """Pinterest confirmed a write: `applied` changed membership; `doubtful` were carried
        by an attempt that timed out and may still land later, so they stay in doubt."""
        # Encoded outside the lock (other requests confirm meanwhile), and only once when
        # every identifier journaled was applied: journal() kept them encoded.
        with self._lock:
            kept = self._encoded.pop(entry, None) if entry is not None else None
        reuse = kept[1] if kept is not None and kept[0] is applied else None
        if reuse is not None:
            rows = self._codec.rows_of(reuse)
        else:
            rows = self._codec.change_rows(applied) if applied else []
        in_doubt = self._codec.change_rows(doubtful) if doubtful else []
        with self._lock:
            self._append_rows(rows, MEMBER if operation == "ADD" else GONE)
            self._append_rows(in_doubt, IN_DOUBT)
            if entry is not None and doubtful:
                # A timed-out attempt (of this request or of an earlier one, of either
                # action) may still land within this row's settle time: kept for a run
                # that starts after a kill, as a row already taken as in doubt.
                self._exec(
                    f"UPDATE {_JOURNAL} SET op = ?, records = '', keys = ? WHERE entry = ?",
                    (_RECOVERED + _EITHER, self._codec.pack(doubtful), entry),
                )
            elif entry is not None:
                self._exec(f"DELETE FROM {_JOURNAL} WHERE entry = ?", (entry,))
            if entry is not None:
                self._settles.pop(entry, None)
            self._conn.commit()

    def mark_in_doubt(self, hashes: Sequence[str]) -> None:
        """These may or may not be members (a write of them went unanswered)."""
        if not hashes or self._key < 0:
            return
        with self._lock:
            self._append(hashes, IN_DOUBT)
            self._conn.commit()

    def count(self) -> int:
        """Confirmed members now (the change log merged first)."""
        with self._lock, self._named():
            self._compact()
            return self._count_merged()

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        """Reading every member: a damaged SQLite file shows here, and is named."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if self._path is None:
                raise
            raise SnapshotError(_unreadable(self._path, exc)) from None

    def pages(self) -> Iterator[list[tuple[bytes, bool]]]:
        """Every member (key, confirmed) in key order, a page at a time: the confirmed
        members and those in doubt, merged.

        Each page of either is a fresh query after the last key seen, so rows may be changed
        while the pages are read.
        """
        if self._key < 0:
            return
        with self._lock, self._named():
            self._compact()
        confirmed = self._in_order(
            f"SELECT lo, width, keys FROM {_PACKED} WHERE list_key = ? AND lo > ? ORDER BY lo "
            f"LIMIT {PAGE_SIZE // PACKED_ROW_KEYS}",
            unpacked,
        )
        doubtful = self._in_order(
            f"SELECT h FROM {_MEMBERS} WHERE list_key = ? AND h > ? ORDER BY h LIMIT {PAGE_SIZE}",
            lambda h: [bytes(h)],
        )
        page: list[tuple[bytes, bool]] = []
        members = heapq.merge(((h, True) for h in confirmed), ((h, False) for h in doubtful))
        for member in members:
            page.append(member)
            if len(page) >= PAGE_SIZE:
                yield page
                page = []
        if page:
            yield page

    def _in_order(self, select: str, keys: Callable[..., list[bytes]]) -> Iterator[bytes]:
        """The `keys` of the rows of `select` (list key, then the last first column read),
        a page at a time, each page a fresh query (rows may change between pages)."""
        last = b""
        while True:
            with self._lock, self._named():
                rows = self._exec(select, (self._key, last)).fetchall()
            if not rows:
                return
            for row in rows:
                yield from keys(*row)
            last = bytes(rows[-1][0])

    def sqlite_members(self) -> tuple[Path, int] | None:
        """For a reader of the members in SQL (a mirror run's plan): the change log merged
        first, then where the members are: (SQLite file, list key), to be attached read-only
        on another connection and read with confirmed_keys_sql and doubtful_keys_sql; None
        in PostgreSQL (read them with pages())."""
        if self._path is None or self._key < 0:
            return None
        with self._lock, self._named():
            self._compact()
        return self._path, self._key

    def set_list_type(self, list_type: str) -> None:
        """Remember the kind a list was created with (Pinterest's answers do not say it).

        A read-only snapshot (a dry run) only takes it for this run: its keys are then
        read in that kind's encoding.
        """
        if not self.readonly and self._key >= 0:
            with self._lock:
                self._exec(
                    f"UPDATE {_LISTS} SET list_type = ? WHERE list_key = ?",
                    (list_type, self._key),
                )
                self._conn.commit()
        self.list_type = list_type
        self._codec = KeyCodec(list_type)

    def holds_any(self) -> bool:
        """Whether any identifier is recorded for the list (a member, or one in doubt)."""
        if self._key < 0:
            return False
        with self._lock:
            row = self._one(f"SELECT 1 FROM {_PACKED} WHERE list_key = ? LIMIT 1", (self._key,))
            if row is None:
                row = self._one(
                    f"SELECT 1 FROM {_MEMBERS} WHERE list_key = ? LIMIT 1", (self._key,)
                )
            if row is None:
                row = self._one(
                    f"SELECT 1 FROM {_CHANGES} WHERE list_key = ? LIMIT 1", (self._key,)
                )
            if row is None and self.readonly:
                # Not recovered by a read-only open: a journal row is a write in doubt.
                row = self._one(
                    f"SELECT 1 FROM {_JOURNAL} WHERE list_key = ? LIMIT 1", (self._key,)
                )
        return row is not None

    def close(self) -> None:
        """Let go of the database. The change log stays: whoever next needs the merged
        members merges it (an events run never does)."""
        with self._lock:
            usable = True
            try:
                self._conn.rollback()
            except Exception:
                usable = False
            if self._sqlite and not self.readonly:
                with contextlib.suppress(Exception):
                    # Give merged pages back: the file stays about the members' size.
                    self._conn.executescript("PRAGMA incremental_vacuum;")
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with contextlib.suppress(Exception):
                if not usable and hasattr(self._conn, "invalidate"):
                    # A PostgreSQL connection may be stuck mid-query (a signal raised in
                    # it): dropped as it is, for the pool's reset would fail with a traceback.
                    self._conn.invalidate()
                else:
                    self._conn.close()
