"""Mirror sync benchmark (issue 9): a steady-state run writes only the difference, fast.

    python benchmarks/mirror.py              # 1M members, 2 steady runs; memory at 200k and 2M
    python benchmarks/mirror.py --quick      # 100k members, no 2M run (a smoke run, no verdicts)
    python benchmarks/mirror.py --members 500000 --repeat 3 --skip-memory
    python benchmarks/mirror.py --lean --members 4000000 --repeat 1 --skip-memory
    python benchmarks/mirror.py --memory-only  # only the 200k / 2M runs (medians of 3)

What it does, on one machine (the emulator as a separate process, as in run.py):

1. Generates two inputs of N member records each (emails with mixed case and stray spaces,
   no action: mirror's "member"), cached in benchmarks/out/: A holds members 0..N-1, B the
   same with 1% of them replaced (members N/100..N-1 and N..N+N/100-1).
2. Seeds: a mirror run on A creates the list and its snapshot (timed and reported, no goal).
3. Steady state: runs on B, then A, then B... (each is "1% replaced since the last run"),
   `--repeat` times; each must send exactly 2 writes (N/100 adds, N/100 removes, at the
   default 10,000 identifiers per request for N = 1M). The do-nothing singer-sdk target
   (noop_target.py) runs on the same input, alternating.
4. Memory: the same seed + steady run at N = 200,000 and 2,000,000: peak RSS of the steady run,
   the median of `--memory-repeat` runs of each size (alternating).
5. The snapshot's size on disk per member (the SQLite file, its WAL included), after the
   seed and after the steady runs (a run's changes are merged into the members by the
   next run that reads them, so the figure after the seed holds the seed's members only
   if its plan merged them: a first run's plan does).

Goals (issues 9, 18): steady run >= 2.5x faster than the no-op target at 1M members and 3x
at 4M or more (issue 9 asked 2x), exactly 2 writes; peak RSS < 300 MB; RSS(2M) <= 1.10 x
RSS(200k); at most 40 bytes of disk per member. The exit status is 0 whatever the numbers:
this is a measurement, not a test.

`--lean` (issue 18): the input's SCHEMA holds only `segment_name`, `action` and `email` (no
key property, no `id` column; rows carry no action, mirror's "member"): the no-op target's
cost depends on the input's shape, and the ratio must hold on such an input too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    ACCESS_TOKEN,
    AD_ACCOUNT,
    HERE,
    MEMORY_GOAL,
    OUT,
    EmulatorProcess,
    Measure,
    _code_version,
    _email,
    _fmt_runs,
    _median,
    check_ok,
    measure,
    memory_verdict,
)

SEED = 20261202
GENERATOR_VERSION = 1
SEGMENT = "Bench Mirror"
STREAM = "members"
SCHEMA = {
    "type": "SCHEMA",
    "stream": STREAM,
    "schema": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "segment_name": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
        },
    },
    "key_properties": ["id"],
}


LEAN_SCHEMA = {
    "type": "SCHEMA",
    "stream": STREAM,
    "schema": {
        "type": "object",
        "properties": {
            "segment_name": {"type": ["string", "null"]},
            "action": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
        },
    },
    "key_properties": [],
}
#: Set by --lean: inputs without the id column, under LEAN_SCHEMA.
LEAN = False


def mirror_input(n: int, variant: str) -> Path:
    """N member records: variant A = members 0..N-1, B = 1% of them replaced."""
    OUT.mkdir(parents=True, exist_ok=True)
    shape = "-lean" if LEAN else ""
    path = OUT / f"mirror{shape}-{n}-{variant}-seed{SEED}-v{GENERATOR_VERSION}.jsonl"
    if path.exists():
        return path
    shift = n // 100 if variant == "B" else 0
    rng = random.Random(SEED)  # the same person gets the same spelling in A and B
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(dumps(LEAN_SCHEMA if LEAN else SCHEMA) + "\n")
        for i in range(n + n // 100):
            email = _email(rng, i)  # consume the generator identically for A and B
            if shift <= i < n + shift:
                row = {"id": i, "segment_name": SEGMENT, "email": email}
                if LEAN:
                    del row["id"]
                fh.write(dumps({"type": "RECORD", "stream": STREAM, "record": row}) + "\n")
    tmp.replace(path)
    return path


class MirrorBench:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tpa-mirror-bench-"))
        self.emu = EmulatorProcess()
        cli = Path(sys.executable).parent / "target-pinterest-audiences"
        self.cmd = (
            [str(cli)]
            if cli.exists()
            else [sys.executable, "-m", "target_pinterest_audiences.target"]
        )
        self.noop_cmd = [sys.executable, str(HERE / "noop_target.py")]
        (self.tmp / "noop.json").write_text("{}")
        self.snapshots = self.tmp / "snapshots"

    def fresh(self) -> None:
        """A new emulator state and an empty snapshot directory."""
        self.emu.reset()
        shutil.rmtree(self.snapshots, ignore_errors=True)

    def ours(self, path: Path) -> tuple[Measure, list[tuple[str, int]]]:
        config = self.tmp / "mirror.json"
        config.write_text(
            json.dumps(
                {
                    "ad_account_id": AD_ACCOUNT,
                    "audience_name": "bench mirror",
                    "access_token": ACCESS_TOKEN,
                    "api_url": self.emu.api_url,
                    "sync_mode": "mirror",
                    "allow_large_removal": False,
                    "max_writes_per_minute": 1_000_000,
                    "token_cache_path": str(self.tmp / "tokens.json"),
                    "snapshot_path": str(self.snapshots),
                }
            )
        )
        before = self._writes()
        m = measure("mirror", [*self.cmd, "--config", str(config)], path, self.tmp)
        check_ok(m)
        return m, self._writes()[len(before) :]

    def noop(self, path: Path) -> Measure:
        m = measure(
            "noop", [*self.noop_cmd, "--config", str(self.tmp / "noop.json")], path, self.tmp
        )
        check_ok(m)
        return m

    def _writes(self) -> list[tuple[str, int]]:
        state = self.emu.control("GET", "/_emulator/state?members=0&requests=1")
        return [
            (entry.get("operation_type") or entry["method"], entry.get("n_records") or 0)
            for entry in state["requests"]
            if entry["method"] in ("POST", "PATCH") and "/customer_lists" in entry["path"]
        ]

    def snapshot_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.snapshots.glob("snapshot-*"))

    def close(self) -> None:
        self.emu.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _report(m: Measure) -> dict:
    return m.report


def memory_runs(bench: MirrorBench, repeat: int) -> float:
    """Seed + steady run at 200,000 and 2M members, `repeat` times each (alternating): the
    ratio of the medians of the steady runs' peak RSS."""
    print("\n== Memory: steady run at N = 200,000 and N = 2,000,000 ==")
    runs: dict[int, list[float]] = {200_000: [], 2_000_000: []}
    for _ in range(repeat):
        for size_n, values in runs.items():
            bench.fresh()
            bench.ours(mirror_input(size_n, "A"))
            m, w = bench.ours(mirror_input(size_n, "B"))
            values.append(m.maxrss_mb)
            print(
                f"N = {size_n:>9,}: peak RSS {m.maxrss_mb:.1f} MB, wall {m.wall:.2f}s (CPU "
                f"{m.user + m.sys:.2f}s), writes {len(w)}, snapshot "
                f"{bench.snapshot_bytes() / size_n:.1f} bytes per member, load average "
                f"{os.getloadavg()[0]:.2f}"
            )
    small, large = (_median(values) for values in runs.values())
    if repeat > 1:
        print(f"medians of {repeat}: {small:.1f} MB and {large:.1f} MB")
    print(
        f"RSS(2,000,000) / RSS(200,000) = {large / small:.3f}   goal <= {MEMORY_GOAL}: "
        f"{memory_verdict(200_000, 2_000_000, large / small)}"
    )
    return large / small


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=None, help="N (1,000,000)")
    p.add_argument("--repeat", type=int, default=None, help="steady runs of each target (2)")
    p.add_argument("--quick", action="store_true", help="N = 100,000, one run, no memory runs")
    p.add_argument("--skip-noop", action="store_true")
    p.add_argument("--skip-memory", action="store_true", help="skip the 200k / 2M runs")
    p.add_argument(
        "--memory-only", action="store_true", help="only the 200k / 2M runs (no seed, no speed)"
    )
    p.add_argument(
        "--memory-repeat", type=int, default=3, help="runs of each memory size (3; medians)"
    )
    p.add_argument("--lean", action="store_true", help="SCHEMA of segment_name, action, email")
    args = p.parse_args(argv)
    global LEAN
    LEAN = args.lean
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    n = args.members or (100_000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 2)
    print(f"target-pinterest-audiences mirror benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    print(
        f"  python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; code: {_code_version()}"
    )
    print(f"  input: {'lean (segment_name, action, email)' if LEAN else 'id, segment_name, email'}")
    if args.memory_only:
        bench = MirrorBench()
        try:
            memory_runs(bench, args.memory_repeat)
        finally:
            bench.close()
        return 0
    a, b = mirror_input(n, "A"), mirror_input(n, "B")
    bench = MirrorBench()
    try:
        print(f"\n== Seed: first mirror run, N = {n:,} members ==")
        bench.fresh()
        seed, seed_writes = bench.ours(a)
        size = bench.snapshot_bytes()
        print(
            f"wall {seed.wall:.2f}s, peak RSS {seed.maxrss_mb:.0f} MB, writes {len(seed_writes)}, "
            f"added {_report(seed)['identifiers_added']:,}"
        )
        print(
            f"snapshot on disk {size / 1e6:.1f} MB = {size / n:.1f} bytes per member (goal <= 40)"
        )

        print(f"\n== Steady state: 1% replaced since the last run, {repeat} run(s) each ==")
        ours, noops, exact = [], [], True
        inputs = [b, a] * repeat
        for i in range(repeat):
            m, w = bench.ours(inputs[i])
            ours.append(m)
            r = _report(m)
            # Exactly the difference: N/100 adds and N/100 removes, in full requests (at
            # 1M, one of each at the default 10,000 identifiers per request).
            ok = sum(k for op, k in w if op == "ADD") == n // 100 and (
                sum(k for op, k in w if op == "REMOVE") == n // 100
            )
            if n >= 1_000_000:
                ok = ok and all(k == 10_000 for _, k in w)
            exact &= ok
            print(
                f"run {i + 1}: wall {m.wall:.2f}s, RSS {m.maxrss_mb:.0f} MB, writes {w}, unchanged "
                f"{r['unchanged']:,}, added {r['identifiers_added']:,}, removed "
                f"{r['identifiers_removed']:,}: {'as expected' if ok else 'NOT the difference'}"
            )
            if not args.skip_noop:
                noops.append(bench.noop(inputs[i]))
        steady_size = bench.snapshot_bytes()
        ours_wall = _median([m.wall for m in ours])
        speed_goal = 3.0 if n >= 4_000_000 else 2.5
        print(
            f"ours   wall {_fmt_runs([m.wall for m in ours])} -> median {ours_wall:.2f}s "
            f"({n / ours_wall:,.0f} records/s), peak RSS {max(m.maxrss_mb for m in ours):.0f} MB"
        )
        ratio = None
        if noops:
            noop_wall = _median([m.wall for m in noops])
            ratio = noop_wall / ours_wall
            print(f"noop   wall {_fmt_runs([m.wall for m in noops])} -> median {noop_wall:.2f}s")
            print(
                f"ratio  noop / ours = {ratio:.2f}   goal >= {speed_goal}: "
                f"{'MET' if ratio >= speed_goal else 'NOT MET'}"
            )

        flat = None
        if not args.skip_memory and not args.quick:
            flat = memory_runs(bench, args.memory_repeat)

        print("\n== Summary ==")
        verdicts = n >= 1_000_000
        peak = max(m.maxrss_mb for m in ours)
        print(f"writes  only the difference in every steady run: {'yes' if exact else 'NO'}")
        if ratio is not None:
            verdict = (
                ("MET" if ratio >= speed_goal else "NOT MET") if verdicts else "no verdict below 1M"
            )
            print(f"speed   {ratio:.2f}x the no-op target (goal {speed_goal}x): {verdict}")
        verdict = ("MET" if peak < 300 else "NOT MET") if verdicts else "no verdict below 1M"
        print(f"memory  peak RSS {peak:.0f} MB at {n:,} members (goal < 300 MB): {verdict}")
        if flat is not None:
            print(
                f"flat    RSS(2M) / RSS(200k) = {flat:.3f} (goal <= {MEMORY_GOAL}): "
                f"{memory_verdict(200_000, 2_000_000, flat)}"
            )
        print(
            f"disk    {size / n:.1f} bytes per member after the seed, {steady_size / n:.1f} after "
            f"the steady runs (goal <= 40)"
        )
        print(
            f"first   seeding run {seed.wall:.2f}s for {n:,} members, "
            f"peak RSS {seed.maxrss_mb:.0f} MB"
        )
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
