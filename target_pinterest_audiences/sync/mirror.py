"""Mirror sync: the source rows are the whole audience; only the difference is written.

Each record of a mirror run says who is a member now (no action, or `add`) or who is not
(`remove`); a skipped record's well-formed identifiers are "seen" and left as they are.
What the run wants is appended to throwaway SQLite files (`RunSet`), never held in Python
sets, so memory stays flat whatever the audience size, and sorted in chunks by a second
thread while the input is still read. Once the whole input was read, the run's identifiers
are merged with the snapshot (snapshot.py, also in key order): in SQL for a SQLite snapshot
(its file attached read-only), in Python for PostgreSQL. Members the snapshot does not
confirm are added, identifiers already confirmed cost no request, and confirmed members the
source no longer holds are removed, unless they are too many (the removal cap): a broken
source query that returns 3 rows instead of 3 million must not empty a live audience.

A list with no confirmed member yet (a first run) has nothing to diff against: there the
members are added while the records arrive, so the adds overlap with reading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from target_pinterest_audiences.store.snapshot import (
    CHANGE_ROW_KEYS,
    PAGE_SIZE,
    ROW_KEY_SQL,
    ROW_POSITIONS_SQL,
    ROW_SIZE_SQL,
    KeyCodec,
    Snapshot,
    confirmed_count_sql,
    confirmed_keys_sql,
    doubtful_keys_sql,
    is_confirmed_sql,
)
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.writer import Writer

#: What the source wants for an identifier.
WANT_ABSENT, WANT_MEMBER, WANT_KEEP = 0, 1, 2
#: A list type whose keys are stored as text: any identifier, before the list's kind is known.
TEXT_KEY_TYPE = "LR_ID"
#: Temporary directories of run sets: the prefix, then the owning process id.
RUN_DIR_PREFIX = "target-pinterest-audiences-run-"
#: Meltano's environment variable for allow_large_removal, named in the cap's message.
ALLOW_ENV = "TARGET_PINTEREST_AUDIENCES_ALLOW_LARGE_REMOVAL"
#: Keys per sorted chunk of a run set: sorting 1M keys takes about 0.4 s (while the input is
#: read on); the last chunk is sorted after the input, so smaller is a shorter wait at the
#: end, and larger fewer tables to merge.
CHUNK_KEYS = 250_000
#: Chunks of one tier merged into one of the next: a few large chunks to merge at the end,
#: each key rewritten about log8(keys / CHUNK_KEYS) times while the input is read (fewer
#: rewrites than 4, for the same merge at the end: 4M members, 2.0 s and 2.2 s).
CHUNK_FANOUT = 8
#: Stage files handed to the sorter thread and not sorted yet, at most.
SORT_QUEUE = 8
#: SQLite virtual-machine steps between two looks at whether a merge must stop (~10 ms).
PROGRESS_STEPS = 1_000_000


@dataclass
class Plan:
    """The difference between the source and the snapshot, and what it was computed from."""

    members_in_source: int = 0
    #: Members of the source that were confirmed members before this run.
    unchanged: int = 0
    adds: int = 0
    removals: int = 0
    #: Removals of identifiers that were confirmed members before this run (the cap's count).
    removals_of_members: int = 0
    #: Confirmed members of the snapshot the plan was made from.
    confirmed: int = 0


#: A sorter's job: a stage file of keys in input order, and whether chunks may be merged
#: after it.
_Job = tuple[Path, bool]


class RunSet:
    """Every identifier this run has seen and what the source wants for it, on disk;
    deleted when the run ends.

    The keys go in as they come, appended to a stage file (appending costs the same
    whatever the size; a keyed table would pay a random B-tree write per identifier). Every
    CHUNK_KEYS of them, the stage file goes to a sorter thread, which sorts it into a keyed
    chunk table of its own file, and merges every CHUNK_FANOUT chunks of one tier into one,
    while the input is still being read: SQL that runs without Python's lock, on the other
    core, holding the writer thread up only when it falls SORT_QUEUE files behind. At the
    end only the last keys are sorted; the few chunks, each in key order, are merged by
    SQLite (compound SELECTs over ordered tables merge, they do not sort) with the
    snapshot's members, which are in key order too. Memory stays flat: keys are on disk.
    """

    def __init__(self, codec: KeyCodec, *, chunks: bool = True) -> None:
        self.codec = codec
        _remove_orphans()
        self._dir = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-")
        # Rows are only appended here, and sorted once (distinct_added): a small cache (it
        # filled in the writes at the end of a large run only, so peak RSS grew with it).
        self._conn = _connect(Path(self._dir) / "run.sqlite", cache_kib=256)
        # A batch's keys are packed, CHANGE_ROW_KEYS of one width per row (as in the
        # snapshot's change log), one row per want: a batch names each identifier once.
        # `seen` holds the keys in input order (a set made with chunks=False; see put).
        self._conn.execute(
            "CREATE TABLE seen (want INTEGER NOT NULL, width INTEGER NOT NULL, keys BLOB NOT NULL)"
        )
        #: Every identifier an ADD of this run confirmed (once or more): counted at the end.
        self._conn.execute("CREATE TABLE added (width INTEGER NOT NULL, keys BLOB NOT NULL)")
        self._lock = threading.Lock()  # the writer's request threads record what they added
        # The sorted side, a file of its own: chunk tables, then the plan's adds and
        # removals. Its connection belongs to the sorter thread until the plan waits for it.
        # A small cache: its tables are written and read in key order (a sort, an
        # append, a merge), and SQLite's sorter takes this size for its buffer (1 MB at
        # least). At 4 MB a sort held 8 MB more (tests/test_memory.py): a run of 2M
        # members sorts while reading, one of 200,000 only at the end, so its peak RSS
        # grew with the input (issue 18).
        self._sorted = _connect(Path(self._dir) / "sorted.sqlite", cache_kib=1000)
        self._sorted.execute("CREATE TABLE adds (h BLOB NOT NULL)")
        self._sorted.execute("CREATE TABLE removals (h BLOB NOT NULL)")
        #: Whether keys are sorted into chunk tables as they come (the early keeps, read
        #: back in input order by seen_keys, are not).
        self._chunked = chunks
        #: The sorted chunk tables, in input order, with their tier (CHUNK_FANOUT ** tier
        #: chunks merged into one).
        self._chunks: list[tuple[str, int]] = []
        self._made = 0
        #: The stage file of the keys not handed to the sorter yet (in input order), its
        #: number, and how many keys it holds.
        self._stage: sqlite3.Connection | None = None
        self._staged = 0
        self._unsorted = 0
        # Bounded: a sorter that falls behind holds the writer thread up, not the disk.
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=SORT_QUEUE)
        self._sorter: threading.Thread | None = None
        #: Set once the input is read: a merge of chunks in progress is given up.
        self._finishing = threading.Event()
        self._sort_error: BaseException | None = None
        #: The copy of the snapshot's members (copy_members), with the snapshot's generation
        #: copied and the copy's file URI.
        self._copy: tuple[_Background, int, str] | None = None
        #: The early count of the adds (count_added_early), with the last `added` rowid it
        #: takes.
        self._added_count: tuple[_Background, int] | None = None
        #: Whether any batch said `remove`, or named a skipped record's identifiers: without
        #: either, every identifier of the run is a member, whichever chunk names it.
        self.any_absent = False
        self.any_keep = False

    def _insert(
        self,
        conn: sqlite3.Connection,
        table: str,
        want: int | None,
        encoded: tuple[int, bytes] | list[bytes],
    ) -> None:
        """Append encoded keys (KeyCodec.encode_all) as packed rows; one statement for a
        batch of SHA-256 digests (a statement per row would hand Python's lock to and fro
        with the reading thread)."""
        columns = "want, width, keys" if want is not None else "width, keys"
        values = f"{int(want)}, " if want is not None else ""
        if isinstance(encoded, tuple):
            width, blob = encoded
            step = width * CHANGE_ROW_KEYS
            conn.execute(
                "WITH RECURSIVE pos (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM pos WHERE "
                f"n + 1 < ?) INSERT INTO {table} ({columns}) SELECT {values}?, "
                "substr(?, 1 + ? * n, ?) FROM pos",
                (-(-len(blob) // step), width, blob, step, step),
            )
            return
        conn.executemany(
            f"INSERT INTO {table} ({columns}) VALUES ({values}?, ?)",
            self.codec.rows_of(encoded),
        )

    def put(self, adds: list[str], removes: list[str], keeps: list[str]) -> None:
        """Record one batch of identifiers (as sent: hex digests or external ids), in input
        order: what it adds, removes and keeps (each identifier in one of the three)."""
        groups = [
            (want, self.codec.encode_all(keys))
            for want, keys in ((WANT_MEMBER, adds), (WANT_ABSENT, removes), (WANT_KEEP, keeps))
            if keys
        ]
        with self._lock:
            self.any_absent = self.any_absent or bool(removes)
            self.any_keep = self.any_keep or bool(keeps)
            if not self._chunked:
                self._conn.execute("BEGIN")
                for want, encoded in groups:
                    self._insert(self._conn, "seen", want, encoded)
                self._conn.execute("COMMIT")
                return
            if self._stage is None:
                self._stage = self._new_stage()
            self._stage.execute("BEGIN")
            for want, encoded in groups:
                self._insert(self._stage, "seen", want, encoded)
            self._stage.execute("COMMIT")
            self._unsorted += len(adds) + len(removes) + len(keeps)
            if self._unsorted >= CHUNK_KEYS:
                self._hand_over()

    def _new_stage(self) -> sqlite3.Connection:
        """A file for the next chunk's keys, in input order (the writer thread's alone)."""
        self._staged += 1
        conn = _connect(Path(self._dir) / f"stage{self._staged}.sqlite", cache_kib=500)
        conn.execute(
            "CREATE TABLE seen (want INTEGER NOT NULL, width INTEGER NOT NULL, keys BLOB NOT NULL)"
        )
        return conn

    def _hand_over(self, *, last: bool = False) -> None:
        """The pending keys go to the sorter thread (the caller holds the lock); `last`:
        the input is read, no merge of chunks is worth it any more."""
        if self._sorter is None:
            self._sorter = threading.Thread(
                target=self._sort_jobs, name="pinterest-mirror-sort", daemon=True
            )
            self._sorter.start()
        if self._stage is None:
            self._stage = self._new_stage()  # no keys: an empty chunk
        self._stage.close()
        self._stage = None
        self._jobs.put((Path(self._dir) / f"stage{self._staged}.sqlite", not last))
        self._unsorted = 0

    def _sort_jobs(self) -> None:
        """The sorter thread: each job becomes a chunk; an error waits for the plan, which
        raises it."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._sort_error is not None:
                continue
            try:
                self._sort_chunk(*job)
            except BaseException as exc:  # raised again by the plan, in the writer thread
                self._sort_error = exc

    def _sort_chunk(self, stage: Path, tiers: bool) -> None:
        """A stage file's keys (in input order) become a chunk table: each key once, in key
        order, with what its latest record there wants; then (`tiers`) every CHUNK_FANOUT
        chunks of one tier are merged into one of the next."""
        conn = self._sorted
        conn.execute("ATTACH ? AS stage", (_file_uri(stage),))
        conn.execute("PRAGMA stage.cache_size=-500")  # read once, in order (default 2 MB)
        try:
            name = self._new_table()
            # Rows go in key order, then input order: the first inserts, a later one
            # replaces it unless it only keeps (a skipped record changes nothing a valid
            # one said).
            conn.execute(
                f"WITH {ROW_POSITIONS_SQL} INSERT INTO {name} (h, want) SELECT {ROW_KEY_SQL} "
                f"AS k, want FROM stage.seen CROSS JOIN nums WHERE n < {ROW_SIZE_SQL} ORDER BY "
                f"k, seen.rowid ON CONFLICT (h) DO UPDATE SET want = excluded.want WHERE "
                f"excluded.want != {WANT_KEEP}"
            )
        finally:
            conn.execute("DETACH stage")
        # The pages cached for this chunk are not read again soon: freed, the next sort's
        # buffers take their place instead of adding to them (flat peak RSS).
        conn.execute("PRAGMA shrink_memory")
        stage.unlink()
        self._chunks.append((name, 0))
        while (
            tiers
            and len(self._chunks) >= CHUNK_FANOUT
            and (len({tier for _, tier in self._chunks[-CHUNK_FANOUT:]}) == 1)
        ):
            tier = self._chunks[-1][1]
            merged = self._merge([name for name, _ in self._chunks[-CHUNK_FANOUT:]], abort=True)
            if merged is None:
                return  # the input is read: the plan merges them anyway
            del self._chunks[-CHUNK_FANOUT:]
            self._chunks.append((merged, tier + 1))

    def _new_table(self) -> str:
        name = f"chunk{self._made}"
        self._made += 1
        self._sorted.execute(
            f"CREATE TABLE {name} (h BLOB PRIMARY KEY, want INTEGER NOT NULL) WITHOUT ROWID"
        )
        return name

    @overload
    def _merge(self, names: list[str]) -> str: ...
    @overload
    def _merge(self, names: list[str], *, abort: bool) -> str | None: ...

    def _merge(self, names: list[str], *, abort: bool = False) -> str | None:
        """Chunks (consecutive, in input order) merged into one table, then dropped: each
        key once, with the want its latest chunk gives it (a merge of ordered tables).

        `abort`: a merge to save the plan work, given up (None, the chunks kept) once the
        input is read, for the plan would wait for it."""
        if abort and self._finishing.is_set():
            return None
        merged = self._new_table()
        if abort:
            # Asked every ~10 ms of SQL: a non-zero answer stops the statement.
            self._sorted.set_progress_handler(self._finishing.is_set, PROGRESS_STEPS)
        try:
            try:
                self._sorted.execute(
                    f"INSERT INTO {merged} (h, want) SELECT h, want FROM {_in_order(names)} "
                    f"WHERE true ON CONFLICT (h) DO UPDATE SET want = excluded.want WHERE "
                    f"excluded.want != {WANT_KEEP}"
                )
            finally:
                if abort:
                    self._sorted.set_progress_handler(None, 0)
        except sqlite3.OperationalError:
            if not (abort and self._finishing.is_set()):
                raise
            self._sorted.execute(f"DROP TABLE {merged}")  # half made; the chunks are whole
            return None
        for name in names:
            self._sorted.execute(f"DROP TABLE {name}")
        self._sorted.execute("PRAGMA shrink_memory")  # as after a sort (_sort_chunk)
        return merged

    def _all_sorted(self) -> list[str]:
        """Wait for the sorter, sort the last keys: the chunk tables of the whole run, in
        input order (the caller holds the lock)."""
        self._finishing.set()
        if self._stage is not None or not self._staged:  # keys not handed over, or none ever
            self._hand_over(last=True)
        if self._sorter is not None:
            self._jobs.put(None)
            self._sorter.join()
            self._sorter = None
        if self._sort_error is not None:
            raise self._sort_error
        return [name for name, _ in self._chunks]

    def record_added(self, keys: list[str]) -> None:
        encoded = self.codec.encode_all(keys)
        with self._lock:
            if self._added_count is not None:
                # Its reads of `added` must end before a write. What it raised is kept for
                # distinct_added: these rows are recorded all the same.
                self._added_count[0].wait()
            self._conn.execute("BEGIN")
            self._insert(self._conn, "added", None, encoded)
            self._conn.execute("COMMIT")

    def count_added_early(self) -> None:
        """Start sorting the adds confirmed so far (a run that streamed its members: as many
        as the audience) into a file of their own, in a thread, while the plan merges the
        snapshot's change log on the other core; distinct_added then only adds the later
        ones. A 10M first run: about 10 s off its end. Only while nothing writes `added`:
        record_added waits for it."""
        with self._lock:
            if self._added_count is not None:
                return
            (upto,) = self._conn.execute("SELECT max(rowid) FROM added").fetchone()
            if upto is None:
                return
            job = _Background(
                "pinterest-mirror-added",
                _connect(Path(self._dir) / "run.sqlite", cache_kib=256),
                lambda conn: self._count_added_rows(conn, 0, upto),
            )
            self._added_count = (job, upto)

    @contextlib.contextmanager
    def _added_keys(self, conn: sqlite3.Connection) -> Iterator[None]:
        """added.sqlite attached as `a`: the table `a.keys` of the adds counted so far."""
        conn.execute("ATTACH ? AS a", (_file_uri(Path(self._dir) / "added.sqlite"),))
        try:
            yield
        finally:
            conn.execute("DETACH a")

    def _count_added_rows(self, conn: sqlite3.Connection, after: int, upto: int | None) -> None:
        """Sort the keys of `added` rows after..upto (rowids) into `a.keys`, keyed: each
        once. In key order, so appended page after page; COUNT(DISTINCT) would insert each
        key into a temporary B-tree in the log's order, about four times slower."""
        with self._added_keys(conn):
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-256"):
                conn.execute(f"PRAGMA a.{pragma}")
            conn.execute("CREATE TABLE IF NOT EXISTS a.keys (h BLOB PRIMARY KEY) WITHOUT ROWID")
            bound = "" if upto is None else f" AND added.rowid <= {int(upto)}"
            conn.execute(
                f"WITH {ROW_POSITIONS_SQL} INSERT OR IGNORE INTO a.keys (h) SELECT "
                f"{ROW_KEY_SQL} AS k FROM added CROSS JOIN nums WHERE n < {ROW_SIZE_SQL} "
                f"AND added.rowid > {int(after)}{bound} ORDER BY k"
            )

    def distinct_added(self) -> int:
        """How many distinct identifiers this run added (a member named in far-apart
        batches of a first run may have been sent twice: ADD is idempotent)."""
        with self._lock:
            early, self._added_count = self._added_count, None
            try:
                if early is not None:
                    early[0].result()
                self._count_added_rows(self._conn, early[1] if early else 0, None)
                with self._added_keys(self._conn):
                    (count,) = self._conn.execute("SELECT COUNT(*) FROM a.keys").fetchone()
            finally:
                # Counted once, or in part (an error): the next call starts over.
                with self._added_keys(self._conn):
                    self._conn.execute("DROP TABLE IF EXISTS a.keys")
            return int(count)

    def _sources(self) -> list[str]:
        """The sorted tables of the whole run (the caller holds the lock): its chunks; or,
        when a key's latest want may sit in another chunk than its first (some record said
        `remove`), the chunks merged into one."""
        names = self._all_sorted()
        if not self.any_absent or len(names) == 1:
            return names
        merged = self._merge(names)
        self._chunks = [(merged, self._chunks[-1][1] + 1)]
        return [merged]

    def _wanted(self) -> Iterator[tuple[bytes, int]]:
        """Each identifier once, in key order, with what the source finally wants for it:
        the latest valid record's action, or "keep" when only skipped records named it
        (the caller holds the lock)."""
        cursor = self._sorted.execute(f"SELECT h, want FROM {_in_order(self._all_sorted())}")
        key: bytes | None = None
        want = WANT_KEEP
        while True:
            rows = cursor.fetchmany(PAGE_SIZE)
            if not rows:
                break
            for h, w in rows:
                if h != key:
                    if key is not None:
                        yield key, want
                    key, want = h, w
                elif w != WANT_KEEP:
                    want = w
        if key is not None:
            yield key, want

    def plan(self, snapshot: Snapshot | None, *, snapshot_new: bool, streamed: bool) -> Plan:
        """Merge what the run wants with the snapshot (both in key order) into adds and removals.

        Added: members the snapshot does not confirm (in doubt, or unknown). Removed:
        confirmed or in-doubt identifiers that the source does not hold or says `remove`;
        and, on a list with no snapshot before this run, identifiers the source explicitly
        says `remove` (nobody knows whether the list holds them). `streamed`: members were
        added while reading (no confirmed member at the start), so none was unchanged.
        """
        members = snapshot.sqlite_members() if snapshot is not None else None
        with self._lock:
            self._all_sorted()
            self._sorted.execute("DELETE FROM adds")
            self._sorted.execute("DELETE FROM removals")
            if members is None:
                plan = self._plan_in_python(snapshot, snapshot_new=snapshot_new, streamed=streamed)
            else:
                assert snapshot is not None
                try:
                    source = self._copied(snapshot) or _packed_source(*members)
                    plan = self._plan_in_sql(source, snapshot_new=snapshot_new, streamed=streamed)
                except sqlite3.DatabaseError as exc:
                    if self._snapshot_damaged(members[0]):
                        raise snapshot.unreadable(exc) from None
                    raise
            plan.adds = self._count("adds")
            plan.removals = self._count("removals")
            # From here on the adds and removals are read once, in order, while the writes
            # go out: a small cache (a full one made a large run's peak RSS there).
            self._sorted.execute("PRAGMA cache_size=-256")
            self._sorted.execute("PRAGMA shrink_memory")
        return plan

    def copy_members(self, snapshot: Snapshot) -> None:
        """Start copying a SQLite snapshot's members into the run set in key order, in a
        thread, while the input is read: the plan then merges them as they are (packed,
        they would have to be sorted at the end, in front of every write). Not used if the
        snapshot's members change before the plan (see _copied)."""
        members = snapshot.sqlite_members()
        if members is None or self._copy is not None:
            return
        path, list_key = members
        target = Path(self._dir) / "held.sqlite"
        confirmed, doubtful = (
            confirmed_keys_sql("snap.", list_key),
            doubtful_keys_sql("snap.", list_key),
        )

        def copy(conn: sqlite3.Connection) -> None:
            conn.execute("ATTACH ? AS snap", (_file_uri(path) + "?mode=ro",))
            conn.execute("PRAGMA snap.cache_size=-500")
            conn.execute(
                "CREATE TABLE held (h BLOB PRIMARY KEY, confirmed INTEGER NOT NULL) WITHOUT ROWID"
            )
            # In key order: written page after page.
            conn.execute(
                f"INSERT INTO held (h, confirmed) SELECT h, 1 FROM ({confirmed}) UNION ALL "
                f"SELECT h, 0 FROM ({doubtful}) ORDER BY 1"
            )
            conn.execute("DETACH snap")

        job = _Background("pinterest-mirror-copy", _connect(target, cache_kib=500), copy)
        self._copy = (job, snapshot.generation, _file_uri(target))

    def _copied(self, snapshot: Snapshot) -> _Members | None:
        """The copy of the snapshot's members, once made, if they did not change since."""
        if self._copy is None:
            return None
        job, generation, uri = self._copy
        job.result()
        if generation != snapshot.generation:
            return None
        return _Members(
            uri=uri,
            confirmed="SELECT h FROM snap.held WHERE confirmed = 1",
            held="SELECT h FROM snap.held",
            count="SELECT COUNT(*) FROM snap.held WHERE confirmed = 1",
            is_confirmed=lambda key: (
                f"EXISTS (SELECT 1 FROM snap.held WHERE h = {key} AND confirmed = 1)"
            ),
        )

    def _plan_in_sql(self, source: _Members, *, snapshot_new: bool, streamed: bool) -> Plan:
        """The plan of a SQLite snapshot: its file attached (read-only) to the run set, and
        the difference computed by merges in SQL, never a Python loop over the members.

        The adds and the removals are two merges of the whole run with the whole snapshot:
        they run at once, on two connections (the input is read, both cores are free),
        each writing a file of its own and only reading the chunks and the snapshot."""
        plan = Plan()
        sources = self._sources()
        snapshot_uri = source.uri + "?mode=ro"

        def keys(where: str, *, schema: str = "", distinct: bool = False) -> str:
            arms = [f"SELECT h FROM {schema}{name} WHERE {where}" for name in sources]
            if len(arms) == 1:
                return arms[0]
            union = " UNION " if distinct else " UNION ALL "
            return f"SELECT h FROM ({union.join(arms)} ORDER BY 1)"

        confirmed_keys, held = source.confirmed, source.held
        absent = ""
        if snapshot_new and self.any_absent:
            absent = f" UNION {keys(f'want = {WANT_ABSENT}', schema='s.')}"
        merges = {
            "adds": f"{keys(f'want = {WANT_MEMBER}', schema='s.')} EXCEPT {confirmed_keys} "
            "ORDER BY 1",
            "removals": f"{held} EXCEPT {keys(f'want != {WANT_ABSENT}', schema='s.')}{absent} "
            "ORDER BY 1",
        }
        errors: list[BaseException] = []
        # The snapshot's confirmed members, counted alongside (one more pass over it).
        counts = {"removals": source.count}
        confirmed: list[int] = []

        def merge(name: str) -> None:
            try:
                confirmed.extend(
                    self._merge_into_file(name, merges[name], snapshot_uri, counts.get(name))
                )
            except BaseException as exc:  # raised below, in the writer thread
                errors.append(exc)

        helper = threading.Thread(target=merge, args=("removals",), name="pinterest-mirror-plan")
        helper.start()
        merge("adds")
        helper.join()
        if errors:
            raise errors[0]
        conn = self._sorted
        for name in merges:
            conn.execute("ATTACH ? AS result", (_file_uri(Path(self._dir) / f"{name}.sqlite"),))
            try:
                conn.execute(f"INSERT INTO {name} (h) SELECT h FROM result.{name} ORDER BY rowid")
            finally:
                conn.execute("DETACH result")
        conn.execute("ATTACH ? AS snap", (snapshot_uri,))
        try:
            (removals_of_members,) = conn.execute(
                "SELECT COUNT(*) FROM removals WHERE " + source.is_confirmed("removals.h")
            ).fetchone()
            (plan.confirmed,) = confirmed
            if self.any_absent or self.any_keep:
                (plan.members_in_source,) = conn.execute(
                    f"SELECT COUNT(*) FROM ({keys(f'want = {WANT_MEMBER}', distinct=True)})"
                ).fetchone()
            else:
                # Every identifier of the run is a member: those the snapshot confirms are
                # its confirmed members less the ones removed.
                plan.members_in_source = self._count("adds") + plan.confirmed - removals_of_members
        finally:
            conn.execute("DETACH snap")
        if not streamed:
            plan.removals_of_members = removals_of_members
            plan.unchanged = plan.members_in_source - self._count("adds")
        return plan

    def _merge_into_file(
        self, name: str, select: str, snapshot_uri: str, count: str | None
    ) -> list[int]:
        """One merge of the plan, on a connection of its own: its rows into a table `name`
        of a file `name`.sqlite; the chunks are read as `s`, the snapshot as `snap`. Then
        the `count` query's answer, if any."""
        conn = _connect(Path(self._dir) / f"{name}.sqlite", cache_kib=500)
        try:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(f"CREATE TABLE {name} (h BLOB NOT NULL)")
            conn.execute("ATTACH ? AS s", (_file_uri(Path(self._dir) / "sorted.sqlite"),))
            conn.execute("ATTACH ? AS snap", (snapshot_uri,))
            # Both inputs are read once, in order: a small cache each (peak RSS stays flat).
            conn.execute("PRAGMA s.cache_size=-500")
            conn.execute("PRAGMA snap.cache_size=-500")
            conn.execute(f"INSERT INTO main.{name} (h) {select}")
            return [int(conn.execute(count).fetchone()[0])] if count else []
        finally:
            conn.close()

    def _snapshot_damaged(self, path: Path) -> bool:
        """After an error of the plan's SQL: whether the snapshot file is what is damaged
        (not the run set's own files), to name it in the error."""
        conn = self._sorted
        try:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("DETACH snap")
            conn.execute("ATTACH ? AS snap", (_file_uri(path) + "?mode=ro",))
            try:
                return [row[0] for row in conn.execute("PRAGMA snap.quick_check(1)")] != ["ok"]
            finally:
                conn.execute("DETACH snap")
        except sqlite3.Error:
            return True

    def _plan_in_python(
        self, snapshot: Snapshot | None, *, snapshot_new: bool, streamed: bool
    ) -> Plan:
        """The plan of a PostgreSQL snapshot (or none): both sides read in key order and
        merged here (the caller holds the lock)."""
        plan = Plan()
        adds: list[tuple[bytes]] = []
        removals: list[tuple[bytes]] = []
        insert = self._sorted.executemany

        def flush() -> None:
            insert("INSERT INTO adds VALUES (?)", adds)
            insert("INSERT INTO removals VALUES (?)", removals)
            adds.clear()
            removals.clear()

        run_rows = self._wanted()
        r = next(run_rows, None)  # sorted before the transaction begins
        self._sorted.execute("BEGIN")
        snap_rows = _rows(snapshot.pages()) if snapshot is not None else iter(())
        s = next(snap_rows, None)
        while s is not None or r is not None:
            if r is None or (s is not None and s[0] < r[0]):
                assert s is not None
                # In the snapshot, never seen in this run: the source no longer holds it.
                removals.append((s[0],))
                plan.removals_of_members += s[1] and not streamed
                plan.confirmed += s[1]
                s = next(snap_rows, None)
            elif s is None or r[0] < s[0]:
                # Seen in this run, unknown to the snapshot.
                if r[1] == WANT_MEMBER:
                    plan.members_in_source += 1
                    adds.append((r[0],))
                elif r[1] == WANT_ABSENT and snapshot_new:
                    removals.append((r[0],))
                r = next(run_rows, None)
            else:
                key, confirmed = s
                plan.confirmed += confirmed
                if r[1] == WANT_MEMBER:
                    plan.members_in_source += 1
                    if confirmed:
                        plan.unchanged += not streamed
                    else:
                        adds.append((key,))  # in doubt: send it again
                elif r[1] == WANT_ABSENT:
                    removals.append((key,))
                    plan.removals_of_members += confirmed and not streamed
                s = next(snap_rows, None)
                r = next(run_rows, None)
            if len(adds) + len(removals) >= PAGE_SIZE:
                flush()
        flush()
        self._sorted.execute("COMMIT")
        return plan

    def _count(self, table: str) -> int:
        return int(self._sorted.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def seen_keys(self) -> Iterator[list[str]]:
        """Every identifier recorded, a row at a time (the early keeps: a set made with
        chunks=False, so all of them are still in input order)."""
        assert not self._chunked
        decode = self.codec.decode
        rows = self._conn.execute(
            f"WITH {ROW_POSITIONS_SQL} SELECT {ROW_KEY_SQL} FROM seen CROSS JOIN nums "
            f"WHERE n < {ROW_SIZE_SQL} ORDER BY seen.rowid"
        )
        while True:
            chunk = rows.fetchmany(PAGE_SIZE)
            if not chunk:
                return
            yield [decode(row[0]) for row in chunk]

    def planned(self, table: str, size: int) -> Iterator[list[str]]:
        """The planned adds or removals, `size` at a time."""
        decode = self.codec.decode
        last = 0
        while True:
            with self._lock:
                rows = self._sorted.execute(
                    f"SELECT rowid, h FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, size),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [decode(row[1]) for row in rows]

    def close(self) -> None:
        for job in (self._copy, self._added_count):
            if job is not None:
                job[0].stop()
        sorter = self._sorter
        if sorter is not None:
            self._sort_error = self._sort_error or RuntimeError("closed")  # skip the rest
            with contextlib.suppress(Exception):
                self._sorted.interrupt()
            with contextlib.suppress(queue.Full):
                self._jobs.put(None, timeout=10)
            sorter.join(timeout=10)
        for conn in (self._conn, self._sorted, self._stage):
            with contextlib.suppress(Exception):
                if conn is not None:
                    conn.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _connect(path: Path, *, cache_kib: int) -> sqlite3.Connection:
    """A run set's SQLite file (opened with URIs: a snapshot is attached read-only): no
    journal and no sync (it is thrown away with the run), a page cache of `cache_kib`."""
    conn = sqlite3.connect(_file_uri(path), uri=True, check_same_thread=False, isolation_level=None)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{int(cache_kib)}"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


class _Background:
    """SQL run in a thread of its own on a connection of its own (closed when done), while
    the run goes on; what it raised is raised by result()."""

    def __init__(
        self, name: str, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], None]
    ) -> None:
        self._conn = conn
        self._error: BaseException | None = None

        def run() -> None:
            try:
                work(conn)
            except BaseException as exc:  # raised by result(), in the thread that asks
                self._error = exc
            finally:
                conn.close()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Interrupt the SQL (a closed connection has nothing to interrupt), then wait."""
        with contextlib.suppress(Exception):
            self._conn.interrupt()
        self._thread.join(timeout=10)


@dataclass
class _Members:
    """Where a plan in SQL reads the snapshot's members: a file attached as `snap`, and
    SQL of its confirmed members, of every identifier it holds (confirmed or in doubt),
    of the confirmed count, and of the test that a key (an SQL expression) is confirmed."""

    uri: str
    confirmed: str
    held: str
    count: str
    is_confirmed: Callable[[str], str]


def _packed_source(path: Path, list_key: int) -> _Members:
    """The members read from the snapshot file itself: the confirmed ones come unpacked, in
    no order (the plan's merges sort them); those in doubt are few, in key order."""
    confirmed = confirmed_keys_sql("snap.", list_key)
    return _Members(
        uri=_file_uri(path),
        confirmed=confirmed,
        held=f"SELECT h FROM ({confirmed} UNION ALL {doubtful_keys_sql('snap.', list_key)})",
        count=confirmed_count_sql("snap.", list_key),
        is_confirmed=lambda key: is_confirmed_sql("snap.", list_key, key),
    )


def _in_order(chunks: list[str]) -> str:
    """The rows (h, want, chunk number) of chunk tables, as one table expression in key
    order, then chunk order (a later chunk's want wins): SQLite merges the ordered tables,
    it does not sort them."""
    arms = " UNION ALL ".join(f"SELECT h, want, {i} AS c FROM {n}" for i, n in enumerate(chunks))
    return f"({arms} ORDER BY 1, 3)"


def _file_uri(path: Path) -> str:
    """A file's SQLite URI (the run set is opened with URIs, to attach a snapshot read-only)."""
    return "file:" + urllib.parse.quote(str(path.resolve()))


def _remove_orphans() -> None:
    """Run sets of runs that were killed (their process is gone) are deleted."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = path.name[len(RUN_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive (another user's process, say)


def _rows(pages: Iterable[list]) -> Iterator[tuple]:
    for page in pages:
        yield from page


class MirrorSync:
    """The mirror side of the writer thread: what the source wants, and the difference."""

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
        #: Identifiers of skipped records that came before the run's list was known (no
        #: snapshot open yet), kept aside on disk as text: once the list's snapshot is
        #: open they protect its members like any other skipped record's.
        self._early_keeps: RunSet | None = None
        #: Whether members are added while reading: the list had no confirmed member at the
        #: first batch (decided then, once).
        self.streaming: bool | None = None
        #: Set when the cap held removals back: the run ends non-zero with this message.
        self.held_message: str | None = None
        #: Set once the input is read: what the end of the run is doing (progress line).
        self.phase: str | None = None
        writer.on_confirmed = self.confirmed
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
            # One row read: a full count here would hold the pipeline up at its start (the
            # count the removal cap needs comes with the plan: nothing is written before).
            self.streaming = snapshot is None or not snapshot.holds_confirmed()
            if self.streaming:
                # An add streamed while in flight is not buffered again (take).
                self.writer.in_flight_ids = set()
            elif snapshot is not None:
                self.runset.copy_members(snapshot)
            if self._early_keeps is not None:
                early, self._early_keeps = self._early_keeps, None
                for chunk in early.seen_keys():
                    self.runset.put([], [], [key for key in chunk if codec.accepts(key)])
                early.close()
        return self.runset

    def kind_changed(self) -> None:
        """The snapshot now stores another kind of key (the list's kind was just recorded,
        on a snapshot that held nothing): the run's set so far holds only identifiers of
        skipped records, which protect no member there, so it starts again."""
        if self.runset is not None:
            self.runset.close()
            self.runset = None

    def take(self, ops: dict[str, bool], keeps: list[str]) -> None:
        """One batch of the source: remember it; on a list with no member yet, add now."""
        writer = self.writer
        runset = self._runset()
        if runset is None:
            # Only skipped records so far, and the list is not known yet: their identifiers
            # wait until it is (they protect its confirmed members, if it has any).
            assert not ops, "the run's list type is set before its first identifiers"
            if keeps:
                if self._early_keeps is None:
                    self._early_keeps = RunSet(KeyCodec(TEXT_KEY_TYPE), chunks=False)
                self._early_keeps.put([], [], keeps)
            return
        if keeps and not runset.codec.text:
            # A skipped record's external id cannot be a member of a list of digests.
            keeps = [key for key in keeps if runset.codec.accepts(key)]
        members = [digest for digest, is_add in ops.items() if is_add]
        absent = [digest for digest, is_add in ops.items() if not is_add]
        runset.put(members, absent, keeps)
        if not self.streaming or self.dry_run:
            return
        adds, in_flight = writer.adds, writer.in_flight_ids
        assert in_flight is not None
        for digest, is_add in ops.items():
            if not is_add:
                adds.pop(digest, None)  # removed, if at all, once the input is complete
            elif digest not in in_flight:
                adds[digest] = None
        # A member named again after its ADD went out is sent again (ADD is idempotent);
        # a member taken back, then named again, is added by the plan at the end.
        writer.flush(full_only=True)

    def confirmed(self, operation: str, digests: list[str]) -> None:
        """The writer's hook: Pinterest confirmed these (from a request thread)."""
        if operation == "ADD" and self.runset is not None:
            self.runset.record_added(digests)

    def finish(self) -> None:
        """The whole input was read: add what is still missing, then remove the rest."""
        runset = self._runset(final=True)
        assert runset is not None
        writer, report = self.writer, self.report
        snapshot = writer.snapshot
        self.phase = "input read, comparing with the snapshot"
        snapshot_new = snapshot is None or not snapshot.existed
        report.snapshot = "new" if snapshot_new else "existing"
        if self.streaming:
            runset.count_added_early()  # on the other core while the plan merges
        plan = runset.plan(snapshot, snapshot_new=snapshot_new, streamed=bool(self.streaming))
        report.members_in_source = plan.members_in_source
        report.unchanged = plan.unchanged
        # Confirmed members before this run's writes: none when it streamed its adds (it
        # had none), else those of the plan (the run wrote nothing before it).
        at_open = 0 if self.streaming else plan.confirmed
        reason = self._cap_reason(plan, at_open)
        if writer.list_id is None and not plan.adds and plan.removals:
            # No list exists and no member creates one (a new segment whose records all say
            # `remove`): nothing to remove from; counted as in events mode.
            report.removes_without_list += plan.removals
            return
        if self.dry_run:
            report.identifiers_added = plan.adds
            report.identifiers_removed = 0 if reason else plan.removals
            if reason:
                report.removals_held_back = plan.removals
                report.removals_held_back_reason = reason
                self.logger.warning("Dry run: a real run would hold back removals: %s", reason)
            return
        if plan.adds:
            self.logger.info("Adding %d members the snapshot does not confirm", plan.adds)
            self.phase = f"adding {plan.adds:,} members"
            writer.adds.clear()
            for chunk in runset.planned("adds", writer.per_request):
                writer.adds.update(dict.fromkeys(chunk))
                writer.flush(full_only=True)
            writer.flush(full_only=False)
            writer.wait_in_flight()
            writer.reconcile()
        report.identifiers_added = runset.distinct_added()
        if reason:
            report.removals_held_back = plan.removals
            report.removals_held_back_reason = reason
            self.held_message = (
                f"Mirror sync held back {plan.removals} removals from Customer List "
                f"{writer.list_id}: {reason}. The adds were written; nothing was removed. If "
                "the source is right, run once with allow_large_removal=true (for Meltano: "
                f"{ALLOW_ENV}=true)"
            )
            return
        if plan.removals:
            self.logger.info(
                "Removing %d identifiers the source no longer holds from Customer List %s",
                plan.removals,
                writer.list_id,
            )
        if writer.list_id is None:
            # No list (the source only said `remove`): nothing to remove from.
            report.removes_without_list += plan.removals
            return
        self.phase = f"removing {plan.removals:,} identifiers"
        for chunk in runset.planned("removals", writer.per_request):
            writer.send("REMOVE", chunk)
        writer.wait_in_flight()
        writer.reconcile()

    def _cap_reason(self, plan: Plan, at_open: int) -> str | None:
        """Why removals must wait for allow_large_removal, or None."""
        removing = plan.removals_of_members
        if self.allow_large_removal or not removing:
            return None
        if plan.members_in_source == 0:
            return (
                f"the source holds no members (an empty or failed query looks like this) and "
                f"would remove all {removing} confirmed members"
            )
        fraction = removing / at_open if at_open else 1.0
        if fraction > self.max_removal_fraction:
            return (
                f"they would remove {removing} of the {at_open} confirmed members "
                f"({fraction:.1%}), above max_removal_fraction {self.max_removal_fraction:g}"
            )
        return None

    def close(self) -> None:
        if self.runset is not None:
            self.runset.close()
        if self._early_keeps is not None:
            self._early_keeps.close()
