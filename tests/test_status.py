"""`status` and the end-of-run audience report: what Pinterest made of the uploads.

Through the installed console scripts and the emulator, whose audiences are matched after a
configurable delay and only for a share of identifiers (match_fraction), so that the size
differs from the confirmed members and the match rate can be wrong in a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ACCESS_TOKEN, AD_ACCOUNT, Run, confirmed_in_store, records
from test_mirror import snapshot_database  # noqa: F401 - the fixture: a fresh PostgreSQL database

from target_pinterest_audiences.emulator import Emulator

ADMIN = "target-pinterest-audiences-admin"
ALIAS = "target-pinterest-audiences-auth"
#: Long enough that nothing is matched until a test sets the delay to 0 ("matching happened").
NEVER = 3600.0
JSON_KEYS = {"audience", "customer_list", "confirmed_members", "match_rate", "actalike_audiences"}
AUDIENCE_KEYS = {"id", "name", "status", "size"}
LIST_KEYS = {
    "id",
    "name",
    "status",
    "num_uploaded_user_records",
    "num_removed_user_records",
    "updated_time",
}


def script(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"console script {name} is not installed: pip install -e '.[dev]'"
    return str(path)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No TARGET_PINTEREST_AUDIENCES_* from the developer's shell; no real token file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_PINTEREST_AUDIENCES_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


@pytest.fixture
def admin(emulator: Emulator, tmp_path: Path):
    """Run `<script> status ...` with the emulator's URL and token from the environment."""

    def _run(*args: str, name: str = ADMIN, env: dict[str, str] | None = None) -> Run:
        proc_env = clean_env(
            tmp_path,
            TARGET_PINTEREST_AUDIENCES_API_URL=emulator.api_url,
            TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN=ACCESS_TOKEN,
            **(env or {}),
        )
        completed = subprocess.run(
            [script(name), "status", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=proc_env,
            check=False,
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)

    return _run


def adds(n: int, start: int = 0, segment: str = "VIP") -> list[dict[str, Any]]:
    rows = [
        {"segment_name": segment, "action": "add", "email": f"user{i}@example.com"}
        for i in range(start, start + n)
    ]
    return records(rows, start_id=start + 1)


def the_audience(emulator: Emulator) -> dict[str, Any]:
    (audience,) = emulator.state(members=False, requests=False)["audiences"]
    return audience


def as_json(run: Run) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout  # one JSON object, nothing else on stdout
    answer = json.loads(lines[0])
    assert set(answer) == JSON_KEYS
    assert set(answer["audience"]) == AUDIENCE_KEYS
    assert set(answer["customer_list"]) == LIST_KEYS
    return answer


def assert_one_line_error(run: Run, *needles: str) -> None:
    assert run.returncode != 0
    assert run.stdout == ""
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert ACCESS_TOKEN not in run.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


# ---- status before and after matching --------------------------------------------------------


def test_status_before_and_after_matching_in_both_formats(emulator, base_config, run_target, admin):
    emulator.configure(match_delay_seconds=NEVER, match_fraction=0.6)
    run = run_target(base_config, adds(300))
    assert run.returncode == 0, run.stderr
    list_id, audience_id = run.final["segment_id"], run.final["audience_id"]
    # The end-of-run read: not matched yet, so no size and no match rate.
    assert run.final["audience_status"] == "INITIALIZING"
    assert run.final["audience_size"] is None
    assert run.final["match_rate"] is None
    assert "audience status INITIALIZING, size unknown, match rate unknown" in run.stderr

    by_name = ("--ad-account-id", AD_ACCOUNT, "--audience-name", "VIP audience")
    before = as_json(admin(*by_name, "--format", "json"))
    assert before["audience"] == {
        "id": audience_id,
        "name": "VIP audience",
        "status": "INITIALIZING",
        "size": None,
    }
    assert before["customer_list"]["id"] == list_id
    assert before["customer_list"]["name"] == "VIP"
    assert before["customer_list"]["status"] == "PROCESSING"
    assert before["customer_list"]["num_uploaded_user_records"] == 300
    assert before["customer_list"]["num_removed_user_records"] == 0
    assert isinstance(before["customer_list"]["updated_time"], (int, float))
    assert before["confirmed_members"] == 300  # what the target's snapshot confirmed
    assert before["match_rate"] is None

    table = admin(*by_name)
    assert table.returncode == 0, table.stderr
    assert "INITIALIZING" in table.stdout
    assert "not matched yet" in table.stdout
    assert "24-48 hours" in table.stdout
    assert "Match rate        unknown: the audience is not matched yet" in table.stdout

    emulator.configure(match_delay_seconds=0)  # Pinterest has matched the uploads
    matched = the_audience(emulator)["size"]
    assert 100 < matched < 300  # some identifiers are not Pinterest users

    by_id = ("--ad-account-id", AD_ACCOUNT, "--audience-id", audience_id)
    after = as_json(admin(*by_id, "--format", "json"))
    assert after["audience"] == {
        "id": audience_id,
        "name": "VIP audience",
        "status": "READY",
        "size": matched,
    }
    assert after["customer_list"]["status"] == "READY"
    assert after["confirmed_members"] == 300
    assert after["match_rate"] == pytest.approx(matched / 300)

    table = admin(*by_id)
    assert table.returncode == 0, table.stderr
    assert f"{matched} matched Pinterest users" in table.stdout
    assert f"Match rate        {matched / 300:.1%}" in table.stdout
    assert "not a match count" in table.stdout  # how to read the list's counters
    assert ACCESS_TOKEN not in table.stdout + table.stderr


def test_an_events_run_leaves_its_changes_unmerged_until_a_count_needs_them(
    emulator, base_config, run_target, admin
):
    """While Pinterest still matches the upload no match rate can be computed, so the run
    does not count (nor merge) its snapshot; `status` merges and counts exactly."""
    import sqlite3

    emulator.configure(match_delay_seconds=NEVER)
    first = run_target(base_config, adds(300))
    assert first.returncode == 0, first.stderr
    second = run_target(base_config, adds(100, start=250))
    assert second.returncode == 0, second.stderr
    assert second.final["match_rate"] is None
    assert "no snapshot" not in second.stderr and "holds no confirmed" not in second.stderr
    (path,) = Path(os.environ["XDG_STATE_HOME"]).rglob("snapshot-*.sqlite")

    def tables() -> tuple[int, int]:
        with sqlite3.connect(path) as conn:
            (changes,) = conn.execute(
                "SELECT COUNT(*) FROM pinterest_audience_snapshot_changes"
            ).fetchone()
            members = confirmed_in_store(conn)
        return changes, members

    assert tables()[1] == 0 and tables()[0] > 0  # logged, never merged by events runs
    which = ("--ad-account-id", AD_ACCOUNT, "--audience-name", "VIP audience")
    answer = as_json(admin(*which, "--format", "json"))
    assert answer["confirmed_members"] == 350
    assert tables() == (0, 350)


def test_a_run_merges_the_change_log_earlier_runs_left_not_its_own(tmp_path, monkeypatch):
    """The change log stays bounded in a pipeline of events runs: a run whose snapshot holds
    MERGE_MIN_KEYS logged identifiers or more from earlier runs merges them (writer thread),
    while a run never merges what only it wrote (that cost a 2M run a quarter of its time)."""
    import logging
    import sqlite3

    from target_pinterest_audiences.store import snapshot as snapshot_module
    from target_pinterest_audiences.store.snapshot import SnapshotStore

    monkeypatch.setattr(snapshot_module, "MERGE_MIN_KEYS", 30)
    keys = [f"{i:064x}" for i in range(1, 101)]

    def run(batch: list[str]) -> None:
        store = SnapshotStore(
            ad_account_id=AD_ACCOUNT, logger=logging.getLogger("test"), directory=tmp_path
        )
        snapshot = store.open("123", list_type="EMAIL")
        assert snapshot is not None
        for start in range(0, len(batch), 10):
            entry = snapshot.journal("ADD", batch[start : start + 10], 0.0)
            snapshot.confirm(entry, "ADD", batch[start : start + 10], [])
            snapshot.merge_if_due()  # as the writer thread does after each batch
        snapshot.close()
        store.close()

    def tables() -> tuple[int, int]:
        (path,) = tmp_path.glob("snapshot-*.sqlite")
        with sqlite3.connect(path) as conn:
            logged = conn.execute(
                "SELECT COUNT(*) FROM pinterest_audience_snapshot_changes"
            ).fetchone()[0]
            members = confirmed_in_store(conn)
        return logged, members

    run(keys[:29])  # below the threshold, and its own writes
    assert tables()[1] == 0
    run(keys[29:60])  # its own 31 writes pass the threshold: still not merged
    assert tables()[1] == 0
    run(keys[60:70])  # finds 60 left by earlier runs: merges them (and its first batch)
    logged, members = tables()
    assert members >= 60 and logged <= 1
    run(keys[70:])  # finds at most one batch: nothing to merge
    assert tables()[1] == members


def test_report_after_a_run_on_a_matched_audience(emulator, base_config, run_target, admin):
    """A run that wrote to the list gives no match rate: Pinterest sizes an audience 24-48
    hours after an upload (FACTS), even when the list's status already says READY, so the
    size read at once would be divided by members it does not count yet. A later run that
    writes nothing divides by the writer's snapshot, which counts the earlier writes."""
    emulator.configure(match_fraction=0.6)
    first = run_target(base_config, adds(200))
    assert first.returncode == 0, first.stderr
    matched = the_audience(emulator)["size"]
    assert first.final["audience_status"] == "READY"
    assert first.final["audience_size"] == matched
    assert first.final["match_rate"] is None
    summary = next(line for line in first.stderr.splitlines() if "Run summary:" in line)
    assert f"size {matched}, match rate unknown: this run changed the list" in summary
    quiet = run_target(base_config, [])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.final["match_rate"] == pytest.approx(matched / 200)

    # The next upload is not matched by the end of its run: the previous size stands, and
    # dividing it by the members confirmed now would understate the rate (FACTS: 24-48 h).
    emulator.configure(match_delay_seconds=NEVER)
    second = run_target(base_config, adds(50, start=200))
    assert second.returncode == 0, second.stderr
    assert second.final["audience_size"] == matched
    assert second.final["match_rate"] is None
    summary = next(line for line in second.stderr.splitlines() if "Run summary:" in line)
    assert f"audience status READY, size {matched}, match rate unknown" in summary
    assert "still matching the latest upload (Customer List status PROCESSING)" in summary
    audience_reads = [
        r
        for r in emulator.state()["requests"]
        if r["method"] == "GET" and r["path"].endswith(f"/audiences/{second.final['audience_id']}")
    ]
    assert len(audience_reads) == 3  # one read at the end of each run

    # status says the same while Pinterest matches, and gives the rate once it has.
    by_id = ("--ad-account-id", AD_ACCOUNT, "--audience-id", second.final["audience_id"])
    matching = as_json(admin(*by_id, "--format", "json"))
    assert matching["customer_list"]["status"] == "PROCESSING"
    assert matching["audience"]["size"] == matched and matching["confirmed_members"] == 250
    assert matching["match_rate"] is None
    assert "Match rate        unknown: Pinterest is still matching" in admin(*by_id).stdout
    emulator.configure(match_delay_seconds=0)
    matched_now = the_audience(emulator)["size"]
    assert as_json(admin(*by_id, "--format", "json"))["match_rate"] == pytest.approx(
        matched_now / 250
    )


def test_a_run_without_records_reports_from_the_stored_snapshot(emulator, base_config, run_target):
    assert run_target(base_config, adds(120)).returncode == 0
    empty = run_target(base_config, [])
    assert empty.returncode == 0, empty.stderr
    assert empty.final["audience_size"] == 120
    assert empty.final["match_rate"] == pytest.approx(1.0)


def test_status_of_a_list_the_target_never_wrote(emulator, admin):
    """Made elsewhere: Pinterest's size is known, the confirmed members are not."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ACCESS_TOKEN}"
    base = f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}"
    digests = ",".join(f"{i:064x}" for i in range(1, 151))
    lst = session.post(f"{base}/customer_lists", json={"name": "Elsewhere", "records": digests})
    body = {
        "name": "Made elsewhere",
        "audience_type": "CUSTOMER_LIST",
        "rule": {"customer_list_id": lst.json()["id"]},
    }
    session.post(f"{base}/audiences", json=body).raise_for_status()

    which = ("--ad-account-id", AD_ACCOUNT, "--audience-name", "Made elsewhere")
    answer = as_json(admin(*which, "--format", "json"))
    assert answer["audience"]["size"] == 150
    assert answer["confirmed_members"] is None
    assert answer["match_rate"] is None
    table = admin(*which)
    assert "no snapshot for this list" in table.stdout
    assert "150 matched Pinterest users" in table.stdout
    # Reading never creates a snapshot file or a lock.
    assert not (Path(os.environ["XDG_STATE_HOME"]) / "target-pinterest-audiences").exists()


# ---- settings sources, the alias, errors -----------------------------------------------------


def test_settings_from_the_environment_and_the_old_command_name(
    emulator, base_config, run_target, admin, tmp_path
):
    """As Meltano runs it: every setting from TARGET_PINTEREST_AUDIENCES_* variables."""
    snapshots = tmp_path / "elsewhere-snapshots"
    run = run_target({**base_config, "snapshot_path": str(snapshots)}, adds(110))
    assert run.returncode == 0, run.stderr
    before = sorted(p.name for p in snapshots.iterdir())
    env = {
        "TARGET_PINTEREST_AUDIENCES_AD_ACCOUNT_ID": AD_ACCOUNT,
        "TARGET_PINTEREST_AUDIENCES_AUDIENCE_NAME": "VIP audience",
        "TARGET_PINTEREST_AUDIENCES_SNAPSHOT_PATH": str(snapshots),
    }
    for name in (ADMIN, ALIAS):
        answer = as_json(admin("--format", "json", name=name, env=env))
        assert answer["audience"]["id"] == run.final["audience_id"]
        assert answer["confirmed_members"] == 110
        assert answer["match_rate"] == pytest.approx(1.0)
    # audience_id wins over audience_name, as in the target; a flag wins over both.
    env["TARGET_PINTEREST_AUDIENCES_AUDIENCE_ID"] = "999"
    assert_one_line_error(admin(env=env), "no Audience 999")
    flagged = as_json(admin("--audience-name", "VIP audience", "--format", "json", env=env))
    assert flagged["audience"]["id"] == run.final["audience_id"]
    # Without the snapshot directory the default one is read: it has none.
    del env["TARGET_PINTEREST_AUDIENCES_SNAPSHOT_PATH"]
    del env["TARGET_PINTEREST_AUDIENCES_AUDIENCE_ID"]
    assert as_json(admin("--format", "json", env=env))["confirmed_members"] is None
    assert sorted(p.name for p in snapshots.iterdir()) == before  # nothing created or locked


def test_status_reads_the_postgresql_snapshot_store(
    emulator, base_config, run_target, admin, request
):
    url, _ = request.getfixturevalue("snapshot_database")
    run = run_target({**base_config, "snapshot_url": url}, adds(130))
    assert run.returncode == 0, run.stderr
    quiet = run_target({**base_config, "snapshot_url": url}, [])
    assert quiet.final["match_rate"] == pytest.approx(1.0)  # counted in PostgreSQL
    which = ("--ad-account-id", AD_ACCOUNT, "--audience-id", run.final["audience_id"])
    from_env = admin(
        *which, "--format", "json", env={"TARGET_PINTEREST_AUDIENCES_SNAPSHOT_URL": url}
    )
    assert as_json(from_env)["confirmed_members"] == 130
    from_flag = admin(*which, "--snapshot-url", url)
    assert from_flag.returncode == 0, from_flag.stderr
    assert "Confirmed members 130 identifiers (snapshot in postgresql" in from_flag.stdout
    password = os.environ.get("PGPASSWORD") or "-"
    assert f":{password}@" not in from_env.stdout + from_flag.stdout + from_flag.stderr


def test_unknown_or_ambiguous_audiences_are_clean_errors(
    emulator, base_config, run_target, admin, tmp_path
):
    account = ("--ad-account-id", AD_ACCOUNT)
    assert_one_line_error(admin(*account, "--audience-id", "12345"), "no Audience 12345", "404")
    assert_one_line_error(
        admin(*account, "--audience-name", "Nobody", "--format", "json"),
        "no CUSTOMER_LIST Audience named 'Nobody'",
    )
    nothing_kept = admin(*account)  # no audience named: every one the target keeps (none yet)
    assert nothing_kept.returncode == 0, nothing_kept.stderr
    assert "No Audience of ad account" in nothing_kept.stdout

    assert run_target(base_config, adds(3)).returncode == 0
    list_id = emulator.state()["lists"][0]["id"]
    base = f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/audiences"
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    twin = {"name": "VIP audience", "audience_type": "CUSTOMER_LIST"}
    twin["rule"] = {"customer_list_id": list_id}
    second = requests.post(base, json=twin, headers=headers, timeout=10).json()["id"]
    first, other = (a["id"] for a in emulator.state()["audiences"])
    assert other == second
    assert_one_line_error(
        admin(*account, "--audience-name", "VIP audience"),
        "2 CUSTOMER_LIST Audiences",
        first,
        second,
        "--audience-id",
    )
    visitor = {"name": "Visitors", "audience_type": "VISITOR", "rule": {"retention_days": 30}}
    visitor_id = requests.post(base, json=visitor, headers=headers, timeout=10).json()["id"]
    assert_one_line_error(
        admin(*account, "--audience-id", visitor_id), "VISITOR audience, not a CUSTOMER_LIST"
    )
    # No token file and no token: say how to connect.
    proc = subprocess.run(
        [script(ADMIN), "status", *account, "--audience-id", second],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(tmp_path, TARGET_PINTEREST_AUDIENCES_API_URL=emulator.api_url),
        check=False,
    )
    assert_one_line_error(Run(proc.returncode, proc.stdout, proc.stderr), "not connected")


# ---- the end-of-run read only warns ---------------------------------------------------------


@pytest.mark.parametrize("status", [500, 403])
def test_a_failed_audience_read_at_the_end_only_warns(emulator, base_config, run_target, status):
    # Only the end-of-run read asks for one audience by id (adoption lists them by page).
    emulator.add_fault("status", status=status, methods=["GET"], path_contains="/audiences/")
    config = {**base_config, "retry_max_seconds": 1}
    run = run_target(config, [*adds(120), {"type": "STATE", "value": {"bookmark": 1}}])
    assert run.returncode == 0, run.stderr
    assert run.final["complete"] is True
    assert run.final["identifiers_added"] == 120
    assert run.states[-1]["bookmark"] == 1
    assert (run.final["audience_status"], run.final["audience_size"]) == (None, None)
    assert run.final["match_rate"] is None
    assert "WARNING" in run.stderr and "Could not read the Audience's status and size" in run.stderr
    assert "match rate unknown (the read failed" in run.stderr
    assert ACCESS_TOKEN not in run.stderr
    assert len(emulator.state()["lists"][0]["members"]) == 120


def test_a_dry_run_does_not_read_the_audience(emulator, base_config, run_target):
    assert run_target(base_config, adds(5)).returncode == 0
    reads_before = len(emulator.state()["requests"])
    dry = run_target({**base_config, "dry_run": True}, adds(5, start=5))
    assert dry.returncode == 0, dry.stderr
    report_line = next(line for line in dry.stderr.splitlines() if "Dry run report:" in line)
    report = json.loads(report_line.split("Dry run report: ", 1)[1])
    assert report["audience_status"] is None and report["match_rate"] is None
    later = emulator.state()["requests"][reads_before:]
    assert not [r for r in later if "/audiences/" in r["path"]]


def test_a_failed_read_of_the_list_keeps_the_audience_figures(emulator, base_config, run_target):
    """The list's status only says whether the size is current: when it cannot be read, the
    Audience's status and size still stand and the match rate is unknown, saying why."""
    first = run_target(base_config, adds(150))
    assert first.returncode == 0, first.stderr
    emulator.add_fault(
        "status",
        status=404,
        code=2,
        message="Not found",
        methods=["GET"],
        path_contains=f"customer_lists/{first.final['segment_id']}",
        count=1,
    )
    second = run_target(base_config, adds(10, start=150))
    assert second.returncode == 0, second.stderr
    assert second.final["audience_status"] == "READY"
    assert second.final["audience_size"] == 160
    assert second.final["match_rate"] is None
    assert "Could not read the Customer List's status" in second.stderr
    assert "status could not be read" in second.stderr


def test_status_without_an_audience_lists_every_audience_the_target_keeps(
    emulator, base_config, run_target, admin
):
    def stream_rows(stream: str, segment: str, n: int) -> list[dict[str, Any]]:
        schema = {
            "type": "SCHEMA",
            "stream": stream,
            "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
            "key_properties": ["id"],
        }
        rows = [
            {
                "type": "RECORD",
                "stream": stream,
                "record": {
                    "id": i,
                    "segment_name": segment,
                    "action": "add",
                    "email": f"{segment}{i}@example.com",
                },
            }
            for i in range(n)
        ]
        return [schema, *rows]

    config = {**base_config, "audience_name": "{segment_name} buyers"}
    messages = stream_rows("a", "Gold", 120) + stream_rows("b", "Silver", 30)
    assert run_target(config, messages, with_schema=False).returncode == 0
    # an Audience the target does not keep (no snapshot of its list) is not listed
    base = f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}"
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    other = requests.post(
        f"{base}/customer_lists",
        json={"name": "Elsewhere", "records": "a" * 64, "list_type": "EMAIL"},
        headers=headers,
        timeout=10,
    ).json()["id"]
    requests.post(
        f"{base}/audiences",
        json={
            "name": "Not ours",
            "audience_type": "CUSTOMER_LIST",
            "rule": {"customer_list_id": other},
        },
        headers=headers,
        timeout=10,
    ).raise_for_status()

    table = admin("--ad-account-id", AD_ACCOUNT)
    assert table.returncode == 0, table.stderr
    assert "Gold buyers" in table.stdout and "Silver buyers" in table.stdout
    assert "Not ours" not in table.stdout
    assert "(2 Audiences;" in table.stdout

    listed = admin("--ad-account-id", AD_ACCOUNT, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    by_name = {row["audience"]["name"]: row for row in rows}
    assert set(by_name) == {"Gold buyers", "Silver buyers"}
    assert by_name["Gold buyers"]["confirmed_members"] == 120
    assert by_name["Silver buyers"]["confirmed_members"] == 30
    assert by_name["Gold buyers"]["audience"]["status"] == "READY"
    assert by_name["Gold buyers"]["match_rate"] == 1.0
    # a templated audience_name in the settings (as Meltano passes it) means: every Audience
    templated = admin(
        "--ad-account-id",
        AD_ACCOUNT,
        env={"TARGET_PINTEREST_AUDIENCES_AUDIENCE_NAME": "{segment_name} buyers"},
    )
    assert templated.returncode == 0 and "(2 Audiences;" in templated.stdout
