"""Bugs found by an adversarial review of issues 10-12: the installed CLI on messy data against
the emulator, read against a strict reading of the issues and of Pinterest's spec. Each test
fails without its fix."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import SCHEMA, Run, cli_command, email_hash, lists_named, records, state

BOM = b"\xef\xbb\xbf"


@pytest.fixture
def run_bytes(tmp_path: Path):
    """The CLI fed raw bytes (a byte order mark, CRLF line ends)."""

    def _run(config: dict[str, Any], data: bytes) -> Run:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        done = subprocess.run(
            [*cli_command(), "--config", str(config_path)],
            input=data,
            capture_output=True,
            timeout=120,
            env=env,
            check=False,
        )
        return Run(done.returncode, done.stdout.decode(), done.stderr.decode(errors="replace"))

    return _run


def last_line(stderr: str) -> str:
    return [x for x in stderr.splitlines() if x.strip()][-1]


# ---- issue 10.3: a byte order mark at the start of the input is valid input ----------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_a_byte_order_mark_at_the_start_of_the_input_is_valid(
    emulator, base_config, run_bytes, eol
):
    """Windows tools (PowerShell's Out-File, Notepad, Excel's 'UTF-8' export) start a UTF-8
    file with a BOM; RFC 8259 lets a parser ignore it, and singer-sdk's BATCH reader already
    does. Today line 1 is refused as 'not valid JSON (invalid character (byte 0))'."""
    rows = [
        {"segment_name": "B", "action": "add", "email": f"bom{i}@example.com"} for i in range(3)
    ]
    messages = [SCHEMA, *records(rows), state({"bookmarks": {"customers": {"id": 3}}})]
    data = BOM + b"".join(json.dumps(m).encode() + eol for m in messages)
    run = run_bytes(base_config, data)
    assert run.returncode == 0, run.stderr
    (created,) = lists_named(emulator, "B")
    assert set(created["members"]) == {email_hash(f"bom{i}@example.com") for i in range(3)}
    assert run.states[-1]["bookmarks"] == {"customers": {"id": 3}}
