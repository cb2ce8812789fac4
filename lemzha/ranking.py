"""The one ranker contract: `fit(train_scenarios)` then `rank(scenario) -> Ranking`.

Rankers receive scenarios without labels (evaluation calls `without_label()` for them), and ties are broken by
service name so that every ranking is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from lemzha.scenario import Scenario


@dataclass(frozen=True)
class Ranking:
    """Services from most to least likely root cause, with their scores (for the model, probabilities, plus the
    call-gap trace term when a bundle carries a gap weight: `lemzha.fusion`)."""

    services: tuple[str, ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.services) != len(self.scores):
            raise ValueError("services and scores differ in length")
        if len(set(self.services)) != len(self.services):
            raise ValueError("a service appears twice in a ranking")

    @classmethod
    def from_scores(cls, scores: Mapping[str, float]) -> Ranking:
        """Order by score descending, then service name; NaN scores rank last."""
        def key(item: tuple[str, float]) -> tuple[float, str]:
            value = item[1]
            return (np.inf if value != value else -value, item[0])

        ordered = sorted(scores.items(), key=key)
        return cls(tuple(s for s, _ in ordered), tuple(float(v) for _, v in ordered))

    def rank_of(self, service: str) -> int:
        """1-based rank; a service not ranked counts as one past the end."""
        try:
            return self.services.index(service) + 1
        except ValueError:
            return len(self.services) + 1

    def top(self, k: int) -> tuple[str, ...]:
        return self.services[:k]


@runtime_checkable
class Ranker(Protocol):
    name: str

    def fit(self, train: Sequence[Scenario]) -> None: ...

    def rank(self, scenario: Scenario) -> Ranking: ...
