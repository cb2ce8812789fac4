"""How cases are split and shown to rankers in cross-validation.

- `fold_key`: the fold a Nezha case belongs to under a protocol: its day (`day`: leave one day out) or its app
  (`app`: leave one app out, what a user with an unseen system gets). The day is the date of the case's onset,
  never read from its label.
- unknown-onset windows: UNKNOWN_ONSET_BINS bins with the fault at a random position and no onset given; the
  estimated-onset variant sets the onset by an estimator chosen on the training days' windows.
- `rank_cases`: one prediction row per case, the ranker only ever seeing `scenario.without_label()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import numpy as np

from lemzha.detect import OnsetEstimator, select_onset_estimator
from lemzha.ranking import Ranker
from lemzha.scenario import Scenario

PROTOCOLS = ("day", "app")
UNKNOWN_ONSET_BINS = 60  # a 30 min window with the fault somewhere in its middle two thirds, onset not given


def day_of(scenario: Scenario) -> str:
    """The date (UTC) of the scenario's onset, or of its middle bin without one."""
    moment = scenario.onset or scenario.start + timedelta(seconds=scenario.bin_seconds * scenario.n_bins / 2)
    return moment.date().isoformat()


def fold_key(scenario: Scenario, protocol: str) -> str:
    if protocol == "day":
        return day_of(scenario)
    if protocol == "app":
        return scenario.app
    raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def split(scenarios: list[Scenario], fold: str, protocol: str, use_lemma: bool = True
          ) -> tuple[list[Scenario], list[Scenario]]:
    """(train, test) for one fold: test is the fold's Nezha cases; train the other Nezha cases plus, with
    `use_lemma`, the LEMMA incidents (a third system, in every fold's training)."""
    nezha = [s for s in scenarios if s.dataset == "nezha"]
    test = [s for s in nezha if fold_key(s, protocol) == fold]
    train = [s for s in nezha if fold_key(s, protocol) != fold]
    if use_lemma:
        train += [s for s in scenarios if s.dataset == "lemma"]
    return train, test


def unknown_onset_window(scenario: Scenario, seed: int) -> Scenario:
    """A window of UNKNOWN_ONSET_BINS with the fault at a random position, and no onset given (reads the label to
    place the window, as an evaluation must; the ranker gets the window without it)."""
    start, length = unknown_onset_span(scenario.id, scenario.label.fault_bin, scenario.n_bins, seed)
    return scenario.window(start, length).with_onset(None)


def unknown_onset_span(case_id: str, fault_bin: int, n_bins: int, seed: int) -> tuple[int, int]:
    """(first bin, length) of a case's unknown-onset window inside its n_bins scenario with the fault at fault_bin:
    the one placement both lodocv and offline.detect use."""
    rng = np.random.default_rng([seed, sum(map(ord, case_id))])
    length = min(UNKNOWN_ONSET_BINS, n_bins)
    fault_pos = int(rng.integers(length // 6, length - length // 6))
    return int(np.clip(fault_bin - fault_pos, 0, n_bins - length)), length


_ESTIMATORS: dict[tuple, OnsetEstimator] = {}


def fold_onset_estimator(train: list[Scenario], seed: int = 0) -> OnsetEstimator:
    """The onset estimator chosen on the training Nezha cases' unknown-onset windows (their labels are read here,
    and only here). Choosing scores every detector on every window (tens of seconds), so a choice is remembered per
    training set and seed."""
    key = (tuple(sorted(s.id for s in train)), seed)
    if key not in _ESTIMATORS:
        windows = [unknown_onset_window(s, seed) for s in train if s.dataset == "nezha"]
        _ESTIMATORS[key] = select_onset_estimator([(w.values, w.label.fault_bin) for w in windows])
    return _ESTIMATORS[key]


def estimated_onset_window(scenario: Scenario, seed: int, estimator: OnsetEstimator) -> Scenario:
    """The unknown-onset window with the onset the estimator reads from its metric values alone."""
    window = unknown_onset_window(scenario, seed)
    onset = estimator(window.without_label().values)
    return window.with_onset(window.start + timedelta(seconds=onset * window.bin_seconds))


def rank_cases(ranker: Ranker, cases: list[Scenario], fold: str, seed: int | None, name: str,
               transform: Callable[[Scenario], Scenario] | None = None) -> list[dict]:
    """One prediction row per case: the rank of the true cause, the top 5, the time taken."""
    rows = []
    for case in cases:
        shown = transform(case) if transform else case
        t0 = time.perf_counter()
        ranking = ranker.rank(shown.without_label())
        ms = (time.perf_counter() - t0) * 1000
        rows.append(case_row(case, fold, seed, name, ranking.rank_of(case.label.root_cause_service),
                             list(ranking.top(5)), ms))
    return rows


def case_row(case: Scenario, fold: str, seed: int | None, name: str, rank: int | None, top5: list[str],
             ms: float) -> dict:
    return {"case": case.id, "fold": fold, "app": case.app, "fault_type": case.label.fault_type,
            "contaminated": case.label.contaminated, "n_services": len(case.services), "ranker": name,
            "seed": seed, "rank": rank, "top5": top5, "ms": round(ms, 2)}


def random_rows(cases: list[Scenario], fold: str) -> list[dict]:
    """The analytic random ranking's rows (`offline.eval.report` turns them into expected metrics)."""
    return [case_row(c, fold, None, "random", None, [], 0.0) for c in cases]
