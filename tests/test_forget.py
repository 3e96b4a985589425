"""`target-pinterest-audiences-admin forget`: erasure requests, through the installed command
and the emulator (docs/opt-outs.md).

The people of a file leave every Customer List of the ad account (or, with --only-synced,
the target's own), enter the suppression set so that no run adds them back, and the receipt
names lists and counts, never a person.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import requests
from conftest import ACCESS_TOKEN, AD_ACCOUNT, Run, email_hash, members
from test_status import clean_env, script
from test_suppression import (
    SEGMENTS,
    adds,
    assert_names_nobody,
    config_for,
    hashed,
    list_id_of,
    people,
    snapshot_database,  # noqa: F401 - the fixture: a fresh PostgreSQL database
)

from target_pinterest_audiences.store.snapshot import SnapshotStore
from target_pinterest_audiences.sync.status import confirmed_members


def forget_cmd(emulator, tmp_path: Path, *args: str, stdin: str | None = None) -> Run:
    env = clean_env(
        tmp_path,
        TARGET_PINTEREST_AUDIENCES_API_URL=emulator.api_url,
        TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN=ACCESS_TOKEN,
        TARGET_PINTEREST_AUDIENCES_AD_ACCOUNT_ID=AD_ACCOUNT,
    )
    done = subprocess.run(
        [script("target-pinterest-audiences-admin"), "forget", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def two_lists(emulator, base_config, run_target, **extra: Any) -> dict[str, str]:
    """Two lists made by the target; persons 0-9 are in both."""
    ids = {}
    for n, segment in enumerate(SEGMENTS[:2]):
        run = run_target(
            config_for(base_config, segment, **extra),
            adds(segment, people(range(10)) + people(range(100 + 10 * n, 105 + 10 * n))),
        )
        assert run.returncode == 0, run.stderr
        ids[segment] = list_id_of(emulator, segment)
    return ids


def outside_list(emulator, addresses: list[str]) -> str:
    """A list made in Ads Manager (not by the target): not in the snapshot store."""
    answer = requests.post(
        f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists",
        json={"name": "Made by hand", "records": ",".join(sorted(hashed(addresses)))},
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["id"])


def erasure_file(tmp_path: Path) -> Path:
    """Persons 1 and 2 (one twice, differently written), plus rows that are invalid."""
    path = tmp_path / "erasure.csv"
    path.write_text(
        "Email,ticket\n"
        " Person1@Example.com ,T-1\n"
        "PERSON2@EXAMPLE.COM,T-2\n"
        "person1@example.com,T-3\n"
        "not-an-email,T-4\n"
        ",T-5\n",
        encoding="utf-8",
    )
    return path


def test_forget_removes_from_every_list_prints_a_receipt_and_keeps_them_out(
    emulator, base_config, run_target, tmp_path
):
    ids = two_lists(emulator, base_config, run_target)
    by_hand = outside_list(emulator, people([1, 2, 3]))
    path = erasure_file(tmp_path)

    run = forget_cmd(emulator, tmp_path, "--input", str(path))
    assert run.returncode == 0, run.stderr
    gone = hashed(people([1, 2]))
    for list_id in (*ids.values(), by_hand):
        assert not members(emulator, list_id) & gone
    assert email_hash(people([3])[0]) in members(emulator, by_hand)
    receipt = run.stdout
    assert "Erasure receipt (forget)" in receipt
    assert "Input: 5 rows, 3 valid, 2 invalid (invalid_email: 1, no_identifier: 1)" in receipt
    assert "2 distinct identifiers" in receipt
    assert "Suppression set: 2 added, 0 already suppressed; size 2" in receipt
    for segment, list_id in ids.items():
        line = next(x for x in receipt.splitlines() if x.strip().startswith(list_id))
        assert segment in line and line.rstrip().endswith("confirmed")
        assert " 2 " in line
    assert "Made by hand" in receipt
    assert "Total: 3 lists, 6 identifiers sent for removal; every removal confirmed" in receipt
    assert_names_nobody(run.stdout + run.stderr, people([1, 2]))
    assert "T-4" not in receipt and "not-an-email" not in run.stdout + run.stderr

    # The target's snapshots follow: a later mirror run of the first segment, whose source
    # still holds them, neither adds them nor counts them as members.
    mirror = run_target(
        config_for(base_config, SEGMENTS[0], sync_mode="mirror"),
        adds(SEGMENTS[0], people(range(10)) + people(range(100, 105))),
    )
    assert mirror.returncode == 0, mirror.stderr
    assert mirror.final["records_skipped"] == {"suppressed": 2}
    assert mirror.final["identifiers_added"] == 0
    assert not members(emulator, ids[SEGMENTS[0]]) & gone

    # Again: harmless, the same receipt but nothing new in the set.
    again = forget_cmd(emulator, tmp_path, "--input", str(path), "--format", "json")
    assert again.returncode == 0, again.stderr
    answer = json.loads(again.stdout)
    assert answer["suppression_set"] == {"size": 2, "added": 0, "already_suppressed": 2}
    assert answer["totals"] == {
        "customer_lists": 3,
        "sent_for_removal": 6,
        "lists_confirmed": 3,
        "lists_failed": 0,
    }
    assert answer["complete"] is True
    assert {item["id"] for item in answer["customer_lists"]} == {*ids.values(), by_hand}
    assert_names_nobody(again.stdout + again.stderr, people([1, 2]))


def test_forget_only_synced_leaves_other_lists_and_fails_until_every_list_confirmed(
    emulator, base_config, run_target, tmp_path
):
    ids = two_lists(emulator, base_config, run_target)
    by_hand = outside_list(emulator, people([1]))
    path = tmp_path / "erasure.jsonl"
    path.write_text(
        json.dumps({"email": "person1@example.com"}) + "\n{not json\n", encoding="utf-8"
    )
    emulator.add_fault(
        "status", status=403, code=29, methods=["PATCH"], path_contains=ids[SEGMENTS[1]]
    )
    failed = forget_cmd(emulator, tmp_path, "--input", str(path), "--only-synced")
    assert failed.returncode == 1
    assert "invalid_json: 1" in failed.stdout
    line = next(x for x in failed.stdout.splitlines() if x.strip().startswith(ids[SEGMENTS[1]]))
    assert "FAILED" in line
    assert "run forget again" in failed.stdout
    one = email_hash(people([1])[0])
    assert one not in members(emulator, ids[SEGMENTS[0]])
    assert one in members(emulator, ids[SEGMENTS[1]])
    assert one in members(emulator, by_hand)  # not a list of the snapshot store
    assert_names_nobody(failed.stdout + failed.stderr, people([1]))
    # Suppressed anyway: a segment run does not add the person back meanwhile.
    run = run_target(config_for(base_config, SEGMENTS[0]), adds(SEGMENTS[0], people([1])))
    assert run.final["records_skipped"] == {"suppressed": 1}

    emulator.clear_faults()
    done = forget_cmd(emulator, tmp_path, "--input", str(path), "--only-synced")
    assert done.returncode == 0, done.stdout + done.stderr
    assert one not in members(emulator, ids[SEGMENTS[1]])
    assert one in members(emulator, by_hand)
    assert "Total: 2 lists" in done.stdout


def test_forget_dry_run_writes_nothing(emulator, base_config, run_target, tmp_path):
    ids = two_lists(emulator, base_config, run_target)
    before = {list_id: members(emulator, list_id) for list_id in ids.values()}
    writes_before = len(emulator.state(members=False)["requests"])
    run = forget_cmd(emulator, tmp_path, "--input", str(erasure_file(tmp_path)), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "DRY RUN, nothing written" in run.stdout
    assert "Suppression set: 2 would be added" in run.stdout
    assert "4 identifiers would be sent for removal; dry run: nothing was sent" in run.stdout
    assert {list_id: members(emulator, list_id) for list_id in ids.values()} == before
    requests_made = emulator.state(members=False)["requests"][writes_before:]
    assert all(r["method"] == "GET" for r in requests_made)
    state_dir = tmp_path / "xdg-state" / "target-pinterest-audiences"
    assert not list(state_dir.glob("suppression-*"))
    assert_names_nobody(run.stdout + run.stderr, people([1, 2]))
    # Nothing suppressed: a segment run adds them.
    again = run_target(config_for(base_config, SEGMENTS[0]), adds(SEGMENTS[0], people([1])))
    assert again.final["records_skipped"] == {}


def test_forget_lift_takes_people_out_of_the_set_and_removes_nothing(
    emulator, base_config, run_target, tmp_path
):
    ids = two_lists(emulator, base_config, run_target)
    path = erasure_file(tmp_path)
    assert forget_cmd(emulator, tmp_path, "--input", str(path)).returncode == 0
    writes_before = len(emulator.state(members=False)["requests"])
    one = tmp_path / "one.csv"
    one.write_text("email\nperson1@example.com\n", encoding="utf-8")
    dry = forget_cmd(emulator, tmp_path, "--input", str(one), "--lift", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 would be lifted" in dry.stdout
    lifted = forget_cmd(emulator, tmp_path, "--input", "-", "--lift", stdin=one.read_text())
    assert lifted.returncode == 0, lifted.stderr
    assert "Suppression set: 1 lifted, 0 were not suppressed; size 1" in lifted.stdout
    assert "Nothing is removed or added by a lift" in lifted.stdout
    assert len(emulator.state(members=False)["requests"]) == writes_before  # no request
    assert_names_nobody(lifted.stdout + lifted.stderr + dry.stdout, people([1]))
    # Lifting adds nobody; the next segment run that holds person 1 adds them, not person 2.
    assert email_hash(people([1])[0]) not in members(emulator, ids[SEGMENTS[0]])
    run = run_target(config_for(base_config, SEGMENTS[0]), adds(SEGMENTS[0], people([1, 2])))
    assert run.final["records_skipped"] == {"suppressed": 1}
    assert email_hash(people([1])[0]) in members(emulator, ids[SEGMENTS[0]])
    assert email_hash(people([2])[0]) not in members(emulator, ids[SEGMENTS[0]])


def test_forget_with_the_postgresql_store(
    emulator,
    base_config,
    run_target,
    tmp_path,
    snapshot_database,  # noqa: F811 - the fixture
):
    url, name = snapshot_database
    ids = two_lists(emulator, base_config, run_target, snapshot_url=url)
    run = forget_cmd(
        emulator,
        tmp_path,
        "--input",
        str(erasure_file(tmp_path)),
        "--only-synced",
        "--snapshot-url",
        url,
        "--format",
        "json",
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["totals"]["sent_for_removal"] == 4
    assert all(item["in_snapshot_store"] for item in answer["customer_lists"])
    for list_id in ids.values():
        assert not members(emulator, list_id) & hashed(people([1, 2]))
    assert url.split("@")[0] not in run.stdout + run.stderr
    import psycopg

    with psycopg.connect(dbname=name) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM pinterest_audience_suppression WHERE pending = 0"
        ).fetchone()
    assert count == 2
    # the snapshots followed the removals (read through the store: removals may still wait
    # in its change log, merged when a reader needs the members)
    store = SnapshotStore(
        ad_account_id=AD_ACCOUNT,
        logger=logging.getLogger("test"),
        url=url,
        api_url=emulator.api_url,
    )
    try:
        members_left = sum(confirmed_members(store, list_id) or 0 for list_id in ids.values())
    finally:
        store.close()
    assert members_left == 2 * 15 - 4
    later = run_target(
        config_for(base_config, SEGMENTS[1], snapshot_url=url), adds(SEGMENTS[1], people([2, 3]))
    )
    assert later.final["records_skipped"] == {"suppressed": 1}


def test_forget_input_problems_are_named_without_content(emulator, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,phone\nperson9@example.com,1\n", encoding="utf-8")
    run = forget_cmd(emulator, tmp_path, "--input", str(bad))
    assert run.returncode == 2
    assert "header row names no identifier field" in run.stderr
    assert "person9" not in run.stderr + run.stdout
    missing = forget_cmd(emulator, tmp_path, "--input", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "cannot read the input file" in missing.stderr


def test_a_mirror_suppression_stream_never_lifts_an_erasure_request(
    emulator, base_config, run_target, tmp_path
):
    from test_suppression import OPTOUT_SCHEMA, optouts, with_optouts

    ids = two_lists(emulator, base_config, run_target)
    assert forget_cmd(emulator, tmp_path, "--input", str(erasure_file(tmp_path))).returncode == 0
    mirror = {"sync_mode": "mirror"}
    run = run_target(
        with_optouts(base_config, SEGMENTS[0], **mirror),
        [OPTOUT_SCHEMA, *optouts(people(range(3, 8)))],
        with_schema=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.final["suppression_set_size"] == 7  # persons 1-2 (forget) and 3-7 (stream)
    # The stream drops person 3: lifted; persons 1-2 stay, though the stream never named them.
    run = run_target(
        with_optouts(base_config, SEGMENTS[0], **mirror),
        [OPTOUT_SCHEMA, *optouts(people(range(4, 8)))],
        with_schema=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.final["suppression_set_size"] == 6
    back = run_target(config_for(base_config, SEGMENTS[1]), adds(SEGMENTS[1], people([1, 2, 3])))
    assert back.final["records_skipped"] == {"suppressed": 2}
    assert members(emulator, ids[SEGMENTS[1]]) & hashed(people([1, 2, 3])) == hashed(people([3]))


def test_forget_keeps_the_people_suppressed_when_pinterest_cannot_be_read(
    emulator, base_config, run_target, tmp_path
):
    ids = two_lists(emulator, base_config, run_target)
    emulator.add_fault("status", status=403, code=29, methods=["GET"], path_contains="customer_")
    run = forget_cmd(emulator, tmp_path, "--input", str(erasure_file(tmp_path)))
    assert run.returncode == 1
    assert run.stdout == ""
    assert "2 identifiers were kept in the suppression set" in run.stderr
    assert_names_nobody(run.stderr, people([1, 2]))
    emulator.clear_faults()
    later = run_target(config_for(base_config, SEGMENTS[0]), adds(SEGMENTS[0], people([1, 2])))
    assert later.final["records_skipped"] == {"suppressed": 2}
    # The next forget completes it.
    done = forget_cmd(emulator, tmp_path, "--input", str(erasure_file(tmp_path)))
    assert done.returncode == 0, done.stderr
    for list_id in ids.values():
        assert not members(emulator, list_id) & hashed(people([1, 2]))
