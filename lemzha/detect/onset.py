"""Onset estimation for RCA windows, and choosing the estimator on training windows only.

An onset estimator maps a (T, P, M) window to the bin where the fault most likely began. Candidates:
- "cusum": `cusum_onset`'s single mean-shift statistic over the whole window;
- a zero-shot detector with a threshold: its first crossing after the warm-up, else its highest-scoring bin.
`select_onset_estimator` picks the candidate (and threshold) with the lowest mean |onset error| on labelled
training windows; nothing else is looked at.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lemzha.detect.base import WARMUP_BINS, Detector
from lemzha.evidence import IQR_FLOOR_ABS, IQR_FLOOR_FRACTION

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
    values alone; clipped to [1, n_bins - 1] like `resolve_onset_bin`."""
    return onset_from_scores(detector.score(scenario.values), detector, threshold)


def cusum_onset(values: np.ndarray) -> int:
    """The most likely first anomalous bin of `values` (T, pods, metrics; NaN = no sample), from the values alone.

    A single mean-shift (CUSUM) statistic per pod/metric series x and candidate b in [n_bins // 4, 3 * n_bins // 4]:
    stat(b) = sqrt(n_before * n_after / (n_before + n_after)) * |mean(x[b:]) - mean(x[:b])| / sigma, with sigma
    the noise scale from the median absolute first difference (a single step moves one difference only, so the
    scale ignores the change it is looking for), floored as in `robust_z`. Under no change stat(b) is about
    |N(0, 1)| for every b, so quiet series add no pull towards any bin; for a step it peaks at the step.
    The estimate is the b maximising the sum over series of log1p(stat^2): the log keeps one series with a tiny
    scale from deciding alone. Missing samples are skipped; ties go to the earliest candidate.

    Medians of the two sides (the simpler robust rule) were tried first and localise poorly: a median ignores a
    minority of shifted bins, so the score is flat for several bins around the change and noise picks the bin.
    """
    n_bins = values.shape[0]
    if n_bins < 2:
        return 0
    x = values.reshape(n_bins, -1).astype(np.float64)
    present = ~np.isnan(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # series without samples are expected
        # First differences between consecutive real samples (gaps bridged by forward fill).
        filled = pd.DataFrame(x).ffill().to_numpy()
        steps = np.where(present[1:], np.abs(np.diff(filled, axis=0)), np.nan)
        sigma = np.nanmedian(steps, axis=0) * (1.4826 / np.sqrt(2.0))
        level = np.nanmedian(x, axis=0)
    sigma = np.maximum(sigma, np.maximum(np.abs(level) * IQR_FLOOR_FRACTION, IQR_FLOOR_ABS))
    lo, hi = max(1, n_bins // 4), min(n_bins - 1, 3 * n_bins // 4)
    candidates = np.arange(lo, hi + 1)
    # Prefix sums give every candidate's two segment means at once: (B, series) arrays.
    csum = np.cumsum(np.where(present, x, 0.0), axis=0)
    ccount = np.cumsum(present, axis=0)
    sum_before, n_before = csum[candidates - 1], ccount[candidates - 1]
    sum_after, n_after = csum[-1] - sum_before, ccount[-1] - n_before
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.abs(sum_after / n_after - sum_before / n_before)
        stat = np.sqrt(n_before * n_after / (n_before + n_after)) * shift / sigma
    evidence = np.nansum(np.log1p(np.where(np.isfinite(stat), stat, 0.0) ** 2), axis=1)
    return _clip(int(candidates[int(np.argmax(evidence))]), n_bins)



def resolve_onset_bin(scenario) -> int:
    """A `lemzha.scenario.Scenario`'s onset bin, else the CUSUM estimate from its metric values, clipped to
    [1, n_bins - 1] so both sides have bins."""
    onset_bin = scenario.onset_bin
    if onset_bin is None:
        onset_bin = cusum_onset(scenario.values)
    return _clip(onset_bin, scenario.n_bins)


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
