"""Shared fixtures: an emulator per test and a runner for the real CLI over real sockets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from target_pinterest_audiences.emulator import Emulator

AD_ACCOUNT = "549755885175"
ACCESS_TOKEN = "emu-access-token"
REFRESH_TOKEN = "emu-refresh-token"
CLIENT_ID = "emu-client-id"
CLIENT_SECRET = "emu-client-secret"
STREAM = "customers"
SCHEMA = {
    "type": "SCHEMA",
    "stream": STREAM,
    "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
    "key_properties": ["id"],
}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def email_hash(email: str) -> str:
    """The expected digest, computed here independently of the target's rules."""
    return sha(email.strip().lower())


def MAID_HASH_OF(device_id: str) -> str:
    return sha(device_id.strip().lower())


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "target-pinterest-audiences"
    if script.exists():
        return [str(script)]
    found = shutil.which("target-pinterest-audiences")
    if found:
        return [found]
    return [sys.executable, "-m", "target_pinterest_audiences.target"]


def start_cli(config_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The CLI as a live process with pipes, for tests that signal it mid-run."""
    return subprocess.Popen(
        [*cli_command(), "--config", str(config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def drop_test_database(admin: Any, name: str) -> None:
    """Drop a test database (autocommit connection `admin`). FORCE ends our own sessions
    left in it, but may not end an autovacuum worker (the server's role: "must be a member
    of the role whose process is being terminated"); a plain DROP stops such a worker."""
    import psycopg

    for _ in range(40):
        try:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            try:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.25)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def confirmed_in_store(conn: Any) -> int:
    """Confirmed members in a snapshot store (every list), read by SQL on a DB-API or
    sqlite3 connection: the packed rows hold each a first key plus `keys` end to end."""
    row = conn.execute(
        "SELECT COALESCE(SUM(1 + CASE width WHEN 0 THEN 0 ELSE length(keys) / width END), 0) "
        "FROM pinterest_audience_snapshot_packed"
    ).fetchone()
    return int(row[0])


def record(**fields: Any) -> dict[str, Any]:
    return {"type": "RECORD", "stream": STREAM, "record": fields}


def state(value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "STATE", "value": value}


def records(rows: Iterable[dict[str, Any]], start_id: int = 1) -> list[dict[str, Any]]:
    return [record(id=start_id + i, **row) for i, row in enumerate(rows)]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def states(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def final(self) -> dict[str, Any]:
        return self.states[-1]["pinterest_audience"]


@pytest.fixture
def run_bytes(tmp_path: Path):
    """The CLI fed raw bytes (run_target takes text, which cannot hold a non-UTF-8 byte, a
    byte order mark or CRLF line ends as sent)."""

    def _run(config: dict[str, Any], data: bytes, *extra_args: str) -> Run:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        done = subprocess.run(
            [*cli_command(), "--config", str(config_path), *extra_args],
            input=data,
            capture_output=True,
            timeout=120,
            env=env,
            check=False,
        )
        return Run(done.returncode, done.stdout.decode(), done.stderr.decode(errors="replace"))

    return _run


@pytest.fixture(autouse=True)
def isolated_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Snapshots (and anything else under $XDG_STATE_HOME) stay in the test's directory,
    for the target processes the test starts too."""
    state_home = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    return state_home


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator(
        port=0,
        ad_accounts=(AD_ACCOUNT,),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        access_token=ACCESS_TOKEN,
        refresh_token=REFRESH_TOKEN,
    ).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def base_config(emulator: Emulator, tmp_path: Path) -> dict[str, Any]:
    return {
        "ad_account_id": AD_ACCOUNT,
        "audience_name": "VIP audience",
        "access_token": ACCESS_TOKEN,
        "api_url": emulator.api_url,
        "token_cache_path": str(tmp_path / "tokens.json"),
        "retry_base_delay_seconds": 0.01,
        "retry_max_delay_seconds": 0.05,
        "retry_max_seconds": 20,
        "request_timeout_seconds": 5,
    }


@pytest.fixture
def run_target(tmp_path: Path):
    """Run the installed CLI with a config and Singer messages on stdin."""

    def _run(
        config: dict[str, Any],
        messages: list[dict[str, Any]] | str,
        *,
        with_schema: bool = True,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> Run:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        if isinstance(messages, str):
            text = messages
        else:
            lines = ([SCHEMA] if with_schema else []) + messages
            text = "".join(json.dumps(m) + "\n" for m in lines)
        proc_env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **(env or {})}
        completed = subprocess.run(
            [*cli_command(), "--config", str(config_path)],
            input=text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=proc_env,
            check=False,
        )
        return Run(completed.returncode, completed.stdout, completed.stderr)

    return _run


def lists_named(emu: Emulator, name: str) -> list[dict[str, Any]]:
    return [item for item in emu.state()["lists"] if item["name"] == name]


def members(emu: Emulator, list_id: str) -> set[str]:
    for item in emu.state()["lists"]:
        if item["id"] == list_id:
            return set(item["members"])
    raise AssertionError(f"no list {list_id}")


def writes(emu: Emulator) -> list[dict[str, Any]]:
    return [r for r in emu.state()["requests"] if r["method"] in ("POST", "PATCH")]
