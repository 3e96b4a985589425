"""End to end through a real Meltano: `meltano install`, `meltano run`, `meltano state get`.

- the bundled sample (tap-spreadsheets over sample/customers*.csv): run 1 uploads it, a new
  export arrives, run 2 sends only that export, a run 3 with nothing new sends nothing;
- the warehouse path (meltanolabs-tap-postgres, incremental on updated_at) against a real
  PostgreSQL server given by the PG* variables (scripts/setup-postgres.sh starts one);
  without one the test is skipped and says why (TPA_REQUIRE_POSTGRES=1 makes that a failure);
- `meltano config list` shows every setting the target has, never a secret.
- many segments at once: the recipe of docs/many-segments.md (one inherited extractor and
  loader per segment) run as three parallel `meltano run` jobs on one emulator and one token file.

Each test gets its own emulator and Meltano project; Meltano and the plugin venvs are built
once and cached (tests/meltano_helpers.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import meltano_helpers as mh
import pytest
import yaml

from target_pinterest_audiences.emulator import Emulator
from target_pinterest_audiences.pinterest.tokens import TokenStore

pytestmark = pytest.mark.meltano


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def meltano_exe() -> Path:
    return mh.meltano_executable()


@pytest.fixture(scope="session")
def plugins(meltano_exe: Path) -> Path:
    return mh.plugins_template(meltano_exe)


@pytest.fixture(scope="session")
def sample() -> Any:
    return mh.sample_module()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator(port=0, ad_accounts=(mh.AD_ACCOUNT,), access_token=mh.ACCESS_TOKEN).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def meltano(meltano_exe: Path, plugins: Path, emu: Emulator, tmp_path: Path) -> mh.Meltano:
    project = mh.new_project(tmp_path, plugins)
    env = mh.clean_env(
        TARGET_PINTEREST_AUDIENCES_API_URL=emu.api_url,
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
    )
    return mh.Meltano(meltano_exe, project, env)


def only_list_and_audience(emu: Emulator) -> tuple[dict[str, Any], dict[str, Any]]:
    state = emu.state(requests=False)
    assert len(state["lists"]) == 1, f"expected one Customer List, got {state['lists']}"
    assert len(state["audiences"]) == 1, f"expected one Audience, got {state['audiences']}"
    return state["lists"][0], state["audiences"][0]


def check_ids(report: dict[str, Any], emu: Emulator) -> set[str]:
    """The report names the emulator's only list and audience; returns the list's members."""
    lst, audience = only_list_and_audience(emu)
    assert report["ad_account_id"] == mh.AD_ACCOUNT
    assert str(report["segment_id"]) == str(lst["id"])
    assert str(report["audience_id"]) == str(audience["id"])
    assert str(audience["rule"]["customer_list_id"]) == str(lst["id"])
    return set(lst["members"])


def skipped_total(report: dict[str, Any]) -> int:
    return sum(report["records_skipped"].values())


# ---- the bundled sample ----------------------------------------------------------------------


def test_sample_csv_incremental(meltano: mh.Meltano, emu: Emulator, sample: Any) -> None:
    base = mh.read_rows(mh.REPO / "sample" / "customers.csv")
    assert len(base) >= 1000
    t0 = time.time() - 3600
    mh.write_rows(sample, base, meltano.project / "sample" / "customers.csv", t0)

    # Run 1: the whole sample.
    meltano.run(mh.CSV_TAP)
    state1 = meltano.state(mh.CSV_TAP)
    report1 = state1["pinterest_audience"]
    expected1, skipped1 = mh.apply_rows(base)
    assert report1["records_received"] == len(base)
    assert skipped_total(report1) == skipped1
    assert report1["list_created"] is True and report1["audience_created"] is True
    assert check_ids(report1, emu) == expected1
    assert "customers" in state1["bookmarks"], state1

    # The source changes: a new export with members flipping to remove (newer updated_at),
    # new customers and returning ones.
    changes = sample.changes(base)
    assert {r["action"] for r in changes} == {"add", "remove"}
    assert min(r["updated_at"] for r in changes) > max(r["updated_at"] for r in base)
    mh.write_rows(
        sample, changes, meltano.project / "sample" / "customers_2025-06-05.csv", t0 + 120
    )
    expected2, skipped2 = mh.apply_rows(changes, expected1)
    assert expected1 - expected2 and expected2 - expected1, "the changes must remove and add"

    # Run 2: only the new export travels (the tap's bookmark came back through our STATE).
    meltano.run(mh.CSV_TAP)
    state2 = meltano.state(mh.CSV_TAP)
    report2 = state2["pinterest_audience"]
    assert report2["records_received"] == len(changes)
    assert skipped_total(report2) == skipped2
    assert report2["list_created"] is False and report2["audience_created"] is False
    assert report2["segment_id"] == report1["segment_id"]
    assert report2["audience_id"] == report1["audience_id"]
    assert report2["identifiers_removed"] > 0
    assert check_ids(report2, emu) == expected2
    # The run read the audience at its end (the emulator matches at once, every identifier);
    # it wrote to the list, so no match rate: Pinterest sizes an upload 24-48 hours later.
    assert report2["audience_status"] == "READY"
    assert report2["audience_size"] == len(expected2)
    assert report2["match_rate"] is None
    # `:status` through Meltano, with the plugin's settings (audience_name, snapshot_path, ...).
    status = json.loads(meltano("invoke", f"{mh.LOADER}:status", "--format", "json").stdout)
    assert status["audience"]["id"] == str(report2["audience_id"])
    assert status["customer_list"]["id"] == str(report2["segment_id"])
    assert status["confirmed_members"] == len(expected2)
    assert status["match_rate"] == pytest.approx(1.0)

    # Run 3: nothing new, nothing sent, nothing changed.
    writes_before = emu.state(members=False)["requests"]
    meltano.run(mh.CSV_TAP)
    report3 = meltano.state(mh.CSV_TAP)["pinterest_audience"]
    assert report3["records_received"] == 0
    writes = [
        r
        for r in emu.state(members=False)["requests"][len(writes_before) :]
        if r.get("method") in ("POST", "PATCH")
    ]
    assert writes == []
    assert set(only_list_and_audience(emu)[0]["members"]) == expected2
    assert report3["match_rate"] == pytest.approx(1.0)  # wrote nothing: counted

    # `:forget` through Meltano: a dry run, then the erasure request itself; the receipt
    # names no person, and the full refresh below does not add them back.
    person = next(
        row
        for row in changes
        if row["email"]
        and not row["mobile_ad_id"]
        and set(mh.row_hashes(row) or ["-"]) <= expected2
    )
    erasure = meltano.project / "erasure.csv"
    erasure.write_text(f"email,ticket\n{person['email']},REQ-1\n", encoding="utf-8")
    dry = meltano("invoke", f"{mh.LOADER}:forget", "--input", str(erasure), "--dry-run")
    assert "Total: 1 lists, 1 identifiers would be sent for removal" in dry.stdout
    forget = meltano("invoke", f"{mh.LOADER}:forget", "--input", str(erasure), "--format", "json")
    receipt = json.loads(forget.stdout.strip().splitlines()[-1])
    assert receipt["complete"] is True and receipt["totals"]["sent_for_removal"] == 1
    for text in (dry.stdout, dry.stderr, forget.stdout, forget.stderr):
        assert person["email"].strip().lower() not in text.lower()
    expected2 -= set(mh.row_hashes(person) or [])
    assert set(only_list_and_audience(emu)[0]["members"]) == expected2

    # Run 4, a full refresh: both exports again, in name order, into the same list; every
    # customer's last row still decides, so the members do not change.
    meltano.run(mh.CSV_TAP, "--full-refresh")
    report4 = meltano.state(mh.CSV_TAP)["pinterest_audience"]
    assert report4["records_received"] == len(base) + len(changes)
    assert report4["segment_id"] == report1["segment_id"]
    assert check_ids(report4, emu) == expected2


# ---- the warehouse path ----------------------------------------------------------------------

_PG_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")
_COLUMNS = ("customer_id", "segment_name", "action", "updated_at", "email", "mobile_ad_id")


def _no_postgres(reason: str) -> None:
    message = f'{reason} (start one with: eval "$(bash scripts/setup-postgres.sh)")'
    if os.environ.get("TPA_REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def warehouse(plugins: Path) -> Iterator[mh.Postgres]:
    """A fresh database on the PG* server, dropped afterwards."""
    if not any(os.environ.get(v) for v in ("PGHOST", "PGPORT", "PGDATABASE")):
        _no_postgres("no PostgreSQL server configured: PGHOST/PGPORT/PGDATABASE are not set")
    python = plugins / ".meltano" / "extractors" / mh.PG_TAP / "venv" / "bin" / "python"
    admin = mh.Postgres(python, os.environ)
    dbname = f"tpa_meltano_{uuid.uuid4().hex[:10]}"
    try:
        admin.execute("SELECT 1")
        admin.execute(f'CREATE DATABASE "{dbname}"')
    except RuntimeError as exc:
        _no_postgres(f"PostgreSQL at PG* is not usable: {exc}")
    try:
        yield mh.Postgres(python, os.environ, dbname)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _upsert(db: mh.Postgres, rows: list[dict[str, str]]) -> None:
    params = [
        [r[c] if r[c].strip() or c in ("segment_name", "action") else None for c in _COLUMNS]
        for r in rows
    ]
    db.execute(
        (
            "INSERT INTO customers (customer_id, segment_name, action, updated_at, email,"
            " mobile_ad_id) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (customer_id) DO UPDATE"
            " SET segment_name = EXCLUDED.segment_name, action = EXCLUDED.action,"
            " updated_at = EXCLUDED.updated_at, email = EXCLUDED.email,"
            " mobile_ad_id = EXCLUDED.mobile_ad_id",
            params,
            True,
        )
    )


def _table(db: mh.Postgres) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT customer_id, segment_name, action, updated_at, email, mobile_ad_id"
        " FROM customers ORDER BY updated_at, customer_id"
    )
    return [dict(zip(_COLUMNS, r, strict=True)) for r in rows]


def test_warehouse_postgres_incremental(
    meltano: mh.Meltano, emu: Emulator, sample: Any, warehouse: mh.Postgres
) -> None:
    warehouse.execute(
        "CREATE TABLE customers (customer_id bigint PRIMARY KEY, segment_name text NOT NULL,"
        " action text NOT NULL, updated_at timestamptz NOT NULL, email text, mobile_ad_id text)"
    )
    base = mh.read_rows(mh.REPO / "sample" / "customers.csv")
    latest = {r["customer_id"]: r for r in base}  # a table holds one row per customer
    _upsert(warehouse, list(latest.values()))
    table1 = _table(warehouse)
    env = dict(meltano.env, **{v: os.environ[v] for v in _PG_VARS if v in os.environ})
    env["PGDATABASE"] = warehouse.dbname or ""

    # Run 1: the whole table.
    meltano("--environment=dev", "run", mh.PG_TAP, mh.LOADER, env=env)
    state1 = meltano.state(mh.PG_TAP)
    report1 = state1["pinterest_audience"]
    expected1, skipped1 = mh.apply_rows(table1)
    assert report1["records_received"] == len(table1)
    assert skipped_total(report1) == skipped1
    assert check_ids(report1, emu) == expected1
    bookmark = state1["bookmarks"]["public-customers"]
    assert bookmark["replication_key"] == "updated_at", bookmark

    # The warehouse changes: rows flip to remove (newer updated_at), new rows, returning ones.
    _upsert(warehouse, sample.changes(base))
    boundary = max(r["updated_at"] for r in table1)
    # The tap re-reads rows equal to its bookmark (>=): the newest unchanged row comes again.
    since = [r for r in _table(warehouse) if r["updated_at"] >= boundary]
    expected2, skipped2 = mh.apply_rows(since, expected1)
    assert expected1 - expected2 and expected2 - expected1

    # Run 2: only changed rows travel.
    meltano("--environment=dev", "run", mh.PG_TAP, mh.LOADER, env=env)
    state2 = meltano.state(mh.PG_TAP)
    report2 = state2["pinterest_audience"]
    assert report2["records_received"] == len(since) < len(table1) // 4
    assert skipped_total(report2) == skipped2
    assert report2["segment_id"] == report1["segment_id"]
    assert report2["audience_id"] == report1["audience_id"]
    assert check_ids(report2, emu) == expected2
    # ...which is exactly the table's valid "add" rows now.
    assert expected2 == mh.apply_rows(r for r in _table(warehouse) if r["action"] == "add")[0]


# ---- configuration ---------------------------------------------------------------------------


def test_meltano_yml_matches_the_target(meltano: mh.Meltano) -> None:
    """Every setting the target has is declared, with its kind, default and secrecy.

    The same rules hold for the Hub definition (tests/test_plugin_definition.py).
    """
    assert mh.schema_errors(meltano.exe, mh.REPO / "meltano.yml") == []
    about = json.loads(meltano("invoke", mh.LOADER, "--about", "--format=json").stdout)
    loader = mh.project_loader()
    properties = about["settings"]["properties"]
    problems = mh.setting_problems(loader["settings"], properties, "meltano.yml")
    assert not problems, "\n".join(problems)
    assert set(loader["capabilities"]) <= set(about["capabilities"])
    assert loader["namespace"] == "target_pinterest_audiences"
    assert loader["executable"] == mh.LOADER
    groups = {frozenset(g) for g in loader["settings_group_validation"]}
    assert groups == {
        frozenset({"ad_account_id", "audience_name", "access_token"}),
        frozenset({"ad_account_id", "audience_id", "access_token"}),
        frozenset(
            {"ad_account_id", "audience_name", "refresh_token", "client_id", "client_secret"}
        ),
        frozenset({"ad_account_id", "audience_id", "refresh_token", "client_id", "client_secret"}),
    }


def test_config_list_shows_settings_not_secrets(meltano: mh.Meltano) -> None:
    secrets = {
        "TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN": "pina_" + uuid.uuid4().hex,
        "TARGET_PINTEREST_AUDIENCES_REFRESH_TOKEN": "pinr_" + uuid.uuid4().hex,
        "TARGET_PINTEREST_AUDIENCES_CLIENT_ID": "1" + uuid.uuid4().hex[:12],
        "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET": "cs_" + uuid.uuid4().hex,
    }
    env = dict(meltano.env, PINTEREST_AD_ACCOUNT_ID="1234567890", **secrets)
    loader = mh.project_loader()
    for environment in ("dev", "prod"):
        for args in (
            ("config", "list", mh.LOADER, "--all"),
            ("config", "print", mh.LOADER),
        ):
            proc = meltano(f"--environment={environment}", *args, env=env)
            for value in secrets.values():
                assert value not in proc.stdout and value not in proc.stderr, (environment, args)
            if args[1] == "list":
                out = " ".join(proc.stdout.split())
                for setting in loader["settings"]:
                    name = setting["name"]
                    var = f"TARGET_PINTEREST_AUDIENCES_{name.upper()}"
                    assert re.search(rf"(^| ){name}( \([^)]*\))? \[env: {var}\]", out), name
                    assert " ".join(setting["description"].split()) in out, name
                assert "(redacted)" in out
    # The auth helper runs through Meltano with the plugin's settings (the dev token reaches
    # the emulator's ad account; a hand-given token's scopes stay unverified, hence rc 0 or 1).
    check = meltano("invoke", f"{mh.LOADER}:check", check=False)
    assert check.returncode in (0, 1), check.stderr[-3000:]
    assert mh.AD_ACCOUNT in check.stdout + check.stderr
    # The job and the daily schedule are there.
    schedules = json.loads(meltano("schedule", "list", "--format=json").stdout)
    (daily,) = [s for s in schedules["schedules"]["job"] if s["name"] == "daily-audience-sync"]
    assert daily["interval"] == "@daily"
    assert daily["job"]["name"] == "sample-to-pinterest"
    assert daily["job"]["tasks"] == [f"{mh.CSV_TAP} {mh.LOADER}"]


# ---- many segments at once -------------------------------------------------------------------

_RECIPE_MARKER = (
    "<!-- tests/test_meltano.py merges this block into a project and runs its jobs at once"
)


def segments_recipe() -> dict[str, Any]:
    """The recipe of docs/many-segments.md, exactly as a user copies it."""
    text = (mh.REPO / "docs" / "many-segments.md").read_text(encoding="utf-8")
    start = text.index("```yaml\n", text.index(_RECIPE_MARKER)) + len("```yaml\n")
    return yaml.safe_load(text[start : text.index("```", start)])


def test_segments_run_as_parallel_jobs(meltano: mh.Meltano, emu: Emulator, sample: Any) -> None:
    """Three segment jobs of the docs' recipe at once: one source, one emulator, one token
    file whose refresh token is single-use and rotated while the jobs run."""
    recipe = segments_recipe()
    project_file = meltano.project / "meltano.yml"
    project = yaml.safe_load(project_file.read_text(encoding="utf-8"))
    for kind in ("extractors", "loaders"):
        project["plugins"][kind] += recipe["plugins"][kind]
    for key in ("jobs", "schedules"):
        project[key] += recipe[key]
    project_file.write_text(yaml.safe_dump(project, sort_keys=False), encoding="utf-8")

    # Each job: its extractor's segment filter and its loader's Audience.
    plugins = {
        p["name"]: p["config"]
        for kind in ("extractors", "loaders")
        for p in recipe["plugins"][kind]
    }
    jobs = []
    for job in recipe["jobs"]:
        (task,) = job["tasks"]
        tap, target = task.split()
        where = plugins[tap]["stream_maps"]["customers"]["__filter__"]
        segment = re.fullmatch(r"segment_name == '(.+)'", where)
        assert segment, where
        jobs.append((job["name"], tap, target, segment[1], plugins[target]["audience_name"]))
    assert len(jobs) == 3

    # One export holding the three segments, interleaved.
    segments = [segment for _, _, _, segment, _ in jobs]
    base = mh.read_rows(mh.REPO / "sample" / "customers.csv")
    rows = [dict(row, segment_name=segments[i % 3]) for i, row in enumerate(base)]
    mh.write_rows(sample, rows, meltano.project / "sample" / "customers.csv", time.time() - 3600)

    # One token file for all jobs: every access token serves three requests, and a refresh
    # token works once, so the jobs must share each rotated pair through the file.
    token_file = meltano.project / ".meltano" / "dev-tokens.json"
    TokenStore(token_file).save(
        {"access_token": mh.ACCESS_TOKEN, "refresh_token": "emu-refresh-token"}
    )
    # Slow writes in small requests, one at a time: each job writes for a few seconds, so
    # the jobs write (and refresh) while the others do.
    emu.configure(refresh_single_use=True, access_token_ttl_requests=3, write_delay_ms=300)
    env = dict(
        meltano.env,
        TARGET_PINTEREST_AUDIENCES_CLIENT_ID="emu-client-id",
        TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET="emu-client-secret",
        TARGET_PINTEREST_AUDIENCES_IDENTIFIERS_PER_REQUEST="80",
        TARGET_PINTEREST_AUDIENCES_MAX_CONCURRENT_WRITES="1",
    )

    # As in any project that ran before: the system database exists (created by the first
    # command; three first commands at once would race to create it).
    meltano("state", "list")
    procs = [
        subprocess.Popen(
            [str(meltano.exe), "--environment=dev", "run", name],
            cwd=meltano.project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, *_ in jobs
    ]
    failed = []
    for (name, *_), proc in zip(jobs, procs, strict=True):
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failed.append(f"{name} exited {proc.returncode}:\n{err[-6000:]}")
    assert not failed, "\n\n".join(failed)

    state = emu.state()
    lists = {str(item["id"]): item for item in state["lists"]}
    audiences = {str(item["id"]): item for item in state["audiences"]}
    assert len(lists) == len(audiences) == 3, (state["lists"], state["audiences"])
    refreshes = 0
    for _, tap, target, segment, audience_name in jobs:
        state_id = f"dev:{tap}-to-{target}"
        proc = meltano("--environment=dev", "state", "get", state_id)
        value = json.loads(proc.stdout[proc.stdout.index("{") :])
        report = value.get("singer_state", value)["pinterest_audience"]
        mine = [row for row in rows if row["segment_name"] == segment]
        expected, skipped = mh.apply_rows(mine)
        assert report["segment_name"] == segment, (state_id, report)
        assert report["audience_name"] == audience_name
        assert report["records_received"] == len(mine)
        assert skipped_total(report) == skipped
        assert report["complete"] is True
        lst = lists[str(report["segment_id"])]
        audience = audiences[str(report["audience_id"])]
        assert lst["name"] == segment
        assert audience["name"] == audience_name
        assert str(audience["rule"]["customer_list_id"]) == str(lst["id"])
        assert set(lst["members"]) == expected, segment
        refreshes += report["token_refreshes"]
    # The jobs wrote at the same time: each list's updates overlap the others'.
    spans = []
    for list_id in lists:
        times = [
            r["t"]
            for r in state["requests"]
            if r["method"] == "PATCH" and r["path"].endswith(f"/customer_lists/{list_id}")
        ]
        assert len(times) >= 3, (list_id, times)
        spans.append((min(times), max(times)))
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"no overlap: {spans}"
    # The token file was rotated while the jobs ran, and no job ever offered a spent token.
    grants = [r for r in state["requests"] if r["path"] == "/v5/oauth/token"]
    assert 1 <= refreshes <= len(grants), (refreshes, grants)
    assert {r["status"] for r in grants} == {200}, grants
    assert json.loads(token_file.read_text())["refresh_token"] != "emu-refresh-token"


# ---- many segments in one run ----------------------------------------------------------------

_ONE_JOB_MARKER = "<!-- tests/test_meltano.py merges this block into a project and runs its one job"


def one_job_recipe() -> dict[str, Any]:
    """docs/many-segments.md's recipe: one extractor, one loader, one job."""
    text = (mh.REPO / "docs" / "many-segments.md").read_text(encoding="utf-8")
    start = text.index("```yaml\n", text.index(_ONE_JOB_MARKER)) + len("```yaml\n")
    return yaml.safe_load(text[start : text.index("```", start)])


def test_segments_in_one_run_from_postgres(
    meltano: mh.Meltano, emu: Emulator, warehouse: mh.Postgres
) -> None:
    """Three tables, one of them split by stream maps into two segments, read by one
    extractor and synced by one loader in one job: one list and Audience per segment, each
    exact; a second run adopts them all and duplicates nothing."""
    people = {
        "vip": [("VIP", f"vip{i}@example.com") for i in range(6)],
        "lapsed": [("Lapsed", f"lapsed{i}@example.com") for i in range(4)],
        "members": [("Gold" if i % 2 else "Silver", f"member{i}@example.com") for i in range(10)],
    }
    for table, rows in people.items():
        warehouse.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, segment_name text NOT NULL,"
            " action text NOT NULL, email text)",
            (
                f"INSERT INTO {table} (id, segment_name, action, email)"  # noqa: S608
                " VALUES (%s, %s, 'add', %s)",
                [[i, segment, email] for i, (segment, email) in enumerate(rows)],
                True,
            ),
        )
    recipe = one_job_recipe()
    project_file = meltano.project / "meltano.yml"
    project = yaml.safe_load(project_file.read_text(encoding="utf-8"))
    for kind in ("extractors", "loaders"):
        project["plugins"][kind] += recipe["plugins"][kind]
    project["jobs"] += recipe["jobs"]
    project_file.write_text(yaml.safe_dump(project, sort_keys=False), encoding="utf-8")
    (job,) = recipe["jobs"]
    tap, target = job["tasks"][0].split()
    env = dict(meltano.env, **{v: os.environ[v] for v in _PG_VARS if v in os.environ})
    env["PGDATABASE"] = warehouse.dbname or ""

    expected = {
        "public-vip": ("VIP", "VIP customers"),
        "public-lapsed": ("Lapsed", "Lapsed customers"),
        "gold": ("Gold", "Gold customers"),
        "silver": ("Silver", "Silver customers"),
    }
    for run in (1, 2):
        meltano("--environment=dev", "run", job["name"], env=env)
        proc = meltano("--environment=dev", "state", "get", f"dev:{tap}-to-{target}")
        value = json.loads(proc.stdout[proc.stdout.index("{") :])
        reports = value.get("singer_state", value)["pinterest_audiences"]
        assert set(reports) == set(expected), reports
        state = emu.state()
        lists = {str(item["id"]): item for item in state["lists"]}
        audiences = {str(item["id"]): item for item in state["audiences"]}
        assert len(lists) == len(audiences) == len(expected)
        for stream, (segment, audience_name) in expected.items():
            report = reports[stream]
            lst, audience = lists[str(report["segment_id"])], audiences[str(report["audience_id"])]
            assert lst["name"] == segment
            assert audience["name"] == audience_name
            assert str(audience["rule"]["customer_list_id"]) == str(lst["id"])
            source = [e for rows in people.values() for s, e in rows if s == segment]
            assert set(lst["members"]) == {hashlib.sha256(e.encode()).hexdigest() for e in source}
            assert report["list_created"] is (run == 1)
            assert report["complete"] is True
