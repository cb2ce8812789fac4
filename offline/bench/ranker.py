"""`python -m offline.bench ranker`: how long the shipped ranker takes per case, and the memory of a process that
holds it (the operator's ranking step, torch-free).

Every Nezha scenario is loaded fresh and ranked once with its onset (what an incident costs: nothing is remembered
between incidents) and once without one (the ranker scans for the onset). Figures: median, p95 and max milliseconds
per app, CPU seconds (load-independent), and the peak RSS of a child process that loads the bundle and ranks one
TrainTicket case.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_CHILD = """
import json, sys
from lemzha.bundle_ranker import open_ranker
from lemzha.scenario_io import load_scenario
ranker = open_ranker(sys.argv[1])
ranker.rank(load_scenario(sys.argv[2], with_label=False))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"rss_mib": round(int(status["VmHWM"].split()[0]) / 1024, 1),
                  "torch_imported": "torch" in sys.modules, "onnxruntime_imported": "onnxruntime" in sys.modules}))
"""


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "p95": round(float(np.percentile(values, 95)), 2),
            "max": round(max(values), 2), "n": len(values)}


def bench_ranker(bundle: Path | None) -> dict:
    from lemzha.bundle_ranker import open_ranker
    from offline.data.dataset import prepare

    prepared = prepare(progress=False)
    if bundle is None:
        from offline.train.bundle_cache import shipped_bundle

        bundle = shipped_bundle(prepared)
    ranker = open_ranker(bundle)
    known: dict[str, list[float]] = {}
    unknown: dict[str, list[float]] = {}
    cpu_known = cpu_unknown = 0.0
    ids = prepared.ids_of("nezha")
    for scenario_id in ids:
        for store, given in ((known, True), (unknown, False)):
            scenario = prepared.load(scenario_id).without_label()  # fresh: nothing remembered from a former call
            if not given:
                scenario = scenario.with_onset(None)
            t0, c0 = time.perf_counter(), time.process_time()
            ranker.rank(scenario)
            store.setdefault(scenario.app, []).append((time.perf_counter() - t0) * 1000)
            if given:
                cpu_known += time.process_time() - c0
            else:
                cpu_unknown += time.process_time() - c0
    tt = next(i for i in ids if prepared.load(i).app == "trainticket")
    child = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), str(prepared.directory / tt)],
                           capture_output=True, text=True, check=True)
    return {"bundle": str(bundle), "bundle_sha": ranker.bundle.sha,
            "ms_per_case_known_onset": {app: _stats(v) for app, v in known.items()},
            "ms_per_case_unknown_onset": {app: _stats(v) for app, v in unknown.items()},
            "cpu_s_per_case": {"known_onset": round(cpu_known / len(ids), 4),
                               "unknown_onset": round(cpu_unknown / len(ids), 4)},
            "process": json.loads(child.stdout.strip().splitlines()[-1]),
            "targets": {"ms_per_case": 20}}


# One size of the scale pass, in a fresh process. Ranked on a fresh copy each time, as an incident is (nothing
# remembered): the first call, then the median of three more; BARO on the same copy. Memory: the RSS holding the
# copy, and the peak while the bundle ranks it (VmHWM restarted after the copy is built, since building the copy by
# tiling is the benchmark's own work, not the operator's).
_SCALE_CHILD = """
import gc, json, statistics, sys, time
from lemzha.baselines import Baro
from lemzha.bundle_ranker import open_ranker
from lemzha.memory import release_freed_memory
from lemzha.scenario_io import load_scenario
from offline.data.renaming import tiled
ranker = open_ranker(sys.argv[1])
base = load_scenario(sys.argv[2], with_label=False)
copies = int(sys.argv[3])
peaks = []
def rss_mib(field):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status[field].split()[0]) / 1024
def cpu_ms(rank):
    scenario = tiled(base, copies)
    gc.collect()
    release_freed_memory()
    with open("/proc/self/clear_refs", "w") as refs:  # restart the peak (VmHWM) here: building the copy is not ranking
        refs.write("5")
    held = rss_mib("VmRSS")
    t0 = time.process_time()
    rank(scenario)
    ms = (time.process_time() - t0) * 1000
    peaks.append((held, rss_mib("VmHWM")))
    return ms
first = cpu_ms(ranker.rank)
again = statistics.median(cpu_ms(ranker.rank) for _ in range(3))
held, peak = max(peaks, key=lambda p: p[1])
baro = statistics.median(cpu_ms(Baro().rank) for _ in range(3))
scenario = tiled(base, copies)
print(json.dumps({"pods": len(scenario.pods), "services": len(scenario.services), "log_rows": len(scenario.logs),
                  "first_ms": round(first, 1), "ms": round(again, 1), "baro_ms": round(baro, 1),
                  "rss_with_scenario_mib": round(held, 1), "peak_rss_ranking_mib": round(peak, 1),
                  "peak_rss_process_mib": round(rss_mib("VmHWM"), 1)}))
"""
SCALE_COPIES = (1, 2, 5, 10, 22)


def bench_scale(bundle: Path | None, copies: tuple[int, ...] = SCALE_COPIES) -> dict:
    """The shipped ranker's CPU milliseconds and a process's peak RSS on a TrainTicket namespace copied k times
    (`offline.data.renaming.tiled`: 46 pods and services per copy), BARO's milliseconds beside it."""
    from offline.data.dataset import prepare
    from offline.data.store import REPO_ROOT

    prepared = prepare(progress=False)
    if bundle is None:
        from offline.train.bundle_cache import shipped_bundle

        bundle = shipped_bundle(prepared)
    tt = prepared.ids_of("nezha", app="trainticket")[0]
    sizes = []
    for k in copies:
        child = subprocess.run([sys.executable, "-c", _SCALE_CHILD, str(bundle), str(prepared.directory / tt), str(k)],
                               capture_output=True, text=True, cwd=REPO_ROOT)
        if child.returncode != 0:
            raise RuntimeError(f"scale pass, {k} copies:\n{child.stderr[-2000:]}")
        sizes.append({"copies": k, **json.loads(child.stdout.strip().splitlines()[-1])})
    first, last = sizes[0], sizes[-1]
    return {"scenario": tt, "sizes": sizes,
            # 1.0 = linear in pods; the cost per pod at the largest size over that at the smallest
            "ms_per_pod_growth": round((last["ms"] / last["pods"]) / (first["ms"] / first["pods"]), 2),
            "targets": {"ms_at_1000_pods": 200}}
