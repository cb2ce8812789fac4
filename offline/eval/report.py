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

from lemzha.baselines import BASELINES, random_ranking_metrics
from offline.eval.scoring import METRIC_KEYS, case_metrics, paired_bootstrap

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


# -- groups and targets ----------------------------------------------------------------------------------------------
BASELINE_NAMES = (*(cls.name for cls in BASELINES), "simplerca", "random")
VARIANT_PREFIXES = ("unknown_onset:", "estimated_onset:", "window_onset:", "neutral_names:", "coverage:")


def group_of(name: str) -> str:
    """shipped | baseline | variant | candidate | model: how the report orders and labels a ranker."""
    if name == "evidence":
        return "shipped"
    if name in BASELINE_NAMES:
        return "baseline"
    if name.startswith(VARIANT_PREFIXES):
        return "variant"
    if name.startswith("candidate:"):
        return "candidate"
    if name.startswith("model"):
        return "model"
    return "other"


GROUP_ORDER = ("shipped", "baseline", "variant", "model", "candidate", "other")


def ordered(rankers: dict) -> list[str]:
    """The shipped ranker first, then baselines, variants, the model, candidates; by name within a group."""
    return sorted(rankers, key=lambda n: (GROUP_ORDER.index(group_of(n)), n))


def check_targets(results: dict) -> list[dict]:
    """Each target of `results["targets"]` against the shipped ranker: {target, value, goal, met}."""
    shipped, goals, out = results["shipped"], results["targets"], []

    def add(target: str, value: float | None, goal: float, higher: bool = True) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        out.append({"target": target, "value": None if value is None else round(float(value), 4), "goal": goal,
                    "met": met})

    day = results["protocols"].get("day")
    if day is not None and shipped in day["rankers"]:
        summary = day["rankers"][shipped]
        add("pooled Acc@1", summary["pooled"]["acc1"]["mean"], goals["acc1"])
        add("pooled Acc@3", summary["pooled"]["acc3"]["mean"], goals["acc3"])
        for app, block in summary["per_app"].items():
            add(f"Acc@1 {app}", block["acc1"]["mean"], goals["per_app_acc1"])
        for kind, block in summary["per_fault_type"].items():
            add(f"Acc@1 {kind}", block["acc1"]["mean"], goals["per_fault_type_acc1"])
        unknown = day["rankers"].get(f"unknown_onset:{shipped}")
        if unknown is not None:
            add("known - unknown onset Acc@1", summary["pooled"]["acc1"]["mean"] - unknown["pooled"]["acc1"]["mean"],
                goals["unknown_onset_gap"], higher=False)
        add("ms per case", day["ms_per_case"].get(shipped), goals["ms_per_case"], higher=False)
        cadvisor = day["rankers"].get(f"coverage:cadvisor:{shipped}")
        if cadvisor is not None:
            add("full - cAdvisor-only coverage Acc@1",
                summary["pooled"]["acc1"]["mean"] - cadvisor["pooled"]["acc1"]["mean"], goals["coverage_gap"],
                higher=False)
    app = results["protocols"].get("app")
    if app is not None and shipped in app["rankers"]:
        add("leave-one-app-out Acc@1", app["rankers"][shipped]["pooled"]["acc1"]["mean"], goals["loao_acc1"])
    add("total minutes", results["timing"]["total_s"] / 60, goals["total_minutes"], higher=False)
    return out


# -- rendering -------------------------------------------------------------------------------------------------------
def _fmt(metric: dict) -> str:
    text = f"{metric['mean']:.3f}"
    if metric["std"]:
        text += f" ± {metric['std']:.3f}"
    return text


def _sig_table(title: str, significance: dict) -> list[str]:
    lines = ["", title, "", "| baseline | ΔAcc@1 [CI] | beats | ΔMRR [CI] | beats |", "|---|---|---|---|---|"]
    for name, sig in significance.items():
        a, r = sig["acc1"], sig["mrr"]
        lines.append(f"| {name} | {a['mean_diff']:+.3f} [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] | {a['beats']} "
                     f"| {r['mean_diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['beats']} |")
    return lines


def _protocol_markdown(block: dict, shipped: str) -> list[str]:
    rankers = block["rankers"]
    names = [n for n in ordered(rankers) if group_of(n) != "candidate"]
    title = {"day": "Leave one day out", "app": "Leave one app out"}.get(block["protocol"], block["protocol"])
    lines = [f"## {title} ({block['n_cases']} Nezha cases, folds: {', '.join(block['folds'])})", "",
             "Mean ± std over seeds where a ranker has seeds; 95 % bootstrap CIs in results.json.", "",
             "| ranker | group | Acc@1 | Acc@3 | Acc@5 | Avg@5 | MRR | ms/case |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        m = rankers[name]["pooled"]
        label = f"**{name}**" if name == shipped else name
        lines.append(f"| {label} | {group_of(name)} | " + " | ".join(_fmt(m[k]) for k in METRIC_KEYS)
                     + f" | {block['ms_per_case'].get(name, 0):.1f} |")
    for section, heading in (("per_fold", "Per fold"), ("per_app", "Per app"), ("per_fault_type", "Per fault type"),
                             ("per_slice", "Windows with another fault in another service (contaminated) or not")):
        groups = sorted(rankers[shipped][section])
        lines += ["", f"### {heading}: Acc@1 / MRR", "", "| ranker | " + " | ".join(groups) + " |",
                  "|---|" + "---|" * len(groups)]
        for name in names:
            if group_of(name) == "variant" and section != "per_fault_type":
                continue
            cells = [f"{rankers[name][section][g]['acc1']['mean']:.3f} / {rankers[name][section][g]['mrr']['mean']:.3f}"
                     if g in rankers[name][section] else "–" for g in groups]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _sig_table(f"### Does `{shipped}` beat each baseline? (paired bootstrap over cases, {shipped} − baseline)",
                        block["significance"])
    lines += ["", "### Inner validation (configuration picked per fold; the test fold is never read)", "",
              "| test fold | inner days | picked | its inner MRR |", "|---|---|---|---|"]
    for fold, info in block["inner_validation"].items():
        mrr = info["mrr"].get(info["name"])
        lines.append(f"| {fold} | {', '.join(info['inner_days'])} | `{info['name']}` | "
                     f"{'–' if mrr is None else f'{mrr:.3f}'} |")
    candidates = [n for n in ordered(rankers) if group_of(n) == "candidate"]
    if candidates:
        lines += ["", "### Every candidate configuration on the test folds (for the record; never used to choose)", "",
                  "| configuration | Acc@1 | MRR |", "|---|---|---|"]
        for name in candidates:
            m = rankers[name]["pooled"]
            lines.append(f"| `{name.removeprefix('candidate:')}` | {_fmt(m['acc1'])} | {_fmt(m['mrr'])} |")
    return lines


def render_markdown(results: dict) -> str:
    p = results["provenance"]
    lines = ["# Cross-validation of the shipped ranker and the baselines", "",
             f"Command: `{p['command']}`  ", f"git {p['git_sha'][:12]}{' (dirty)' if p.get('git_dirty') else ''}, "
             f"{p['created']}, seeds {results['seeds']}, {results['timing']['total_s'] / 60:.1f} min", "",
             f"The shipped ranker is `{results['shipped']}` (`lemzha.rankers.EvidenceRanker`).", "",
             "## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in results["target_check"]:
        value = "–" if t["value"] is None else f"{t['value']:.3f}"
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {value} | {t['goal']:g} | {met} |")
    for block in results["protocols"].values():
        lines += ["", *_protocol_markdown(block, results["shipped"])]
    lines += ["", "Plots: `<protocol>_per_fold_acc1.png`, `<protocol>_per_fault_type_acc1.png`.", ""]
    return "\n".join(lines)


def print_summary(results: dict, out: Path) -> None:
    for protocol, block in results["protocols"].items():
        print(f"\n[{protocol}] {'ranker':<36}{'Acc@1':>8}{'Acc@3':>8}{'MRR':>8}")
        for name in ordered(block["rankers"]):
            if group_of(name) == "candidate":
                continue
            p = block["rankers"][name]["pooled"]
            print(f"      {name:<36}{p['acc1']['mean']:>8.3f}{p['acc3']['mean']:>8.3f}{p['mrr']['mean']:>8.3f}")
    print("\ntargets:")
    for t in results["target_check"]:
        value = "–" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  {t['target']:<36}{value:>8}  goal {t['goal']:g}  {'met' if t['met'] else 'MISSED'}")
    print(f"total {results['timing']['total_s']:.0f} s; report: {out / 'report.md'}")


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for protocol, block in results["protocols"].items():
        rankers = {n: block["rankers"][n] for n in ordered(block["rankers"]) if group_of(n) in ("shipped", "baseline")
                   or n in ("model", "model_gap_fused")}
        folds = block["folds"]
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / len(rankers)
        for i, (name, summary) in enumerate(rankers.items()):
            means = [summary["per_fold"][f]["acc1"]["mean"] if f in summary["per_fold"] else 0 for f in folds]
            ax.bar(np.arange(len(folds)) + i * width, means, width, label=name)
        ax.set_xticks(np.arange(len(folds)) + 0.4 - width / 2, folds)
        ax.set_ylabel("Acc@1")
        ax.set_ylim(0, 1)
        ax.set_title(f"Acc@1 per held-out fold ({protocol})")
        ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        path = out / f"{protocol}_per_fold_acc1.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        types = sorted(block["rankers"][results["shipped"]]["per_fault_type"])
        grid = np.array([[s["per_fault_type"].get(t, {}).get("acc1", {}).get("mean", np.nan) for t in types]
                         for s in rankers.values()])
        fig, ax = plt.subplots(figsize=(9, 0.4 * len(rankers) + 1.5))
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(types)), types, rotation=20)
        ax.set_yticks(range(len(rankers)), list(rankers))
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.5 else "black")
        fig.colorbar(image, label="Acc@1")
        ax.set_title(f"Acc@1 per fault type ({protocol})")
        fig.tight_layout()
        path = out / f"{protocol}_per_fault_type_acc1.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
