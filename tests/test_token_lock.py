"""Parallel jobs on one token file: refreshing is serialized by a file lock beside it.

Pinterest rotates the refresh token on every refresh and does not say whether the old one
stays valid, so the emulator runs with single-use refresh tokens: a process that refreshes
with a pair another process has already spent is refused. Every test here fails without
the lock and the re-read under it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    ACCESS_TOKEN,
    AD_ACCOUNT,
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH_TOKEN,
    SCHEMA,
    email_hash,
    lists_named,
    records,
    start_cli,
)

from target_pinterest_audiences.admin import check as admin_check
from target_pinterest_audiences.admin import connect
from target_pinterest_audiences.emulator import Emulator
from target_pinterest_audiences.pinterest import tokens
from target_pinterest_audiences.pinterest.client import PinterestClient, RetryPolicy
from target_pinterest_audiences.pinterest.tokens import (
    TokenManager,
    TokenStore,
    TransientAuthError,
)

SECRETS = (REFRESH_TOKEN, CLIENT_SECRET, "pina_", "pinr_")


LOG = logging.getLogger("test_token_lock")

#: One process of a contention test: waits for the go file, then does one thing and
#: prints what it saw as JSON. It loads the token file before the go, as a run does.
WORKER = """
import json, logging, os, sys, time
from target_pinterest_audiences.pinterest.tokens import TokenManager, TokenStore
mode, path, api_url, ready, go = sys.argv[1:6]
store = TokenStore(path)
manager = None
if mode != "hold":
    manager = TokenManager(
        api_url=api_url, client_id="emu-client-id", client_secret="emu-client-secret",
        access_token=None, refresh_token=None, store=store,
        logger=logging.getLogger("worker"), timeout=10,
    )
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
if mode == "hold":
    with store.lock():
        start = time.time()
        time.sleep(0.3)
        print(json.dumps({"held": [start, time.time()]}))
elif mode == "access":
    token = manager.access_token()
    print(json.dumps({"access_token": token, "refreshes": manager.refreshes}))
else:
    manager.refresh()
    print(json.dumps({"refreshes": manager.refreshes}))
"""


def token_grants(emu: Emulator) -> list[dict[str, Any]]:
    return [r for r in emu.state()["requests"] if r["path"] == "/v5/oauth/token"]


def run_together(mode: str, n: int, token_file: Path, api_url: str, tmp_path: Path) -> list[dict]:
    """Start `n` worker processes, release them at once, and return what each printed."""
    go = tmp_path / f"go-{mode}"
    readies = [tmp_path / f"ready-{mode}-{i}" for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, str(token_file), api_url, str(ready), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready in readies
    ]
    deadline = time.monotonic() + 30
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    return results


def manager(store: TokenStore, api_url: str, **kwargs: Any) -> TokenManager:
    settings: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "access_token": None,
        "refresh_token": None,
        **kwargs,
    }
    return TokenManager(api_url=api_url, store=store, logger=LOG, timeout=10, **settings)


@pytest.fixture
def single_use(emulator: Emulator) -> Emulator:
    emulator.configure(refresh_single_use=True)
    return emulator


def seed(store: TokenStore, **extra: Any) -> None:
    """The pair `connect` would have stored: the emulator's seeded tokens."""
    store.save({"access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN, **extra})


# ----------------------------------------------------------------------- the lock


def test_the_emulator_spends_refresh_tokens_but_not_earlier_access_tokens(
    single_use: Emulator,
) -> None:
    """What the tests below rely on, as Pinterest would do it: a refresh spends the refresh
    token it used, while an access token issued earlier lives on until its own expiry."""
    grant = {"grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN}
    url = f"{single_use.api_url}/oauth/token"
    first = requests.post(url, data=grant, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5)
    assert first.status_code == 200
    again = requests.post(url, data=grant, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5)
    assert again.status_code == 400 and again.json()["code"] == 1104
    lists = f"{single_use.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists"
    for token in (ACCESS_TOKEN, first.json()["access_token"]):
        answer = requests.get(lists, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert answer.status_code == 200


def test_the_lock_admits_one_process_at_a_time(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    results = run_together("hold", 2, token_file, "http://127.0.0.1:9", tmp_path)
    first, second = sorted(r["held"] for r in results)
    assert first[1] <= second[0]  # one after the other, never both at once
    lock_file = tmp_path / "tokens.json.lock"
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600


def test_two_processes_with_a_stale_token_refresh_once_and_share_the_pair(
    single_use: Emulator, tmp_path: Path
) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    seed(store, access_token_expires_at=1)  # both start with an expired access token
    # A slow token endpoint keeps the first refresh in flight while the second process asks.
    single_use.add_fault("delay", delay_ms=300, path_contains="/oauth/token")
    results = run_together("access", 2, store.path, single_use.api_url, tmp_path)

    grants = token_grants(single_use)
    assert [g["status"] for g in grants] == [200]  # one refresh; the spent token never offered
    assert sorted(r["refreshes"] for r in results) == [0, 1]
    stored = store.load()
    assert stored is not None and stored["refresh_token"] != REFRESH_TOKEN
    assert {r["access_token"] for r in results} == {stored["access_token"]}
    answer = requests.get(
        f"{single_use.api_url}/ad_accounts/{AD_ACCOUNT}/customer_lists",
        headers={"Authorization": f"Bearer {stored['access_token']}"},
        timeout=5,
    )
    assert answer.status_code == 200
    # The stored refresh token is the live one: it works (once).
    manager(store, single_use.api_url).refresh()
    assert [g["status"] for g in token_grants(single_use)] == [200, 200]


def test_a_401_on_a_token_another_process_replaced_rereads_the_file(
    single_use: Emulator, tmp_path: Path
) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    seed(store)
    single_use.configure(access_token_ttl_requests=1)  # each access token serves one request
    mine = manager(store, single_use.api_url)
    client = PinterestClient(
        api_url=single_use.api_url,
        tokens=mine,
        logger=LOG,
        retry=RetryPolicy(budget_seconds=5, base_delay=0.01, max_delay=0.05),
        timeout=5,
    )
    path = f"/ad_accounts/{AD_ACCOUNT}/customer_lists"
    client.request("GET", path)  # the seeded access token is used up now

    (other,) = run_together("refresh", 1, store.path, single_use.api_url, tmp_path)
    assert other["refreshes"] == 1
    stored = store.load()
    assert stored is not None

    client.request("GET", path)  # 401 with the old token, then the stored one
    assert mine.refreshes == 0
    assert mine.access_token() == stored["access_token"]
    assert len(token_grants(single_use)) == 1  # only the other process's refresh
    statuses = [r["status"] for r in single_use.state()["requests"] if r["path"].endswith(path)]
    assert statuses == [200, 401, 200]


def test_the_newer_stored_pair_is_adopted_when_the_own_token_expires(
    single_use: Emulator, tmp_path: Path
) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    seed(store, access_token_expires_at=int(time.time()) + 3600, updated_at=int(time.time()))
    mine = manager(store, single_use.api_url)
    assert mine.access_token() == ACCESS_TOKEN
    other = manager(store, single_use.api_url)
    other.refresh()  # rotates the pair and spends the seeded refresh token
    rotated = store.load()
    assert rotated is not None
    mine._access_expires_at = time.time()  # our copy runs out
    assert mine.access_token() == rotated["access_token"]
    assert mine.refreshes == 0
    assert len(token_grants(single_use)) == 1
    # ...and the refresh token it adopted is the live one.
    mine.refresh()
    assert [g["status"] for g in token_grants(single_use)] == [200, 200]


def test_a_file_that_appears_after_start_up_is_adopted(
    single_use: Emulator, tmp_path: Path
) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    # Started before any token file existed, with the refresh token from the config.
    late = manager(store, single_use.api_url, refresh_token=REFRESH_TOKEN)
    first = manager(store, single_use.api_url, refresh_token=REFRESH_TOKEN)
    token = first.access_token()  # refreshes and creates the file
    assert late.access_token() == token
    assert late.refreshes == 0
    assert len(token_grants(single_use)) == 1


def test_an_unreadable_file_mid_run_is_replaced_by_the_next_refresh(
    single_use: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    seed(store)
    mine = manager(store, single_use.api_url)
    store.path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert mine.on_unauthorized(ACCESS_TOKEN) is True
    assert "cannot be read" in caplog.text
    stored = store.load()
    assert stored is not None and stored["access_token"] == mine.access_token()


def test_short_lived_tokens_are_not_refreshed_on_every_use(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    now = int(time.time())
    seed(store, updated_at=now, access_token_expires_at=now + 60)
    # Nothing listens on port 9: a refresh attempt would fail.
    assert manager(store, "http://127.0.0.1:9").access_token() == ACCESS_TOKEN


def test_waiting_too_long_for_the_lock_is_a_transient_error(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    other = TokenStore(store.path)
    with (
        store.lock(),
        pytest.raises(TransientAuthError, match=r"tokens\.json\.lock"),
        other.lock(wait_seconds=0.2),
    ):
        pass


def test_without_fcntl_the_lock_is_skipped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tokens, "fcntl", None)
    store = TokenStore(tmp_path / "tokens.json")
    with store.lock():
        pass
    assert not store.lock_path.exists()


def test_a_file_system_without_locks_warns_and_goes_on(
    tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    class NoLocks:
        LOCK_EX = LOCK_NB = LOCK_UN = 0

        @staticmethod
        def flock(fd: int, operation: int) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(tokens, "fcntl", NoLocks)
    store = TokenStore(tmp_path / "tokens.json")
    with caplog.at_level(logging.WARNING), store.lock():
        pass
    assert "No locks available" in caplog.text and "local disk" in caplog.text


def test_connect_writes_the_token_file_under_the_lock(tmp_path: Path, monkeypatch) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    answer = {"access_token": "a-new", "refresh_token": "r-new", "expires_in": 3600}
    monkeypatch.setattr(connect, "request_token", lambda *args, **kwargs: answer)
    exchange = connect._exchange_function(
        api_url="http://127.0.0.1:9",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri="http://127.0.0.1:9/callback",
        store=store,
        ad_account_id=AD_ACCOUNT,
        default_path=None,
    )
    outcomes: list[connect.Outcome] = []
    with store.lock():  # a parallel run is refreshing
        thread = threading.Thread(target=lambda: outcomes.append(exchange("code")))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not store.path.exists()
    thread.join(10)
    assert outcomes and outcomes[0].ok, outcomes
    stored = store.load()
    assert stored is not None and stored["access_token"] == "a-new"


def test_check_refreshes_under_the_lock(single_use: Emulator, tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    seed(store)  # no scope stored: check refreshes to learn it
    results: list[tuple[bool, str]] = []

    def check() -> None:
        results.append(
            admin_check.check_connection(
                ad_account_id=AD_ACCOUNT,
                api_url=single_use.api_url,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                token_cache_path=store.path,
                retry_seconds=5,
            )
        )

    with store.lock():
        thread = threading.Thread(target=check)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and token_grants(single_use) == []
    thread.join(20)
    assert results and results[0][0], results
    assert [g["status"] for g in token_grants(single_use)] == [200]


@pytest.fixture
def short_lived() -> Any:
    """Access tokens that die after 3 s or 20 requests; refresh tokens that work once."""
    emu = Emulator(
        port=0,
        ad_accounts=(AD_ACCOUNT,),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        access_token=None,
        refresh_token=REFRESH_TOKEN,
        access_token_expires_in=3,
    ).start()
    emu.configure(refresh_single_use=True, access_token_ttl_requests=20, delay_ms=200)
    try:
        yield emu
    finally:
        emu.stop()


# ----------------------------------------------------------------------- four parallel jobs


def test_check_calls_a_stuck_token_lock_not_ready_not_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held by a stuck process is a local problem: check must not blame the network."""
    store = TokenStore(tmp_path / "tokens.json")
    seed(store)  # no scope stored: check refreshes to learn it, under the lock
    monkeypatch.setattr(tokens, "LOCK_WAIT_SECONDS", 0.2)
    with store.lock():  # a stuck run holds it
        ok, message = admin_check.check_connection(
            ad_account_id=AD_ACCOUNT,
            api_url="http://127.0.0.1:9",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_cache_path=store.path,
            retry_seconds=1,
            timeout=0.05,
        )
    assert not ok
    assert message.startswith("NOT READY: another process has held the token lock"), message
    assert "tokens.json.lock" in message and "network" not in message


def test_four_parallel_jobs_share_one_token_file(short_lived: Emulator, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    jobs = []
    for n, segment in enumerate(("North", "South", "East", "West")):
        config = {
            "ad_account_id": AD_ACCOUNT,
            "audience_name": f"{segment} audience",
            "api_url": short_lived.api_url,
            "token_cache_path": str(token_file),
            "refresh_token": REFRESH_TOKEN,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "identifiers_per_request": 10,
            "retry_base_delay_seconds": 0.01,
            "retry_max_delay_seconds": 0.2,
            "retry_max_seconds": 60,
            "request_timeout_seconds": 10,
        }
        config_path = tmp_path / f"config-{segment}.json"
        config_path.write_text(json.dumps(config))
        rows = [
            {"segment_name": segment, "action": "add", "email": f"User{n}-{i}@Example.com"}
            for i in range(150)
        ]
        text = "".join(json.dumps(m) + "\n" for m in [SCHEMA, *records(rows)])
        expected = {email_hash(f"user{n}-{i}@example.com") for i in range(150)}
        jobs.append((segment, config_path, text, expected))

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    procs = [start_cli(config_path, env=env) for _, config_path, _, _ in jobs]
    with ThreadPoolExecutor(len(procs)) as pool:
        outputs = list(
            pool.map(
                lambda pair: pair[0].communicate(input=pair[1], timeout=180),
                zip(procs, [text for _, _, text, _ in jobs], strict=True),
            )
        )

    codes = {segment: proc.returncode for (segment, *_), proc in zip(jobs, procs, strict=True)}
    failed = [out[1][-2000:] for out, code in zip(outputs, codes.values(), strict=True) if code]
    assert list(codes.values()) == [0] * 4, (codes, failed[:1])
    for (segment, _, _, expected), (_, stderr) in zip(jobs, outputs, strict=True):
        (found,) = lists_named(short_lived, segment)
        assert set(found["members"]) == expected, segment
        for secret in SECRETS:
            assert secret not in stderr
        assert "Traceback" not in stderr
    assert len(short_lived.state()["audiences"]) == 4
    grants = token_grants(short_lived)
    # Tokens really died and rotated mid-run, and no process ever offered a spent refresh token.
    assert len(grants) >= 3
    assert any(r["status"] == 401 for r in short_lived.state()["requests"])
    # The pair left in the file is the live one.
    manager(TokenStore(token_file), short_lived.api_url).refresh()
    assert token_grants(short_lived)[-1]["status"] == 200
    assert all(g["status"] == 200 for g in grants), [g["status"] for g in grants]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    lock_file = token_file.with_name(token_file.name + ".lock")
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600
