"""Where the record path spends its time: cProfile over a dry run, grouped by package.

    python benchmarks/profile_record_path.py [--records N] [--top K]

Runs the installed target in-process as a dry run (no HTTP) over the cached benchmark input,
under cProfile, and prints the functions with the most own time and the own time summed by
package (json, singer_sdk, our package, ...). cProfile inflates code that makes many small
calls, so read the shares as a ranking; for exact shares use a sampling profiler such as
py-spy, installed in a scratch virtualenv (never into the project's dependencies):

    python -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy
    /tmp/prof/bin/py-spy record -r 500 -f raw -o /tmp/ours.raw -- \\
        target-pinterest-audiences --config CONFIG < benchmarks/out/records-...jsonl
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import input_file  # noqa: E402


def _group(filename: str) -> str:
    for marker, name in (
        ("target_pinterest_audiences", "target_pinterest_audiences (ours)"),
        ("singer_sdk", "singer_sdk"),
        ("msgspec", "msgspec"),
        ("/json/", "json (stdlib)"),
        ("simplejson", "simplejson"),
        ("logging", "logging"),
    ):
        if marker in filename:
            return name
    if filename.startswith("~") or filename.startswith("<built-in"):
        return "builtins (C: hashlib, re, str, dict ...)"
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    path = input_file(args.records)

    from target_pinterest_audiences.target import TargetPinterestAudiences

    with tempfile.TemporaryDirectory(prefix="tpa-profile-") as tmp:
        config = {
            "ad_account_id": "549755885175",
            "audience_name": "bench",
            "dry_run": True,
            "on_invalid_record": "skip",
            "token_cache_path": os.path.join(tmp, "tokens.json"),
        }
        target = TargetPinterestAudiences(config=config, validate_config=True)
        profiler = cProfile.Profile()
        real, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115
        try:
            with path.open(encoding="utf-8") as fh:
                profiler.runcall(target.listen, fh)
        finally:
            sys.stdout.close()
            sys.stdout = real

    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    by_group: collections.Counter[str] = collections.Counter()
    for (filename, _line, _name), row in stats.stats.items():  # type: ignore[attr-defined]
        by_group[_group(filename)] += row[2]
    print(f"cProfile of a dry run over {args.records:,} records: {total:.2f}s of own time\n")
    print("own time by package:")
    for group, seconds in by_group.most_common():
        print(f"  {100 * seconds / total:5.1f}%  {seconds:6.2f}s  {group}")
    print(f"\ntop {args.top} functions by own time:")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    print("\n".join(lines[start:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
