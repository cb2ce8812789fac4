"""Zero-shot detectors: no training, fixed calibration. numpy and pandas only (the operator imports these)."""

from __future__ import annotations

import warnings

import numpy as np

from lemzha.detect.base import (
    DetectionData,
    OnsetMixin,
    carry_forward,
    clip_scores,
    fixed_calibration,
    observed_bins,
)
from lemzha.detect.features import trailing_z

TOP_K = 5


def top_k_mean(x: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """(T, S) -> (T,) mean of the k largest finite values per row (0 when a row has none)."""
    filled = np.where(np.isfinite(x), x, -np.inf)
    k = min(k, filled.shape[1])
    top = np.partition(filled, filled.shape[1] - k, axis=1)[:, -k:]
    valid = np.isfinite(top)
    return np.where(valid.any(axis=1), np.where(valid, top, 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1), 0.0)


class RobustZDetector(OnsetMixin):
    """Median/IQR detector: each series' robust z against its trailing 10 min (the reference of
    `lemzha.detect.features.trailing_z`); per pod the mean of log1p |z| over its metrics; the bin's statistic the
    largest pod mean, mapped onto (0, 1] by the fixed 1 - exp(-s). The aggregation was picked on one design day
    (2022-08-22) among six label-free statistics (top-k over series, mean over all, per-metric and per-pod means,
    per-pod count of |z| > 3); see lemzha/detect/README.md."""

    name = "robust_z"
    needs_training = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def fit(self, train: DetectionData | None) -> RobustZDetector:
        return self  # zero-shot: nothing is learnt

    def statistic(self, values: np.ndarray) -> np.ndarray:
        a = np.log1p(np.abs(trailing_z(values)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pods or bins without samples
            return np.nan_to_num(np.nanmax(np.nanmean(a, axis=2), axis=1), nan=0.0)

    def score(self, values: np.ndarray) -> np.ndarray:
        s = fixed_calibration(self.statistic(values), self.scale)
        return clip_scores(carry_forward(s, observed_bins(values)))


class BocpdDetector(OnsetMixin):
    """Bayesian online change-point detection (Adams & MacKay 2007), one run per pod/metric series.

    Each series is first made comparable across units: its robust z against a trailing 30 min reference, clipped to
    +-10. On that stream, a Gaussian model with unknown mean and variance (Normal-Gamma prior mu0 = 0, kappa0 = 1,
    alpha0 = 1, beta0 = 1; Student-t predictive) and a constant hazard 1/200 per sample; run lengths are truncated at
    `max_run` samples. A series only advances at its real samples. The series' evidence at bin t is the posterior
    probability that a change happened within its last `recent` samples, P(r_t < recent); the bin's statistic is
    the mean of the 5 largest over all series, which is a probability already (floored at EPS). `recent` = 4 samples
    (4 min, within the 5 min effect) was picked on the design day 2022-08-22 over 2 (ROC-AUC 0.59 against 0.55).
    """

    name = "bocpd"
    needs_training = False

    def __init__(self, hazard: float = 1 / 200, max_run: int = 60, recent: int = 4, reference_bins: int = 60) -> None:
        self.hazard, self.max_run, self.recent, self.reference_bins = hazard, max_run, recent, reference_bins

    def fit(self, train: DetectionData | None) -> BocpdDetector:
        return self

    def change_probability(self, values: np.ndarray) -> np.ndarray:
        """(T, P, M) -> (T, S) P(change within the last `recent` samples), NaN before a series' first sample."""
        t_bins = values.shape[0]
        x = np.clip(trailing_z(values, self.reference_bins).reshape(t_bins, -1), -10, 10)
        real = ~np.isnan(np.asarray(values, dtype=np.float64).reshape(t_bins, -1)) & ~np.isnan(x)
        n_series, r_max = x.shape[1], self.max_run
        from scipy.special import gammaln  # here, not at import: an operator on the default CUSUM rule saves 13 MiB

        mu0, kappa0, alpha0, beta0 = 0.0, 1.0, 1.0, 1.0
        prob = np.zeros((n_series, r_max))
        prob[:, 0] = 1.0
        mu = np.full((n_series, r_max), mu0)
        kappa = np.full((n_series, r_max), kappa0)
        alpha = np.full((n_series, r_max), alpha0)
        beta = np.full((n_series, r_max), beta0)
        seen = np.zeros(n_series, dtype=bool)
        out = np.full((t_bins, n_series), np.nan)
        h = self.hazard
        for t in range(t_bins):
            obs = real[t]
            if obs.any():
                s = np.flatnonzero(obs)
                xs = x[t, s][:, None]
                m, k, a, b, p = mu[s], kappa[s], alpha[s], beta[s], prob[s]
                var = b * (k + 1) / (a * k)
                nu = 2 * a
                logpred = (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(np.pi * nu * var)
                           - (nu + 1) / 2 * np.log1p((xs - m) ** 2 / (nu * var)))
                joint = p * np.exp(logpred - logpred.max(axis=1, keepdims=True))
                grown = joint * (1 - h)
                new = np.empty_like(p)
                new[:, 0] = joint.sum(axis=1) * h
                new[:, 1:] = grown[:, :-1]
                new[:, -1] += grown[:, -1]  # truncation: the longest run absorbs the tail
                new /= new.sum(axis=1, keepdims=True)
                mu_new = (k * m + xs) / (k + 1)
                beta_new = b + k * (xs - m) ** 2 / (2 * (k + 1))
                mu[s, 1:], kappa[s, 1:] = mu_new[:, :-1], (k + 1)[:, :-1]
                alpha[s, 1:], beta[s, 1:] = (a + 0.5)[:, :-1], beta_new[:, :-1]
                mu[s, 0], kappa[s, 0], alpha[s, 0], beta[s, 0] = mu0, kappa0, alpha0, beta0
                prob[s] = new
                seen[s] = True
            out[t, seen] = prob[seen, : self.recent].sum(axis=1)
        return out

    def score(self, values: np.ndarray) -> np.ndarray:
        cp = self.change_probability(values)
        s = top_k_mean(cp)
        return clip_scores(carry_forward(s, observed_bins(values)))
