"""Many segments in one run (issue 16): speed, memory, and one write budget across processes.

Run on demand (never part of the test suite):

    python benchmarks/many_streams.py            # 20 streams x 50,000 records, 3 repeats
    python benchmarks/many_streams.py --quick    # 20 x 5,000, 1 repeat, no verdicts
    python benchmarks/many_streams.py --window-only

1. Generates 20 streams of 50,000 records each (1M records, events mode: mixed-case padded
   emails, MAIDs, about 10% removes, a SCHEMA per stream, the streams one after another as a
   tap reading 20 tables sends them, STATE every 50,000 records), cached under benchmarks/out/.
2. Runs the installed CLI (every stream its own list and Audience, `audience_name:
   "{stream}"`) against the emulator with no write limit, alternating with the do-nothing
   singer-sdk target (benchmarks/noop_target.py) on the same file; medians of --repeat runs.
   Goals: ours >= 2.5x the no-op; our peak RSS < 250 MB.
3. Two target processes on ONE token file, each with max_writes_per_minute 12, each needing
   about 12 writes: the emulator's own request log must show at most 12 writes in any 60
   seconds, both processes together.

The exit status is 0 whatever the numbers: a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402 - the shared benchmark helpers
    ACCESS_TOKEN,
    AD_ACCOUNT,
    OUT,
    EmulatorProcess,
    _email,
    _maid,
    check_ok,
    measure,
)

from target_pinterest_audiences.emulator import max_events_in_window  # noqa: E402

SEED = 16


def generate(streams: int, per_stream: int, path: Path) -> None:
    rng = random.Random(SEED)
    n = 0
    with path.open("w") as out:
        for s in range(streams):
            stream = f"segment_{s:02d}"
            schema = {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "segment_name": {"type": "string"},
                    "action": {"type": "string"},
                    "email": {"type": ["string", "null"]},
                    "maid": {"type": ["string", "null"]},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            }
            out.write(
                json.dumps(
                    {"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": ["id"]}
                )
                + "\n"
            )
            for i in range(per_stream):
                n += 1
                record = {
                    "id": i,
                    "segment_name": f"Segment {s:02d}",
                    "action": "remove" if rng.random() < 0.1 else "add",
                    "email": _email(rng, n),
                    "maid": _maid(rng) if rng.random() < 0.3 else None,
                    "updated_at": "2026-01-01T00:00:00Z",
                }
                out.write(json.dumps({"type": "RECORD", "stream": stream, "record": record}) + "\n")
                if n % 50_000 == 0:
                    out.write(
                        json.dumps({"type": "STATE", "value": {"bookmarks": {"n": n}}}) + "\n"
                    )


def input_file(streams: int, per_stream: int) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"streams-{streams}x{per_stream}-seed{SEED}.jsonl"
    if not path.exists():
        generate(streams, per_stream, path)
    return path


def speed(args: argparse.Namespace, tmp: Path) -> None:
    per_stream = 5_000 if args.quick else args.per_stream
    path = input_file(args.streams, per_stream)
    emu = EmulatorProcess()
    try:
        cli = Path(sys.executable).parent / "target-pinterest-audiences"
        config = tmp / "ours.json"
        config.write_text(
            json.dumps(
                {
                    "ad_account_id": AD_ACCOUNT,
                    "audience_name": "{stream}",
                    "access_token": ACCESS_TOKEN,
                    "api_url": emu.api_url,
                    "on_invalid_record": "skip",
                    "max_writes_per_minute": 1_000_000,
                    "token_cache_path": str(tmp / "tokens.json"),
                    "snapshot_path": str(tmp / "snapshots"),
                }
            )
        )
        noop_config = tmp / "noop.json"
        noop_config.write_text("{}")
        ours_times, noop_times, rss = [], [], []
        repeat = 1 if args.quick else args.repeat
        for _ in range(repeat):
            emu.reset()
            shutil.rmtree(tmp / "snapshots", ignore_errors=True)
            m = measure("ours", [str(cli), "--config", str(config)], path, tmp)
            check_ok(m)
            reports = m.final_state.get("pinterest_audiences", {})
            if len(reports) != args.streams or not all(r["complete"] for r in reports.values()):
                raise SystemExit(f"our run did not complete every stream: {len(reports)}")
            ours_times.append(m.wall)
            rss.append(m.maxrss_mb)
            n = measure(
                "noop",
                [sys.executable, str(HERE / "noop_target.py"), "--config", str(noop_config)],
                path,
                tmp,
            )
            check_ok(n)
            noop_times.append(n.wall)
        ours, noop = statistics.median(ours_times), statistics.median(noop_times)
        records = args.streams * per_stream
        print(f"{args.streams} streams x {per_stream:,} records ({records:,}), events mode")
        print(f"  ours: {ours:.2f} s median of {[round(t, 2) for t in ours_times]}")
        print(
            f"  no-op singer-sdk target: {noop:.2f} s median of {[round(t, 2) for t in noop_times]}"
        )
        print(f"  ratio {noop / ours:.2f}x (goal >= 2.5x); peak RSS {max(rss):.0f} MB (goal < 250)")
    finally:
        emu.stop()


def shared_window(args: argparse.Namespace, tmp: Path) -> None:
    emu = EmulatorProcess()
    try:
        cli = Path(sys.executable).parent / "target-pinterest-audiences"
        procs = []
        for k in range(2):
            config = tmp / f"window-{k}.json"
            config.write_text(
                json.dumps(
                    {
                        "ad_account_id": AD_ACCOUNT,
                        "audience_name": f"window {k}",
                        "access_token": ACCESS_TOKEN,
                        "api_url": emu.api_url,
                        "max_writes_per_minute": 12,
                        "identifiers_per_request": 10,
                        "token_cache_path": str(tmp / "shared-tokens.json"),
                        "snapshot_path": str(tmp / f"window-snapshots-{k}"),
                    }
                )
            )
            lines = [
                {
                    "type": "SCHEMA",
                    "stream": "s",
                    "schema": {"type": "object", "properties": {}},
                    "key_properties": [],
                }
            ]
            lines += [
                {
                    "type": "RECORD",
                    "stream": "s",
                    "record": {
                        "segment_name": f"Window {k}",
                        "action": "add",
                        "email": f"w{k}-{i}@example.com",
                    },
                }
                for i in range(100)  # a create, then about 10 PATCHes, then the audience
            ]
            data = tmp / f"window-{k}.jsonl"
            data.write_text("".join(json.dumps(line) + "\n" for line in lines))
            procs.append(
                subprocess.Popen(
                    [str(cli), "--config", str(config)],
                    stdin=data.open("rb"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        started = time.monotonic()
        for proc in procs:
            _, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise SystemExit(err.decode(errors="replace")[-2000:])
        took = time.monotonic() - started
        state = emu.control("GET", "/_emulator/state?members=0&requests=1")
        times = sorted(
            r["t"]
            for r in state["requests"]
            if r["method"] in ("POST", "PATCH") and "/ad_accounts/" in r["path"]
        )
        most = max_events_in_window(times, 60.0)
        print(
            f"two processes, one token file, max_writes_per_minute 12 each: {len(times)} writes "
            f"in {took:.0f} s, at most {most} in any 60 s (goal <= 12)"
        )
    finally:
        emu.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--per-stream", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--window-only", action="store_true")
    parser.add_argument("--no-window", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tpa-streams-"))
    try:
        if not args.window_only:
            speed(args, tmp)
        if not args.no_window:
            shared_window(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
