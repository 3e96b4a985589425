"""The snapshot's packed members (issue 18: at most 40 bytes of disk per member).

Confirmed members are kept several to a row, in key order, each row holding the members
from its first key up to the next row's; identifiers in doubt keep a row each. These tests
drive the snapshot's own API (journal, confirm, mark_in_doubt, count, pages) through random
rounds of changes against a model, on SQLite and PostgreSQL, and check the rows' shape, the
SQL a mirror run's plan reads the members with, and the move of members kept a row each
(stores made before the packing) into packed rows.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import pytest
from test_mirror import snapshot_database  # noqa: F401 - a fixture, used by name

from target_pinterest_audiences.store.snapshot import (
    PACKED_ROW_MAX,
    Snapshot,
    SnapshotStore,
    confirmed_count_sql,
    confirmed_keys_sql,
    is_confirmed_sql,
)

LOG = logging.getLogger("test")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path):
    url = None
    if request.param == "postgres":
        url, _ = request.getfixturevalue("snapshot_database")
    opened = SnapshotStore(ad_account_id="1", logger=LOG, directory=tmp_path, url=url)
    yield opened
    opened.close()


def digest(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def members_of(snapshot: Snapshot) -> dict[bytes, bool]:
    found = [member for page in snapshot.pages() for member in page]
    keys = [key for key, _ in found]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # in key order, each once
    return dict(found)


def packed_rows_of(snapshot: Snapshot) -> list[tuple[bytes, int, bytes]]:
    with snapshot._lock:
        rows = snapshot._exec(
            "SELECT lo, width, keys FROM pinterest_audience_snapshot_packed WHERE list_key = ? "
            "ORDER BY lo",
            (snapshot._key,),
        ).fetchall()
    return [(bytes(lo), width, bytes(keys)) for lo, width, keys in rows]


def check_rows(snapshot: Snapshot) -> None:
    """Each row: one width, its keys in order, at most PACKED_ROW_MAX; rows never overlap."""
    previous = b""
    for lo, width, keys in packed_rows_of(snapshot):
        inner = [keys[i : i + width] for i in range(0, len(keys), width)] if width else []
        assert not width or len(keys) % width == 0
        row = [lo, *inner]
        assert row == sorted(row) and len(set(row)) == len(row)
        assert 1 <= len(row) <= PACKED_ROW_MAX
        assert previous < lo
        previous = row[-1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_packed_members_follow_every_change(store, seed):
    """Adds, removals and writes in doubt, merged in rounds of every size (a first run's
    thousands, a few, one): the members read back are the model's, every round."""
    rng = random.Random(seed)
    snapshot = store.open("42", list_type="EMAIL")
    assert snapshot is not None
    model: dict[str, bool] = {}  # identifier -> confirmed (False: in doubt)
    for size in (3000, 1, 40, 700, 5, 2500, 2):
        known = list(model)
        adds = [digest(rng) for _ in range(size)] + rng.sample(known, min(len(known), size // 3))
        removes = rng.sample(known, min(len(known), size // 2))
        removes = [h for h in removes if h not in adds]
        doubtful = rng.sample(adds, len(adds) // 10)
        applied = [h for h in adds if h not in doubtful]
        entry = snapshot.journal("ADD", adds, 0.0)
        snapshot.confirm(entry, "ADD", applied, doubtful)
        model.update(dict.fromkeys(applied, True))
        model.update(dict.fromkeys(doubtful, False))
        if removes:
            entry = snapshot.journal("REMOVE", removes, 0.0)
            snapshot.confirm(entry, "REMOVE", removes, [])
            for h in removes:
                model.pop(h)
        lost = rng.sample(list(model), min(len(model), 3))
        snapshot.mark_in_doubt(lost)
        model.update(dict.fromkeys(lost, False))
        assert snapshot.count() == sum(model.values())
        assert members_of(snapshot) == {bytes.fromhex(h): ok for h, ok in model.items()}
        check_rows(snapshot)
    rows = packed_rows_of(snapshot)
    # Packed: several members to a row, not one each.
    assert len(rows) * 6 <= sum(model.values())
    snapshot.close()
    again = store.open("42", list_type="EMAIL")
    assert again is not None
    assert members_of(again) == {bytes.fromhex(h): ok for h, ok in model.items()}
    again.close()


def test_removals_that_empty_rows_leave_no_near_empty_rows(store):
    """A list that loses most of its members is not left as rows of one or two members:
    a rewritten row with too few takes in the next one."""
    rng = random.Random(3)
    snapshot = store.open("42", list_type="EMAIL")
    assert snapshot is not None
    keys = [digest(rng) for _ in range(4000)]
    entry = snapshot.journal("ADD", keys, 0.0)
    snapshot.confirm(entry, "ADD", keys, [])
    assert snapshot.count() == 4000
    gone = rng.sample(keys, 3600)
    entry = snapshot.journal("REMOVE", gone, 0.0)
    snapshot.confirm(entry, "REMOVE", gone, [])
    assert snapshot.count() == 400
    rows = packed_rows_of(snapshot)
    assert len(rows) <= 400 / 3, len(rows)  # about 4 members per row at the least
    check_rows(snapshot)
    snapshot.close()


def test_keys_of_other_lengths_keep_their_own_rows(store):
    """A list of identifiers sent as given (LR_ID): keys of any length, in rows of one
    width, a key alone when no width fits (empty, 256 bytes or more)."""
    rng = random.Random(4)
    snapshot = store.open("42", list_type="LR_ID")
    assert snapshot is not None
    keys = sorted({"x" * rng.randint(1, 300) + str(i) for i in range(400)})
    entry = snapshot.journal("ADD", keys, 0.0)
    snapshot.confirm(entry, "ADD", keys, [])
    assert snapshot.count() == len(keys)
    assert members_of(snapshot) == {key.encode(): True for key in keys}
    check_rows(snapshot)
    assert any(width == 0 for _, width, _ in packed_rows_of(snapshot))
    snapshot.close()


def test_the_plan_sql_reads_the_packed_members(tmp_path):
    """The SQL a mirror run's plan reads an attached snapshot with: every confirmed member
    once, their count, and the membership test for each key: a row's first key, one inside
    it, and keys between rows, below the first and above the last."""
    rng = random.Random(5)
    store = SnapshotStore(ad_account_id="1", logger=LOG, directory=tmp_path)
    snapshot = store.open("42", list_type="EMAIL")
    assert snapshot is not None
    keys = sorted(digest(rng) for _ in range(2000))
    entry = snapshot.journal("ADD", keys, 0.0)
    snapshot.confirm(entry, "ADD", keys, [])
    where = snapshot.sqlite_members()
    assert where is not None
    path, list_key = where
    probes = [bytes.fromhex(h) for h in keys]
    outside = [b"\x00" * 32, b"\xff" * 32] + [rng.randbytes(32) for _ in range(2000)]
    outside = [h for h in outside if h.hex() not in set(keys)]
    conn = sqlite3.connect(":memory:")
    conn.execute("ATTACH ? AS snap", (f"file:{path}?mode=ro",))
    conn.execute("CREATE TABLE probe (h BLOB)")
    conn.executemany("INSERT INTO probe VALUES (?)", [(h,) for h in probes + outside])
    unpacked = [bytes(h) for (h,) in conn.execute(confirmed_keys_sql("snap.", list_key))]
    assert sorted(unpacked) == probes
    assert conn.execute(confirmed_count_sql("snap.", list_key)).fetchone()[0] == len(keys)
    found = {
        bytes(h)
        for (h,) in conn.execute(
            "SELECT h FROM probe WHERE "  # noqa: S608 - SQL of ours, no input in it
            + is_confirmed_sql("snap.", list_key, "probe.h")
        )
    }
    assert found == set(probes)
    conn.close()
    snapshot.close()
    store.close()


def test_members_kept_a_row_each_move_into_packed_rows(store):
    """A store made before the packing keeps every member a row each (confirmed = 1): opened
    now, they move into packed rows in one transaction; rows in doubt stay as they are."""
    snapshot = store.open("42", list_type="EMAIL")
    assert snapshot is not None
    list_key = snapshot._key
    old = sorted(f"{i:064x}" for i in range(1, 301))
    with snapshot._lock:
        snapshot._insert_values(
            "pinterest_audience_snapshot_members",
            "list_key, h, confirmed",
            [(list_key, bytes.fromhex(h), 1) for h in old[:-1]] + [(list_key, b"\xee" * 32, 0)],
        )
        snapshot._conn.commit()
    snapshot.close()
    again = store.open("42", list_type="EMAIL")
    assert again is not None
    assert again.count() == len(old) - 1
    expected = {bytes.fromhex(h): True for h in old[:-1]} | {b"\xee" * 32: False}
    assert members_of(again) == expected
    with again._lock:
        left = again._exec(
            "SELECT h, confirmed FROM pinterest_audience_snapshot_members WHERE list_key = ?",
            (list_key,),
        ).fetchall()
    assert [(bytes(h), confirmed) for h, confirmed in left] == [(b"\xee" * 32, 0)]
    check_rows(again)
    again.close()


def test_packed_members_take_under_40_bytes_of_disk_each(tmp_path):
    """The SQLite file of 30,000 members, before and after a round of 1% churn: at most 40
    bytes per member (one row per member took 45). A size, not a time: deterministic."""
    rng = random.Random(6)
    store = SnapshotStore(ad_account_id="1", logger=LOG, directory=tmp_path)
    keys = [digest(rng) for _ in range(30_000)]

    def run(adds: list[str], removes: list[str]) -> int:
        snapshot = store.open("42", list_type="EMAIL")
        assert snapshot is not None
        for op, batch in (("ADD", adds), ("REMOVE", removes)):
            for start in range(0, len(batch), 10_000):
                part = batch[start : start + 10_000]
                snapshot.confirm(snapshot.journal(op, part, 0.0), op, part, [])
        count = snapshot.count()
        snapshot.close()
        (path,) = tmp_path.glob("snapshot-*.sqlite")
        size = path.stat().st_size + sum(p.stat().st_size for p in tmp_path.glob("*-wal"))
        return size // count

    assert run(keys, []) <= 40
    assert run([digest(rng) for _ in range(300)], rng.sample(keys, 300)) <= 40
    store.close()


@pytest.mark.parametrize("first", [True, False])
def test_changes_out_of_key_order_are_refused_not_merged(tmp_path, monkeypatch, first):
    """The merge relies on the database's sort: identifiers that came out of key order would
    be packed wrongly, so they raise, and nothing of the merge is kept, not even rows
    already written (a list's first fill, or a merge into its rows): the change log stays,
    and the next merge, in order, packs every member."""
    from target_pinterest_audiences.store import snapshot as module
    from target_pinterest_audiences.store.snapshot import SnapshotError

    store = SnapshotStore(ad_account_id="1", logger=LOG, directory=tmp_path)
    snapshot = store.open("42", list_type="EMAIL")
    assert snapshot is not None
    rng = random.Random(7)
    before = sorted(digest(rng) for _ in range(50))
    if not first:
        entry = snapshot.journal("ADD", before, 0.0)
        snapshot.confirm(entry, "ADD", before, [])
        assert snapshot.count() == 50
    packed = sqlite3.connect(tmp_path / snapshot._path.name)
    rows_before = packed.execute("SELECT COUNT(*) FROM pinterest_audience_snapshot_packed")
    (rows_before,) = rows_before.fetchone()
    keys = sorted(digest(rng) for _ in range(200))
    entry = snapshot.journal("ADD", keys, 0.0)
    snapshot.confirm(entry, "ADD", keys, [])
    stream = snapshot._stream

    def swapped(*args, **kwargs):  # the last two identifiers change places
        rows = list(stream(*args, **kwargs))
        rows[-2], rows[-1] = rows[-1], rows[-2]
        return iter(rows)

    with monkeypatch.context() as patched:
        patched.setattr(module, "_PACKED_BATCH", 1)  # rows written before the error
        patched.setattr(snapshot, "_stream", swapped)
        with pytest.raises(SnapshotError, match="out of key order"):
            snapshot.count()
    snapshot.journal("ADD", [keys[0]], 0.0)  # a commit: it must not keep the merge's rows
    (rows_after,) = packed.execute(
        "SELECT COUNT(*) FROM pinterest_audience_snapshot_packed"
    ).fetchone()
    assert rows_after == rows_before
    members = {*keys} if first else {*before, *keys}
    assert snapshot.count() == len(members)
    assert {h.hex() for page in snapshot.pages() for h, _ in page} == members
    check_rows(snapshot)
    packed.close()
    snapshot.close()
    store.close()
