"""Throughput and memory benchmark of target-pinterest-audiences (issue 6).

One command, run on demand (never part of the test suite):

    python benchmarks/run.py                 # N = 1,000,000, 3 repeats (about 6-8 minutes)
    python benchmarks/run.py --quick         # a smoke run on small inputs (under a minute)
    python benchmarks/run.py --records 500000 --repeat 5

What one run does, on the same machine:

1. Generates N synthetic Singer messages (a loose tap SCHEMA, RECORDs with mixed-case emails
   with stray spaces, MAIDs, pre-hashed email_sha256 values, about 10% removes, a few rows
   that break the audience rules, STATE every 50,000 records; one segment_name; fixed seed)
   and caches the file under benchmarks/out/ (gitignored), so later runs reuse it.
2. Starts the local Pinterest emulator as a separate process (no server-side write limit)
   and runs the real CLI (`target-pinterest-audiences`) on the file, with the client-side
   write limit raised so only our own code is measured.
3. Runs, on the same file, a do-nothing singer-sdk target with default settings
   (benchmarks/noop_target.py: a BatchSink whose process_batch does nothing): the
   framework's default cost, jsonschema validation against the tap's SCHEMA included.
   Our runs and the no-op runs alternate; medians of --repeat runs are reported.
4. Runs our target on N = 200,000 and N = 2,000,000 records and compares peak RSS (a --quick
   run's 20,000 vs 200,000 shows the figures without a verdict: that is start-up, not growth).
5. Overlap check: the emulator answers each write after 200 ms; the run must take no
   longer than max(CPU-bound time, writes x 0.2 s) x 1.1, where the CPU-bound time is the
   median wall time of step 2 on the same input.

Wall time is measured around the child process; peak RSS, user and system time come from
/usr/bin/time -v (or, without it, getrusage(RUSAGE_CHILDREN) in a fresh wrapper process).
Goals (issues 6, 18): ours >= 2.5x faster than the no-op default target; RSS(2M) within 10% of
RSS(200k); the 200 ms overlap goal. The exit status is 0 whatever the numbers: this is a
measurement, not a test.

`--ours-cmd` runs another command in place of the installed CLI (for example a prototype
wrapper), with the same config file appended as `--config PATH`.

`--against REF` (issue 18) also runs the project as it was at git ref REF (a tag, a commit:
`--against 3446f9c` is release 0.1.0, events mode before the snapshot), installed once into
its own virtualenv under benchmarks/out/against/ (gitignored, reused by later runs), on the
same input, alternating with ours; it reports ours / REF per pair and of the medians.

`--lean` uses the lean input: a SCHEMA with only the identifier fields, `segment_name` and
`action` (no key property, no other column), the same rows otherwise. The no-op target's
cost depends on the input's shape (fewer columns to validate), so its ratio must hold on both.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
AD_ACCOUNT = "549755885175"
ACCESS_TOKEN = "emu-access-token"
SEGMENT = "Bench Customers"
STREAM = "crm_audience_export"
SEED = 20240611
GENERATOR_VERSION = 1
STATE_EVERY = 50_000
WRITE_DELAY_MS = 200
#: The memory goal compares runs of at least this size, one 10x the other. Below it, peak RSS
#: is mostly start-up (imports, buffers still filling), so a ratio says nothing about growth.
MEMORY_GOAL_MIN_N = 200_000
#: Peak RSS at 2M records at most this times that at 200k (issue 18; was 1.15, issue 6).
MEMORY_GOAL = 1.10

LEAN_SCHEMA = {
    "type": "SCHEMA",
    "stream": STREAM,
    "schema": {
        "type": "object",
        "properties": {
            "segment_name": {"type": ["string", "null"]},
            "action": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
            "email_sha256": {"type": ["string", "null"]},
            "maid": {"type": ["string", "null"]},
        },
    },
    "key_properties": [],
}
#: Columns of the benchmark's input that the lean one leaves out.
LEAN_DROPS = ("id", "country")

TAP_SCHEMA = {
    "type": "SCHEMA",
    "stream": STREAM,
    "schema": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "segment_name": {"type": ["string", "null"]},
            "action": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
            "email_sha256": {"type": ["string", "null"]},
            "maid": {"type": ["string", "null"]},
            "country": {"type": ["string", "null"]},
        },
    },
    "key_properties": ["id"],
}

FIRST = ["ada", "grace", "alan", "edsger", "barbara", "donald", "margaret", "ken", "linus", "guido"]
LAST = ["lovelace", "hopper", "turing", "dijkstra", "liskov", "knuth", "hamilton", "thompson"]
DOMAINS = ["example.com", "Mail.Example.org", "corp.example.net", "EXAMPLE.co.uk", "inbox.example"]
COUNTRIES = ["US", "GB", "FR", "DE", "CA", None]


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


def _mixed_case(rng: random.Random, text: str) -> str:
    style = rng.random()
    if style < 0.5:
        return text
    if style < 0.7:
        return text.title()
    if style < 0.8:
        return text.upper()
    return "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def _padded(rng: random.Random, text: str) -> str:
    roll = rng.random()
    if roll < 0.15:
        return "  " + text
    if roll < 0.3:
        return text + " "
    if roll < 0.35:
        return "\t" + text + "  "
    return text


def _email(rng: random.Random, i: int) -> str:
    local = f"{rng.choice(FIRST)}.{rng.choice(LAST)}{i}"
    return _padded(rng, _mixed_case(rng, local) + "@" + rng.choice(DOMAINS))


def _maid(rng: random.Random) -> str:
    u = f"{rng.getrandbits(128):032x}"
    text = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
    return _padded(rng, text.upper() if rng.random() < 0.4 else text)


_INVALID_KINDS = ("bad_email", "bad_maid", "unknown_action", "no_identifier", "bad_sha256")


def generate(n: int, path: Path, seed: int = SEED, *, lean: bool = False) -> None:
    """Write the SCHEMA, n RECORDs and a STATE every STATE_EVERY records to path (lean: the
    same rows without the columns in LEAN_DROPS, under LEAN_SCHEMA)."""
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    recent: list[tuple[str | None, str | None, str | None]] = []
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(dumps(LEAN_SCHEMA if lean else TAP_SCHEMA) + "\n")
        for i in range(1, n + 1):
            action = "remove" if rng.random() < 0.10 else "add"
            if action == "remove" and recent and rng.random() < 0.6:
                # Most removes take back someone added earlier.
                email, sha, maid = rng.choice(recent)
            else:
                kind = rng.random()
                email = sha = maid = None
                if kind < 0.60:
                    email = _email(rng, i)
                elif kind < 0.75:
                    sha = hashlib.sha256(f"user{i}@example.com".encode()).hexdigest()
                    if rng.random() < 0.2:
                        sha = sha.upper()
                elif kind < 0.90:
                    maid = _maid(rng)
                else:
                    email, maid = _email(rng, i), _maid(rng)
                if len(recent) < 5000:
                    recent.append((email, sha, maid))
                else:
                    recent[rng.randrange(5000)] = (email, sha, maid)
            row: dict[str, Any] = {
                "id": i,
                "segment_name": SEGMENT,
                "action": action if rng.random() < 0.95 else action.upper(),
                "email": email,
                "email_sha256": sha,
                "maid": maid,
                "country": rng.choice(COUNTRIES),
            }
            if i % 4999 == 0:  # a few rows break the audience rules (skipped, counted)
                bad = _INVALID_KINDS[(i // 4999) % len(_INVALID_KINDS)]
                if bad == "bad_email":
                    row.update(email="john.doe at example.com", email_sha256=None, maid=None)
                elif bad == "bad_maid":
                    row.update(email=None, email_sha256=None, maid="not-a-device-id")
                elif bad == "unknown_action":
                    row["action"] = "delete"
                elif bad == "no_identifier":
                    row.update(email=None, email_sha256=None, maid=None)
                else:
                    row.update(email=None, email_sha256="ab" * 31 + "a", maid=None)
            if lean:
                for column in LEAN_DROPS:
                    del row[column]
            fh.write(dumps({"type": "RECORD", "stream": STREAM, "record": row}) + "\n")
            if i % STATE_EVERY == 0:
                state = {
                    "bookmarks": {STREAM: {"replication_key": "id", "replication_key_value": i}}
                }
                fh.write(dumps({"type": "STATE", "value": state}) + "\n")
    tmp.replace(path)


def input_file(n: int, *, lean: bool = False) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    shape = "-lean" if lean else ""
    path = OUT / f"records{shape}-{n}-seed{SEED}-v{GENERATOR_VERSION}.jsonl"
    if not path.exists():
        started = time.perf_counter()
        generate(n, path, lean=lean)
        size = path.stat().st_size / 1e6
        print(f"  generated {path.name} ({size:.0f} MB) in {time.perf_counter() - started:.1f}s")
    return path


# ---------------------------------------------------------------------------------------------
# The emulator (a separate process)
# ---------------------------------------------------------------------------------------------


class EmulatorProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "target_pinterest_audiences.emulator",
                "--port",
                "0",
                "--ad-account",
                AD_ACCOUNT,
                "--access-token",
                ACCESS_TOKEN,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"emulator did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        self.api_url = self.base_url + "/v5"

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the local emulator, http only
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback only
            return json.loads(resp.read())

    def reset(self, write_delay_ms: int = 0, match_delay_seconds: float = 0.0) -> None:
        self.control("POST", "/_emulator/reset", {"config": True})
        if write_delay_ms:
            self.control("POST", "/_emulator/config", {"write_delay_ms": write_delay_ms})
        if match_delay_seconds:
            self.control("POST", "/_emulator/config", {"match_delay_seconds": match_delay_seconds})

    def writes(self) -> int:
        state = self.control("GET", "/_emulator/state?members=0&requests=1")
        return sum(
            1
            for entry in state["requests"]
            if entry["method"] in ("POST", "PATCH") and "/ad_accounts/" in entry["path"]
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Measuring one run
# ---------------------------------------------------------------------------------------------

_RUSAGE_WRAPPER = """
import json, resource, subprocess, sys
out = sys.argv[1]
fin, fout, ferr = open(sys.argv[2], "rb"), open(sys.argv[3], "wb"), open(sys.argv[4], "wb")
rc = subprocess.call(sys.argv[5:], stdin=fin, stdout=fout, stderr=ferr)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as fh:
    json.dump({"rc": rc, "maxrss_kb": r.ru_maxrss, "user": r.ru_utime, "sys": r.ru_stime}, fh)
"""


@dataclass
class Measure:
    label: str
    wall: float
    user: float
    sys: float
    maxrss_mb: float
    returncode: int
    stdout: str
    stderr: str
    final_state: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> dict[str, Any]:
        return self.final_state.get("pinterest_audience", {})


def measure(label: str, cmd: list[str], input_path: Path, tmp: Path) -> Measure:
    out, err, usage = tmp / "stdout", tmp / "stderr", tmp / "usage"
    time_bin = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if os.environ.get("BENCH_NO_TIME_BIN"):  # exercise the getrusage fallback
        time_bin = None
    if time_bin:
        full = [time_bin, "-v", "-o", str(usage), *cmd]
        with input_path.open("rb") as fin, out.open("wb") as fout, err.open("wb") as ferr:
            started = time.perf_counter()
            rc = subprocess.call(full, stdin=fin, stdout=fout, stderr=ferr, cwd=tmp)
            wall = time.perf_counter() - started
        fields = {}
        for line in usage.read_text().splitlines():
            key, _, value = line.strip().rpartition(": ")
            fields[key] = value
        user = float(fields["User time (seconds)"])
        system = float(fields["System time (seconds)"])
        maxrss_kb = int(fields["Maximum resident set size (kbytes)"])
        if "Command exited with non-zero status" in usage.read_text():
            rc = rc or 1
    else:
        full = [
            sys.executable,
            "-c",
            _RUSAGE_WRAPPER,
            str(usage),
            str(input_path),
            str(out),
            str(err),
        ]
        started = time.perf_counter()
        subprocess.check_call([*full, *cmd], cwd=tmp)
        wall = time.perf_counter() - started
        data = json.loads(usage.read_text())
        rc, user, system, maxrss_kb = data["rc"], data["user"], data["sys"], data["maxrss_kb"]
    stdout, stderr = out.read_text(), err.read_text(errors="replace")
    final: dict[str, Any] = {}
    for line in reversed(stdout.splitlines()):
        if line.strip():
            with contextlib.suppress(ValueError):
                final = json.loads(line)
            break
    return Measure(label, wall, user, system, maxrss_kb / 1024, rc, stdout, stderr, final)


def check_ok(m: Measure) -> None:
    if m.returncode != 0:
        tail = "\n".join(m.stderr.splitlines()[-15:])
        raise SystemExit(f"{m.label} failed with exit status {m.returncode}:\n{tail}")


# ---------------------------------------------------------------------------------------------
# Another version of the project (--against REF)
# ---------------------------------------------------------------------------------------------


def install_ref(ref: str) -> tuple[str, list[str]]:
    """The project at git ref `ref`, installed once into its own virtualenv under
    benchmarks/out/against/<commit>/ (reused by later runs): its commit and CLI command."""
    repo = HERE.parent
    found = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"--against {ref}: not a commit of this repository")
    sha = found.stdout.strip()
    home = OUT / "against" / sha[:12]
    cli = home / "venv" / "bin" / "target-pinterest-audiences"
    done = home / "installed"
    if done.exists() and cli.exists():
        return sha, [str(cli)]
    print(f"  installing {ref} ({sha[:12]}) into {home} ...")
    shutil.rmtree(home, ignore_errors=True)
    (home / "src").mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", sha], cwd=repo, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(home / "src")], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    subprocess.run(
        [str(home / "venv" / "bin" / "pip"), "install", "-q", str(home / "src")], check=True
    )
    done.write_text(f"{ref} {sha}\n")
    return sha, [str(cli)]


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="tpa-bench-"))
        self.emu = EmulatorProcess()
        bindir = Path(sys.executable).parent
        cli = bindir / "target-pinterest-audiences"
        if args.ours_cmd:
            self.ours_cmd = shlex.split(args.ours_cmd)
        elif cli.exists():
            self.ours_cmd = [str(cli)]
        else:
            self.ours_cmd = [sys.executable, "-m", "target_pinterest_audiences.target"]
        self.noop_cmd = [sys.executable, str(HERE / "noop_target.py")]
        self.against_cmd: list[str] | None = None
        if args.against:
            self.against_sha, self.against_cmd = install_ref(args.against)
        self.ours_config = self.tmp / "ours.json"
        self.ours_config.write_text(
            json.dumps(
                {
                    "ad_account_id": AD_ACCOUNT,
                    "audience_name": "bench",
                    "access_token": ACCESS_TOKEN,
                    "api_url": self.emu.api_url,
                    "on_invalid_record": "skip",
                    "max_writes_per_minute": 1_000_000,
                    "token_cache_path": str(self.tmp / "tokens.json"),
                    "snapshot_path": str(self.tmp / "snapshots"),
                }
            )
        )
        self.noop_config = self.tmp / "noop.json"
        self.noop_config.write_text("{}")

    def close(self) -> None:
        self.emu.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ours(
        self, input_path: Path, write_delay_ms: int = 0, *, cmd: list[str] | None = None
    ) -> tuple[Measure, int]:
        """A run of ours (or of `cmd`: the --against version) on a reset emulator."""
        self.emu.reset(write_delay_ms, 3600.0 if self.args.still_matching else 0.0)
        # A reset emulator hands out the same list ids again: start from an empty snapshot.
        shutil.rmtree(self.tmp / "snapshots", ignore_errors=True)
        label = "ours" if cmd is None else "against"
        m = measure(
            label,
            [*(cmd or self.ours_cmd), "--config", str(self.ours_config)],
            input_path,
            self.tmp,
        )
        check_ok(m)
        if not m.report.get("complete"):
            raise SystemExit(f"our run did not complete: {m.report}")
        return m, self.emu.writes()

    def noop(self, input_path: Path) -> Measure:
        m = measure(
            "noop", [*self.noop_cmd, "--config", str(self.noop_config)], input_path, self.tmp
        )
        check_ok(m)
        return m


def _code_version() -> str:
    """The commit of the checkout measured, and whether its package has local changes."""
    repo = HERE.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "target_pinterest_audiences"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    return f"commit {sha or '?'}" + (" + local changes in the package" if dirty else "")


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt_runs(values: list[float], unit: str = "s") -> str:
    return ", ".join(f"{v:.2f}{unit}" for v in values)


def memory_verdict(small: int, large: int, rss_ratio: float) -> str:
    """MET / NOT MET only where the sizes can show growth; a smoke run gets the figures only."""
    if small < MEMORY_GOAL_MIN_N or large < 10 * small:
        return (
            f"no verdict: the goal compares N >= {MEMORY_GOAL_MIN_N:,} with a 10x larger run"
            " (smaller runs measure start-up, not growth)"
        )
    return "MET" if rss_ratio <= MEMORY_GOAL else "NOT MET"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=None, help="N for the speed runs (1,000,000)")
    p.add_argument("--repeat", type=int, default=None, help="runs of each target (3)")
    p.add_argument("--quick", action="store_true", help="small inputs, one run each")
    p.add_argument("--small", type=int, default=None, help="N of the small memory run (200,000)")
    p.add_argument("--large", type=int, default=None, help="N of the large memory run (2,000,000)")
    p.add_argument("--skip-noop", action="store_true", help="do not run the no-op target")
    p.add_argument("--skip-memory", action="store_true", help="skip the 200k / 2M runs")
    p.add_argument(
        "--memory-repeat", type=int, default=None, help="runs of each memory size (3; medians)"
    )
    p.add_argument("--skip-overlap", action="store_true", help="skip the 200 ms overlap check")
    p.add_argument("--ours-cmd", default=None, help="command run instead of the installed CLI")
    p.add_argument(
        "--against",
        metavar="REF",
        default=None,
        help="also run the project at git ref REF (own venv under benchmarks/out/against/), "
        "alternating with ours; e.g. 3446f9c, release 0.1.0",
    )
    p.add_argument(
        "--still-matching",
        action="store_true",
        help="the emulator matches an upload only after an hour, as Pinterest takes hours: the "
        "end-of-run report has no match rate, so the run does not count (merge) its snapshot",
    )
    p.add_argument(
        "--lean",
        action="store_true",
        help="lean input: SCHEMA of the identifier fields, segment_name and action only",
    )
    args = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows when redirected
    n = args.records or (100_000 if args.quick else 1_000_000)

    def verdict(met: bool) -> str:
        """A smoke run's small inputs (start-up is a large share) give figures, no verdict."""
        if args.quick:
            return "no verdict (--quick: a smoke run)"
        return "MET" if met else "NOT MET"

    repeat = args.repeat or (1 if args.quick else 3)
    small = args.small or (20_000 if args.quick else 200_000)
    large = args.large or (200_000 if args.quick else 2_000_000)
    memory_repeat = args.memory_repeat or (1 if args.quick else 3)

    print(f"target-pinterest-audiences benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    print(
        f"  python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"  code: {_code_version()}")
    lean = args.lean
    path = input_file(n, lean=lean)
    print(f"  input: {'lean (identifier fields, segment_name, action)' if lean else 'loose'}")
    if args.still_matching:
        print("  emulator: uploads matched after 3600 s (--still-matching)")
    bench = Bench(args)
    try:
        print(f"  ours: {' '.join(bench.ours_cmd)}")
        if bench.against_cmd:
            print(f"  against: {args.against} ({bench.against_sha[:12]}): {bench.against_cmd[0]}")
        print(f"  noop: {' '.join(bench.noop_cmd)}")
        print(f"\n== Speed: N = {n:,} records, {repeat} run(s) each, alternating ==")
        ours: list[Measure] = []
        noops: list[Measure] = []
        others: list[Measure] = []
        writes: list[int] = []
        for _ in range(repeat):
            m, w = bench.ours(path)
            ours.append(m)
            writes.append(w)
            if bench.against_cmd:
                others.append(bench.ours(path, cmd=bench.against_cmd)[0])
            if not args.skip_noop:
                noops.append(bench.noop(path))
        r = ours[-1].report
        identifiers = r["identifiers_added"] + r["identifiers_removed"] + r["removes_without_list"]
        ours_wall = _median([m.wall for m in ours])
        ours_cpu = _median([m.user + m.sys for m in ours])
        print(
            f"ours   wall {_fmt_runs([m.wall for m in ours])}  -> median {ours_wall:.2f}s "
            f"(cpu user+sys median {ours_cpu:.2f}s)"
        )
        print(
            f"       records/s {n / ours_wall:,.0f}   identifiers/s {identifiers / ours_wall:,.0f}"
            f"   peak RSS {_median([m.maxrss_mb for m in ours]):.0f} MB"
        )
        print(
            f"       records received {r['records_received']:,}, skipped "
            f"{sum(r['records_skipped'].values()):,} {r['records_skipped']}"
        )
        print(
            f"       identifiers added {r['identifiers_added']:,}, removed "
            f"{r['identifiers_removed']:,}, removes before the list existed "
            f"{r['removes_without_list']:,}"
        )
        print(
            f"       requests sent {r['requests']} (STATE pinterest_audience.requests); "
            f"writes seen by the emulator {writes[-1]}"
        )
        against_ratio = None
        if others:
            other_wall = _median([m.wall for m in others])
            against_ratio = ours_wall / other_wall
            pair = [om.wall / am.wall for om, am in zip(ours, others, strict=True)]
            print(
                f"{args.against:<6} wall {_fmt_runs([m.wall for m in others])}  -> median "
                f"{other_wall:.2f}s (cpu user+sys median "
                f"{_median([m.user + m.sys for m in others]):.2f}s), peak RSS "
                f"{_median([m.maxrss_mb for m in others]):.0f} MB"
            )
            print(
                f"ratio  ours_wall / {args.against}_wall = {against_ratio:.3f}  (per pair: "
                f"{', '.join(f'{x:.3f}' for x in pair)})   goal <= 1.10: "
                f"{verdict(against_ratio <= 1.10)}"
            )
            cpu = [
                (om.user + om.sys) / (am.user + am.sys) for om, am in zip(ours, others, strict=True)
            ]
            print(
                f"       cpu (user+sys) ours / {args.against}: median "
                f"{_median(cpu):.3f} (per pair: {', '.join(f'{x:.3f}' for x in cpu)}; "
                "steadier than wall time on a loaded machine)"
            )
        ratio = None
        if noops:
            noop_wall = _median([m.wall for m in noops])
            ratio = noop_wall / ours_wall
            pair = [nm.wall / om.wall for om, nm in zip(ours, noops, strict=True)]
            print(
                f"noop   wall {_fmt_runs([m.wall for m in noops])}  -> median {noop_wall:.2f}s "
                f"(cpu user+sys median {_median([m.user + m.sys for m in noops]):.2f}s)"
            )
            print(
                f"       records/s {n / noop_wall:,.0f}   peak RSS "
                f"{_median([m.maxrss_mb for m in noops]):.0f} MB"
            )
            print(
                f"ratio  noop_wall / ours_wall = {ratio:.2f}  (per pair: "
                f"{', '.join(f'{x:.2f}' for x in pair)})   goal >= 2.5: "
                f"{verdict(ratio >= 2.5)}"
            )

        rss_ratio = None
        if not args.skip_memory:
            print(f"\n== Memory: N = {small:,} vs N = {large:,} (ours) ==")
            # Peak RSS of one run varies by 10 MB or more with how full the writer's queue
            # and the requests in flight happen to be at once: medians of the runs, the two
            # sizes alternating.
            runs: dict[int, list[float]] = {small: [], large: []}
            for _ in range(memory_repeat):
                for size in (small, large):
                    m, _ = bench.ours(input_file(size, lean=lean))
                    runs[size].append(m.maxrss_mb)
                    print(
                        f"N = {size:>9,}: peak RSS {m.maxrss_mb:.1f} MB, wall {m.wall:.2f}s, "
                        f"records/s {size / m.wall:,.0f}"
                    )
            rss = {size: _median(values) for size, values in runs.items()}
            if memory_repeat > 1:
                print(f"medians of {memory_repeat}: {rss[small]:.1f} MB and {rss[large]:.1f} MB")
            rss_ratio = rss[large] / rss[small]
            print(
                f"RSS({large:,}) / RSS({small:,}) = {rss_ratio:.3f}   goal <= {MEMORY_GOAL}: "
                f"{memory_verdict(small, large, rss_ratio)}"
            )

        overlap_ok = None
        if not args.skip_overlap:
            print(
                f"\n== Overlap: emulator answers each write after {WRITE_DELAY_MS} ms, N = {n:,} =="
            )
            m, w = bench.ours(path, write_delay_ms=WRITE_DELAY_MS)
            network = w * WRITE_DELAY_MS / 1000
            bound = max(ours_wall, network) * 1.1
            overlap_ok = m.wall <= bound
            print(
                f"wall {m.wall:.2f}s; CPU-bound time {ours_wall:.2f}s (median above); "
                f"writes {w} x {WRITE_DELAY_MS / 1000:.1f}s = {network:.1f}s"
            )
            print(
                f"bound max({ours_wall:.2f}, {network:.1f}) x 1.1 = {bound:.2f}s   "
                f"wall / bound = {m.wall / bound:.3f}   goal: {verdict(overlap_ok)}"
            )

        print("\n== Summary ==")
        if against_ratio is not None:
            print(
                f"against ours takes {against_ratio:.3f}x the time of {args.against} "
                f"(goal <= 1.10): {verdict(against_ratio <= 1.10)}"
            )
        if ratio is not None:
            print(
                f"speed   ours {n / ours_wall:,.0f} records/s, {ratio:.2f}x the no-op default "
                f"target (goal 2.5x): {verdict(ratio >= 2.5)}"
            )
        if rss_ratio is not None:
            print(
                f"memory  RSS({large:,}) / RSS({small:,}) = {rss_ratio:.3f} "
                f"(goal <= {MEMORY_GOAL}): "
                f"{memory_verdict(small, large, rss_ratio)}"
            )
        if overlap_ok is not None:
            print(f"overlap {verdict(overlap_ok)}")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
