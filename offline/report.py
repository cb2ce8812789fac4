"""Turn per-case predictions into results.json, report.md and plots.

A prediction row is one (case, seed, ranker): the rank of the true cause among the case's services. Every
summary metric is `{"mean", "std", "ci95", "n"}`: mean and std over seeds (std 0 for deterministic rankers),
ci95 a percentile bootstrap over cases of the seed-averaged per-case values, n the number of cases.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lemzha.baselines import random_ranking_metrics
from lemzha.metrics import METRIC_KEYS, case_metrics, paired_bootstrap

N_BOOT = 2000


def per_case_values(row: dict) -> dict[str, float]:
    if row["ranker"] == "random":
        return random_ranking_metrics(row["n_services"])
    return case_metrics(row["rank"], row["n_services"])


def _bootstrap_ci(values: np.ndarray, strata: np.ndarray | None, seed: int = 0) -> list[float]:
    """95 % percentile CI of the mean (stratified resampling keeps each fold's size for fold means)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        idx = rng.integers(0, len(values), size=(N_BOOT, len(values)))
        means = values[idx].mean(axis=1)
    else:
        groups = [np.flatnonzero(strata == g) for g in np.unique(strata)]
        fold_means = [values[g][rng.integers(0, len(g), size=(N_BOOT, len(g)))].mean(axis=1) for g in groups]
        means = np.mean(fold_means, axis=0)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarise_rows(rows: list[dict], fold_mean: bool = False) -> dict[str, dict]:
    """rows of one ranker over a set of cases (all seeds)."""
    by_seed: dict = defaultdict(dict)
    for row in rows:
        by_seed[row["seed"]][row["case"]] = per_case_values(row)
    cases = sorted({row["case"] for row in rows})
    fold_of = {row["case"]: row["fold"] for row in rows}
    out = {}
    for key in METRIC_KEYS:
        table = np.array([[by_seed[seed][c][key] for c in cases] for seed in sorted(by_seed, key=str)])
        if fold_mean:
            folds = np.array([fold_of[c] for c in cases])
            per_seed = [np.mean([table[i, folds == f].mean() for f in np.unique(folds)]) for i in range(len(table))]
            ci = _bootstrap_ci(table.mean(axis=0), folds)
        else:
            per_seed = table.mean(axis=1)
            ci = _bootstrap_ci(table.mean(axis=0), None)
        out[key] = {
            "mean": round(float(np.mean(per_seed)), 4),
            "std": round(float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0, 4),
            "ci95": ci,
            "n": len(cases),
        }
    return out


def summarise_ranker(rows: list[dict]) -> dict:
    def grouped(field: str) -> dict:
        groups: dict = defaultdict(list)
        for row in rows:
            groups[row[field]].append(row)
        return {name: summarise_rows(group) for name, group in sorted(groups.items(), key=lambda kv: str(kv[0]))}

    slices = {
        "contaminated": [r for r in rows if r["contaminated"]],
        "clean": [r for r in rows if not r["contaminated"]],
    }
    return {
        "pooled": summarise_rows(rows),
        "fold_mean": summarise_rows(rows, fold_mean=True),
        "per_fold": grouped("fold"),
        "per_app": grouped("app"),
        "per_fault_type": grouped("fault_type"),
        "per_slice": {name: summarise_rows(group) for name, group in slices.items() if group},
    }


def seed_averaged(rows: Iterable[dict], key: str) -> dict[str, float]:
    values: dict = defaultdict(list)
    for row in rows:
        values[row["case"]].append(per_case_values(row)[key])
    return {case: float(np.mean(v)) for case, v in values.items()}


def significance(model_rows: list[dict], baseline_rows: list[dict]) -> dict:
    """Paired bootstrap over cases of (model - baseline) for Acc@1 and MRR; 'beats' needs the CI above 0."""
    out = {}
    for key in ("acc1", "mrr"):
        model, base = seed_averaged(model_rows, key), seed_averaged(baseline_rows, key)
        cases = sorted(set(model) & set(base))
        result = paired_bootstrap([model[c] for c in cases], [base[c] for c in cases])
        result["beats"] = bool(result["excludes_zero"] and result["mean_diff"] > 0)
        out[key] = result
    return out


# -- rendering -------------------------------------------------------------------------------------------------------
def _fmt(metric: dict) -> str:
    text = f"{metric['mean']:.3f}"
    if metric["std"]:
        text += f" ± {metric['std']:.3f}"
    return text


def render_markdown(results: dict) -> str:
    p = results["provenance"]
    lines = [
        "# Leave-one-day-out cross-validation",
        "",
        f"Command: `{p['command']}`  ",
        f"git {p['git_sha'][:12]}, params {p['params_hash']}, seeds {results['seeds']}, "
        f"{results['n_cases']} Nezha cases, epochs per fold (picked on inner validation): {results['epochs_per_fold']}",
        "",
        "## Pooled over all cases (mean ± std over seeds; CI in results.json)",
        "",
        "| ranker | Acc@1 | Acc@3 | Acc@5 | Avg@5 | MRR |",
        "|---|---|---|---|---|---|",
    ]
    rankers = {"model": results["model"], **results["baselines"], **results.get("trace_baselines", {}),
               **results["ablations"]}
    for name, summary in rankers.items():
        m = summary["pooled"]
        lines.append(f"| {name} | " + " | ".join(_fmt(m[k]) for k in METRIC_KEYS) + " |")
    lines += ["", "## Fold mean", "", "| ranker | Acc@1 | Acc@3 | MRR |", "|---|---|---|---|"]
    for name, summary in rankers.items():
        m = summary["fold_mean"]
        lines.append(f"| {name} | {_fmt(m['acc1'])} | {_fmt(m['acc3'])} | {_fmt(m['mrr'])} |")
    for section, title in (("per_fold", "Per fold (test day)"), ("per_app", "Per app"),
                           ("per_fault_type", "Per fault type"), ("per_slice", "Contaminated windows")):
        groups = sorted(results["model"][section])
        lines += ["", f"## {title}: Acc@1 / MRR", "", "| ranker | " + " | ".join(groups) + " |",
                  "|---|" + "---|" * len(groups)]
        for name, summary in rankers.items():
            cells = [f"{summary[section][g]['acc1']['mean']:.3f} / {summary[section][g]['mrr']['mean']:.3f}"
                     if g in summary[section] else "–" for g in groups]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Does the model beat each baseline? (paired bootstrap over cases, 95 % CI of model − baseline)",
              "", "| baseline | ΔAcc@1 [CI] | beats | ΔMRR [CI] | beats |", "|---|---|---|---|---|"]
    for name, sig in results["significance"].items():
        a, r = sig["acc1"], sig["mrr"]
        lines.append(f"| {name} | {a['mean_diff']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] | {a['beats']} "
                     f"| {r['mean_diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['beats']} |")
    if results.get("trace_significance"):
        lines += ["", "## Traces: variant − model (metrics + logs), paired bootstrap over cases", "",
                  "| variant | ΔAcc@1 [CI] | better | ΔMRR [CI] | better |", "|---|---|---|---|---|"]
        for name, sig in results["trace_significance"].items():
            a, r = sig["acc1"], sig["mrr"]
            lines.append(f"| {name} | {a['mean_diff']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] | "
                         f"{a['beats']} | {r['mean_diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | "
                         f"{r['beats']} |")
    if results.get("selected_significance"):
        lines += ["", "## Does the inner-selected ranker beat each baseline? (paired bootstrap, selected − baseline)",
                  "", "| baseline | ΔAcc@1 [CI] | beats | ΔMRR [CI] | beats |", "|---|---|---|---|---|"]
        for name, sig in results["selected_significance"].items():
            a, r = sig["acc1"], sig["mrr"]
            lines.append(f"| {name} | {a['mean_diff']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] | "
                         f"{a['beats']} | {r['mean_diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | "
                         f"{r['beats']} |")
    inner = results.get("inner_validation", {})
    if inner:
        lines += ["", "## Inner validation (model selection; test days never seen)", "",
                  "| test fold | inner days | epochs picked | inner MRR | inner MRR per variant (epochs) | selected |",
                  "|---|---|---|---|---|---|"]
        for fold, info in inner.items():
            variants = ", ".join(f"{v} {d['mrr']:.3f} ({d['epochs']}"
                                 + (f", gap weight {d['gap_weight']:g})" if "gap_weight" in d else ")")
                                 for v, d in info.get("variants", {}).items())
            lines.append(f"| {fold} | {', '.join(info['inner_days'])} | {info['epochs']} | {info['mrr']:.3f} | "
                         f"{variants} | {info.get('selected', 'model')} |")
    lines += ["", "Plots: `per_fold_acc1.png`, `per_fault_type_mrr.png`.", ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rankers = {"model": results["model"], **results["baselines"],
               **{n: results["ablations"][n] for n in ("gap_fused", "selected") if n in results.get("ablations", {})}}
    folds = sorted(results["model"]["per_fold"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(rankers)
    for i, (name, summary) in enumerate(rankers.items()):
        means = [summary["per_fold"][f]["acc1"]["mean"] for f in folds]
        stds = [summary["per_fold"][f]["acc1"]["std"] for f in folds]
        ax.bar(np.arange(len(folds)) + i * width, means, width, yerr=stds, label=name)
    ax.set_xticks(np.arange(len(folds)) + 0.4 - width / 2, folds)
    ax.set_ylabel("Acc@1")
    ax.set_ylim(0, 1)
    ax.set_title("Acc@1 per held-out day")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    bars = out / "per_fold_acc1.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)

    types = sorted(results["model"]["per_fault_type"])
    grid = np.array([[s["per_fault_type"].get(t, {}).get("mrr", {}).get("mean", np.nan) for t in types]
                     for s in rankers.values()])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(types)), types, rotation=20)
    ax.set_yticks(range(len(rankers)), list(rankers))
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.5 else "black")
    fig.colorbar(image, label="MRR")
    ax.set_title("MRR per fault type")
    fig.tight_layout()
    heat = out / "per_fault_type_mrr.png"
    fig.savefig(heat, dpi=110)
    plt.close(fig)
    return [bars, heat]
