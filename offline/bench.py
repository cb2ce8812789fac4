"""`python -m offline.bench prepare|lodocv`: wall time and peak memory, printed as figures.

Each measurement runs in a fresh child process so its peak RSS is its own. `prepare` measures a cold build into an
empty temporary cache (extraction included) and then a warm run on that cache.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from offline.cli import run_cli
from offline.store import REPO_ROOT


def measure(args: list[str]) -> dict:
    """Run `python -m <args>` in a child; wall seconds and the child's peak RSS in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all waited children: only trust it when it grew
    return {"command": "python -m " + " ".join(args), "wall_s": round(wall, 2),
            "peak_rss_mib": round(max(peak, before) / 1024, 1)}


def bench_prepare(datasets: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="lemzha-bench-") as cache:
        base = ["offline.data", "prepare", "--cache", cache]
        if datasets:
            base += ["--datasets", str(datasets)]
        cold = measure(base)
        warm = measure(base)
    return {"cold_prepare": cold, "warm_prepare": warm,
            "targets": {"cold_prepare_s": 180, "warm_prepare_s": 10, "peak_rss_mib": 4096}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.bench", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="cold and warm `offline.data prepare`")
    p.add_argument("--datasets", type=Path)
    lo = sub.add_parser("lodocv", help="a full `offline.lodocv` run (3 seeds) with cached embeddings")
    lo.add_argument("--out", type=Path, default=Path("runs/lodocv"))
    lo.add_argument("extra", nargs=argparse.REMAINDER, help="more lodocv arguments after --")
    args = parser.parse_args(argv)
    if args.what == "prepare":
        figures = bench_prepare(args.datasets)
    else:
        extra = [a for a in args.extra if a != "--"]
        measure(["offline.data", "prepare"])  # make sure the scenario cache exists: not part of the figure
        figures = {"lodocv": measure(["offline.lodocv", "--out", str(args.out), *extra]),
                   "targets": {"wall_s": 600}}
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
