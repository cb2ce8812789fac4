"""Onset estimation for RCA windows, and choosing the estimator on training windows only.

An onset estimator maps a (T, P, M) window to the bin where the fault most likely began. Candidates:
- "cusum": `lemzha.baselines.estimate_onset_bin`'s single mean-shift statistic over the whole window;
- a zero-shot detector with a threshold: its first crossing after the warm-up, else its highest-scoring bin.
`select_onset_estimator` picks the candidate (and threshold) with the lowest mean |onset error| on labelled
training windows; nothing else is looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from lemzha.detect.base import WARMUP_BINS, Detector

THRESHOLD_QUANTILES = tuple(np.round(np.linspace(0.5, 0.99, 25), 3))


def _clip(b: int, n_bins: int) -> int:
    return int(np.clip(b, 1, max(1, n_bins - 1)))


def onset_from_scores(scores: np.ndarray, detector: Detector, threshold: float) -> int:
    """The detector's onset rule; with no crossing, the highest-scoring bin after the warm-up (earliest on ties)."""
    n = len(scores)
    b = detector.onset(scores, threshold)
    if b is None:
        warm = min(WARMUP_BINS, max(0, n - 1))
        b = warm + int(np.argmax(scores[warm:])) if n else 0
    return _clip(b, n)


def estimate_onset(scenario, detector: Detector, threshold: float) -> int:
    """Onset bin of a `lemzha.scenario.Scenario` window (or anything with `.values` (T, P, M)) from the metric
    values alone; clipped to [1, n_bins - 1] like `lemzha.baselines.resolve_onset_bin`."""
    return onset_from_scores(detector.score(scenario.values), detector, threshold)


def cusum_onset(values: np.ndarray) -> int:
    from lemzha.baselines import estimate_onset_bin

    return _clip(estimate_onset_bin(SimpleNamespace(values=values, n_bins=values.shape[0])), values.shape[0])


@dataclass
class OnsetEstimator:
    """A chosen estimator: `__call__(values) -> onset bin`. `detector` None means the CUSUM rule."""

    name: str
    detector: Detector | None = None
    threshold: float | None = None
    train_error: float = float("nan")
    candidates: dict = field(default_factory=dict)  # name -> mean training |error|, for the report

    def __call__(self, values: np.ndarray) -> int:
        if self.detector is None:
            return cusum_onset(values)
        return onset_from_scores(self.detector.score(values), self.detector, float(self.threshold))

    def describe(self) -> dict:
        return {"name": self.name, "threshold": self.threshold, "train_mean_abs_error": round(self.train_error, 3),
                "candidates": {k: round(v, 3) for k, v in self.candidates.items()}}

    def setting(self) -> str:
        """The estimator as one string, `cusum` or `<detector>:<threshold>` (LEMZHA_ONSET_ESTIMATOR)."""
        return "cusum" if self.detector is None else f"{self.name}:{float(self.threshold):.3f}"


def onset_estimator(setting: str) -> OnsetEstimator:
    """The estimator a setting names (`OnsetEstimator.setting()`); a bad one is a ValueError naming it."""
    name, _, threshold = setting.strip().partition(":")
    if name == "cusum" and not threshold:
        return OnsetEstimator("cusum")
    from lemzha.detect import ZERO_SHOT, make_detector

    if name not in ZERO_SHOT or not threshold:
        raise ValueError(f"onset estimator {setting!r}: use cusum or <{'|'.join(ZERO_SHOT)}>:<threshold in (0, 1]>")
    try:
        value = float(threshold)
    except ValueError:
        raise ValueError(f"onset estimator {setting!r}: threshold {threshold!r} is not a number") from None
    if not 0 < value <= 1:
        raise ValueError(f"onset estimator {setting!r}: threshold must be in (0, 1]")
    return OnsetEstimator(name, make_detector(name), value)


def fit_onset_threshold(detector: Detector, windows: Sequence[tuple[np.ndarray, int]]) -> tuple[float, float]:
    """(threshold, mean |error|) minimising the mean |onset error| over labelled windows [(values, fault_bin)];
    thresholds are quantiles of the detector's scores on those windows. Ties go to the lower threshold."""
    scores = [detector.score(v) for v, _ in windows]
    pooled = np.concatenate(scores)
    best = (float("inf"), 1.0)
    for q in THRESHOLD_QUANTILES:
        thr = float(np.quantile(pooled, q))
        err = float(np.mean([abs(onset_from_scores(s, detector, thr) - fb)
                             for s, (_, fb) in zip(scores, windows, strict=True)]))
        if err < best[0] - 1e-12:
            best = (err, thr)
    return best[1], best[0]


def select_onset_estimator(windows: Sequence[tuple[np.ndarray, int]],
                           detectors: Sequence[Detector] | None = None,
                           error_of: Callable[[int, int], float] | None = None) -> OnsetEstimator:
    """Pick the onset estimator with the lowest mean |error| on labelled training windows [(values, fault_bin)].

    `detectors` default to the zero-shot ones (already fitted if they need it); "cusum" is always a candidate.
    """
    if not windows:
        raise ValueError("select_onset_estimator needs at least one labelled window")
    if detectors is None:
        from lemzha.detect.zeroshot import BocpdDetector, RobustZDetector

        detectors = (RobustZDetector(), BocpdDetector())
    cusum_err = float(np.mean([abs(cusum_onset(v) - fb) for v, fb in windows]))
    best = OnsetEstimator("cusum", None, None, cusum_err)
    candidates = {"cusum": cusum_err}
    for det in detectors:
        thr, err = fit_onset_threshold(det, windows)
        candidates[det.name] = err
        if err < best.train_error:
            best = OnsetEstimator(det.name, det, thr, err)
    best.candidates = candidates
    return best
