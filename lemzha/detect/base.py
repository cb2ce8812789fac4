"""The detector contract, the label rule, calibration and the onset rule. No torch, no scikit-learn here.

A detector scores every 30 s bin of a (T, P, M) metric array (NaN = no sample) with an anomaly score in (0, 1]:

- `fit(train)` takes a `DetectionData` (streams, per-bin labels and which bins may be used for training) or None;
  zero-shot detectors ignore it. Anything a detector learns, its calibration included, comes from `train` only.
- `score(values)` returns (T,) scores in (0, 1]. A bin without any real sample carries the state of the bins
  before it (the detector has seen nothing new), nothing is imputed into the metrics.
- `onset(scores, threshold)` is the first bin at or after the warm-up whose score reaches the threshold.

A foundation model (e.g. MOMENT) plugs in as one more class with these three methods: `score` would embed or
reconstruct each series over a trailing context and map the reconstruction error through `EcdfCalibrator` fitted
on training bins. See lemzha/detect/README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import numpy as np

from lemzha.binning import BIN_SECONDS

EPS = 1e-4  # the smallest score: scores live in (0, 1]
EFFECT_MINUTES = 5.0
EFFECT_BINS = int(EFFECT_MINUTES * 60 // BIN_SECONDS)  # 10 bins of 30 s
WARMUP_BINS = 4  # bins a trailing reference needs (two real 60 s samples) before a score means anything


# -- labels ----------------------------------------------------------------------------------------------------------
def label_bins(n_bins: int, injection_bins: Sequence[int], effect_bins: int = EFFECT_BINS) -> np.ndarray:
    """(n_bins,) bool: bin b is anomalous iff some injection bin i has i <= b < i + effect_bins.

    The injection bin is the bin holding the injection time. Overlapping effects merge; injections outside
    [0, n_bins) still mark the bins of their effect that fall inside.
    """
    labels = np.zeros(n_bins, dtype=bool)
    for i in injection_bins:
        lo, hi = max(0, int(i)), min(n_bins, int(i) + effect_bins)
        if lo < hi:
            labels[lo:hi] = True
    return labels


# -- data ------------------------------------------------------------------------------------------------------------
@dataclass
class Stream:
    """One continuous metric stream: values (T, P, M) with NaN for missing, and what is known about it."""

    name: str  # e.g. the day, "2022-08-22"
    start: datetime  # start of bin 0
    values: np.ndarray
    labels: np.ndarray | None = None  # (T,) bool, None when unlabelled
    usable: np.ndarray | None = None  # (T,) bool: bins a detector may train on (learning-curve subsets); None = all
    injection_bins: tuple[int, ...] = ()
    app: str = ""

    @property
    def n_bins(self) -> int:
        return int(self.values.shape[0])

    def train_mask(self) -> np.ndarray:
        return np.ones(self.n_bins, dtype=bool) if self.usable is None else np.asarray(self.usable, dtype=bool)


@dataclass
class DetectionData:
    """What `fit` receives: training streams only."""

    streams: list[Stream] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.streams]


@runtime_checkable
class Detector(Protocol):
    name: str
    needs_training: bool

    def fit(self, train: DetectionData | None) -> Detector: ...

    def score(self, values: np.ndarray) -> np.ndarray: ...

    def onset(self, scores: np.ndarray, threshold: float) -> int | None: ...


# -- calibration -----------------------------------------------------------------------------------------------------
def fixed_calibration(statistic: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A fixed monotone map of a non-negative statistic onto (0, 1]: 1 - (1 - EPS) * exp(-s / scale)."""
    s = np.nan_to_num(np.asarray(statistic, dtype=np.float64), nan=0.0, posinf=1e6)
    return 1.0 - (1.0 - EPS) * np.exp(-np.maximum(s, 0.0) / scale)


def clip_scores(p: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=EPS), EPS, 1.0)


class EcdfCalibrator:
    """Raw anomaly statistic -> (0, 1] by the empirical CDF of the statistic on training bins (fitted on train)."""

    def __init__(self) -> None:
        self.reference: np.ndarray | None = None

    def fit(self, raw: np.ndarray) -> EcdfCalibrator:
        raw = np.asarray(raw, dtype=np.float64)
        raw = raw[np.isfinite(raw)]
        if raw.size == 0:
            raise ValueError("EcdfCalibrator needs at least one finite training score")
        self.reference = np.sort(raw)
        return self

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.reference is None:
            raise RuntimeError("EcdfCalibrator used before fit")
        raw = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=-np.inf)
        n = len(self.reference)
        # (rank + 1) / (n + 1): a score above every training score gets 1; ties and interpolation keep it monotone
        return (np.searchsorted(self.reference, raw, side="right") + 1.0) / (n + 1.0)


# -- onset -------------------------------------------------------------------------------------------------------------
def first_crossing(scores: np.ndarray, threshold: float, warmup: int = WARMUP_BINS) -> int | None:
    """The first bin >= warmup with score >= threshold, or None."""
    scores = np.asarray(scores)
    hits = np.flatnonzero(scores[warmup:] >= threshold)
    return int(hits[0] + warmup) if hits.size else None


class OnsetMixin:
    """The shared onset rule (first crossing after the warm-up)."""

    warmup: int = WARMUP_BINS

    def onset(self, scores: np.ndarray, threshold: float) -> int | None:
        return first_crossing(scores, threshold, self.warmup)


def carry_forward(scores: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Bins with no real sample (observed False) take the previous observed bin's score (EPS before any)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    idx = np.where(observed, np.arange(len(scores)), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, scores[np.maximum(idx, 0)], EPS)
    return out


def observed_bins(values: np.ndarray) -> np.ndarray:
    """(T,) bool: the bin holds at least one real sample."""
    values = np.asarray(values)
    return ~np.isnan(values.reshape(values.shape[0], -1)).all(axis=1)
