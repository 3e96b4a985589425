"""The security review's findings (issue 17, item 5), each reproduced, then fixed.

Every test here failed on the code before its fix: secrets of snapshot_url shown, snapshot
files readable by others, folders made world-writable under umask 000, symbolic links
followed, identifiers written to the rejected-records file, the connect callback left open
on ::1, tokens sent over plain http to any host, and ids from the API used unchecked.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    AD_ACCOUNT,
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH_TOKEN,
    SCHEMA,
    cli_command,
    record,
    records,
)
from test_mirror import snapshot_database  # noqa: F401 - the fixture: a fresh PostgreSQL database

from target_pinterest_audiences.errors import TargetError
from target_pinterest_audiences.pinterest.tokens import TokenFileError, TokenStore
from target_pinterest_audiences.store.snapshot import SnapshotError, SnapshotStore
from target_pinterest_audiences.sync.report import Report
from target_pinterest_audiences.sync.resolver import Resolver, api_id
from target_pinterest_audiences.urls import api_url_problem, mask_url

ADMIN = str(Path(sys.executable).parent / "target-pinterest-audiences-admin")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def adds(n: int, segment: str = "S") -> list[dict[str, Any]]:
    return records(
        [{"segment_name": segment, "action": "add", "email": f"p{i}@example.com"} for i in range(n)]
    )


def admin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_PINTEREST_AUDIENCES")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), **extra}


def run_admin(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ADMIN, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=admin_env(tmp_path, **env),
        stdin=subprocess.DEVNULL,
        check=False,
    )


# ---- 1. every secret part of snapshot_url is masked ------------------------------------------

SECRET_URLS = [
    ("postgresql://u:pw-user-part@h:5432/db", ["pw-user-part"]),
    ("postgresql://u@h/db?password=pw-in-query", ["pw-in-query"]),
    (
        "postgresql://u@h/db?sslmode=require&sslpassword=pw-ssl&PassWord=pw-case",
        ["pw-ssl", "pw-case"],
    ),
    (
        "postgresql://u@h/db?passwd=a1&pass=a2&secret=a3&token=a4&api_key=a5&auth=a6",
        ["a1", "a2", "a3", "a4", "a5", "a6"],
    ),
    ("postgresql://u:p%40ss@h/db?password=x%26y", ["p%40ss", "x%26y", "ss@h"]),
]


@pytest.mark.parametrize(("url", "secrets"), SECRET_URLS)
def test_mask_url_hides_every_secret_part(url, secrets):
    shown = mask_url(url)
    for secret in secrets:
        assert secret not in shown, shown
    assert "***" in shown
    # what is not secret stays, to say which database is meant
    assert shown.startswith("postgresql://u") and "/db" in shown
    assert "sslmode=require" in mask_url("postgresql://u@h/db?sslmode=require&password=x")


def test_a_query_password_is_masked_in_the_connect_error(base_config, run_target):
    # Port 1: nothing listens, so the store cannot connect and the error names the URL.
    url = "postgresql://someone@127.0.0.1:1/db?password=pw-8b1e&sslpassword=pw-77c2"
    run = run_target({**base_config, "snapshot_url": url}, adds(1))
    assert run.returncode != 0
    assert "cannot connect to the snapshot database" in run.stderr
    assert "password=***" in run.stderr
    assert "pw-8b1e" not in run.stderr + run.stdout and "pw-77c2" not in run.stderr + run.stdout


def test_a_query_password_is_masked_in_the_mirror_summary_and_by_status(
    emulator, base_config, run_target, request, tmp_path
):
    url, _name = request.getfixturevalue("snapshot_database")
    parts = urllib.parse.urlsplit(url)
    password = parts.password or ""
    assert password, "the test server needs a password (scripts/setup-postgres.sh sets one)"
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    in_query = urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, f"password={password}", "")
    )
    config = {**base_config, "snapshot_url": in_query, "sync_mode": "mirror"}
    run = run_target(
        config, [record(id=i, segment_name="S", email=f"m{i}@example.com") for i in range(3)]
    )
    assert run.returncode == 0, run.stderr
    assert "snapshot new (postgresql" in run.stderr
    assert f"password={password}" not in run.stderr + run.stdout
    assert "password=***" in run.stderr
    status = run_admin(
        tmp_path,
        "status",
        "--ad-account-id",
        AD_ACCOUNT,
        "--audience-id",
        run.final["audience_id"],
        "--api-url",
        emulator.api_url,
        TARGET_PINTEREST_AUDIENCES_ACCESS_TOKEN=base_config["access_token"],
        TARGET_PINTEREST_AUDIENCES_SNAPSHOT_URL=in_query,
    )
    assert status.returncode == 0, status.stderr
    assert "snapshot in postgresql" in status.stdout
    assert f"password={password}" not in status.stdout + status.stderr
    assert "password=***" in status.stdout


# ---- 2. SQLite snapshot files are private from the start; others' files refused ----------------


def store(directory: Path) -> SnapshotStore:
    import logging

    return SnapshotStore(
        ad_account_id=AD_ACCOUNT, directory=directory, logger=logging.getLogger("t")
    )


def test_a_new_snapshot_file_is_private_before_sqlite_opens_it(tmp_path, monkeypatch):
    """The file's mode when SQLite has just created or opened it: never readable by others,
    in an existing 0755 folder under the usual umask 022."""
    folder = tmp_path / "snapshots"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)  # noqa: S103 - the world-readable folder of the finding
    seen: list[int] = []
    real_connect = sqlite3.connect

    def watching(path: Any, *args: Any, **kwargs: Any) -> Any:
        conn = real_connect(path, *args, **kwargs)
        if str(path).endswith(".sqlite") and Path(path).parent == folder:
            seen.append(mode(Path(path)))
        return conn

    monkeypatch.setattr(sqlite3, "connect", watching)
    old = os.umask(0o022)
    try:
        snapshots = store(folder)
        snapshots.open("1234").close()
    finally:
        os.umask(old)
    assert seen and all(m == 0o600 for m in seen), [oct(m) for m in seen]
    (made,) = folder.glob("*.sqlite")
    assert mode(made) == 0o600


def test_an_existing_snapshot_file_readable_by_others_is_made_private(
    base_config, run_target, tmp_path
):
    folder = tmp_path / "snap"
    config = {**base_config, "snapshot_path": str(folder)}
    assert run_target(config, adds(2)).returncode == 0
    files = sorted(folder.glob("*.sqlite*"))
    assert files
    for path in files:
        os.chmod(path, 0o644)
    assert run_target(config, adds(3)).returncode == 0
    for path in sorted(folder.glob("*.sqlite*")):
        assert mode(path) == 0o600, (path.name, oct(mode(path)))


def test_a_snapshot_file_or_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "snap"
    snapshots = store(folder)
    snapshots.open("1234").close()
    me = os.geteuid()
    # Seen from another user's process, the folder and its files belong to someone else.
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(SnapshotError, match="belongs to another user"):
        store(folder).open("1234")
    with pytest.raises(SnapshotError, match="belongs to another user"):
        store(folder).lock("S", "the list")


# ---- 3. under umask 000, every folder made on the way is 0700 ----------------------------------


def test_folders_made_for_the_token_file_and_snapshots_are_private_under_umask_000(
    base_config, tmp_path
):
    token_file = tmp_path / "t1" / "t2" / "tokens.json"
    snapshot_dir = tmp_path / "s1" / "s2" / "s3"
    config = {
        **base_config,
        "token_cache_path": str(token_file),
        "snapshot_path": str(snapshot_dir),
        "refresh_token": REFRESH_TOKEN,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    del config["access_token"]  # the run refreshes first, and saves the token file
    config_path = tmp_path / "umask-config.json"
    config_path.write_text(json.dumps(config))
    text = "".join(json.dumps(m) + "\n" for m in [SCHEMA, *adds(2)])
    done = subprocess.run(
        [*cli_command(), "--config", str(config_path)],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
        preexec_fn=lambda: os.umask(0),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert token_file.exists() and any(snapshot_dir.iterdir())
    for folder in (
        tmp_path / "t1",
        tmp_path / "t1" / "t2",
        tmp_path / "s1",
        tmp_path / "s1" / "s2",
        snapshot_dir,
    ):
        assert mode(folder) == 0o700, (folder.name, oct(mode(folder)))
    for path in [token_file, *snapshot_dir.iterdir()]:
        if path.is_file():
            assert mode(path) == 0o600, (path.name, oct(mode(path)))


# ---- 4. symbolic links are never followed; others' token files refused ---------------------------


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("someone else's file\n")
    os.chmod(path, 0o644)
    return path


def test_a_symlinked_token_lock_is_refused_and_its_target_untouched(
    base_config, run_target, tmp_path
):
    target_file = victim(tmp_path)
    token_file = Path(base_config["token_cache_path"])
    Path(f"{token_file}.lock").symlink_to(target_file)
    config = {
        **base_config,
        "refresh_token": REFRESH_TOKEN,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    del config["access_token"]
    run = run_target(config, adds(1))
    assert run.returncode != 0
    assert "token lock file" in run.stderr and "symbolic link" in run.stderr
    assert mode(target_file) == 0o644
    assert target_file.read_text() == "someone else's file\n"


def test_a_symlinked_snapshot_lock_is_refused_and_its_target_untouched(tmp_path):
    target_file = victim(tmp_path)
    folder = tmp_path / "snap"
    snapshots = store(folder)
    snapshots._make_directory()
    (folder / f"{snapshots._file_stem('S')}.lock").symlink_to(target_file)
    with pytest.raises(SnapshotError, match="symbolic link"):
        snapshots.lock("S", "the list")
    assert mode(target_file) == 0o644


def test_a_symlinked_rejected_records_file_is_refused_and_its_target_untouched(
    base_config, run_target, tmp_path
):
    target_file = victim(tmp_path)
    link = tmp_path / "rejected.jsonl"
    link.symlink_to(target_file)
    config = {**base_config, "on_invalid_record": "skip", "rejected_records_path": str(link)}
    bad = records([{"segment_name": "S", "action": "add", "email": "not-an-email"}])
    run = run_target(config, bad)
    assert run.returncode != 0
    assert "rejected_records_path" in run.stderr and "symbolic link" in run.stderr
    assert target_file.read_text() == "someone else's file\n"
    assert mode(target_file) == 0o644


def test_a_token_file_that_is_a_symlink_is_refused(base_config, run_target, tmp_path):
    real = tmp_path / "elsewhere.json"
    TokenStore(real).save({"access_token": base_config["access_token"]})
    link = Path(base_config["token_cache_path"])
    link.symlink_to(real)
    run = run_target(base_config, adds(1))
    assert run.returncode != 0
    assert "token file" in run.stderr and "symbolic link" in run.stderr


def test_a_token_file_of_another_user_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "tokens.json"
    TokenStore(path).save({"access_token": "a", "refresh_token": "r"})
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(TokenFileError, match="belongs to another user"):
        TokenStore(path).load()


# ---- 5. no key value that looks like an identifier reaches the rejected-records file -----------


def test_key_values_that_look_like_identifiers_are_left_out(base_config, run_target, tmp_path):
    path = tmp_path / "rejected.jsonl"
    schema = {
        "type": "SCHEMA",
        "stream": "people",
        "schema": {"type": "object", "properties": {}},
        "key_properties": ["row", "email_address", "device", "digest", "note"],
    }
    looks = {
        "email_address": "Sentinel.Person@Example.org",
        "device": "{6d92078a-8246-4ba4-ae5b-76104861e7dc}",
        "digest": "AB" * 32,
    }
    row = {
        "segment_name": "S",
        "action": "add",
        "email": None,  # the identifier fields hold nothing to compare the keys with
        "maid": "not-a-device-id",
        "row": 7,
        "note": "kept",
        **looks,
    }
    messages = [schema, {"type": "RECORD", "stream": "people", "record": row}]
    config = {**base_config, "on_invalid_record": "skip", "rejected_records_path": str(path)}
    run = run_target(config, messages, with_schema=False)
    assert run.returncode == 0, run.stderr
    text = path.read_text()
    (line,) = [json.loads(x) for x in text.splitlines()]
    assert line["keys"] == {"row": 7, "note": "kept"}
    for value in looks.values():
        assert value.lower() not in text.lower()
        assert value.lower() not in run.stderr.lower()


# ---- 6. connect --redirect-uri http://localhost:...: every loopback address is ours -------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_connect(emulator, tmp_path: Path, redirect_uri: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            ADMIN,
            "connect",
            "--api-url",
            emulator.api_url,
            "--authorize-url",
            f"{emulator.base_url}/oauth/",
            "--redirect-uri",
            redirect_uri,
            "--ad-account-id",
            AD_ACCOUNT,
            "--no-browser",
            "--timeout",
            "30",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=admin_env(
            tmp_path,
            TARGET_PINTEREST_AUDIENCES_CLIENT_ID=CLIENT_ID,
            TARGET_PINTEREST_AUDIENCES_CLIENT_SECRET=CLIENT_SECRET,
        ),
    )


def test_connect_with_localhost_listens_on_127_0_0_1_and_on_ipv6_loopback(emulator, tmp_path):
    port = free_port()
    redirect_uri = f"http://localhost:{port}/pinterest/callback"
    proc = start_connect(emulator, tmp_path, redirect_uri)
    try:
        assert proc.stdout is not None
        link = proc.stdout.readline().strip()
        assert link.startswith(emulator.base_url), link
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                assert sock.connect_ex((host, port)) == 0, f"nothing listens on {host}:{port}"
        page = requests.get(link, timeout=10)
        assert page.status_code == 200
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "xdg" / "target-pinterest-audiences" / f"tokens-{AD_ACCOUNT}.json").exists()


def test_connect_with_localhost_stops_when_another_process_holds_ipv6_loopback(emulator, tmp_path):
    port = free_port()
    squatter = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        squatter.bind(("::1", port))
    except OSError as exc:  # pragma: no cover - a machine without IPv6 loopback
        squatter.close()
        assert exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
        return
    squatter.listen()
    try:
        proc = start_connect(emulator, tmp_path, f"http://localhost:{port}/cb")
        out, err = proc.communicate(timeout=60)
    finally:
        squatter.close()
    assert proc.returncode == 1, out + err
    assert f"Cannot listen for Pinterest's redirect on [::1]:{port}" in err
    assert "Free that port" in err
    assert "Traceback" not in err


# ---- 7. plain http only for a loopback api_url ---------------------------------------------------


def test_plain_http_api_url_is_refused_unless_loopback(base_config, run_target, tmp_path):
    assert api_url_problem("http://127.0.0.1:9/v5", "x") is None
    assert api_url_problem("http://[::1]:9/v5", "x") is None
    assert api_url_problem("http://localhost:9/v5", "x") is None
    assert api_url_problem("https://api.pinterest.com/v5", "x") is None
    assert api_url_problem("http://127.0.0.1.example.com/v5", "x")
    assert api_url_problem("ftp://api.pinterest.com/v5", "x")

    run = run_target({**base_config, "api_url": "http://api.pinterest.com/v5"}, adds(1))
    assert run.returncode != 0
    assert "setting 'api_url' uses plain http:// for api.pinterest.com" in run.stderr
    check = run_admin(
        tmp_path, "check", "--ad-account-id", AD_ACCOUNT, "--api-url", "http://10.1.2.3/v5"
    )
    assert check.returncode == 2
    assert "plain http:// for 10.1.2.3" in check.stderr
    from_env = run_admin(
        tmp_path,
        "status",
        "--ad-account-id",
        AD_ACCOUNT,
        "--audience-id",
        "1",
        TARGET_PINTEREST_AUDIENCES_API_URL="http://example.com/v5",
    )
    assert from_env.returncode == 2 and "plain http:// for example.com" in from_env.stderr


# ---- 8. ids from the API: digits only before use in URLs and file names --------------------------


@pytest.mark.parametrize("bad", ["../../etc/x", "12/../34", "", "١٢٣", "12 ", True, None])
def test_ids_from_the_api_must_be_digits(bad):
    with pytest.raises(TargetError, match="not digits"):
        api_id(bad, "customer_lists")
    assert api_id(2542620639002, "customer_lists") == "2542620639002"


def test_the_store_never_names_a_file_after_an_id_that_is_not_digits(tmp_path):
    folder = tmp_path / "snap"
    with pytest.raises(SnapshotError, match="not a Pinterest id"):
        store(folder).open("../escape")
    assert not (tmp_path / "escape.sqlite").exists()
    assert not list(tmp_path.glob("*escape*"))


class AnswersWith:
    """Stands for the HTTP client in a unit test of the resolver's lookup: one page of items."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def paginate(self, path: str) -> list[dict[str, Any]]:
        return self.items


@pytest.mark.parametrize("bad", ["../../x", "123?x=1", "12%2F34"])
def test_the_resolver_refuses_a_list_or_audience_id_that_is_not_digits(bad):
    import logging

    resolver = Resolver(
        client=AnswersWith([{"id": bad, "name": "S"}, {"id": "77", "name": "T"}]),  # type: ignore[arg-type]
        ad_account_id=AD_ACCOUNT,
        audience_name="A",
        audience_id=None,
        audience_description=None,
        list_type="EMAIL",
        dry_run=False,
        report=Report(ad_account_id=AD_ACCOUNT, audience_name="A", dry_run=False),
        logger=logging.getLogger("t"),
    )
    with pytest.raises(TargetError, match="not digits"):
        resolver._find("customer_lists", lambda item: item["name"] == "S")
    assert resolver._find("customer_lists", lambda item: item["name"] == "T") == ["77"]
