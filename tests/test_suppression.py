"""Opt-outs: suppression streams and the suppression set, through the installed CLI and the
emulator (docs/opt-outs.md).

A suppression stream's identifiers leave every Customer List the snapshot store keeps, in
the run that names them, and no later run adds them back; records that would add them are
skipped with the reason `suppressed`, naming nobody.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import SCHEMA, email_hash, lists_named, members, record, state
from test_mirror import snapshot_database  # noqa: F401 - the fixture: a fresh PostgreSQL database

OPTOUTS = "optouts"
OPTOUT_SCHEMA = {
    "type": "SCHEMA",
    "stream": OPTOUTS,
    "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
    "key_properties": ["id"],
}
SEGMENTS = ("Spring sale", "Loyal buyers", "Lapsed")


def people(ids: range | list[int]) -> list[str]:
    return [f"Person{i}@Example.com" for i in ids]


def adds(segment: str, addresses: list[str], start: int = 1) -> list[dict[str, Any]]:
    return [
        record(id=start + i, segment_name=segment, action="add", email=f" {a} ")
        for i, a in enumerate(addresses)
    ]


def optouts(addresses: list[str], start: int = 1000) -> list[dict[str, Any]]:
    """Suppression records: identifier fields only (no segment_name, no action)."""
    return [
        {"type": "RECORD", "stream": OPTOUTS, "record": {"id": start + i, "email": a.upper()}}
        for i, a in enumerate(addresses)
    ]


def config_for(base_config: dict[str, Any], segment: str, **extra: Any) -> dict[str, Any]:
    return {**base_config, "audience_name": f"{segment} audience", **extra}


def with_optouts(base_config: dict[str, Any], segment: str, **extra: Any) -> dict[str, Any]:
    return config_for(base_config, segment, suppression_streams=[OPTOUTS], **extra)


def list_id_of(emulator, segment: str) -> str:
    (found,) = lists_named(emulator, segment)
    return found["id"]


def hashed(addresses: list[str]) -> set[str]:
    return {email_hash(a) for a in addresses}


def three_audiences(emulator, base_config, run_target, **extra: Any) -> dict[str, str]:
    """Three earlier runs, one list each; persons 0-9 are in all three."""
    ids = {}
    for n, segment in enumerate(SEGMENTS):
        run = run_target(
            config_for(base_config, segment, **extra),
            adds(segment, people(range(10)) + people(range(100 + 10 * n, 105 + 10 * n))),
        )
        assert run.returncode == 0, run.stderr
        ids[segment] = list_id_of(emulator, segment)
    return ids


def assert_names_nobody(text: str, addresses: list[str]) -> None:
    for address in addresses:
        for form in (address, address.lower(), address.upper(), email_hash(address)):
            assert form not in text, "an identifier was printed"


def test_a_suppression_stream_removes_people_from_three_audiences_and_keeps_them_out(
    emulator, base_config, run_target, isolated_state_home
):
    ids = three_audiences(emulator, base_config, run_target)
    gone = people([1, 2])
    # The suppression run also syncs the first segment: person 3 is added by a segment
    # record, then opts out in a later record of the same run; person 4 opts out first and
    # a later segment record would add them.
    messages = [
        SCHEMA,
        OPTOUT_SCHEMA,
        *adds(SEGMENTS[0], people([3, 20]), start=1),
        *optouts([*gone, *people([3, 4])]),
        state({"bookmarks": {"optouts": 1}}),
        *adds(SEGMENTS[0], people([4, 21]), start=10),
    ]
    run = run_target(with_optouts(base_config, SEGMENTS[0]), messages, with_schema=False)
    assert run.returncode == 0, run.stderr
    out = hashed(people([1, 2, 3, 4]))
    for segment in SEGMENTS:
        assert not members(emulator, ids[segment]) & out, segment
    assert hashed(people([20, 21])) <= members(emulator, ids[SEGMENTS[0]])
    assert hashed(people([0, 5, 9])) <= members(emulator, ids[SEGMENTS[2]])
    final = run.final
    assert final["records_skipped"] == {"suppressed": 1}  # person 4's add
    assert final["suppression_set_size"] == 4
    # Persons 1-4 were sent for removal to each of the three lists.
    assert final["suppressed_removed"] == 12
    assert "records skipped as suppressed 1" in run.stderr
    assert_names_nobody(run.stdout + run.stderr, people([1, 2, 3, 4]))

    # The set holds hashes only, in a private file beside the snapshots.
    (store,) = (isolated_state_home / "target-pinterest-audiences").glob("suppression-*.sqlite")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT h FROM pinterest_audience_suppression").fetchall()
    keys = {bytes(h).hex() for (h,) in rows}
    assert keys == out
    assert_names_nobody(store.read_bytes().decode("latin-1"), people([1, 2, 3, 4]))

    # A later run without the suppression stream: a mirror run whose source still holds
    # them adds none of them back, and skips them by reason.
    mirror = run_target(
        config_for(base_config, SEGMENTS[1], sync_mode="mirror"),
        adds(SEGMENTS[1], people(range(10)) + people(range(110, 115))),
    )
    assert mirror.returncode == 0, mirror.stderr
    assert not members(emulator, ids[SEGMENTS[1]]) & out
    assert mirror.final["records_skipped"] == {"suppressed": 4}
    assert mirror.final["identifiers_added"] == 0
    assert mirror.final["identifiers_removed"] == 0
    assert_names_nobody(mirror.stdout + mirror.stderr, people([1, 2, 3, 4]))
    # An events run too.
    events = run_target(config_for(base_config, SEGMENTS[2]), adds(SEGMENTS[2], people([1, 7])))
    assert events.returncode == 0, events.stderr
    assert events.final["records_skipped"] == {"suppressed": 1}
    assert email_hash(people([1])[0]) not in members(emulator, ids[SEGMENTS[2]])


def test_suppressed_records_go_to_the_rejected_records_file_without_an_identifier(
    emulator, base_config, run_target, tmp_path
):
    path = tmp_path / "rejected.jsonl"
    first = run_target(
        with_optouts(base_config, SEGMENTS[0]),
        [SCHEMA, OPTOUT_SCHEMA, *optouts(people([5]))],
        with_schema=False,
    )
    assert first.returncode == 0, first.stderr
    assert first.final["suppression_set_size"] == 1
    run = run_target(
        config_for(
            base_config, SEGMENTS[0], on_invalid_record="skip", rejected_records_path=str(path)
        ),
        adds(SEGMENTS[0], people([5, 6])),
    )
    assert run.returncode == 0, run.stderr
    (line,) = path.read_text().splitlines()
    assert json.loads(line) == {
        "record_number": 1,
        "stream": "customers",
        "keys": {"id": 1},
        "field": "identifiers",
        "reason": "suppressed",
    }
    assert_names_nobody(run.stderr + path.read_text(), people([5]))


def test_a_mirror_suppression_stream_is_the_whole_set_and_an_empty_one_lifts_nobody(
    emulator, base_config, run_target
):
    ids = three_audiences(emulator, base_config, run_target)
    mirror = {"sync_mode": "mirror"}
    first = run_target(
        with_optouts(base_config, SEGMENTS[0], **mirror),
        [OPTOUT_SCHEMA, *optouts(people(range(5)))],
        with_schema=False,
    )
    assert first.returncode == 0, first.stderr
    assert first.final["suppression_set_size"] == 5
    assert not members(emulator, ids[SEGMENTS[2]]) & hashed(people(range(5)))
    # An empty suppression source would let everybody back in: held, run fails, set kept.
    empty = run_target(
        with_optouts(base_config, SEGMENTS[0], **mirror), [OPTOUT_SCHEMA], with_schema=False
    )
    assert empty.returncode != 0
    assert "Suppression held back" in empty.stderr
    assert empty.final["suppression_set_size"] == 5
    # Person 0 opted back in: absent from the stream, lifted (4 of 5 stay: 20% = the cap).
    lifted = run_target(
        with_optouts(base_config, SEGMENTS[0], **mirror, max_removal_fraction=0.2),
        [OPTOUT_SCHEMA, *optouts(people(range(1, 5)))],
        with_schema=False,
    )
    assert lifted.returncode == 0, lifted.stderr
    assert lifted.final["suppression_set_size"] == 4
    assert lifted.final["suppressed_removed"] == 0  # nothing new to remove
    # Lifting adds nobody by itself; the next segment run holding them adds person 0 only.
    assert email_hash(people([0])[0]) not in members(emulator, ids[SEGMENTS[2]])
    again = run_target(config_for(base_config, SEGMENTS[2]), adds(SEGMENTS[2], people(range(5))))
    assert again.returncode == 0, again.stderr
    assert again.final["records_skipped"] == {"suppressed": 4}
    assert members(emulator, ids[SEGMENTS[2]]) & hashed(people(range(5))) == hashed(people([0]))


def test_a_dry_run_with_a_suppression_stream_writes_nothing(
    emulator, base_config, run_target, isolated_state_home
):
    ids = three_audiences(emulator, base_config, run_target)
    before = {segment: members(emulator, list_id) for segment, list_id in ids.items()}
    run = run_target(
        with_optouts(base_config, SEGMENTS[0], dry_run=True),
        [OPTOUT_SCHEMA, *optouts(people([1, 2]))],
        with_schema=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert {segment: members(emulator, list_id) for segment, list_id in ids.items()} == before
    assert "removals that would be sent 6" in run.stderr
    assert not list((isolated_state_home / "target-pinterest-audiences").glob("suppression-*"))


def test_the_suppression_set_in_postgresql(
    emulator,
    base_config,
    run_target,
    snapshot_database,  # noqa: F811 - the fixture
):
    url, name = snapshot_database
    ids = three_audiences(emulator, base_config, run_target, snapshot_url=url)
    run = run_target(
        with_optouts(base_config, SEGMENTS[1], snapshot_url=url),
        [OPTOUT_SCHEMA, *optouts(people([1, 2]))],
        with_schema=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.final["suppressed_removed"] == 6
    for list_id in ids.values():
        assert not members(emulator, list_id) & hashed(people([1, 2]))
    import psycopg

    with psycopg.connect(dbname=name) as conn:
        keys = {
            bytes(h).hex()
            for (h,) in conn.execute("SELECT h FROM pinterest_audience_suppression").fetchall()
        }
    assert keys == hashed(people([1, 2]))
    later = run_target(
        config_for(base_config, SEGMENTS[1], snapshot_url=url), adds(SEGMENTS[1], people([1, 3]))
    )
    assert later.returncode == 0, later.stderr
    assert later.final["records_skipped"] == {"suppressed": 1}
    assert not members(emulator, ids[SEGMENTS[1]]) & hashed(people([1, 2]))


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_the_suppression_file_is_private(tmp_path: Path, mode: int) -> None:
    import logging

    from target_pinterest_audiences.store.snapshot import SnapshotStore
    from target_pinterest_audiences.store.suppression import SuppressionSet

    store = SnapshotStore(ad_account_id="1", logger=logging.getLogger("t"), directory=tmp_path)
    path = tmp_path / "suppression-1.sqlite"
    if mode == 0o644:
        path.touch()
        os.chmod(path, mode)
    old = os.umask(0)
    try:
        kept = SuppressionSet(store)
        kept.add([("ab" * 32, "hashed")])
        kept.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_partner_ids_are_suppressed_and_kept_only_as_hashes(
    emulator, base_config, run_target, isolated_state_home
):
    """LiveRamp ids are sent as given, so the set keeps their hash, never the id."""
    ramp = [f"XY{n:04d}LiveRampId" for n in range(6)]
    extra = {"external_id_type": "LR_ID"}

    def ids(values: list[str], stream: str = "customers", **fields: Any) -> list[dict[str, Any]]:
        return [
            {"type": "RECORD", "stream": stream, "record": {"id": n, "external_id": v, **fields}}
            for n, v in enumerate(values)
        ]

    first = run_target(
        config_for(base_config, SEGMENTS[0], **extra),
        ids(ramp, segment_name=SEGMENTS[0], action="add"),
    )
    assert first.returncode == 0, first.stderr
    list_id = list_id_of(emulator, SEGMENTS[0])
    # A list of email digests is not sent partner ids (its type does not fit).
    other = run_target(config_for(base_config, SEGMENTS[1]), adds(SEGMENTS[1], people(range(3))))
    assert other.returncode == 0, other.stderr
    run = run_target(
        with_optouts(base_config, SEGMENTS[0], **extra),
        [OPTOUT_SCHEMA, *ids(ramp[:2], stream=OPTOUTS)],
        with_schema=False,
    )
    assert run.returncode == 0, run.stderr
    assert members(emulator, list_id) == set(ramp[2:])
    assert run.final["suppressed_removed"] == 2
    for value in ramp[:2]:
        assert value not in run.stdout + run.stderr
    (store,) = (isolated_state_home / "target-pinterest-audiences").glob("suppression-*.sqlite")
    raw = store.read_bytes()
    for value in ramp[:2]:
        assert value.encode() not in raw
    later = run_target(
        config_for(base_config, SEGMENTS[0], **extra),
        ids(ramp[:3], segment_name=SEGMENTS[0], action="add"),
    )
    assert later.returncode == 0, later.stderr
    assert later.final["records_skipped"] == {"suppressed": 2}
    assert members(emulator, list_id) == set(ramp[2:])


def test_a_removal_a_list_refused_is_sent_again_by_the_next_run(emulator, base_config, run_target):
    ids = three_audiences(emulator, base_config, run_target)
    refusing = ids[SEGMENTS[1]]
    emulator.add_fault("status", status=403, code=29, methods=["PATCH"], path_contains=refusing)
    run = run_target(
        with_optouts(base_config, SEGMENTS[0]),
        [OPTOUT_SCHEMA, *optouts(people([1]))],
        with_schema=False,
    )
    assert run.returncode != 0
    assert f"was not confirmed by Customer List(s) {refusing}" in run.stderr.splitlines()[-1]
    one = email_hash(people([1])[0])
    assert one not in members(emulator, ids[SEGMENTS[0]])
    assert one in members(emulator, refusing)
    # Kept out meanwhile, by a run without the suppression stream.
    kept = run_target(config_for(base_config, SEGMENTS[2]), adds(SEGMENTS[2], people([1])))
    assert kept.final["records_skipped"] == {"suppressed": 1}
    emulator.clear_faults()
    # The next run with the suppression stream (no new record) sends the pending removal.
    again = run_target(with_optouts(base_config, SEGMENTS[0]), [OPTOUT_SCHEMA], with_schema=False)
    assert again.returncode == 0, again.stderr
    assert one not in members(emulator, refusing)
    assert again.final["suppressed_removed"] == 3
    # Confirmed everywhere: not pending any more, nothing sent by the run after.
    last = run_target(with_optouts(base_config, SEGMENTS[0]), [OPTOUT_SCHEMA], with_schema=False)
    assert last.returncode == 0, last.stderr
    assert last.final["suppressed_removed"] == 0


def test_every_stream_of_a_run_skips_and_loses_the_suppressed(emulator, base_config, run_target):
    """Many segments in one run: each stream is its own dataset; all honour the set."""
    config = {
        **base_config,
        "audiences": {
            "vip": {"audience_name": "VIP audience"},
            "lapsed": {"audience_name": "Lapsed audience"},
        },
        "suppression_streams": [OPTOUTS],
    }

    def stream_schema(name: str) -> dict[str, Any]:
        return {**SCHEMA, "stream": name}

    def rows(stream: str, segment: str, addresses: list[str], start: int) -> list[dict[str, Any]]:
        return [{**r, "stream": stream} for r in adds(segment, addresses, start=start)]

    messages = [
        stream_schema("vip"),
        stream_schema("lapsed"),
        OPTOUT_SCHEMA,
        *rows("vip", "VIP", people([1, 2, 3]), 1),
        *rows("lapsed", "Lapsed", people([1, 4]), 10),
        *optouts(people([1, 5])),
        *rows("lapsed", "Lapsed", people([5, 6]), 20),
    ]
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 0, run.stderr
    vip, lapsed = list_id_of(emulator, "VIP"), list_id_of(emulator, "Lapsed")
    assert members(emulator, vip) == hashed(people([2, 3]))
    assert members(emulator, lapsed) == hashed(people([4, 6]))
    reports = run.states[-1]["pinterest_audiences"]
    assert reports["lapsed"]["records_skipped"] == {"suppressed": 1}
    assert reports["vip"]["records_skipped"] == {}
    assert reports["vip"]["suppression_set_size"] == 2
    assert_names_nobody(run.stdout + run.stderr, people([1, 5]))


def test_a_run_of_only_a_suppression_stream_needs_no_audience(emulator, base_config, run_target):
    """An opt-out job (one stream of opt-outs, no segment) names no Audience: it removes the
    people from every list the store keeps and reports on STATE under pinterest_suppression."""
    ids = three_audiences(emulator, base_config, run_target)
    config = {**base_config, "suppression_streams": [OPTOUTS]}
    del config["audience_name"]
    run = run_target(config, [OPTOUT_SCHEMA, *optouts(people([1, 2]))], with_schema=False)
    assert run.returncode == 0, run.stderr
    for segment in SEGMENTS:
        assert not members(emulator, ids[segment]) & hashed(people([1, 2])), segment
    final = run.states[-1]
    assert final["pinterest_audiences"] == {}
    assert final["pinterest_suppression"]["suppressed_removed"] == 6
    assert final["pinterest_suppression"]["suppression_set_size"] == 2
    assert final["pinterest_suppression"]["records"] == 2
    assert len(emulator.state()["audiences"]) == 3  # nothing made for the opt-out stream
    # A segment stream in such a run still needs an Audience: refused at its SCHEMA.
    refused = run_target(config, [SCHEMA, *adds(SEGMENTS[0], people([7]))], with_schema=False)
    assert refused.returncode == 1
    assert "has no Audience" in refused.stderr.strip().splitlines()[-1]
