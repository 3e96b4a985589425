"""`target-pinterest-audiences-auth` end to end: the real console script against the emulator.

The emulator runs in this process; the command runs as a subprocess, prints its single-use
link on stdout, and fetching that link (requests follows the emulator's 302 to the command's
loopback listener) completes the flow. No test may see a token, code or secret in the output.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from target_pinterest_audiences.admin import connect
from target_pinterest_audiences.admin.check import check_connection
from target_pinterest_audiences.admin.cli import main
from target_pinterest_audiences.admin.connect import AuthorizationSession, Outcome
from target_pinterest_audiences.emulator import Emulator
from target_pinterest_audiences.pinterest.tokens import TokenStore, token_record

ACCOUNT = "549755885175"
OTHER_ACCOUNT = "549755885176"
CLIENT_ID = "emu-client-id"
CLIENT_SECRET = "emu-client-secret-7f3a"
SEED_ACCESS = "emu-access-token-91c2"
SEED_REFRESH = "emu-refresh-token-4d8e"
WRONG_SECRET = "wrong-secret-5b1e"
PROCESS_TIMEOUT = 20.0


def auth_command() -> list[str]:
    script = Path(sys.executable).parent / "target-pinterest-audiences-auth"
    found = str(script) if script.exists() else shutil.which("target-pinterest-audiences-auth")
    if not found:
        pytest.fail(
            "console script target-pinterest-audiences-auth is not installed: "
            "run `pip install -e . --no-deps`"
        )
    return [found]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator(
        port=0,
        ad_accounts=(ACCOUNT, OTHER_ACCOUNT),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        access_token=SEED_ACCESS,
        refresh_token=SEED_REFRESH,
    ).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Credentials from the environment; XDG_CONFIG_HOME keeps default token files in tmp."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_PINTEREST_AUDIENCES")}
    return {
        **clean,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "PYTHONUNBUFFERED": "1",
        "TARGET_PINTEREST_AUDIENCES_CLIENT_ID": CLIENT_ID,
        "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET": CLIENT_SECRET,
    }


def default_token_file(tmp_path: Path, account: str = ACCOUNT) -> Path:
    return tmp_path / "xdg" / "target-pinterest-audiences" / f"tokens-{account}.json"


class Connect:
    """One `connect` subprocess; `link` is its first stdout line."""

    def __init__(
        self,
        emu: Emulator,
        env: dict[str, str],
        *extra: str,
        port: int | None = 0,
        stdin: Any = None,
    ) -> None:
        argv = [
            *auth_command(),
            "connect",
            "--api-url",
            emu.api_url,
            "--authorize-url",
            f"{emu.base_url}/oauth/",
            *(["--redirect-port", str(port)] if port is not None else []),
            "--ad-account-id",
            ACCOUNT,
            "--no-browser",
            *extra,
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._killer = threading.Timer(PROCESS_TIMEOUT, self.proc.kill)
        self._killer.start()
        assert self.proc.stdout is not None
        self.link = self.proc.stdout.readline().strip()
        assert self.link.startswith(emu.base_url), self.link

    @property
    def params(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.link).query))

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=PROCESS_TIMEOUT)
        self._killer.cancel()
        return self.proc.returncode, self.link + "\n" + out, err


def run_auth(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*auth_command(), *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


def assert_no_leak(texts: list[str], secrets: list[str]) -> None:
    for secret in secrets:
        assert secret
        for text in texts:
            assert secret not in text


def stored_secrets(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    return [data["access_token"], data["refresh_token"]]


# ------------------------------------------------------------------------------ connect


def test_connect_prints_a_link_whose_use_saves_tokens_the_target_uploads_with(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    run = Connect(emu, env)
    params = run.params
    assert params["client_id"] == CLIENT_ID
    assert params["response_type"] == "code"
    assert params["scope"] == "ads:read,ads:write"
    assert len(params["state"]) >= 32
    redirect = urllib.parse.urlsplit(params["redirect_uri"])
    assert (redirect.scheme, redirect.hostname, redirect.path) == ("http", "127.0.0.1", "/callback")
    assert redirect.port and redirect.port > 0

    page = requests.get(run.link, timeout=10)
    assert page.history and page.history[0].status_code == 302
    assert page.status_code == 200
    assert "connected" in page.text.lower()
    code, out, err = run.finish()
    assert code == 0, err
    assert out.strip() == run.link  # stdout: the link and nothing else

    path = default_token_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = json.loads(path.read_text())
    now = time.time()
    assert tokens["access_token"].startswith("pina_")
    assert tokens["refresh_token"].startswith("pinr_")
    assert tokens["access_token_expires_at"] > now
    assert tokens["refresh_token_expires_at"] > now + 30 * 86400
    assert set(tokens["scope"].split(",")) == {"ads:read", "ads:write"}
    assert f"meltano config target-pinterest-audiences set ad_account_id {ACCOUNT}" in err
    assert str(path) in err
    callback_code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))["code"]
    assert_no_leak([out, err], [*stored_secrets(path), CLIENT_SECRET, callback_code])

    # The link is spent: replaying the callback or the authorize link reaches no listener.
    for url in (page.url, run.link):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
    assert json.loads(path.read_text()) == tokens

    # The target, given no token at all, uploads with the saved token file.
    config = {
        "ad_account_id": ACCOUNT,
        "audience_name": "Connected audience",
        "api_url": emu.api_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "retry_max_seconds": 10,
        "request_timeout_seconds": 5,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    schema = {
        "type": "SCHEMA",
        "stream": "customers",
        "schema": {"type": "object", "properties": {"id": {"type": "integer"}}},
        "key_properties": ["id"],
    }
    row = {"id": 1, "segment_name": "Connected", "action": "add", "email": "a@example.com"}
    messages = [schema, {"type": "RECORD", "stream": "customers", "record": row}]
    target = Path(sys.executable).parent / "target-pinterest-audiences"
    program = str(target) if target.exists() else "target-pinterest-audiences"
    upload = subprocess.run(
        [program, "--config", str(config_path)],
        input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert upload.returncode == 0, upload.stderr
    lists = [item for item in emu.state()["lists"] if item["name"] == "Connected"]
    assert len(lists) == 1 and lists[0]["num_members"] == 1


def test_a_spent_link_is_refused_by_the_next_run(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    first = Connect(emu, env, port=port)
    page = requests.get(first.link, timeout=10)
    assert page.status_code == 200
    assert first.finish()[0] == 0
    saved = default_token_file(tmp_path).read_bytes()

    second = Connect(emu, env, port=port)
    assert second.params["state"] != first.params["state"]
    for replay in (first.link, page.url):  # a new authorization, and the old callback itself
        refused = requests.get(replay, timeout=10)
        assert refused.status_code == 400
        assert "no longer valid" in refused.text and "run" in refused.text
    assert second.proc.poll() is None  # the current link still waits
    assert default_token_file(tmp_path).read_bytes() == saved

    assert requests.get(second.link, timeout=10).status_code == 200
    code, _, err = second.finish()
    assert code == 0, err
    assert "Refused a callback for an unknown link" in err
    assert "connect` again" in err
    assert default_token_file(tmp_path).read_bytes() != saved


def test_unknown_state_is_refused_and_a_declined_link_fails_plainly(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    run = Connect(emu, env)
    callback = run.params["redirect_uri"]
    bogus = requests.get(callback, params={"state": "forged", "code": "x"}, timeout=5)
    assert bogus.status_code == 400
    assert run.proc.poll() is None
    declined = requests.get(
        callback, params={"state": run.params["state"], "error": "access_denied"}, timeout=5
    )
    assert declined.status_code == 400
    code, _, err = run.finish()
    assert code == 1
    assert "not granted" in err and "access_denied" in err and "connect` again" in err
    assert not default_token_file(tmp_path).exists()


def test_wrong_client_secret_is_a_clear_error(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET": WRONG_SECRET}
    run = Connect(emu, env)
    page = requests.get(run.link, timeout=10)
    assert page.status_code == 502
    code, out, err = run.finish()
    assert code == 1
    assert "HTTP 401" in err and "check client_id and client_secret" in err
    assert "Traceback" not in err
    assert not default_token_file(tmp_path).exists()
    assert_no_leak([out, err, page.text], [WRONG_SECRET, CLIENT_SECRET])


def test_busy_token_endpoint_is_retried(emu: Emulator, env: dict[str, str], tmp_path: Path) -> None:
    emu.add_fault("status", status=503, path_contains="/oauth/token", count=1)
    run = Connect(emu, env)
    assert requests.get(run.link, timeout=20).status_code == 200
    code, _, err = run.finish()
    assert code == 0, err
    assert "HTTP 503" in err
    assert default_token_file(tmp_path).exists()


def test_flag_wins_over_environment_and_missing_secret_fails(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "custom" / "tokens.json"
    env_wrong = {**env, "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET": WRONG_SECRET}
    run = Connect(emu, env_wrong, "--client-secret", CLIENT_SECRET, "--token-cache-path", str(path))
    assert requests.get(run.link, timeout=10).status_code == 200
    code, _, err = run.finish()
    assert code == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"set token_cache_path {path}" in err

    no_secret = {k: v for k, v in env.items() if not k.endswith("CLIENT_SECRET")}
    missing = run_auth(no_secret, "connect", "--ad-account-id", ACCOUNT, "--no-browser")
    assert missing.returncode == 2
    assert "TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET" in missing.stderr
    assert missing.stdout == ""


def test_link_expires_after_the_timeout(emu: Emulator, env: dict[str, str], tmp_path: Path) -> None:
    started = time.monotonic()
    run = Connect(emu, env, "--timeout", "1")
    code, _, err = run.finish()
    assert code == 1
    assert time.monotonic() - started < 10
    assert "expired" in err and "connect` again" in err
    with pytest.raises(requests.ConnectionError):
        requests.get(run.link, timeout=5)
    assert not default_token_file(tmp_path).exists()


def test_callback_address_pasted_from_another_computer(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    run = Connect(emu, env, stdin=subprocess.PIPE)
    approved = requests.get(run.link, allow_redirects=False, timeout=10)
    assert approved.status_code == 302
    assert run.proc.stdin is not None
    run.proc.stdin.write("not an address\n" + approved.headers["Location"] + "\n")
    run.proc.stdin.flush()
    code, out, err = run.finish()
    assert code == 0, err
    assert "paste the whole address" in err
    path = default_token_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_no_leak([out, err], stored_secrets(path))


def test_registered_redirect_uri_is_used_verbatim(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    redirect_uri = f"http://localhost:{free_port()}/pinterest/callback"
    run = Connect(emu, env, "--redirect-uri", redirect_uri, port=None)
    assert run.params["redirect_uri"] == redirect_uri
    page = requests.get(run.link, timeout=10)
    assert page.status_code == 200
    assert page.url.startswith(redirect_uri + "?")
    code, _, err = run.finish()
    assert code == 0, err
    assert default_token_file(tmp_path).exists()


# ------------------------------------------------------------------------------ the link


def test_code_exchange_sends_the_documented_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, str, dict[str, str]]] = []

    def fake_request_token(
        api_url: str, client_id: str, client_secret: str, form: dict[str, str], **_: Any
    ) -> dict[str, Any]:
        calls.append((api_url, client_id, client_secret, dict(form)))
        return {
            "access_token": "tok-a-6e1f",
            "refresh_token": "tok-r-2b9c",
            "expires_in": 2592000,
            "refresh_token_expires_in": 5184000,
            "scope": "ads:read,ads:write",
            "token_type": "bearer",
        }

    monkeypatch.setattr(connect, "request_token", fake_request_token)
    store = TokenStore(tmp_path / "t.json")
    exchange = connect._exchange_function(
        api_url="https://api.example/v5",
        client_id="id",
        client_secret="sec-0d3a",
        redirect_uri="http://127.0.0.1:8085/callback",
        store=store,
        ad_account_id=ACCOUNT,
        default_path=None,
    )
    outcome = exchange("code-8c4e")
    assert outcome.ok, outcome.message
    assert calls == [
        (
            "https://api.example/v5",
            "id",
            "sec-0d3a",
            {
                "grant_type": "authorization_code",
                "code": "code-8c4e",
                "redirect_uri": "http://127.0.0.1:8085/callback",
                "continuous_refresh": "true",
            },
        )
    ]
    saved = store.load()
    assert saved is not None and saved["refresh_token"] == "tok-r-2b9c"
    assert_no_leak([outcome.message], ["tok-a-6e1f", "tok-r-2b9c", "sec-0d3a", "code-8c4e"])


def test_session_accepts_one_callback_with_its_state_before_the_deadline() -> None:
    said: list[str] = []
    exchanged: list[str] = []
    now = [100.0]

    def exchange(code: str) -> Outcome:
        exchanged.append(code)
        return Outcome(True, "saved")

    session = AuthorizationSession(
        state="s" * 43, deadline=110.0, exchange=exchange, say=said.append, clock=lambda: now[0]
    )
    assert session.handle({"state": "t" * 43, "code": "c1"}).status == 400
    assert session.handle({"state": "s" * 43}).status == 400  # no code: still usable
    first = session.handle({"state": "s" * 43, "code": "c1"})
    assert (first.status, first.final) == (200, True)
    again = session.handle({"state": "s" * 43, "code": "c2"})
    assert (again.status, again.final) == (400, False)
    assert exchanged == ["c1"]
    assert session.outcome == Outcome(True, "saved")
    assert any("second use" in line for line in said)

    late = AuthorizationSession(
        state="s" * 43, deadline=110.0, exchange=exchange, say=said.append, clock=lambda: now[0]
    )
    now[0] = 111.0
    assert late.handle({"state": "s" * 43, "code": "c3"}).title == "Link expired"
    assert exchanged == ["c1"]
    assert all("c1" not in line and "c2" not in line for line in said)


# ------------------------------------------------------------------------------ check


def seed_tokens(emu: Emulator, path: Path, scope: str) -> dict[str, Any]:
    """Authorize `scope` at the emulator directly and store the answer, as connect would."""
    redirect_uri = "http://127.0.0.1:9/callback"
    approved = requests.get(
        f"{emu.base_url}/oauth/",
        params={
            "client_id": CLIENT_ID,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": scope,
            "state": "x",
        },
        allow_redirects=False,
        timeout=5,
    )
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(approved.headers["Location"]).query))
    answer = requests.post(
        f"{emu.api_url}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code["code"],
            "redirect_uri": redirect_uri,
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=5,
    ).json()
    record = token_record(answer)
    TokenStore(path).save(record)
    return record


def test_check_passes_on_a_good_account_and_fails_plainly_under_review(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    record = seed_tokens(emu, default_token_file(tmp_path), "ads:read,ads:write")
    good = run_auth(env, "check", "--api-url", emu.api_url, "--ad-account-id", ACCOUNT)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("OK:")

    emu.configure(under_review=[ACCOUNT])
    review = run_auth(env, "--check", "--api-url", emu.api_url, "--ad-account-id", ACCOUNT)
    assert review.returncode == 1
    assert "under review" in review.stdout and "2626" in review.stdout
    assert "Traceback" not in review.stderr
    assert_no_leak(
        [good.stdout, good.stderr, review.stdout, review.stderr],
        [record["access_token"], record["refresh_token"], CLIENT_SECRET],
    )


def test_check_fails_on_a_token_without_ads_write(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "read-only.json"
    record = seed_tokens(emu, path, "ads:read")
    run = run_auth(
        env,
        "check",
        "--api-url",
        emu.api_url,
        "--ad-account-id",
        ACCOUNT,
        "--token-cache-path",
        str(path),
    )
    assert run.returncode == 1
    assert "ads:write" in run.stdout and "MISSING SCOPE" in run.stdout
    assert_no_leak([run.stdout, run.stderr], [record["access_token"], record["refresh_token"]])


def test_check_with_tokens_given_by_hand(
    emu: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    hand = {
        **env,
        "TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN": SEED_ACCESS,
        "TARGET_PINTEREST_AUDIENCES_REFRESH_TOKEN": SEED_REFRESH,
    }
    run = run_auth(hand, "check", "--api-url", emu.api_url, "--ad-account-id", ACCOUNT)
    assert run.returncode == 0, run.stdout + run.stderr
    # The refresh that revealed the scope rotated the pair, and the new pair was kept.
    path = default_token_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["refresh_token"] != SEED_REFRESH
    assert_no_leak([run.stdout, run.stderr], [SEED_ACCESS, SEED_REFRESH, *stored_secrets(path)])


BOTH = {"access_token": SEED_ACCESS, "refresh_token": SEED_REFRESH}


@pytest.mark.parametrize(
    ("disapproved", "kwargs", "expected"),
    [
        (True, BOTH, "DISAPPROVED"),
        (False, {**BOTH, "ad_account_id": "123456"}, "NO ACCESS"),
        (False, {"access_token": "revoked-token"}, "TOKEN REJECTED"),
        (False, {"refresh_token": "revoked-token"}, "TOKEN REJECTED"),
        (False, {"access_token": SEED_ACCESS}, "NOT VERIFIED"),
        (False, {}, "NOT CONNECTED"),
    ],
)
def test_check_connection_reports_each_blocker(
    emu: Emulator, tmp_path: Path, disapproved: bool, kwargs: dict[str, Any], expected: str
) -> None:
    if disapproved:
        emu.configure(disapproved=[ACCOUNT])
    ok, message = check_connection(
        **{
            "ad_account_id": ACCOUNT,
            "api_url": emu.api_url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "token_cache_path": tmp_path / "tokens.json",
            "retry_seconds": 5,
            **kwargs,
        }
    )
    assert not ok
    assert message.startswith(expected), message
    assert_no_leak([message], [SEED_ACCESS, SEED_REFRESH, CLIENT_SECRET, "revoked-token"])


def test_main_usage_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--ad-account-id", "not-digits"]) == 2
    # Pinterest's id pattern: ASCII digits, at most 18 (str.isdigit() accepts others).
    for bad in ("\u0661\u0662\u0663", "1" * 19, "\u00b2"):
        assert main(["check", "--ad-account-id", bad]) == 2
        assert main(["status", "--ad-account-id", "123", "--audience-id", bad]) == 2
    ok, message = check_connection(ad_account_id="1" * 19)
    assert not ok and message.startswith("NOT READY: ad_account_id must be 1 to 18 digits")
    assert main(["--help"]) == 0
    assert "connect" in capsys.readouterr().out
