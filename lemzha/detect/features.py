"""Per-bin window features from a (T, P, M) metric array, and the train-only feature selector.

Every feature of bin t reads bins <= t only (a trailing reference), so the same code scores a live window.

1. Each series is carried forward by at most one bin (60 s data fills every other 30 s bin; a longer gap stays NaN).
2. Robust z against the trailing reference of the previous `REFERENCE_BINS` bins (10 min, excluding bin t):
   (x_t - median) / max(IQR, 5 % of |median|, 1e-6), the floor of `lemzha.evidence.robust_z`.
3. Per metric, over pods: max |z|, mean |z|, max z (rises), max -z (drops), each as log1p; plus four global
   features (share of series with |z| > 3, share of pods with any |z| > 3, max and top-5 mean of log1p |z|).
4. Window: the same features two bins earlier (the previous real 60 s sample) and the change since then.

The feature count does not depend on the number of pods, so OnlineBoutique (10 pods) and TrainTicket (46) share
one feature space.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict

import numpy as np
import pandas as pd

from lemzha.evidence import IQR_FLOOR_ABS, IQR_FLOOR_FRACTION

REFERENCE_BINS = 20
MIN_REFERENCE_SAMPLES = 2
LAG_BINS = 2
Z_HIGH = 3.0
PER_METRIC = ("max_abs", "mean_abs", "max_up", "max_down")
GLOBAL = ("share_series_high", "share_pods_high", "max_all", "top5_all")


def carried(values: np.ndarray) -> np.ndarray:
    """(T, P, M) -> (T, S) float64 with each series carried forward by at most one bin."""
    t = values.shape[0]
    flat = np.asarray(values, dtype=np.float64).reshape(t, -1)
    return pd.DataFrame(flat).ffill(limit=1).to_numpy()


# Bounded twice: at most 24 arrays, and at most 64 MiB of them (a 1,000-pod namespace's carried series are ~35 MB
# each, so a count alone would let a few big namespaces hold most of the operator's memory).
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 24
_CACHE_BYTES = 64 << 20


def _cached(kind: str, values: np.ndarray, extra, compute):
    """Memoise pure functions of a metric array by content (detectors score the same day many times); least
    recently used out first, within _CACHE_SIZE entries and _CACHE_BYTES bytes (an array over that is not kept)."""
    values = np.ascontiguousarray(values)
    key = (kind, extra, values.shape, str(values.dtype), hashlib.blake2b(values.tobytes(), digest_size=16).digest())
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    out = compute()
    out.setflags(write=False)
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE or (_CACHE and sum(a.nbytes for a in _CACHE.values()) > _CACHE_BYTES):
        _CACHE.popitem(last=False)
    return out


def trailing_z(values: np.ndarray, reference_bins: int = REFERENCE_BINS) -> np.ndarray:
    """(T, P, M) -> (T, P, M) signed robust z of each bin against the trailing reference (NaN without one)."""
    return _cached("z", values, reference_bins, lambda: _trailing_z(values, reference_bins))


def _trailing_z(values: np.ndarray, reference_bins: int) -> np.ndarray:
    shape = values.shape
    flat = carried(values)
    frame = pd.DataFrame(flat)
    # the reference of bin t is bins [t - R, t): shift by one so bin t never sees itself
    rolling = frame.shift(1).rolling(reference_bins, min_periods=2 * MIN_REFERENCE_SAMPLES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q25 = rolling.quantile(0.25).to_numpy()
        med = rolling.quantile(0.5).to_numpy()
        q75 = rolling.quantile(0.75).to_numpy()
    scale = np.maximum(q75 - q25, np.maximum(np.abs(med) * IQR_FLOOR_FRACTION, IQR_FLOOR_ABS))
    z = (flat - med) / scale
    return z.reshape(shape)


def bin_features(z: np.ndarray) -> np.ndarray:
    """(T, P, M) signed z -> (T, F0) per-bin features (no lags); NaN-free (no evidence = 0)."""
    t, _, m = z.shape
    a = np.log1p(np.abs(z))
    up = np.log1p(np.clip(z, 0, None))
    down = np.log1p(np.clip(-z, 0, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_metric = np.stack(
            [np.nanmax(a, axis=1), np.nanmean(a, axis=1), np.nanmax(up, axis=1), np.nanmax(down, axis=1)], axis=2
        ).reshape(t, m * len(PER_METRIC))
        flat = a.reshape(t, -1)
        present = ~np.isnan(flat)
        n_present = present.sum(axis=1)
        high = np.abs(z.reshape(t, -1)) > Z_HIGH
        share_series = high.sum(axis=1) / np.maximum(n_present, 1)
        pods_present = (~np.isnan(z)).any(axis=2).sum(axis=1)
        share_pods = (np.abs(z) > Z_HIGH).any(axis=2).sum(axis=1) / np.maximum(pods_present, 1)
        max_all = np.nanmax(flat, axis=1)
        top = np.sort(np.where(present, flat, -np.inf), axis=1)[:, -5:]
        top5 = np.where(np.isfinite(top), top, np.nan)
        top5 = np.nanmean(top5, axis=1)
    out = np.column_stack([per_metric, share_series, share_pods, max_all, top5])
    return np.nan_to_num(out, nan=0.0, posinf=50.0)


def window_features(values: np.ndarray) -> np.ndarray:
    """(T, P, M) -> (T, F) bin features, the same two bins earlier, and the change (read-only, memoised)."""
    return _cached("features", values, None, lambda: _window_features(values))


def _window_features(values: np.ndarray) -> np.ndarray:
    base = bin_features(trailing_z(values))
    lagged = np.vstack([np.zeros((LAG_BINS, base.shape[1])), base[:-LAG_BINS]])[: len(base)]
    return np.hstack([base, lagged, base - lagged]).astype(np.float32)


class FeatureSelector:
    """VarianceThreshold, then the top `k` by mutual information with the label, then correlation pruning
    (a feature whose |Pearson r| with an already kept, more informative one exceeds `max_corr` is dropped).
    `fit` sees training rows only; `transform` applies the kept columns."""

    def __init__(self, k: int = 40, max_corr: float = 0.95, variance: float = 1e-8, seed: int = 0) -> None:
        self.k, self.max_corr, self.variance, self.seed = k, max_corr, variance, seed
        self.columns: np.ndarray | None = None
        self.mi: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray | None) -> FeatureSelector:
        from sklearn.feature_selection import VarianceThreshold, mutual_info_classif

        x = np.asarray(x, dtype=np.float64)
        keep = np.flatnonzero(VarianceThreshold(self.variance).fit(x).get_support())
        if y is not None and len(np.unique(y)) > 1 and keep.size:
            mi = mutual_info_classif(x[:, keep], y, random_state=self.seed)
        else:  # no label to rank by: keep the most variable features
            mi = x[:, keep].var(axis=0) if keep.size else np.zeros(0)
        order = keep[np.argsort(-mi, kind="stable")]
        score = dict(zip(keep.tolist(), mi.tolist(), strict=True))
        kept: list[int] = []
        corr_source = x[:, order]
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            corr = np.abs(np.corrcoef(corr_source, rowvar=False)) if order.size > 1 else np.zeros((1, 1))
        corr = np.nan_to_num(np.atleast_2d(corr))
        kept_pos: list[int] = []
        for pos, col in enumerate(order):
            if len(kept) >= self.k:
                break
            if any(corr[pos, q] > self.max_corr for q in kept_pos):
                continue
            kept.append(int(col))
            kept_pos.append(pos)
        self.columns = np.array(kept, dtype=np.int64)
        self.mi = np.array([score[c] for c in kept])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.columns is None:
            raise RuntimeError("FeatureSelector used before fit")
        return np.asarray(x)[:, self.columns]
