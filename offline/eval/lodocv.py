"""`python -m offline.lodocv`: cross-validation of the shipped ranker and every baseline, in one run.

Protocols (`--protocol`, default both): `day` holds out one Nezha day at a time (leave-one-day-out); `app` holds out
one app (leave-one-app-out: trained on OnlineBoutique, tested on TrainTicket, and back), which is what a user with
an unseen system gets. LEMMA's four incidents are in every fold's training data.

Per fold, everything is fitted on the training cases only:
- the shipped ranker, `evidence` (`lemzha.rankers.EvidenceRanker`), with its configuration picked on inner validation
  over the training days (`offline.train.evidence_cv`), plus its unknown-onset, same-window and renamed-services
  variants;
- the baselines: every `lemzha.baselines.BASELINES` ranker, the faithful `simplerca`, and the analytic random
  ranking, each also on the unknown-onset windows (a 30 min window, the fault somewhere in it, no onset given);
- with `--with-model`, the neural model of earlier rounds (`offline.train.model_cv`), trained per seed (minutes per
  fold).

Rankers only ever receive `scenario.without_label()`. Outputs: results.json (`protocols.<p>.rankers.<name>` with the
same blocks for every ranker, `shipped` naming the bundle's ranker), predictions.jsonl, timing.json, report.md and
plots, written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lemzha.baselines import BASELINES
from lemzha.fsutil import replace_directory
from lemzha.rankers import SimpleRCA
from offline.cli import run_cli
from offline.data.cli import add_data_arguments, prepared_from_args
from offline.data.store import ARCHIVES
from offline.errors import DataError
from offline.eval import report
from offline.provenance import provenance
from offline.train.evidence_cv import SHIPPED, evidence_fold, tables_of
from offline.train.folds import PROTOCOLS, fold_key, random_rows, rank_cases, split, unknown_onset_window

TARGETS = {"acc1": 0.95, "acc3": 0.98, "per_app_acc1": 0.93, "per_fault_type_acc1": 0.85, "loao_acc1": 0.85,
           "unknown_onset_gap": 0.05, "coverage_gap": 0.10, "ms_per_case": 20.0, "total_minutes": 10.0}


def baseline_rows(train, test, fold: str, seeds: list[int]) -> list[dict]:
    rows = []
    for baseline in [cls() for cls in BASELINES] + [SimpleRCA()]:
        baseline.fit(train)
        rows += rank_cases(baseline, test, fold, None, baseline.name)
        for seed in seeds:  # without an onset each baseline falls back on its CUSUM estimate
            rows += rank_cases(baseline, test, fold, seed, f"unknown_onset:{baseline.name}",
                               transform=lambda s, seed=seed: unknown_onset_window(s, seed))
    return rows + random_rows(test, fold)


def parse_protocols(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    bad = sorted(set(chosen) - set(PROTOCOLS))
    if bad or not chosen:
        raise DataError(f"unknown protocol {','.join(bad) or text!r}; choose from {', '.join(PROTOCOLS)} "
                        "(comma-separated for several)")
    return list(dict.fromkeys(chosen))


def run_protocol(protocol: str, scenarios, tables, folds_wanted: list[str] | None, seeds: list[int],
                 use_lemma: bool, model_job=None, workers: int = 1) -> tuple[list[dict], dict]:
    nezha = [s for s in scenarios if s.dataset == "nezha"]
    folds = sorted({fold_key(s, protocol) for s in nezha})
    if folds_wanted:
        unknown = sorted(set(folds_wanted) - set(folds))
        if unknown:
            raise DataError(f"unknown fold(s) {unknown} for protocol {protocol}; the folds are {', '.join(folds)}")
        folds = [f for f in folds if f in folds_wanted]
    rows: list[dict] = []
    inner: dict[str, dict] = {}
    for fold in tqdm(folds, desc=f"lodocv {protocol}", unit="fold"):
        train, test = split(scenarios, fold, protocol, use_lemma)
        if not test:
            raise DataError(f"fold {fold} has no cases")
        fold_rows, inner[fold] = evidence_fold(train, test, fold, tables, seeds)
        rows += fold_rows + baseline_rows(train, test, fold, seeds)
    if model_job is not None:
        from offline.train.model_cv import run_folds

        model_job.protocol = protocol
        model_rows, model_inner = run_folds(model_job, folds, workers)
        rows += model_rows
        for fold, info in model_inner.items():
            inner[fold]["model"] = info
    return rows, inner


def summarise(rows: list[dict], inner: dict, protocol: str) -> dict:
    by_ranker: dict[str, list[dict]] = {}
    for row in rows:
        by_ranker.setdefault(row["ranker"], []).append(row)
    rankers = {name: report.summarise_ranker(group) for name, group in by_ranker.items()}
    baselines = [n for n in by_ranker if report.group_of(n) == "baseline"]
    return {
        "protocol": protocol,
        "folds": sorted({r["fold"] for r in rows}),
        "n_cases": len({r["case"] for r in rows}),
        "rankers": rankers,
        "significance": {n: report.significance(by_ranker[SHIPPED], by_ranker[n]) for n in baselines},
        "inner_validation": inner,
        "ms_per_case": {n: round(float(np.mean([r["ms"] for r in rs])), 2) for n, rs in by_ranker.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.lodocv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/lodocv"), help="output directory")
    parser.add_argument("--protocol", default="day,app",
                        help="day (leave one day out), app (leave one app out), or both, comma-separated (default)")
    parser.add_argument("--folds", help="comma-separated folds to run (days YYYY-MM-DD, or apps)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds of the random unknown-onset windows (and of the model) (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 seed (and at most 3 model epochs): a smoke test")
    parser.add_argument("--no-lemma", action="store_true", help="train on Nezha only")
    parser.add_argument("--with-model", action="store_true",
                        help="also cross-validate the neural model of earlier rounds (tens of minutes)")
    parser.add_argument("--model-variants", help="with --with-model: comma-separated model ablations, e.g. "
                                                 "no_logs,neutral_names,traces")
    parser.add_argument("--params", type=Path, help="with --with-model: hyper-parameter JSON or per-fold directory")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="with --with-model: folds trained in parallel processes")
    args = parser.parse_args(argv)
    protocols = parse_protocols(args.protocol)
    seeds = list(range(1 if args.quick else args.seeds))
    if not seeds:
        raise DataError("--seeds must be at least 1")
    if args.with_model and args.params is not None and not args.params.is_dir():
        from offline.train.params import load_params

        load_params(args.params)  # a bad file is refused before any data is read
    command = "python -m offline.lodocv " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    started = time.perf_counter()
    timing: dict[str, float] = {}

    t0 = time.perf_counter()
    prepared = prepared_from_args(args)
    scenarios = [s for s in prepared.load_all() if s.dataset == "nezha" or not args.no_lemma]
    if not any(s.dataset == "nezha" for s in scenarios):
        raise DataError("no Nezha cases were prepared")
    timing["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tables, table_ms = tables_of(scenarios, progress=True)
    timing["signals_s"] = time.perf_counter() - t0
    model_job = None
    if args.with_model:
        from offline.train.model_cv import model_job_from_args

        model_job = model_job_from_args(args, prepared, scenarios, seeds)
    folds_wanted = [f.strip() for f in args.folds.split(",")] if args.folds else None

    results: dict = {"shipped": SHIPPED, "seeds": seeds, "targets": TARGETS, "protocols": {}}
    all_rows: list[dict] = []
    for protocol in protocols:
        t0 = time.perf_counter()
        rows, inner = run_protocol(protocol, scenarios, tables, folds_wanted, seeds, not args.no_lemma, model_job,
                                   max(1, args.workers))
        for row in rows:
            if row["ranker"] == SHIPPED:
                row["ms"] = table_ms[row["case"]]
        results["protocols"][protocol] = summarise(rows, inner, protocol)
        all_rows += [{**r, "protocol": protocol} for r in rows]
        timing[f"{protocol}_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - started
    results["timing"] = {k: round(v, 2) for k, v in timing.items()}
    results["target_check"] = report.check_targets(results)
    results["provenance"] = {**provenance(("numpy", "pandas", "pyarrow", "scipy")), "command": command,
                             "archives_sha256": {a.filename: a.sha256 for a in ARCHIVES.values()},
                             "cpu_count": os.cpu_count()}
    write_outputs(args.out, results, all_rows, timing)
    report.print_summary(results, args.out)
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


if __name__ == "__main__":
    sys.exit(run_cli(main))
