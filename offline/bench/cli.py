"""`python -m offline.bench prepare|lodocv|ranker|onnx|traces|logs|operator`: time and memory, printed as figures.

Each measurement runs in a fresh child process so its peak RSS is its own. `prepare` measures a cold build into an
empty temporary cache (extraction included) and then a warm run on that cache. `onnx` times the bundle's ranker
against torch on one TrainTicket scenario (46 services) and the RSS of a torch-free process holding the bundle.
`traces` derives the trace series of all 101 Nezha scenarios cold (`python -m offline.data.traces` into an empty
temporary cache: both Nezha archives verified and extracted, every trace CSV read), then warm (archives extracted).
`operator` runs the live operator against replayed TrainTicket faults (`offline/bench/operator.py`). `ranker` times the
shipped bundle's ranker on every Nezha case (`offline/bench/ranker.py`); `onnx` is the model bundle's. `logs` times
the log cleaner on a TrainTicket day's raw lines, cold and warm (`offline/bench/logs.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from offline.data.store import REPO_ROOT
from offline.provenance import bench_provenance


def measure(args: list[str]) -> dict:
    """Run `python -m <args>` in a child; wall seconds and peak RSS in MiB of the largest process of that run
    (the child or one of its worker processes: wait4 reports this child's own tree, not earlier runs)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if child.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(args)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
    return {"command": "python -m " + " ".join(args), "wall_s": round(wall, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def bench_prepare(datasets: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="lemzha-bench-") as cache:
        base = ["offline.data", "prepare", "--cache", cache]
        if datasets:
            base += ["--datasets", str(datasets)]
        cold = measure(base)
        warm = measure(base)
    return {"cold_prepare": cold, "warm_prepare": warm,
            "targets": {"cold_prepare_s": 180, "warm_prepare_s": 10, "peak_rss_mib": 4096}}


def bench_traces(datasets: Path | None, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lemzha-bench-") as cache:
        base = ["offline.data.traces", "--cache", cache, "--workers", str(workers)]
        if datasets:
            base += ["--datasets", str(datasets)]
        cold = _measure_json(base)
        warm = _measure_json(base)
    return {"cold": cold, "warm": warm, "workers": workers, "targets": {"cold_s": 180}}


def _measure_json(args: list[str]) -> dict:
    """`measure`, plus the child's own JSON figures (its stdout)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as err:
            child = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO_ROOT, stdout=out, stderr=err)
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status) != 0:
                err.seek(0)
                raise RuntimeError(f"{' '.join(args)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
        figures = json.loads(Path(out.name).read_text())
    return {"command": "python -m " + " ".join(args), "wall_s": round(wall, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "extract_s": figures["extract_s"],
            "derive_s": figures["derive_s"], "scenarios": figures["scenarios"],
            "per_day": {day: {k: d[k] for k in ("scenarios", "mean_trace_coverage", "fault_bin_covered",
                                                "trace_files", "trace_files_expected", "spans")}
                        for day, d in figures["days"].items()}}


# A torch-free process: load the bundle, rank once, report its own peak RSS and whether torch got imported.
_ONNX_CHILD = """
import json, sys, time
from lemzha.onnx_ranker import OnnxRanker
from lemzha.scenario_io import load_scenario
t0 = time.perf_counter()
ranker = OnnxRanker(sys.argv[1])
load_s = time.perf_counter() - t0
scenario = load_scenario(sys.argv[2], with_label=False)
ranker.rank(scenario)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
rss_mib = round(int(status["VmHWM"].split()[0]) / 1024, 1)  # ru_maxrss would include the parent's, kept over exec
print(json.dumps({"load_s": round(load_s, 2), "rss_mib": rss_mib, "torch_imported": "torch" in sys.modules,
                  "sentence_transformers_imported": "sentence_transformers" in sys.modules}))
"""


def _ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall milliseconds of `fn` over `repeat` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def _once_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return round((time.perf_counter() - t0) * 1000, 2)


def bench_onnx(bundle_dir: Path | None, scenario_id: str | None, repeat: int, epochs: int) -> dict:
    """ONNX vs torch ranking time per scenario (one thread each), cold and warm template caches, and RSS."""
    import torch

    from lemzha import inference
    from lemzha.features import prepare as prepare_features
    from lemzha.onnx_ranker import OnnxRanker
    from lemzha.text import TextEmbedder
    from offline.data.dataset import prepare
    from offline.data.store import default_cache_dir
    from offline.train.model import ModelConfig, RCAModel
    from offline.train.train import InputOptions, torch_logits_fn

    torch.set_num_threads(1)
    prepared = prepare(progress=False)
    if scenario_id is None:
        scenario_id = prepared.ids_of("nezha", app="trainticket")[0]
    scenario = prepared.load(scenario_id).without_label()
    without_onset = scenario.with_onset(None)
    embedder = TextEmbedder(default_cache_dir() / "embeddings")
    with tempfile.TemporaryDirectory(prefix="lemzha-bench-") as tmp:
        if bundle_dir is None:  # a default-size model; its weights do not change the timing
            from dataclasses import replace

            from offline.train.export_model import build_bundle
            from offline.train.params import load_params

            config, params, _ = load_params()
            # the weight every fold picked on inner validation, so that the ranking time includes the call-gap term
            result = build_bundle(Path(tmp) / "bundle", prepared.load_all(), config, replace(params, epochs=epochs),
                                  0, embedder, gap_fusion={"weight": 0.3, "chosen": "given (benchmark)"})
            bundle_dir, model, weights = result.directory, result.model, f"trained {epochs} epoch(s)"
        else:
            meta = json.loads((bundle_dir / "bundle.json").read_text())
            model = RCAModel(ModelConfig(**meta["params"]["model"])).eval()
            weights = "random init, the bundle's architecture"

        cold = OnnxRanker(bundle_dir, Path(tmp) / "cold", seed_templates=False)
        t0 = time.perf_counter()
        ranker = OnnxRanker(bundle_dir, Path(tmp) / "seeded")
        load_s = time.perf_counter() - t0
        crop_bins = ranker.bundle.crop_bins
        onnx = {
            "load_s": round(load_s, 2),
            "cold_unseeded_ms": _once_ms(lambda: cold.rank(scenario)),
            "seeded_first_ms": _once_ms(lambda: ranker.rank(scenario)),
            "warm_ms": _ms(lambda: ranker.rank(scenario), repeat),
            "warm_no_onset_ms": _ms(lambda: ranker.rank(without_onset), max(3, repeat // 4)),
        }
        traced = ranker.bundle.use_traces  # as OnnxRanker prepares
        prep = prepare_features(scenario, ranker.embedder, traces=traced)
        crops = inference.crops_for(prep, scenario.onset_bin, crop_bins)
        onnx["breakdown_ms"] = {
            "features_prepare": _ms(lambda: prepare_features(scenario, ranker.embedder, traces=traced), repeat),
            "features_crop": _ms(lambda: inference.crops_for(prep, scenario.onset_bin, crop_bins), repeat),
            "model_onnx": _ms(lambda: ranker.logits_fn(crops), repeat),
        }
        logits = torch_logits_fn(model, InputOptions())

        def torch_rank(s) -> None:
            inference.service_probabilities(logits, prepare_features(s, embedder), s.onset_bin, crop_bins)

        torch_rank(scenario)  # warm the sentence-transformers cache and torch
        torch_figures = {"weights": weights, "warm_ms": _ms(lambda: torch_rank(scenario), repeat),
                         "warm_no_onset_ms": _ms(lambda: torch_rank(without_onset), max(3, repeat // 4)),
                         "model_torch_ms": _ms(lambda: logits(crops), repeat)}
        child = subprocess.run([sys.executable, "-c", _ONNX_CHILD, str(bundle_dir),
                                str(prepared.directory / scenario_id)], cwd=REPO_ROOT, capture_output=True, text=True)
        if child.returncode != 0:
            raise RuntimeError(f"torch-free child failed:\n{child.stderr[-2000:]}")
        process = json.loads(child.stdout.strip().splitlines()[-1])
        if process["torch_imported"] or process["sentence_transformers_imported"]:
            raise RuntimeError(f"the ONNX ranker imported torch or sentence-transformers: {process}")
    return {
        "scenario": {"id": scenario_id, "services": len(scenario.services), "pods": len(scenario.pods),
                     "bins": scenario.n_bins, "templates": int(scenario.logs["template"].nunique())},
        "threads": 1,
        "onnx": onnx,
        "torch": torch_figures,
        "torch_free_process": process,
        "targets": {"ms_per_scenario": 20},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.bench", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="cold and warm `offline.data prepare`")
    p.add_argument("--datasets", type=Path)
    lo = sub.add_parser("lodocv", help="a full `offline.lodocv` run (3 seeds) with cached embeddings")
    lo.add_argument("--out", type=Path, default=Path("runs/lodocv"))
    lo.add_argument("extra", nargs=argparse.REMAINDER, help="more lodocv arguments after --")
    rk = sub.add_parser("ranker", help="the shipped ranker's ms per case (known and unknown onset) and RSS")
    rk.add_argument("--bundle", type=Path, help="bundle to time (default: the shipped export, cached)")
    rk.add_argument("--scale", action="store_true", help="only the scale pass: 46 to 1,012 pods, ms and peak RSS")
    rk.add_argument("--out", type=Path, help="also write the figures as JSON here")
    ox = sub.add_parser("onnx", help="model bundle ranking ms (cold/warm), torch vs ONNX, torch-free RSS")
    ox.add_argument("--bundle", type=Path, help="bundle to time (default: export a default-size one to a temp dir)")
    ox.add_argument("--scenario", help="scenario id (default: the first TrainTicket fault, 46 services)")
    ox.add_argument("--repeat", type=int, default=20, help="timed calls per warm figure (median)")
    ox.add_argument("--epochs", type=int, default=1, help="training epochs of the default bundle (timing only)")
    tr = sub.add_parser("traces", help="cold and warm trace derivation of all 101 Nezha scenarios")
    tr.add_argument("--datasets", type=Path)
    tr.add_argument("--workers", type=int, default=2, help="processes reading days in parallel (default 2)")
    lg = sub.add_parser("logs", help="the log cleaner's lines per CPU second on TrainTicket lines, cold and warm")
    lg.add_argument("--lines", type=int, default=20_000, help="lines per incident (default 20,000)")
    lg.add_argument("--incidents", type=int, default=6, help="incidents, the first one cold (default 6)")
    lg.add_argument("--out", type=Path, help="also write the figures as JSON here")
    op = sub.add_parser("operator", help="live operator: created->Completed latency, stages, RSS, throughput")
    op.add_argument("--n", type=int, default=20, help="TrainTicket incidents per pass (default 20)")
    op.add_argument("--concurrency", type=int, default=2, help="LEMZHA_CONCURRENCY (default 2, as shipped)")
    op.add_argument("--bundle", type=Path, help="bundle directory (default: the shipped bundle, cached)")
    op.add_argument("--passes", help="cold,warm,burst,alerts,memory,scale or some of them, in that order")
    op.add_argument("--no-baro", action="store_true", help="skip the same passes without a bundle (BARO only)")
    op.add_argument("--memory-incidents", type=int, default=500, help="incidents of the memory pass (default 500)")
    op.add_argument("--memory-batch", type=int, default=50, help="incidents at once in the memory pass")
    op.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.what == "operator":
        from offline.bench import operator

        argv_op = ["--n", str(args.n), "--concurrency", str(args.concurrency), "--memory-incidents",
                   str(args.memory_incidents), "--memory-batch", str(args.memory_batch)]
        argv_op += ["--no-baro"] if args.no_baro else []
        for flag, value in (("--bundle", args.bundle), ("--passes", args.passes), ("--out", args.out)):
            argv_op += [flag, str(value)] if value else []
        return operator.main(argv_op)
    if args.what == "traces":
        figures = bench_traces(args.datasets, max(1, args.workers))
    elif args.what == "logs":
        from offline.bench.logs import bench_logs

        figures = bench_logs(args.lines, args.incidents)
    elif args.what == "prepare":
        figures = bench_prepare(args.datasets)
    elif args.what == "ranker":
        from offline.bench.ranker import bench_ranker, bench_scale

        figures = bench_scale(args.bundle) if args.scale else bench_ranker(args.bundle)
    elif args.what == "onnx":
        figures = bench_onnx(args.bundle, args.scenario, max(1, args.repeat), max(1, args.epochs))
    else:
        extra = [a for a in args.extra if a != "--"]
        measure(["offline.data", "prepare"])  # make sure the scenario cache exists: not part of the figure
        figures = {"lodocv": measure(["offline.lodocv", "--out", str(args.out), *extra]),
                   "targets": {"wall_s": 600}}
    figures["provenance"] = bench_provenance(args.what, list(sys.argv[2:] if argv is None else argv[1:]))
    print(json.dumps(figures, indent=1))
    if getattr(args, "out", None) is not None and args.what != "lodocv":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    return 0

