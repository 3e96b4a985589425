"""ACTALIKE audiences seeded with the synced Audience (setting actalike_audiences).

Through the installed CLI and the emulator, which refuses an actalike whose seed is not READY
(fewer than 100 matched users) as Pinterest does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import requests
from conftest import ACCESS_TOKEN, AD_ACCOUNT, Run, records, state
from test_status import ADMIN, clean_env, script

from target_pinterest_audiences.emulator import Emulator

ACTALIKES = [
    {"country": "US", "percentage": 5},
    {"country": "GB", "percentage": 1, "name": "Lookalike GB"},
]


def adds(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"segment_name": "VIP", "action": "add", "email": f"user{i}@example.com"}
        for i in range(start, start + n)
    ]


def actalikes(emu: Emulator) -> list[dict[str, Any]]:
    return [a for a in emu.state()["audiences"] if a["audience_type"] == "ACTALIKE"]


def seed(emu: Emulator) -> dict[str, Any]:
    (found,) = [a for a in emu.state()["audiences"] if a["audience_type"] == "CUSTOMER_LIST"]
    return found


def audience_writes(emu: Emulator) -> list[dict[str, Any]]:
    return [
        r
        for r in emu.state()["requests"]
        if r["method"] in ("POST", "PATCH") and "/audiences" in r["path"]
    ]


def dry_run_report(run: Run) -> dict[str, Any]:
    line = next(line for line in run.stderr.splitlines() if "Dry run report:" in line)
    return json.loads(line.split("Dry run report: ", 1)[1])


def test_actalikes_are_created_then_adopted_never_twice(emulator, base_config, run_target):
    config = {**base_config, "actalike_audiences": ACTALIKES}
    first = run_target(config, records(adds(120)))
    assert first.returncode == 0, first.stderr
    audience = seed(emulator)
    made = {a["name"]: a for a in actalikes(emulator)}
    assert sorted(made) == ["Lookalike GB", "VIP audience US 5%"]
    assert made["VIP audience US 5%"]["rule"] == {
        "seed_id": [audience["id"]],
        "country": "US",
        "percentage": 5,
    }
    assert made["Lookalike GB"]["rule"] == {
        "seed_id": [audience["id"]],
        "country": "GB",
        "percentage": 1,
    }
    report = first.final["actalike_audiences"]
    assert report == [
        {
            "id": made["VIP audience US 5%"]["id"],
            "name": "VIP audience US 5%",
            "country": "US",
            "percentage": 5,
            "status": "READY",
            "outcome": "created",
        },
        {
            "id": made["Lookalike GB"]["id"],
            "name": "Lookalike GB",
            "country": "GB",
            "percentage": 1,
            "status": "READY",
            "outcome": "created",
        },
    ]

    before = len(audience_writes(emulator))
    second = run_target(config, records(adds(5, start=120)))
    assert second.returncode == 0, second.stderr
    assert len(audience_writes(emulator)) == before  # adopted: no create, no change
    assert sorted(a["id"] for a in actalikes(emulator)) == sorted(a["id"] for a in made.values())
    assert [(e["id"], e["outcome"]) for e in second.final["actalike_audiences"]] == [
        (made["VIP audience US 5%"]["id"], "adopted"),
        (made["Lookalike GB"]["id"], "adopted"),
    ]


def test_an_actalike_whose_rule_differs_is_reported_not_changed(emulator, base_config, run_target):
    first = run_target(base_config, records(adds(120)))
    assert first.returncode == 0, first.stderr
    assert "actalike_audiences" not in first.final  # not configured: not reported
    audience = seed(emulator)
    by_hand = requests.post(
        f"{emulator.api_url}/ad_accounts/{AD_ACCOUNT}/audiences",
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        json={
            "name": "VIP audience US 5%",
            "audience_type": "ACTALIKE",
            "rule": {"seed_id": [audience["id"]], "country": "US", "percentage": 3},
        },
        timeout=10,
    ).json()
    before = len(audience_writes(emulator))
    config = {**base_config, "actalike_audiences": [{"country": "US", "percentage": 5}]}
    run = run_target(config, records(adds(1, start=120)))
    assert run.returncode == 0, run.stderr
    assert len(audience_writes(emulator)) == before
    (kept,) = actalikes(emulator)
    assert kept["id"] == by_hand["id"] and kept["rule"]["percentage"] == 3
    (entry,) = run.final["actalike_audiences"]
    assert (entry["id"], entry["outcome"]) == (by_hand["id"], "adopted")
    assert entry["rule_differs"] == ["percentage 3 (wanted 5)"]
    assert "has a rule other than the setting's: percentage 3 (wanted 5)" in run.stderr


def test_a_seed_too_small_warns_once_and_a_later_run_creates(emulator, base_config, run_target):
    config = {**base_config, "actalike_audiences": ACTALIKES}
    first = run_target(config, records(adds(10)))
    assert first.returncode == 0, first.stderr
    assert actalikes(emulator) == []
    assert first.stderr.count("Pinterest refused to create actalike") == 1
    assert "not ready (TOO_SMALL)" in first.stderr  # Pinterest's reason, quoted
    assert "the next run tries again" in first.stderr
    entries = first.final["actalike_audiences"]
    assert [(e["name"], e["outcome"], e["id"]) for e in entries] == [
        ("VIP audience US 5%", "refused", None),
        ("Lookalike GB", "refused", None),
    ]
    assert all("not ready" in e["reason"] for e in entries)
    # One refused create: the second would be refused for the same seed.
    creates = [r for r in audience_writes(emulator) if r["method"] == "POST"]
    assert len(creates) == 2  # the CUSTOMER_LIST Audience and one actalike attempt

    second = run_target(config, records(adds(100, start=10)))
    assert second.returncode == 0, second.stderr
    assert sorted(a["name"] for a in actalikes(emulator)) == ["Lookalike GB", "VIP audience US 5%"]
    assert [e["outcome"] for e in second.final["actalike_audiences"]] == ["created", "created"]
    assert "Pinterest refused" not in second.stderr


def test_dry_run_reports_the_actalikes_it_would_create(emulator, base_config, run_target):
    first = run_target(base_config, records(adds(120)))
    assert first.returncode == 0, first.stderr
    config = {**base_config, "dry_run": True, "actalike_audiences": ACTALIKES}
    run = run_target(config, [*records(adds(3, start=120)), state({"bookmarks": {}})])
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert actalikes(emulator) == []
    assert dry_run_report(run)["actalike_audiences"] == [
        {
            "id": None,
            "name": "VIP audience US 5%",
            "country": "US",
            "percentage": 5,
            "status": None,
            "outcome": "would_create",
        },
        {
            "id": None,
            "name": "Lookalike GB",
            "country": "GB",
            "percentage": 1,
            "status": None,
            "outcome": "would_create",
        },
    ]
    assert "Dry run: would create actalike audience 'VIP audience US 5%' (US 5%)" in run.stderr


def test_dry_run_on_a_new_audience_would_create_its_actalikes(emulator, base_config, run_target):
    config = {**base_config, "dry_run": True, "actalike_audiences": ACTALIKES[:1]}
    run = run_target(config, records(adds(3)))
    assert run.returncode == 0, run.stderr
    assert emulator.state()["audiences"] == []
    (entry,) = dry_run_report(run)["actalike_audiences"]
    assert (entry["name"], entry["outcome"]) == ("VIP audience US 5%", "would_create")


def test_bad_actalike_settings_are_refused_before_anything_is_sent(
    emulator, base_config, run_target
):
    for bad, words in (
        ([{"country": "FR", "percentage": 5}], "actalike_audiences.0.country"),
        ([{"country": "US", "percentage": 11}], "actalike_audiences.0.percentage"),
        ([{"country": "US"}], "percentage"),
        ([{"country": "US", "percentage": 5, "size": 3}], "size"),
        (
            [{"country": "US", "percentage": 5}, {"country": "US", "percentage": 5}],
            "a second entry for country US and percentage 5",
        ),
        ([{"country": "US", "percentage": 5, "name": " "}], "'name' is blank"),
    ):
        run = run_target({**base_config, "actalike_audiences": bad}, records(adds(1)))
        assert run.returncode != 0, bad
        assert words in run.stderr, (bad, run.stderr[-2000:])
    assert emulator.state()["requests"] == []


def test_status_shows_the_actalikes_under_the_audience(
    emulator: Emulator, base_config, run_target, tmp_path: Path
):
    config = {**base_config, "actalike_audiences": ACTALIKES}
    assert run_target(config, records(adds(120))).returncode == 0
    made = {a["name"]: a for a in actalikes(emulator)}

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        env = clean_env(
            tmp_path,
            TARGET_PINTEREST_AUDIENCES_API_URL=emulator.api_url,
            TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN=ACCESS_TOKEN,
        )
        return subprocess.run(
            [
                script(ADMIN),
                "status",
                "--ad-account-id",
                AD_ACCOUNT,
                "--audience-name",
                "VIP audience",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    answer = status("--format", "json")
    assert answer.returncode == 0, answer.stderr
    listed = json.loads(answer.stdout)["actalike_audiences"]
    assert listed == [
        {
            "id": made["VIP audience US 5%"]["id"],
            "name": "VIP audience US 5%",
            "country": "US",
            "percentage": 5,
            "status": "READY",
            "size": made["VIP audience US 5%"]["size"],
        },
        {
            "id": made["Lookalike GB"]["id"],
            "name": "Lookalike GB",
            "country": "GB",
            "percentage": 1,
            "status": "READY",
            "size": made["Lookalike GB"]["size"],
        },
    ]
    table = status()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    first_actalike = next(i for i, line in enumerate(lines) if line.startswith("  actalike "))
    assert lines[0].startswith("Audience ") and first_actalike < next(
        i for i, line in enumerate(lines) if line.startswith("Customer List")
    )
    assert (
        f"  actalike        {made['VIP audience US 5%']['id']} 'VIP audience US 5%': US 5%, "
        "READY (targetable)" in table.stdout
    )


def test_a_create_whose_answer_is_lost_is_found_not_repeated(emulator, base_config, run_target):
    # The second audience create (the first actalike) is applied, its answer lost.
    emulator.add_fault("drop_after", methods=["POST"], path_contains="/audiences", skip=1, count=1)
    config = {**base_config, "actalike_audiences": ACTALIKES[:1]}
    run = run_target(config, records(adds(120)))
    assert run.returncode == 0, run.stderr
    (made,) = actalikes(emulator)
    (entry,) = run.final["actalike_audiences"]
    assert (entry["id"], entry["outcome"]) == (made["id"], "created")


def test_another_refusal_warns_and_the_run_succeeds(emulator, base_config, run_target):
    emulator.add_fault(
        "status", status=403, code=29, methods=["POST"], path_contains="/audiences", skip=1
    )
    config = {**base_config, "actalike_audiences": ACTALIKES[:1]}
    run = run_target(config, records(adds(120)))
    assert run.returncode == 0, run.stderr
    assert actalikes(emulator) == []
    assert "Could not make sure of the actalike audiences" in run.stderr
    (entry,) = run.final["actalike_audiences"]
    assert (entry["id"], entry["outcome"]) == (None, "failed")
    assert run.final["complete"] is True
