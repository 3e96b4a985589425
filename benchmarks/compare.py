"""CPU cost of the record path for several copies of the package, side by side.

    python benchmarks/compare.py [--records N] [--repeat K] DIR [DIR ...]

Each DIR holds a `target_pinterest_audiences/` package (for example an unpacked
`git archive HEAD target_pinterest_audiences`, and a copy with a proposed change applied).
For each DIR, in a fresh interpreter with DIR first on sys.path, the target runs a dry run
(no HTTP, no writer work) over the cached benchmark input and reports the process CPU time of
`listen()`, that is: reading and parsing lines, singer-sdk's per-record path, validation,
normalization, hashing and batching. Runs alternate between the DIRs; medians are printed with
the ratio to the first DIR, and the run reports must agree (same identifiers and skips).

Extra import paths for all children (for example a folder where msgspec was installed with
`pip install --target`) can be given with --path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import input_file  # noqa: E402

CHILD = r"""
import json, os, sys, time
from target_pinterest_audiences.target import TargetPinterestAudiences
import target_pinterest_audiences
where = os.path.realpath(target_pinterest_audiences.__file__)
assert where.startswith(os.path.realpath(sys.argv[2])), where
config = {"ad_account_id": "549755885175", "audience_name": "bench", "dry_run": True,
          "on_invalid_record": "skip", "token_cache_path": os.path.join(sys.argv[3], "t.json")}
target = TargetPinterestAudiences(config=config, validate_config=True)
real, sys.stdout = sys.stdout, open(os.devnull, "w")
with open(sys.argv[1], encoding="utf-8") as fh:
    cpu = time.process_time()
    target.listen(fh)
    cpu = time.process_time() - cpu
sys.stdout = real
r = target.report
print(json.dumps({"cpu": cpu, "added": r.identifiers_added, "removed": r.identifiers_removed,
                  "skipped": r.records_skipped}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--path", action="append", default=[], help="extra sys.path entry")
    args = p.parse_args()
    path = input_file(args.records)
    results: dict[Path, list[float]] = {d: [] for d in args.dirs}
    reports: dict[Path, str] = {}
    with tempfile.TemporaryDirectory(prefix="tpa-compare-") as tmp:
        for _ in range(args.repeat):
            for d in args.dirs:
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(d), *args.path]))
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), str(d), tmp],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=tmp,
                )
                if out.returncode:
                    print(out.stderr[-3000:])
                    return 1
                data = json.loads(out.stdout.strip().splitlines()[-1])
                results[d].append(data.pop("cpu"))
                reports[d] = json.dumps(data, sort_keys=True)
    first = statistics.median(results[args.dirs[0]])
    for d in args.dirs:
        med = statistics.median(results[d])
        runs = ", ".join(f"{x:.2f}" for x in results[d])
        print(
            f"{d.name:24s} cpu median {med:6.2f}s = {med / args.records * 1e6:5.2f} us/record "
            f"({runs})  {first / med:4.2f}x vs {args.dirs[0].name}"
        )
    if len(set(reports.values())) != 1:
        print("REPORTS DIFFER:", reports)
        return 1
    print("same report from every copy:", next(iter(reports.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
