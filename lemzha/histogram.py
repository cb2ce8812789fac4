"""Quantiles from cumulative histogram buckets, exactly as Prometheus' `histogram_quantile` computes them.

One function for offline features and the live path, so a quantile derived from Nezha's spans equals the one
Prometheus returns for the replayed (or live) bucket counters. The rule (Prometheus 2.x `bucketQuantile`):

- buckets are cumulative counts `c_0 <= c_1 <= ... <= c_n` with finite upper bounds `le_0 < ... < le_{n-1}` and a
  last `+Inf` bucket holding the total; no observation (`c_n == 0`) gives NaN;
- rank = q * c_n; b = the first finite bucket with c_b >= rank;
- no such finite bucket (the rank lies in `+Inf`): the highest finite bound `le_{n-1}`;
- otherwise linear interpolation inside bucket b, from `le_{b-1}` (0 for the lowest bucket, when `le_0 > 0`) to
  `le_b`: le_{b-1} + (le_b - le_{b-1}) * (rank - c_{b-1}) / (c_b - c_{b-1});
- q < 0 gives -Inf, q > 1 gives +Inf, q NaN gives NaN.

The float operations are done in Prometheus' order, so the results agree bit for bit on the same counts.
"""

from __future__ import annotations

import numpy as np


def histogram_quantile(q: float, bounds, cumulative) -> np.ndarray:
    """Quantile q of each histogram row.

    `bounds`: the finite upper bounds, strictly increasing (the `+Inf` bucket is implicit).
    `cumulative`: (..., len(bounds) + 1) cumulative counts, the last column the `+Inf` bucket (= the total).
    NaN rows (missing data) give NaN. Returns an array of the leading shape (a 0-d array for one histogram).
    """
    le = np.asarray(bounds, dtype=np.float64)
    counts = np.asarray(cumulative, dtype=np.float64)
    if le.ndim != 1 or len(le) == 0 or np.any(np.diff(le) <= 0) or not np.all(np.isfinite(le)):
        raise ValueError("bounds must be finite and strictly increasing")
    if counts.shape[-1] != len(le) + 1:
        raise ValueError(f"expected {len(le) + 1} cumulative counts per histogram (with +Inf), got {counts.shape[-1]}")
    lead = counts.shape[:-1]
    flat = counts.reshape(-1, len(le) + 1)
    if np.isnan(q):
        return np.full(lead, np.nan)
    if q < 0:
        return np.full(lead, -np.inf)
    if q > 1:
        return np.full(lead, np.inf)
    # Prometheus forces monotonicity (a running maximum) before searching
    flat = np.maximum.accumulate(np.where(np.isnan(flat), -np.inf, flat), axis=1)
    total = flat[:, -1]
    rank = q * total
    finite = flat[:, :-1]
    # first finite bucket whose count reaches the rank; len(le) when none does (the rank is in +Inf)
    reached = finite >= rank[:, None]
    b = np.where(reached.any(axis=1), reached.argmax(axis=1), len(le))
    out = np.full(len(flat), np.nan)
    in_inf = b == len(le)
    out[in_inf] = le[-1]
    rows = np.nonzero(~in_inf)[0]
    bb = b[rows]
    end = le[bb]
    count = finite[rows, bb]
    r = rank[rows]
    start = np.zeros(len(rows))
    lower = bb > 0
    start[lower] = le[bb[lower] - 1]
    prev = finite[rows[lower], bb[lower] - 1]
    count[lower] = count[lower] - prev
    r = r.copy()
    r[lower] = r[lower] - prev
    with np.errstate(invalid="ignore", divide="ignore"):
        value = start + (end - start) * (r / count)
    # the lowest bucket with a bound <= 0 returns that bound (never the case for latency buckets)
    value = np.where((bb == 0) & (le[0] <= 0), le[0], value)
    out[rows] = value
    out[~(total > 0)] = np.nan  # no observation, or a missing (NaN) row
    return out.reshape(lead)


def trace_features(frame, level: str):
    """The derived per-bin trace features (catalog `TRACE_FEATURES` of `level`) from a service_metrics or edges
    frame's counts, sum and cumulative buckets: a dict name -> float64 array (NaN where the bin is not covered or
    has no call, as Prometheus returns NaN for 0/0 and for an empty histogram)."""
    from lemzha.catalog import BUCKET_COLUMNS, SERVICE_GRAPH_BUCKETS_S, SPAN_BUCKETS_MS, TRACE_FEATURES

    buckets = frame.loc[:, list(BUCKET_COLUMNS)].to_numpy(dtype=np.float64)
    bounds = SPAN_BUCKETS_MS if level == "service" else SERVICE_GRAPH_BUCKETS_S
    out = {}
    for feature in TRACE_FEATURES:
        if feature.level != level or feature.kind == "count":
            continue
        if feature.kind == "mean":
            count = buckets[:, -1]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[feature.name] = np.where(count > 0, frame["duration_sum_ms"].to_numpy(np.float64) / count, np.nan)
        elif feature.kind == "gap":
            count = buckets[:, -1]
            gap = frame["client_duration_sum_ms"].to_numpy(np.float64) - frame["duration_sum_ms"].to_numpy(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[feature.name] = np.where(count > 0, gap / count, np.nan)
        else:
            out[feature.name] = histogram_quantile(feature.quantile, [float(b) for b in bounds], buckets)
    return out
