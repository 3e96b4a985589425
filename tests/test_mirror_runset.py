"""The run set of a mirror run (sync/mirror.py RunSet), against real snapshot stores.

A large run's identifiers are sorted in chunks while the input is read, and chunks are
merged in tiers; the plan of a SQLite snapshot is computed by SQL merges, of a PostgreSQL
one in Python. These tests shrink the chunks to a few keys so that one small run crosses
many chunks and tiers, and check the plan against what the records say, for every path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_mirror import snapshot_database  # noqa: F401 - a fixture, used by name

from target_pinterest_audiences.store.snapshot import Snapshot, SnapshotStore
from target_pinterest_audiences.sync import mirror
from target_pinterest_audiences.sync.mirror import RunSet


def key(i: int) -> str:
    return f"{i:064x}"


#: The snapshot before the run: confirmed members 0..9, keys 10 and 11 in doubt.
CONFIRMED = [key(i) for i in range(10)]
IN_DOUBT = [key(10), key(11)]

#: Batches in input order: (members, removes, keeps). Each batch names a key once.
BATCHES = [
    ([key(0), key(1), key(2), key(20)], [key(3)], [key(4)]),
    ([key(5), key(21)], [key(22)], [key(6), key(23)]),
    # Later batches change what earlier ones said: the latest valid record wins, a skipped
    # record's identifiers (keeps) change nothing a valid one said.
    ([key(3), key(24)], [key(1), key(20)], [key(2), key(5)]),
    ([key(6), key(10)], [key(21)], [key(7), key(25)]),
    ([key(1)], [key(24)], []),
]
#: What the batches finally want: members, and keys named by skipped records only.
MEMBERS = {key(i) for i in (0, 1, 2, 3, 5, 6, 10)}
KEEPS = {key(i) for i in (4, 7, 23, 25)}
ABSENT = {key(i) for i in (20, 21, 22, 24)}


def open_snapshot(store: SnapshotStore) -> Snapshot:
    snapshot = store.open("42", list_type="EMAIL")
    assert snapshot is not None
    entry = snapshot.journal("ADD", CONFIRMED + IN_DOUBT, 0.0)
    snapshot.confirm(entry, "ADD", CONFIRMED, IN_DOUBT)
    assert snapshot.count() == len(CONFIRMED)
    return snapshot


@pytest.fixture(params=["sqlite", "sqlite-copy", "sqlite-python-merge", "postgres"])
def snapshot(request, tmp_path: Path, monkeypatch):
    url = None
    if request.param == "postgres":
        url, _ = request.getfixturevalue("snapshot_database")
    store = SnapshotStore(
        ad_account_id="1", logger=logging.getLogger("test"), directory=tmp_path, url=url
    )
    opened = open_snapshot(store)
    if request.param == "sqlite-python-merge":
        # The merge PostgreSQL snapshots get, on a SQLite one: both must agree.
        monkeypatch.setattr(opened, "sqlite_members", lambda: None)
    if request.param == "sqlite-copy":
        # As in a run that did not stream: the members copied in key order while reading.
        plan = RunSet.plan

        def plan_from_copy(self, snapshot, **kwargs):
            self.copy_members(snapshot)
            assert self._copy is not None
            return plan(self, snapshot, **kwargs)

        monkeypatch.setattr(RunSet, "plan", plan_from_copy)
    yield opened
    opened.close()
    store.close()


@pytest.mark.parametrize("chunk_keys", [1000, 3, 1])
def test_the_plan_follows_the_latest_record_across_chunks_and_tiers(
    snapshot, monkeypatch, chunk_keys
):
    monkeypatch.setattr(mirror, "CHUNK_KEYS", chunk_keys)
    monkeypatch.setattr(mirror, "CHUNK_FANOUT", 2)
    runset = RunSet(snapshot.codec)
    try:
        for members, removes, keeps in BATCHES:
            runset.put(members, removes, keeps)
        plan = runset.plan(snapshot, snapshot_new=False, streamed=False)
        adds = [k for chunk in runset.planned("adds", 1000) for k in chunk]
        removals = [k for chunk in runset.planned("removals", 1000) for k in chunk]
    finally:
        runset.close()
    # Added: members not confirmed (10 was in doubt). Removed: confirmed members the source
    # does not hold (8, 9) or says `remove` for; keeps (4, 7) stay; in-doubt 11 goes.
    assert adds == sorted(MEMBERS - set(CONFIRMED))
    assert removals == sorted({key(8), key(9), key(11)})
    assert plan.adds == len(adds) and plan.removals == len(removals)
    assert plan.members_in_source == len(MEMBERS)
    assert plan.unchanged == len(MEMBERS & set(CONFIRMED))
    assert plan.removals_of_members == 2
    assert plan.confirmed == len(CONFIRMED)  # the removal cap's "confirmed members at open"


@pytest.mark.parametrize("chunk_keys", [1000, 2])
def test_a_new_snapshot_removes_what_the_source_says_remove(snapshot, monkeypatch, chunk_keys):
    """Nobody knows what a list without a snapshot holds: its explicit removes go out."""
    monkeypatch.setattr(mirror, "CHUNK_KEYS", chunk_keys)
    monkeypatch.setattr(mirror, "CHUNK_FANOUT", 2)
    runset = RunSet(snapshot.codec)
    try:
        for members, removes, keeps in BATCHES:
            runset.put(members, removes, keeps)
        runset.plan(snapshot, snapshot_new=True, streamed=True)
        removals = [k for chunk in runset.planned("removals", 1000) for k in chunk]
    finally:
        runset.close()
    assert removals == sorted({key(8), key(9), key(11)} | ABSENT)


@pytest.mark.parametrize("chunk_keys", [1000, 3])
def test_without_removes_or_keeps_every_key_of_every_chunk_is_a_member(
    snapshot, monkeypatch, chunk_keys
):
    """The common case (members only) counts without merging the chunks' members again;
    a member named in two chunks counts once."""
    monkeypatch.setattr(mirror, "CHUNK_KEYS", chunk_keys)
    monkeypatch.setattr(mirror, "CHUNK_FANOUT", 2)
    runset = RunSet(snapshot.codec)
    batches = [[key(i) for i in (0, 1, 30)], [key(2), key(31), key(10)], [key(0), key(30)]]
    try:
        for members in batches:
            runset.put(members, [], [])
        plan = runset.plan(snapshot, snapshot_new=False, streamed=False)
        adds = [k for chunk in runset.planned("adds", 1000) for k in chunk]
        removals = [k for chunk in runset.planned("removals", 1000) for k in chunk]
    finally:
        runset.close()
    assert adds == [key(10), key(30), key(31)]
    assert removals == sorted({key(i) for i in range(3, 10)} | {key(11)})
    assert plan.members_in_source == 6 and plan.unchanged == 3
    assert plan.removals_of_members == 7 and plan.confirmed == len(CONFIRMED)


def test_a_sorter_failure_fails_the_plan(snapshot, monkeypatch):
    """An error of the sorter thread (a full disk, say) is raised by the plan, never lost."""
    monkeypatch.setattr(mirror, "CHUNK_KEYS", 1)
    runset = RunSet(snapshot.codec)
    runset._sorted.execute("CREATE TABLE chunk1 (h BLOB)")  # the second chunk cannot be made
    try:
        for members, removes, keeps in BATCHES:
            runset.put(members, removes, keeps)
        with pytest.raises(Exception, match="chunk1 already exists"):
            runset.plan(snapshot, snapshot_new=False, streamed=False)
    finally:
        runset.close()


def test_a_merge_of_chunks_stopped_when_the_input_ends_loses_nothing(snapshot, monkeypatch):
    """Once the input is read, the plan would wait for a merge of chunks in progress; the
    merge stops half-way instead, and the plan merges the whole chunks itself."""

    class StopsMidway:
        """Not set when a merge starts, set by its first look during the SQL."""

        def __init__(self) -> None:
            self.looks = 0

        def is_set(self) -> bool:
            self.looks += 1
            return self.looks > 1

        def set(self) -> None:
            pass

    monkeypatch.setattr(mirror, "CHUNK_KEYS", 2)
    monkeypatch.setattr(mirror, "CHUNK_FANOUT", 2)
    monkeypatch.setattr(mirror, "PROGRESS_STEPS", 1)
    runset = RunSet(snapshot.codec)
    stop = StopsMidway()
    runset._finishing = stop  # type: ignore[assignment]
    try:
        runset.put(*BATCHES[0])  # one chunk: no merge yet
        runset.put(*BATCHES[1])  # a second chunk: their merge starts, and stops
        runset._all_sorted()
        assert stop.looks >= 2
        assert [tier for _, tier in runset._chunks] == [0, 0]  # both kept whole
        for batch in BATCHES[2:]:
            runset.put(*batch)
        runset._finishing = mirror.threading.Event()
        plan = runset.plan(snapshot, snapshot_new=False, streamed=False)
        adds = [k for chunk in runset.planned("adds", 1000) for k in chunk]
        removals = [k for chunk in runset.planned("removals", 1000) for k in chunk]
    finally:
        runset.close()
    assert adds == sorted(MEMBERS - set(CONFIRMED))
    assert removals == sorted({key(8), key(9), key(11)})
    assert plan.members_in_source == len(MEMBERS)


def test_an_identifier_added_twice_counts_once(tmp_path):
    """A member named in far-apart batches of a first run may be sent twice (ADD is
    idempotent): the report counts identifiers, not sends."""
    from target_pinterest_audiences.store.snapshot import KeyCodec

    runset = RunSet(KeyCodec("EMAIL"))
    try:
        runset.record_added([key(i) for i in range(40)])
        runset.record_added([key(i) for i in range(30, 50)])
        runset.record_added([key(7)])
        assert runset.distinct_added() == 50
        assert runset.distinct_added() == 50  # asked again: the same
    finally:
        runset.close()


@pytest.mark.parametrize("list_type", ["EMAIL", "LR_ID"])
def test_adds_counted_early_and_late_count_once(list_type):
    """A run that streamed its members counts its adds so far while the plan runs
    (count_added_early); the plan's adds, recorded meanwhile (they wait for the count) or
    after, are counted with them, each identifier once."""
    from target_pinterest_audiences.store.snapshot import KeyCodec

    runset = RunSet(KeyCodec(list_type))
    try:
        for start in range(0, 60_000, 10_000):  # repeats: 10,000-14,999 of each 10,000
            runset.record_added([key(i) for i in range(start, start + 15_000)])
        runset.count_added_early()
        assert runset._added_count is not None
        runset.record_added([key(i) for i in range(64_000, 70_000)])  # waits for the count
        runset.record_added([key(i) for i in range(69_000, 71_000)] + [key(5)])
        assert runset.distinct_added() == 71_000  # 0-70,999
        assert runset.distinct_added() == 71_000  # asked again: the same
    finally:
        runset.close()


@pytest.mark.parametrize("later_adds", [False, True])
def test_an_early_count_that_failed_fails_the_count(monkeypatch, later_adds):
    """What the early count raised reaches distinct_added, even when a request thread
    recorded its adds after it (the error is not raised in that thread, and its rows are
    recorded): the report never shows a count short of them."""
    from target_pinterest_audiences.store.snapshot import KeyCodec

    runset = RunSet(KeyCodec("EMAIL"))
    try:
        runset.record_added([key(i) for i in range(10)])
        with monkeypatch.context() as patched:
            patched.setattr(mirror, "ROW_KEY_SQL", "no_such_function(keys)")
            runset.count_added_early()
            assert runset._added_count is not None
            runset._added_count[0].wait()  # failed with the broken SQL
        if later_adds:
            runset.record_added([key(i) for i in range(10, 20)])
        with pytest.raises(mirror.sqlite3.OperationalError, match="no_such_function"):
            runset.distinct_added()
        assert runset.distinct_added() == (20 if later_adds else 10)  # asked again: counted
    finally:
        runset.close()


def test_a_copy_of_members_that_changed_since_is_not_used(tmp_path):
    """The members are copied while the input is read; members confirmed after that (the
    plan merges the change log first) make the copy stale: the plan reads the snapshot."""
    store = SnapshotStore(ad_account_id="1", logger=logging.getLogger("test"), directory=tmp_path)
    snapshot = open_snapshot(store)
    runset = RunSet(snapshot.codec)
    try:
        runset.copy_members(snapshot)
        assert runset._copy is not None
        runset._copy[0].wait()  # copied before the change
        entry = snapshot.journal("ADD", [key(40)], 0.0)
        snapshot.confirm(entry, "ADD", [key(40)], [])
        runset.put(CONFIRMED, [], [])
        plan = runset.plan(snapshot, snapshot_new=False, streamed=False)
        removals = [k for chunk in runset.planned("removals", 1000) for k in chunk]
    finally:
        runset.close()
        snapshot.close()
        store.close()
    assert removals == [key(10), key(11), key(40)]  # in doubt (10, 11), confirmed since (40)
    assert plan.confirmed == len(CONFIRMED) + 1 and plan.removals_of_members == 1
