"""A ranker's scores plus a weighted call-gap trace term (`lemzha.tracegap`), behind the ranker contract.

The model's scores are probabilities (they sum to 1) and the gap term is a log rise: on Nezha its largest value per
scenario has a median of 3.2 under a network delay and 1.0 otherwise (noise on sparse edges, and callers starved of
CPU). A weight of 0.3 lets a clear call-gap anomaly override the model; the rest overrides it only where the model
is unsure. The weight is chosen on inner validation (`offline.lodocv`), never on a test day.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lemzha.detect.onset import resolve_onset_bin
from lemzha.ranking import Ranker, Ranking
from lemzha.scenario import Scenario
from lemzha.tracegap import trace_gap_scores

GAP_WEIGHTS: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
"""The weights inner validation chooses from; 0 is the base ranker unchanged."""


def gap_term(scenario: Scenario) -> dict[str, float]:
    """The call-gap term of every service (onset: the scenario's, else estimated from its metrics)."""
    return trace_gap_scores(scenario, resolve_onset_bin(scenario))


def fuse(base: Ranking, gap: dict[str, float], weight: float) -> Ranking:
    """`base`'s scores + weight x `gap` (a service missing from `gap` adds 0)."""
    if weight == 0:
        return base
    return Ranking.from_scores({s: v + weight * gap.get(s, 0.0)
                                for s, v in zip(base.services, base.scores, strict=True)})


class GapFusion:
    """`base` fused with the call-gap term at a fixed weight."""

    def __init__(self, base: Ranker, weight: float, name: str = "gap_fused") -> None:
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"GapFusion weight must be finite and >= 0, got {weight!r}")
        self.base = base
        self.weight = float(weight)
        self.name = name

    def fit(self, train: Sequence[Scenario]) -> None:
        self.base.fit(train)

    def rank(self, scenario: Scenario) -> Ranking:
        base = self.base.rank(scenario)
        return fuse(base, gap_term(scenario), self.weight) if self.weight else base
