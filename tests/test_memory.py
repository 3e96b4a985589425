"""Peak RSS stays flat whatever the input's size (issue 18 goal 2: a run of 2M records or
members at most 1.10x one of 200,000; benchmarks/README.md, "Memory flatness").

What grew with the input, and is checked here at its boundary:

- glibc raised its mmap threshold to the size of every mapped block freed, so after the
  first few-megabyte block (a request body, an input buffer, SQLite's sort buffer) such
  blocks came from the heap, which kept the holes they left (target.py
  `_map_large_blocks`, every run);
- SQLite page caches that only a large run fills: the mirror sorter's (held between sorts,
  and sizing SQLite's sort buffer), the run set's and the snapshot's during the writes at
  the end of a mirror run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from target_pinterest_audiences.store.snapshot import KeyCodec, SnapshotStore
from target_pinterest_audiences.sync import mirror
from target_pinterest_audiences.sync.mirror import RunSet

PROBE = """
import ctypes
import sys

from target_pinterest_audiences.target import _map_large_blocks


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "mapped":
    _map_large_blocks()
libc.free(libc.malloc(30 << 20))  # glibc's own rule would raise its threshold to 30 MB here
info = libc.mallinfo2()
# Larger than all the heap's free space (which depends on what the interpreter did at start),
# so it cannot come from a free chunk: a new mapping or a grown heap.
size = info.fordblks + (1 << 20)
assert size < 30 << 20, info.fordblks
block = libc.malloc(size)
print(size, libc.mallinfo2().hblkhd - info.hblkhd)
libc.free(block)
"""


def _glibc_with_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    return hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")


def _probe(mode: str) -> tuple[int, int]:
    # glibc's own rule, whatever the environment would set instead
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_") and name != "GLIBC_TUNABLES"
    }
    out = subprocess.check_output([sys.executable, "-c", PROBE, mode], text=True, env=env)
    size, mapped = out.split()
    return int(size), int(mapped)


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc 2.33+ only (mallinfo2)")
def test_a_large_block_is_mapped_after_a_larger_one_was_freed():
    """Mapped blocks are unmapped when freed, the heap never holds their holes.
    Without `_map_large_blocks` the same block grows the heap (glibc's rule), with it the
    block has a mapping of its own."""
    size, mapped = _probe("heap")
    assert mapped == 0, (size, mapped)
    size, mapped = _probe("mapped")
    assert mapped >= size, (size, mapped)


@pytest.mark.parametrize("sync_mode", ["events", "mirror"])
def test_every_run_maps_large_blocks(monkeypatch, base_config, tmp_path, sync_mode):
    """Events runs too: their heap's free space grew with the input (4-10 MB at 200,000
    records, 11-16 MB at 2M) until large blocks were mapped."""
    from target_pinterest_audiences import target

    calls = []
    monkeypatch.setattr(target, "_map_large_blocks", lambda: calls.append(1))
    config = {**base_config, "sync_mode": sync_mode, "snapshot_path": str(tmp_path / "s")}
    target.TargetPinterestAudiences(config=config)
    assert calls == [1]


def _sqlite_memory() -> tuple[int, int]:
    """Bytes SQLite holds in this process by its own count (the library Python uses), and
    the most it held since the last call."""
    import _sqlite3

    library = ctypes.CDLL(_sqlite3.__file__)
    library.sqlite3_memory_used.restype = ctypes.c_int64
    library.sqlite3_memory_highwater.restype = ctypes.c_int64
    library.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    return int(library.sqlite3_memory_used()), int(library.sqlite3_memory_highwater(1))


def key(i: int) -> str:
    return f"{i:064x}"


def _sorted(runset: RunSet, chunks: int) -> None:
    """Wait for the sorter thread to have made `chunks` chunk tables."""
    for _ in range(600):
        if len(runset._chunks) >= chunks:
            return
        mirror.threading.Event().wait(0.05)
    raise AssertionError(f"the sorter made {len(runset._chunks)} chunks, not {chunks}")


def test_the_sorter_holds_a_few_megabytes_and_none_between_sorts(monkeypatch):
    """A mirror run of 200,000 members sorts once, at the end; one of 2M sorts every
    250,000 keys while reading. Each sort's buffers are small (SQLite sizes its sort buffer
    by the page cache: a cache of 4 MB held 8 MB more while sorting), and the pages cached
    for a sorted chunk are freed, so the next sort's buffers take their place instead of
    adding to them."""
    monkeypatch.setattr(mirror, "CHUNK_KEYS", 100_000)  # 3-4 MB of keys to sort
    runset = RunSet(KeyCodec("EMAIL"))
    try:
        runset.put([key(i) for i in range(10)], [], [])  # every connection in use
        before, _ = _sqlite_memory()
        held, peaks = [], []
        for chunk in range(3):
            runset.put([key(100_000 * chunk + i) for i in range(10, 100_010)], [], [])
            _sorted(runset, chunk + 1)
            used, peak = _sqlite_memory()
            held.append(used - before)
            peaks.append(peak - before)
    finally:
        runset.close()
    assert max(held) < 256 * 1024, held
    assert max(peaks) < 6 * 1024 * 1024, peaks


def test_the_writes_at_the_end_of_a_mirror_run_hold_small_caches(tmp_path: Path):
    """The end of a large mirror run (the plan read back, its adds written, journaled and
    confirmed) fills page caches that a small run leaves nearly empty: small caches keep
    the difference small. Measured here: 2.0 MB held; 3.6 MB with the snapshot's cache at
    SQLite's default 2 MB, or with the run set's at 1 MB; 5.2 MB with both."""
    store = SnapshotStore(ad_account_id="1", logger=logging.getLogger("test"), directory=tmp_path)
    snapshot = store.open("42", list_type="EMAIL")
    assert snapshot is not None
    runset = RunSet(snapshot.codec)
    try:
        runset.put([key(i) for i in range(60_000)], [], [])
        plan = runset.plan(snapshot, snapshot_new=True, streamed=False)
        assert plan.adds == 60_000
        before, _ = _sqlite_memory()
        for chunk in runset.planned("adds", 10_000):
            entry = snapshot.journal("ADD", chunk, 0.0)
            snapshot.confirm(entry, "ADD", chunk, [])
            runset.record_added(chunk)
        assert runset.distinct_added() == 60_000
        held, _ = _sqlite_memory()
    finally:
        runset.close()
        snapshot.close()
        store.close()
    assert held - before < 2816 * 1024, held - before
