"""The evidence ranker (the shipped one) under cross-validation.

Per fold:
- inner validation over the training Nezha days: each is held out in turn, the ranker is calibrated on the rest
  (LEMMA included) and every configuration in `lemzha.rankers.CANDIDATES` is scored on the held-out day; the
  configuration with the best mean inner MRR wins (ties: the earlier one). The test fold is never read.
- the ranker is calibrated on all training scenarios and ranks the test cases with that configuration (`evidence`);
  the same calibration ranks unknown-onset windows (the ranker scans for the onset itself), the same windows with
  their onset given, the test cases with every service renamed (`neutral_names:evidence`, which must not differ),
  and the test cases as clusters with fewer exporters see them (`coverage:cadvisor:evidence`: cAdvisor only;
  `coverage:cadvisor_ksm_node:evidence`: no mesh and no traces; logs are kept).

Calibration reads no label; only the choice among candidates does, on training days.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from lemzha.calibration import fit_calibration
from lemzha.coverage import with_exporters
from lemzha.detect.onset import resolve_onset_bin
from lemzha.rankers import CANDIDATES, EvidenceConfig, EvidenceRanker, assess_table
from lemzha.ranking import Ranking
from lemzha.scenario import Scenario
from lemzha.signals import SignalTable, signal_table
from offline.data.renaming import neutral_names
from offline.train.folds import case_row, day_of, rank_cases, unknown_onset_window

SHIPPED = "evidence"
COVERAGE_PRESETS = ("cadvisor", "cadvisor_ksm_node")


def tables_of(scenarios: list[Scenario], progress: bool = False) -> tuple[dict[str, SignalTable], dict[str, float]]:
    """Each scenario's signal table at its own onset (label-free), computed once for every fold, and the
    milliseconds each took (the bulk of ranking a case: scoring a table under a calibration is ~0.1 ms)."""
    tables, ms = {}, {}
    for s in tqdm(scenarios, desc="signals", unit="scenario", disable=not progress):
        t0 = time.perf_counter()
        tables[s.id] = signal_table(s.without_label(), resolve_onset_bin(s))
        ms[s.id] = round((time.perf_counter() - t0) * 1000, 2)
    return tables, ms


def inner_select(train: list[Scenario], tables: dict[str, SignalTable],
                 candidates: tuple[EvidenceConfig, ...] = CANDIDATES) -> dict:
    """Pick the configuration with the best mean MRR over the training Nezha days, each held out in turn."""
    days = sorted({day_of(s) for s in train if s.dataset == "nezha"})
    if len(days) < 2:
        return {"inner_days": days, "config": candidates[0].to_json(), "name": candidates[0].name,
                "mrr": {}, "note": "fewer than two training days: the first candidate, unvalidated"}
    mrr = np.zeros((len(days), len(candidates)))
    for d, day in enumerate(days):
        held = [s for s in train if s.dataset == "nezha" and day_of(s) == day]
        rest = [s for s in train if s not in held]
        calibration = fit_calibration([tables[s.id] for s in rest])
        for c, config in enumerate(candidates):
            ranks = [assess_table(tables[s.id], calibration, config).ranking.rank_of(s.label.root_cause_service)
                     for s in held]
            mrr[d, c] = np.mean(1.0 / np.asarray(ranks))
    mean = mrr.mean(axis=0)
    best = int(np.flatnonzero(mean >= mean.max() - 1e-12)[0])
    return {"inner_days": days, "config": candidates[best].to_json(), "name": candidates[best].name,
            "mrr": {config.name: round(float(v), 4) for config, v in zip(candidates, mean, strict=True)},
            "mrr_per_day": {day: {config.name: round(float(v), 4) for config, v in zip(candidates, row, strict=True)}
                            for day, row in zip(days, mrr, strict=True)}}


def evidence_fold(train: list[Scenario], test: list[Scenario], fold: str, tables: dict[str, SignalTable],
                  seeds: list[int]) -> tuple[list[dict], dict]:
    """Prediction rows of the evidence ranker and its variants on one fold, and the inner-validation record."""
    inner = inner_select(train, tables)
    ranker = EvidenceRanker(EvidenceConfig.from_json(inner["config"]), name=SHIPPED)
    ranker.calibration = fit_calibration([tables[s.id] for s in train])
    rows = [_row(ranker, tables[s.id], s, fold, SHIPPED) for s in test]
    for config in CANDIDATES:  # every candidate on the test fold, for the report only (never used to choose)
        rows += [_row(EvidenceRanker(config, ranker.calibration), tables[s.id], s, fold, f"candidate:{config.name}")
                 for s in test]
    rows += rank_cases(ranker, [neutral_names(s) for s in test], fold, None, f"neutral_names:{SHIPPED}")
    for preset in COVERAGE_PRESETS:  # what a cluster with fewer exporters gets from the same bundle
        rows += rank_cases(ranker, test, fold, None, f"coverage:{preset}:{SHIPPED}",
                           transform=lambda s, preset=preset: with_exporters(s, preset))
    for seed in seeds:
        rows += rank_cases(ranker, test, fold, seed, f"unknown_onset:{SHIPPED}",
                           transform=lambda s, seed=seed: unknown_onset_window(s, seed))
        rows += rank_cases(ranker, test, fold, seed, f"window_onset:{SHIPPED}",
                           transform=lambda s, seed=seed: _window_with_onset(s, seed))
    return rows, inner


def _window_with_onset(scenario: Scenario, seed: int) -> Scenario:
    """The unknown-onset window with its true onset given: what the estimate would at best achieve."""
    window = unknown_onset_window(scenario, seed)
    return window.with_onset(scenario.onset)


def _row(ranker: EvidenceRanker, table: SignalTable, case: Scenario, fold: str, name: str) -> dict:
    ranking: Ranking = assess_table(table, ranker.calibration, ranker.config).ranking
    return case_row(case, fold, None, name, ranking.rank_of(case.label.root_cause_service), list(ranking.top(5)), 0.0)
