"""The safety rules at their boundaries (issue 19, item 4).

Each test was checked to fail with a bug planted on purpose, which no earlier fast test caught:
the removal cap moved from 20% to 30% (earlier tests only removed 50%), a mirror run that goes
on to remove after a fatal error (the earlier test's removal was over the cap, which hid it),
and identifiers of a timed-out write left out of doubt (no earlier test waited for the late
write to land before reading the list).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import email_hash, lists_named, record, records, state, writes

SEGMENT = "Guarded"


def emails(ids: range) -> list[str]:
    return [f"member{i}@example.com" for i in ids]


def rows(addresses: list[str]) -> list[dict[str, Any]]:
    return [record(id=i + 1, segment_name=SEGMENT, email=a) for i, a in enumerate(addresses)]


def hashed(addresses: list[str]) -> set[str]:
    return {email_hash(a) for a in addresses}


def members_of(emulator, segment: str = SEGMENT) -> set[str]:
    (found,) = lists_named(emulator, segment)
    return set(found["members"])


def patches_since(emulator, before: int) -> list[tuple[str, int]]:
    return [
        (w["operation_type"], w["n_records"])
        for w in writes(emulator)[before:]
        if w["method"] == "PATCH" and w["status"] == 200
    ]


def mirror_config(base_config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**base_config, "sync_mode": "mirror", **extra}


# ---- (a) the removal cap at its boundary ----------------------------------------------------


@pytest.mark.parametrize(
    ("removed", "held_back"),
    [(5, True), (4, False), (3, False)],
    ids=["25%-held-back", "20%-goes-through", "15%-goes-through"],
)
def test_removal_cap_at_its_default_boundary(emulator, base_config, run_target, removed, held_back):
    """max_removal_fraction defaults to 0.2, and only *more than* that is held back."""
    config = mirror_config(base_config)
    assert "max_removal_fraction" not in config
    first = run_target(config, rows(emails(range(20))))
    assert first.returncode == 0, first.stderr
    before = len(writes(emulator))

    kept = emails(range(removed, 20))
    run = run_target(config, rows(kept))
    report = run.final
    if held_back:
        assert run.returncode != 0
        assert members_of(emulator) == hashed(emails(range(20)))
        assert patches_since(emulator, before) == []
        assert report["removals_held_back"] == removed
        assert report["identifiers_removed"] == 0
        assert "(25.0%), above max_removal_fraction 0.2" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert members_of(emulator) == hashed(kept)
        assert patches_since(emulator, before) == [("REMOVE", removed)]
        assert report["identifiers_removed"] == removed
        assert report["removals_held_back"] == 0


# ---- (b) a mirror run that ends on a fatal error removes nothing -----------------------------


def test_a_run_ending_on_a_fatal_error_removes_nothing_even_under_the_cap(
    emulator, base_config, run_target
):
    # on_invalid_record: fail (the default); batches of 10 records: the 4 batches before the
    # invalid record are taken in whole, only the batch holding it is dropped.
    config = mirror_config(base_config, identifiers_per_request=10)
    assert run_target(config, rows(emails(range(44)))).returncode == 0
    before = len(writes(emulator))
    # 40 of the 44 members (a 9% removal, under the 20% cap), then, last in the input, a
    # record that stops the run: the source was not read to its end, so it is not the whole
    # audience and nobody may be removed.
    messages = [*rows(emails(range(4, 44))), record(id=99, segment_name=SEGMENT, email="bad")]
    run = run_target(config, messages)
    assert run.returncode != 0
    assert "record 41 (stream 'customers') is invalid" in run.stderr
    assert run.final["records_written"] == 40  # the records before it were taken in
    assert members_of(emulator) == hashed(emails(range(44)))
    assert [op for op, _ in patches_since(emulator, before)] == []
    assert run.final["identifiers_removed"] == 0


# ---- (c) a write that lands after its timeout and after the opposite action -----------------


def wait_until_every_request_answered(emulator, timeout: float = 15) -> None:
    """The emulator applies a delayed write after the client gave up on it: read the list
    only once every request it received has been handled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r["status"] is not None for r in emulator.state(members=False)["requests"]):
            return
        time.sleep(0.05)
    raise AssertionError("the emulator still holds unanswered requests")


@pytest.mark.parametrize(("first", "then"), [("add", "remove"), ("remove", "add")])
def test_a_write_applied_after_its_timeout_and_the_opposite_action_is_undone(
    emulator, base_config, run_target, first, then
):
    # p is a member; x is a member only when the first action is a remove.
    seed = ["p@example.com"] + (["x@example.com"] if first == "remove" else [])
    seeded = run_target(
        base_config, records([{"segment_name": SEGMENT, "email": e, "action": "add"} for e in seed])
    )
    assert seeded.returncode == 0, seeded.stderr
    before = len(writes(emulator))
    # The first PATCH (x's first action) is applied 2.5 s after it arrives; the client gives
    # up after 1 s and sends it again (applied at once), then sends the opposite action.
    emulator.add_fault("delay", delay_ms=2500, methods=["PATCH"], count=1)
    config = {
        **base_config,
        "identifiers_per_request": 1,
        "request_timeout_seconds": 1,
        "checkpoint_interval_seconds": 0,  # the first action goes out before the second is read
    }
    rows_in = [
        {"segment_name": SEGMENT, "action": first, "email": "x@example.com"},
        {"segment_name": SEGMENT, "action": then, "email": "x@example.com"},
    ]
    run = run_target(config, [*records(rows_in), state({"bookmarks": {"b": 2}})])
    assert run.returncode == 0, run.stderr
    wait_until_every_request_answered(emulator)

    expected = {email_hash("p@example.com")} | (
        {email_hash("x@example.com")} if then == "add" else set()
    )
    assert members_of(emulator) == expected
    assert run.states[-1]["bookmarks"] == {"b": 2}
    # The scenario holds: the delayed write was applied after the opposite action had arrived.
    sent = [w for w in writes(emulator)[before:] if w["method"] == "PATCH"]
    delayed = next(w for w in sent if w.get("fault") == "delay")
    opposite = [w for w in sent if w["operation_type"] == then.upper()]
    assert delayed["operation_type"] == first.upper()
    assert opposite and opposite[0]["t"] < delayed["t"] + 2.5
