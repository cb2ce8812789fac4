"""`python -m offline.detect`: leave-one-day-out benchmark of the anomaly detectors on the continuous Nezha streams.

Data: each Nezha day's per-pod metrics as one stream on the 30 s grid (`lemzha.binning`), from the bin of the first
sample to 30 min after the last injection (the experiment period; the metrics go on for 8-16 more hours, in a
quieter regime: on the TrainTicket days the load drops from ~13 to 3 req/s; `--whole-day` keeps them).
Labels (`lemzha.detect.label_bins`): a bin is anomalous from the bin holding an injection until EFFECT_MINUTES
(5 min, 10 bins) have passed; every other bin is normal.

Per fold (one day held out): detectors are fitted on the three other days; each detector's alarm threshold is the
one maximising bin-level F1 on the training days (for trained detectors, on out-of-fold scores of an inner
leave-one-day-out over those days), and its onset threshold the one minimising the mean onset error on the
training days' RCA windows. The onset estimator for RCA is chosen among CUSUM and the zero-shot detectors on the
same training windows. The test day is scored once, at the end.

Figures per detector and fold: F1 at the chosen threshold, PR-AUC, ROC-AUC, detection delay (bins from the
injection bin to the first alarm inside the effect period), the share of faults detected, false alarms per hour
(alarm episodes touching no anomalous bin, per hour of normal bins) and onset error in bins on the RCA windows.
Learning curve: the trained detectors refitted on 0, 10, 25, 50 and 100 % of the training days' labelled windows
(10-min chunks); 0 % is the untrained prior (the zero-shot robust z).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np

from lemzha.binning import BIN_SECONDS, floor_to_bin, last_sample_per_bin, rfc3339
from lemzha.detect import (
    ALL_DETECTORS,
    EFFECT_BINS,
    EFFECT_MINUTES,
    TORCH_DETECTORS,
    ZERO_SHOT,
    DetectionData,
    Stream,
    label_bins,
    make_detector,
    select_onset_estimator,
)
from lemzha.detect.onset import cusum_onset, fit_onset_threshold, onset_from_scores
from lemzha.fsutil import replace_directory
from offline.cli import run_cli
from offline.data.nezha import DAYS, NezhaDay, Window, list_faults, read_day_metrics
from offline.data.store import ARCHIVES, ensure_extracted
from offline.errors import DataError
from offline.provenance import provenance
from offline.train.folds import UNKNOWN_ONSET_BINS, unknown_onset_span

FRACTIONS = (0.0, 0.1, 0.25, 0.5, 1.0)
CHUNK_BINS = 20  # a "labelled window" of the learning curve: 10 min of a training stream
RCA_WINDOW_BINS = UNKNOWN_ONSET_BINS
SCENARIO_BEFORE_BINS = int(Window().before.total_seconds()) // BIN_SECONDS  # the offline scenarios' geometry
SCENARIO_BINS = SCENARIO_BEFORE_BINS + int(Window().after.total_seconds()) // BIN_SECONDS
DEFAULT_THRESHOLD = 0.9  # the 0 % point of the learning curve has no labels to choose a threshold on


# -- data ------------------------------------------------------------------------------------------------------------
@dataclass
class Fault:
    id: str
    bin: int  # injection bin in the day stream
    fault_type: str


TAIL_MINUTES = 30


def load_day(root: Path, day: NezhaDay, whole_day: bool = False) -> tuple[Stream, list[Fault]]:
    """One day as a labelled stream from the bin of the first sample to TAIL_MINUTES after the last injection
    (or to the last sample with `whole_day`)."""
    metrics = read_day_metrics(root, day)
    faults = list_faults(root, day)
    first = min(metrics.series[p].times[0] for p in metrics.pods)
    last = max(metrics.series[p].times[-1] for p in metrics.pods)
    start = floor_to_bin(first)
    if not whole_day:
        last = min(last, max(f.time for f in faults) + timedelta(minutes=TAIL_MINUTES))
    n_bins = int((floor_to_bin(last) - start).total_seconds() // BIN_SECONDS) + 1
    values = np.stack([last_sample_per_bin(metrics.series[p].times, metrics.series[p].values, start, n_bins)
                       for p in metrics.pods], axis=1)
    bins = [int((f.time - start).total_seconds() // BIN_SECONDS) for f in faults]
    if min(bins) < 0 or max(bins) >= n_bins:
        raise DataError(f"{day.day}: a fault lies outside the metric stream")
    stream = Stream(day.day, start, values, label_bins(n_bins, bins), None, tuple(bins), day.app)
    return stream, [Fault(f.scenario_id, b, f.fault_type) for f, b in zip(faults, bins, strict=True)]


def rca_window(fault: Fault, seed: int = 0) -> tuple[int, int]:
    """(start bin in the day stream, fault bin inside the window) of the RCA window that `offline.lodocv`'s
    unknown-onset mode shows for this fault, placed in the offline scenario's geometry as lodocv places it."""
    offset, _ = unknown_onset_span(fault.id, SCENARIO_BEFORE_BINS, SCENARIO_BINS, seed)
    start = fault.bin - SCENARIO_BEFORE_BINS + offset
    return start, fault.bin - start


def rca_windows(stream: Stream, faults: list[Fault]) -> list[tuple[np.ndarray, int]]:
    """The RCA windows of a day's faults; bins before the stream's first bin are NaN, as in the scenario."""
    out = []
    for f in faults:
        start, fb = rca_window(f)
        lo = max(0, start)
        values = stream.values[lo : start + RCA_WINDOW_BINS]
        if lo > start:
            pad = np.full((lo - start, *values.shape[1:]), np.nan, dtype=values.dtype)
            values = np.concatenate([pad, values])
        out.append((values, fb))
    return out


def subsample(stream: Stream, fraction: float, seed: int) -> Stream:
    """The stream with only `fraction` of its 10-min chunks usable for training (at least one chunk holding an
    anomalous bin and one without, when the fraction is above 0)."""
    n_chunks = -(-stream.n_bins // CHUNK_BINS)
    chunk_of = np.arange(stream.n_bins) // CHUNK_BINS
    if fraction >= 1.0:
        return replace(stream, usable=None)
    rng = np.random.default_rng([seed, sum(map(ord, stream.name)), int(fraction * 1000)])
    k = round(fraction * n_chunks)
    chosen = set(rng.choice(n_chunks, size=k, replace=False).tolist()) if k else set()
    if fraction > 0:
        positive = np.unique(chunk_of[stream.labels])
        negative = np.setdiff1d(np.arange(n_chunks), positive)
        if not chosen & set(positive.tolist()) and len(positive):
            chosen.add(int(rng.choice(positive)))
        if not chosen & set(negative.tolist()) and len(negative):
            chosen.add(int(rng.choice(negative)))
    return replace(stream, usable=np.isin(chunk_of, sorted(chosen)))


# -- metrics ---------------------------------------------------------------------------------------------------------
def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels.astype(int), scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 1.0


def alarm_episodes(alarm: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of True."""
    padded = np.concatenate([[False], alarm, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def stream_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float, injection_bins) -> dict:
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    alarm = scores >= threshold
    delays = []
    for b in injection_bins:
        hits = np.flatnonzero(alarm[b : b + EFFECT_BINS])
        if hits.size:
            delays.append(int(hits[0]))
    false = sum(1 for s, e in alarm_episodes(alarm) if not labels[s:e].any())
    normal_hours = (~labels).sum() * BIN_SECONDS / 3600
    return {
        "f1": float(f1_score(labels, alarm, zero_division=0)),
        "precision": float(alarm[labels].sum() / max(1, alarm.sum())),
        "recall": float(alarm[labels].mean()) if labels.any() else float("nan"),
        "pr_auc": float(average_precision_score(labels, scores)),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "detected": len(delays) / max(1, len(injection_bins)),
        "delay_bins": float(np.mean(delays)) if delays else float("nan"),
        "false_alarms_per_hour": float(false / normal_hours) if normal_hours else float("nan"),
        "threshold": float(threshold),
        "positive_share": float(labels.mean()),
    }


def onset_errors(detector, threshold: float, windows) -> list[int]:
    return [int(onset_from_scores(detector.score(v), detector, threshold) - fb) for v, fb in windows]


# -- one fold --------------------------------------------------------------------------------------------------------
def fit_detector(name: str, train: list[Stream], seed: int = 0):
    det = make_detector(name, seed)
    det.fit(DetectionData(list(train)) if det.needs_training else None)
    return det


def alarm_threshold(name: str, train: list[Stream], fitted, seed: int = 0, inner: bool = True) -> float:
    """Max-F1 threshold on the training days. Trained detectors are judged on out-of-fold scores of an inner
    leave-one-day-out over the training days (so the threshold is not set on in-sample scores)."""
    if not fitted.needs_training or not inner or len(train) < 2:
        scores = np.concatenate([fitted.score(s.values) for s in train])
    else:
        parts = []
        for held in train:
            det = fit_detector(name, [s for s in train if s is not held], seed)
            parts.append(det.score(held.values))
        scores = np.concatenate(parts)
    labels = np.concatenate([s.labels for s in train])
    return best_f1_threshold(scores, labels)


def run_fold(test_day: str, streams: dict[str, Stream], faults: dict[str, list[Fault]], detectors: list[str],
             fractions: tuple[float, ...], seed: int, inner: bool, tick) -> dict:
    train = [streams[d] for d in streams if d != test_day]
    test = streams[test_day]
    train_windows = [w for d in streams if d != test_day for w in rca_windows(streams[d], faults[d])]
    test_windows = rca_windows(test, faults[test_day])
    out: dict = {"train_days": [s.name for s in train], "detectors": {}, "learning_curve": {}, "pr_curves": {}}
    for name in detectors:
        t0 = time.perf_counter()
        det = fit_detector(name, train, seed)
        thr = alarm_threshold(name, train, det, seed, inner)
        scores = det.score(test.values)
        m = stream_metrics(scores, test.labels, thr, test.injection_bins)
        onset_thr, onset_train_err = fit_onset_threshold(det, train_windows)
        errs = onset_errors(det, onset_thr, test_windows)
        m.update(onset_threshold=onset_thr, onset_train_mae=onset_train_err,
                 onset_mae=float(np.mean(np.abs(errs))), onset_median_abs=float(np.median(np.abs(errs))),
                 onset_within_2=float(np.mean(np.abs(errs) <= 2)), seconds=round(time.perf_counter() - t0, 1))
        out["detectors"][name] = m
        out["pr_curves"][name] = _pr_curve(scores, test.labels)
        tick()
        if det.needs_training:
            curve = {}
            for fraction in fractions:
                if fraction >= 1.0:
                    curve["1.0"] = {k: m[k] for k in ("f1", "pr_auc", "roc_auc")}
                    continue
                sub = [subsample(s, fraction, seed) for s in train]
                d2 = fit_detector(name, sub, seed) if fraction > 0 else make_detector(name, seed).fit(None)
                if fraction > 0:
                    used_scores = np.concatenate([d2.score(s.values)[s.usable] for s in sub])
                    used_labels = np.concatenate([s.labels[s.usable] for s in sub])
                    t = best_f1_threshold(used_scores, used_labels)
                else:
                    t = DEFAULT_THRESHOLD
                r = stream_metrics(d2.score(test.values), test.labels, t, test.injection_bins)
                curve[str(fraction)] = {k: r[k] for k in ("f1", "pr_auc", "roc_auc")}
                curve[str(fraction)]["labelled_bins"] = int(sum((s.usable if s.usable is not None else
                                                                 np.ones(s.n_bins, bool)).sum() for s in sub)
                                                            if fraction > 0 else 0)
                tick()
            out["learning_curve"][name] = curve
    p = float(test.labels.mean())
    out["reference"] = {  # what a detector must beat: always alarming, and guessing the window's middle
        "positive_share": p, "always_alarm_f1": 2 * p / (1 + p),
        "always_alarm_false_alarms_per_hour": 0.0,
        "onset_middle_mae": float(np.mean([abs(len(v) // 2 - fb) for v, fb in test_windows])),
    }
    chosen = select_onset_estimator(train_windows)
    errs = [chosen(v) - fb for v, fb in test_windows]
    cusum = [cusum_onset(v) - fb for v, fb in test_windows]
    out["onset_estimator"] = {**chosen.describe(), "test_mae": float(np.mean(np.abs(errs))),
                              "test_median_abs": float(np.median(np.abs(errs))),
                              "cusum_test_mae": float(np.mean(np.abs(cusum)))}
    tick()
    return out


def _pr_curve(scores: np.ndarray, labels: np.ndarray, points: int = 60) -> dict:
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(labels.astype(int), scores)
    idx = np.unique(np.linspace(0, len(p) - 1, min(points, len(p))).astype(int))
    return {"precision": np.round(p[idx], 4).tolist(), "recall": np.round(r[idx], 4).tolist()}


# -- summary, report ---------------------------------------------------------------------------------------------------
KEYS = ("f1", "pr_auc", "roc_auc", "delay_bins", "detected", "false_alarms_per_hour", "onset_mae")


def summarise(folds: dict[str, dict], detectors: list[str]) -> dict:
    out = {}
    for name in detectors:
        rows = [f["detectors"][name] for f in folds.values()]
        out[name] = {k: {"mean": round(float(np.nanmean([r[k] for r in rows])), 4),
                         "std": round(float(np.nanstd([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0, 4)}
                     for k in KEYS}
    return out


def learning_summary(folds: dict[str, dict]) -> dict:
    names = sorted({n for f in folds.values() for n in f["learning_curve"]})
    out = {}
    for name in names:
        fractions = sorted({float(k) for f in folds.values() for k in f["learning_curve"].get(name, {})})
        out[name] = {str(fr): {k: round(float(np.nanmean([f["learning_curve"][name][str(fr)][k]
                                                           for f in folds.values()])), 4)
                               for k in ("f1", "pr_auc", "roc_auc")} for fr in fractions}
    return out


def render_markdown(results: dict) -> str:
    p = results["provenance"]
    folds = results["folds"]
    lines = [
        "# Anomaly detection, leave-one-day-out",
        "",
        f"Command: `{p['command']}`  ",
        f"git {p['git_sha'][:12]}{' (dirty)' if p.get('git_dirty') else ''}, {results['n_faults']} faults, "
        f"{results['n_bins']} bins of 30 s, label rule: anomalous from the injection bin for {EFFECT_MINUTES:g} min "
        f"({EFFECT_BINS} bins); wall time {results['wall_s']:.0f} s",
        "",
        "## Fold mean (± std over the 4 folds)",
        "",
        "| detector | F1 | PR-AUC | ROC-AUC | delay (bins) | faults detected | false alarms / h | onset MAE (bins) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["summary"].items():
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" if k not in ("delay_bins", "false_alarms_per_hour",
                                                                         "onset_mae")
                 else f"{s[k]['mean']:.2f}" for k in KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = [results["per_fold"][f]["reference"] for f in folds]
    lines.append(f"| *reference: always alarm; onset = window middle* | "
                 f"{np.mean([r['always_alarm_f1'] for r in ref]):.3f} | "
                 f"{np.mean([r['positive_share'] for r in ref]):.3f} | 0.500 | 0 | 1.000 | 0 | "
                 f"{np.mean([r['onset_middle_mae'] for r in ref]):.2f} |")
    lines += ["", "## Per fold (test day): F1 / PR-AUC / ROC-AUC / delay / false alarms per h / onset MAE", "",
              "| detector | " + " | ".join(folds) + " |", "|---|" + "---|" * len(folds)]
    for name in results["summary"]:
        cells = []
        for fold in folds:
            m = results["per_fold"][fold]["detectors"][name]
            cells.append(f"{m['f1']:.2f} / {m['pr_auc']:.2f} / {m['roc_auc']:.2f} / {m['delay_bins']:.1f} / "
                         f"{m['false_alarms_per_hour']:.1f} / {m['onset_mae']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| *reference: always alarm / window middle* | " + " | ".join(
        f"{r['always_alarm_f1']:.2f} / {r['positive_share']:.2f} / 0.50 / 0 / 0 / {r['onset_middle_mae']:.1f}"
        for r in ref) + " |")
    lines += ["", "## Onset estimator chosen on the training days (RCA windows of 24 bins, as lodocv)", "",
              "| test day | chosen | threshold | train MAE | test MAE | test median | CUSUM test MAE | candidates "
              "(train MAE) |", "|---|---|---|---|---|---|---|---|"]
    for fold in folds:
        o = results["per_fold"][fold]["onset_estimator"]
        thr = "–" if o["threshold"] is None else f"{o['threshold']:.3f}"
        cands = ", ".join(f"{k} {v:.2f}" for k, v in o["candidates"].items())
        lines.append(f"| {fold} | {o['name']} | {thr} | {o['train_mean_abs_error']:.2f} | {o['test_mae']:.2f} | "
                     f"{o['test_median_abs']:.1f} | {o['cusum_test_mae']:.2f} | {cands} |")
    if results["learning_curve"]:
        fr = sorted({k for v in results["learning_curve"].values() for k in v}, key=float)
        lines += ["", "## Learning curve (fold mean PR-AUC / F1; share of the training days' labelled 10-min windows)",
                  "", "| detector | " + " | ".join(f"{float(f):.0%}" for f in fr) + " |", "|---|" + "---|" * len(fr)]
        for name, curve in results["learning_curve"].items():
            lines.append(f"| {name} | " + " | ".join(f"{curve[f]['pr_auc']:.3f} / {curve[f]['f1']:.3f}"
                                                     if f in curve else "–" for f in fr) + " |")
        lines += ["", f"0 % is the untrained prior (zero-shot robust z, fixed threshold {DEFAULT_THRESHOLD}); "
                  "other fractions choose their threshold on the labelled bins they were given."]
    lines += ["", "Plots: `learning_curve.png`, `pr_curves.png`.", ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    folds = results["folds"]
    fig, axes = plt.subplots(1, len(folds), figsize=(4 * len(folds), 3.8), squeeze=False)
    for ax, fold in zip(axes[0], folds, strict=True):
        fold_res = results["per_fold"][fold]
        for name, curve in fold_res["pr_curves"].items():
            ax.plot(curve["recall"], curve["precision"],
                    label=f"{name} ({fold_res['detectors'][name]['pr_auc']:.2f})")
        ax.axhline(fold_res["detectors"][next(iter(fold_res["detectors"]))]["positive_share"], color="grey", ls=":")
        ax.set_title(fold)
        ax.set_xlabel("recall")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("precision")
    fig.suptitle("PR curves per held-out day (PR-AUC in brackets; dotted: positive share)")
    fig.tight_layout()
    paths.append(out / "pr_curves.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    if results["learning_curve"]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for name, curve in results["learning_curve"].items():
            fr = sorted(curve, key=float)
            for ax, key in zip(axes, ("pr_auc", "f1"), strict=True):
                ax.plot([100 * float(f) for f in fr], [curve[f][key] for f in fr], marker="o", label=name)
        for ax, key in zip(axes, ("PR-AUC", "F1"), strict=True):
            ax.set_xlabel("% of training days' labelled windows")
            ax.set_ylabel(f"{key} (fold mean)")
            ax.legend(fontsize=8)
        fig.suptitle("Learning curve of the trained detectors (0 % = zero-shot prior)")
        fig.tight_layout()
        paths.append(out / "learning_curve.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_outputs(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "results.json").write_text(json.dumps(results, indent=1))
    (tmp / "report.md").write_text(render_markdown(results))
    plot(results, tmp)
    replace_directory(tmp, out)


# -- CLI -------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.detect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/detect"), help="output directory")
    parser.add_argument("--detectors", help=f"comma-separated subset of {','.join(ALL_DETECTORS)} (default: all)")
    parser.add_argument("--folds", help="comma-separated test days YYYY-MM-DD (default: all four)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: two folds, learning curve at 0/25/100 %%, no inner threshold fits")
    parser.add_argument("--whole-day", action="store_true",
                        help="score every bin of each day, not only the experiment period")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--datasets", type=Path, help="directory holding the archives (default ../shared/datasets)")
    parser.add_argument("--ship-onset", action="store_true",
                        help="only choose the onset estimator on all four days (what the operator ships) and print it")
    args = parser.parse_args(argv)
    command = "python -m offline.detect " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                               else sys.argv[1:]))
    detectors = list(ALL_DETECTORS) if not args.detectors else [d.strip() for d in args.detectors.split(",")]
    unknown = sorted(set(detectors) - set(ALL_DETECTORS))
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; choose from {', '.join(ALL_DETECTORS)}")
    if any(d in TORCH_DETECTORS for d in detectors):
        import torch

        torch.set_num_threads(1)
    started = time.perf_counter()
    root = ensure_extracted("nezha", args.datasets)
    streams, faults = {}, {}
    for day in DAYS:
        streams[day.day], faults[day.day] = load_day(root, day, args.whole_day)
    if args.ship_onset:  # every day is a training day for what ships: the same rule as each fold's choice
        chosen = select_onset_estimator([w for d in streams for w in rca_windows(streams[d], faults[d])])
        print(json.dumps({**chosen.describe(), "setting": chosen.setting()}))
        return 0
    all_days = list(streams)
    folds = all_days if not args.folds else [d.strip() for d in args.folds.split(",")]
    if sorted(set(folds) - set(all_days)):
        raise DataError(f"unknown fold(s) {sorted(set(folds) - set(all_days))}; the folds are {', '.join(all_days)}")
    if args.quick and not args.folds:
        folds = [all_days[0], all_days[2]]
    fractions = (0.0, 0.25, 1.0) if args.quick else FRACTIONS
    n_trained = sum(make_detector(d).needs_training for d in detectors)
    total = len(folds) * (len(detectors) + n_trained * (len(fractions) - 1) + 1)
    from tqdm import tqdm

    per_fold = {}
    with tqdm(total=total, desc="detect", unit="step", disable=args.no_progress) as bar:
        for fold in folds:
            per_fold[fold] = run_fold(fold, streams, faults, detectors, fractions, args.seed, not args.quick,
                                      lambda: bar.update())
    results = {
        "folds": folds,
        "detectors": detectors,
        "label_rule": {"effect_minutes": EFFECT_MINUTES, "effect_bins": EFFECT_BINS, "bin_seconds": BIN_SECONDS,
                       "rule": "bin b anomalous iff some injection bin i has i <= b < i + effect_bins"},
        "n_faults": sum(len(v) for v in faults.values()),
        "n_bins": sum(s.n_bins for s in streams.values()),
        "span": "whole day" if args.whole_day else f"first sample to {TAIL_MINUTES} min after the last injection",
        "streams": {d: {"start": rfc3339(s.start), "n_bins": s.n_bins, "pods": int(s.values.shape[1]),
                        "anomalous_bins": int(s.labels.sum()),
                        "end": rfc3339(s.start + timedelta(seconds=BIN_SECONDS * s.n_bins))}
                    for d, s in streams.items()},
        "zero_shot": [d for d in detectors if d in ZERO_SHOT],
        "summary": summarise(per_fold, detectors),
        "learning_curve": learning_summary(per_fold),
        "per_fold": per_fold,
        "provenance": {
            **provenance(("numpy", "pandas", "scikit-learn", "scipy", "torch")),
            "archives_sha256": {"nezha.tar.xz": ARCHIVES["nezha"].sha256},
            "command": command,
            "seed": args.seed,
            "cpu_count": os.cpu_count(),
        },
    }
    results["wall_s"] = round(time.perf_counter() - started, 1)
    write_outputs(args.out, results)
    print(render_markdown(results))
    print(f"wall time {results['wall_s']:.0f} s; report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
