"""A run killed while refreshing its token (issue 17, item 4).

Pinterest hands back a new refresh token on every refresh and may spend the one used (the
emulator runs with single-use refresh tokens here). A run killed after sending a refresh and
before saving the answer leaves a token file whose refresh token no longer works: the next run
and `admin check` must say so, and name what to do, without ever showing a token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SCHEMA, records, sha, start_cli

from target_pinterest_audiences.pinterest.tokens import AuthError, TokenManager, TokenStore

STOPPED = re.compile(
    r"A run was stopped at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC while refreshing the token"
)
ADVICE = "Connect again with `target-pinterest-audiences-admin connect`"


def token_requests(emulator) -> list[dict[str, Any]]:
    return [r for r in emulator.state(members=False)["requests"] if r["path"] == "/v5/oauth/token"]


def refresh_config(base_config: dict[str, Any]) -> dict[str, Any]:
    """Only a refresh token (no access token, no token file yet): the run refreshes first."""
    config = {
        **base_config,
        "refresh_token": REFRESH_TOKEN,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    del config["access_token"]
    return config


def admin_check(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_PINTEREST_AUDIENCES")}
    env = {
        **clean,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "TARGET_PINTEREST_AUDIENCES_CLIENT_ID": CLIENT_ID,
        "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET": CLIENT_SECRET,
        "TARGET_PINTEREST_AUDIENCES_REFRESH_TOKEN": REFRESH_TOKEN,
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "target-pinterest-audiences-admin"),
            "check",
            "--api-url",
            config["api_url"],
            "--ad-account-id",
            config["ad_account_id"],
            "--token-cache-path",
            config["token_cache_path"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_a_run_killed_mid_refresh_is_named_by_the_next_run_and_by_check(
    emulator, base_config, run_target, tmp_path
):
    emulator.configure(refresh_single_use=True)
    # The refresh is applied 3 s after it arrives: the run is killed in between.
    emulator.add_fault("delay", delay_ms=3000, path_contains="/oauth/token", count=1)
    config = refresh_config(base_config)
    token_file = Path(config["token_cache_path"])
    config_path = tmp_path / "killed-config.json"
    config_path.write_text(json.dumps(config))
    rows = [{"segment_name": "K", "action": "add", "email": "k@example.com"}]
    proc = start_cli(config_path, env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert proc.stdin is not None
    proc.stdin.write("".join(json.dumps(m) + "\n" for m in [SCHEMA, *records(rows)]))
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not any(r["status"] is None for r in token_requests(emulator)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never sent its refresh"
        time.sleep(0.02)
    killed_at = time.time()
    # The record was written before the refresh went out: time and fingerprint, no token.
    stored = json.loads(token_file.read_text())
    (fingerprint, started) = next(iter(stored["refresh_started"].items()))
    assert fingerprint == sha(REFRESH_TOKEN)[:12]
    assert killed_at - 10 <= started <= killed_at
    assert REFRESH_TOKEN not in token_file.read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout and proc.stdout.close()
    proc.stderr and proc.stderr.close()

    # Pinterest applies the refresh after the kill, which spends the refresh token.
    deadline = time.monotonic() + 15
    while token_requests(emulator)[-1]["status"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert token_requests(emulator)[-1]["status"] == 200
    spent = requests.post(
        f"{emulator.api_url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=5,
    )
    assert spent.status_code == 400 and spent.json()["code"] == 1104

    expected_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started))
    rerun = run_target(config, records(rows))
    assert rerun.returncode != 0
    last_line = [line for line in rerun.stderr.splitlines() if line.strip()][-1]
    found = STOPPED.search(last_line)
    assert found, last_line
    assert found.group(1) == expected_time
    assert "probably already replaced" in last_line and ADVICE in last_line
    assert "Traceback" not in rerun.stderr

    check = admin_check(config, tmp_path)
    assert check.returncode != 0
    assert check.stdout.startswith("TOKEN REJECTED"), check.stdout + check.stderr
    found = STOPPED.search(check.stdout)
    assert found and found.group(1) == expected_time, check.stdout
    assert ADVICE in check.stdout
    # The record stays until a new pair is saved, so every later look says the same.
    assert json.loads(token_file.read_text())["refresh_started"] == {fingerprint: started}
    for text in (rerun.stdout, rerun.stderr, check.stdout, check.stderr, token_file.read_text()):
        assert REFRESH_TOKEN not in text and CLIENT_SECRET not in text


LOG = logging.getLogger("test_killed_refresh")


def manager(store: TokenStore, api_url: str, refresh_token: str) -> TokenManager:
    return TokenManager(
        api_url=api_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        access_token=None,
        refresh_token=refresh_token,
        store=store,
        logger=LOG,
        timeout=10,
    )


def test_a_saved_refresh_clears_the_record_and_a_plain_refusal_leaves_none(emulator, tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    manager(store, emulator.api_url, REFRESH_TOKEN).refresh()
    assert "refresh_started" not in json.loads(store.path.read_text())

    # A refresh token Pinterest never knew is refused: no run was stopped, none is named.
    other = TokenStore(tmp_path / "other.json")
    with pytest.raises(AuthError) as refused:
        manager(other, emulator.api_url, "never-issued").refresh()
    assert "stopped" not in str(refused.value)
    assert "refresh_started" not in json.loads(other.path.read_text())
    with pytest.raises(AuthError) as again:
        manager(other, emulator.api_url, "never-issued").refresh()
    assert "stopped" not in str(again.value)
