"""The neural model under cross-validation: inner epoch selection, per-seed fits, the call-gap fusion.

The model (`offline.train.model`, trained by `offline.train.train`) was the shipped ranker before the evidence
ranker replaced it;
`python -m offline.lodocv --with-model` still scores it, in the same run and on the same folds, as a comparison.

Per fold:
- the number of training epochs is picked on inner validation: each training Nezha day is held out in turn, the
  model is trained on the rest, and the epoch with the best mean inner MRR wins; the test day is never read
- the model is trained on all training days (LEMMA included unless --no-lemma) with that many epochs, per seed
- the trace variants (`traces`, `traces_graph`) get their own inner epoch selection, and the `model_selected` rows are
  the variant with the best inner MRR
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lemzha.features import Prepared
from lemzha.fusion import GAP_WEIGHTS, GapFusion, fuse, gap_term
from lemzha.ranking import Ranking
from lemzha.scenario import Scenario
from lemzha.text import TextEmbedder
from offline.train.folds import (
    day_of,
    estimated_onset_window,
    fold_key,
    fold_onset_estimator,
    rank_cases,
    unknown_onset_window,
)
from offline.train.train import InputOptions, ModelRanker, PreparedCache, service_probabilities, train_model

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


def row_name(variant: str) -> str:
    """The name a model variant's rows carry in results: `model`, `model_gap_fused`, `model_no_logs`, ..."""
    return "model" if variant == "model" else f"model_{variant}"


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
    inner_days = sorted({day_of(s) for s in train if s.dataset == "nezha"})
    weights = tuple(sorted({0.0, *gap_weights}))
    curves = []
    fused: list[list[dict[float, float]]] = []  # per inner day, per epoch: weight -> MRR
    for step, held in enumerate(inner_days):
        fit_on = [s for s in train if not (s.dataset == "nezha" and day_of(s) == held)]
        val = [s for s in train if s.dataset == "nezha" and day_of(s) == held]
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
    protocol: str = "day"
    variant_inner: bool = True  # trace variants get their own inner epoch selection (and the inner decision)
    gap_fusion: bool = True  # also rank the model fused with the call-gap term, its weight chosen on inner folds


def run_fold(job: FoldJob, fold: str, ticks=None) -> tuple[list[dict], dict]:
    """Inner epoch selection and the model variants for one held-out fold."""
    torch.set_num_threads(max(1, job.threads))
    index = json.loads((job.scenario_dir / "index.json").read_text())
    from lemzha.scenario_io import load_scenario

    scenarios = [load_scenario(job.scenario_dir / e["id"]) for e in index["scenarios"]
                 if e["dataset"] == "nezha" or job.use_lemma]
    nezha = [s for s in scenarios if s.dataset == "nezha"]
    test = [s for s in nezha if fold_key(s, job.protocol) == fold]
    train = [s for s in nezha if fold_key(s, job.protocol) != fold] + [s for s in scenarios if s.dataset == "lemma"]
    embedder = TextEmbedder(job.embedding_dir)
    caches = {False: PreparedCache(embedder), True: PreparedCache(embedder, neutral_names=True)}
    rows: list[dict] = []
    estimator = fold_onset_estimator(train)
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
            name = row_name(variant)
            ranker = ModelRanker(fold_params, seed, embedder, options, config, name=name,
                                 cache=caches[options.neutral_names])
            ranker.fit(train)
            rows += rank_cases(ranker, test, fold, seed, name)
            if variant == "model" and job.gap_fusion:
                # the same fitted model, fused with the call-gap term at the inner-chosen weight
                rows += rank_cases(GapFusion(ranker, inner["gap_weight"]), test, fold, seed, row_name("gap_fused"))
            if variant == "model":
                rows += rank_cases(ranker, test, fold, seed, "unknown_onset:model",
                                   transform=lambda s, seed=seed: unknown_onset_window(s, seed))
                fold_estimator = estimator if seed == 0 else fold_onset_estimator(train, seed)
                rows += rank_cases(ranker, test, fold, seed, "estimated_onset:model",
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




def model_job_from_args(args, prepared, scenarios: list[Scenario], seeds: list[int]) -> FoldJob:
    """The model's fold job from lodocv's arguments: parameters, embeddings of every text (label-free, once)."""
    from lemzha.text import service_name_text
    from offline.data.store import default_cache_dir
    from offline.train.params import load_params

    variants = {"model": InputOptions()}
    if args.model_variants:
        chosen = [v.strip() for v in args.model_variants.split(",") if v.strip()]
        bad = sorted(set(chosen) - set(ABLATIONS))
        if bad:
            raise ValueError(f"unknown model variant(s) {bad}; choose from {', '.join(ABLATIONS)}")
        variants.update({v: ABLATIONS[v] for v in chosen})
    days = sorted({day_of(s) for s in scenarios if s.dataset == "nezha"})
    params_dir = args.params if args.params is not None and args.params.is_dir() else None
    fold_params = {}
    for fold in days + sorted({s.app for s in scenarios if s.dataset == "nezha"}):
        source = params_dir / f"fold-{fold}.json" if params_dir is not None and fold in days else (
            None if params_dir is not None else args.params)
        config, params, params_hash = load_params(source)
        fold_params[fold] = (config, replace(params, epochs=min(params.epochs, 3)) if args.quick else params,
                             params_hash)
    embedding_dir = Path(args.cache or default_cache_dir()) / "embeddings"
    embedder = TextEmbedder(embedding_dir, progress=True)
    texts = sorted({t for s in scenarios for t in s.logs["template"].tolist()}
                   | {service_name_text(x) for s in scenarios for x in s.services} | {service_name_text("service")})
    embedder.embed(texts)
    return FoldJob(prepared.directory, embedding_dir, not args.no_lemma, fold_params, seeds, variants, 1)
