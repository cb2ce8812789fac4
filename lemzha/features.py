"""Scenario -> model inputs for one crop of bins around an onset position.

Normalisation is type-aware (from the catalog) and its statistics come from the input crop alone: each series is
centred on its pre-onset median and scaled by its pre-onset IQR. Nothing is fitted on other scenarios, so there is
nothing to leak across folds, and the label or true fault bin is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lemzha.catalog import METRIC_NAMES, MetricType, spec
from lemzha.evidence import nan_quantiles
from lemzha.scenario import Scenario
from lemzha.text import DIM, TextEmbedder, service_name_text

N_METRICS = len(METRIC_NAMES)
METRIC_FEATURES = 3 * N_METRICS  # deviation, level, mask per catalog metric
LOG_SCALARS = 10
LOG_FEATURES = LOG_SCALARS + 2 * DIM
CLIP = 10.0
CADVISOR_METRICS = ("cpu_millicores", "memory_bytes", "network_receive", "network_transmit")

# Traces. Per service and per edge, a few series from the scenario's `service_metrics` / `edges`, all
# log-compressed; NaN where the bin is not covered by traces (or the service had no call, for latencies).
SERVICE_TRACE_SERIES = ("trace_calls", "trace_latency_mean_ms", "trace_latency_p50_ms", "trace_latency_p95_ms")
EDGE_TRACE_SERIES = ("edge_requests", "edge_latency_p95_s")
# Smallest change counted as one unit of deviation, in log space: counts are noisy at low volume, latencies more so.
_SERVICE_TRACE_FLOOR = np.array([0.1, 0.2, 0.2, 0.2], np.float32)
_EDGE_TRACE_FLOOR = np.array([0.1, 0.2], np.float32)
_EDGE_LATENCY_SCALE = 1000.0  # seconds -> ms before the log, so that both levels live on the same scale
_TRACE_LEVEL_SCALE = 6.0
# Per series: mean signed deviation after the onset, max |deviation| after it, level after it; then three masks.
SERVICE_TRACE_FEATURES_N = 3 * len(SERVICE_TRACE_SERIES) + 3
EDGE_TRACE_FEATURES_N = 3 * len(EDGE_TRACE_SERIES) + 3

# Typical spread of each type's transformed value, so that "level" features are on comparable scales.
_LEVEL_SCALE = {
    MetricType.PERCENT: 1.0,
    MetricType.BYTES: 20.0,
    MetricType.BYTE_RATE: 12.0,
    MetricType.SECONDS: 1.0,
    MetricType.COUNT_RATE: 6.0,
    MetricType.MILLICORES: 6.0,
}


# Smallest change that counts as one unit of deviation: 5 % for log-compressed magnitudes, one percentage point
# for percentages. Without a floor a flat reference turns noise into huge deviations.
_SCALE_FLOOR = np.array([0.01 if spec(m).type is MetricType.PERCENT else 0.05 for m in METRIC_NAMES], np.float32)


def transform(values: np.ndarray, metric: str) -> np.ndarray:
    """Percentages to [0, 1]; heavy-tailed magnitudes log-compressed (sign kept)."""
    kind = spec(metric).type
    if kind is MetricType.PERCENT:
        return values / 100.0
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass
class Prepared:
    """Crop-independent arrays of one scenario, computed once."""

    scenario_id: str
    services: tuple[str, ...]
    pod_service: np.ndarray  # (P,) service index of each pod
    metrics: np.ndarray  # (T, P, N_METRICS) transformed, NaN where missing, catalog-wide metric axis
    log_rows: np.ndarray  # (R, 4) int: service, template, bin, count
    log_error: np.ndarray  # (R,) bool: ERROR or FATAL
    log_warn: np.ndarray  # (R,) bool
    template_vectors: np.ndarray  # (U, DIM) embeddings of the scenario's unique templates
    name_vectors: np.ndarray  # (S, DIM)
    service_traces: np.ndarray | None = None  # (T, S, len(SERVICE_TRACE_SERIES)) log-compressed, NaN = missing
    edge_pairs: np.ndarray | None = None  # (E, 2) int: client, server service index
    edge_traces: np.ndarray | None = None  # (T, E, len(EDGE_TRACE_SERIES)) log-compressed, NaN = missing

    @property
    def n_bins(self) -> int:
        return self.metrics.shape[0]


def prepare(scenario: Scenario, embedder: TextEmbedder, traces: bool = True) -> Prepared:
    """Everything that does not depend on the crop. Reads inputs only (never the label). `traces=False` leaves the
    trace arrays out (None, as for a scenario without traces): a model without trace inputs never reads them, and
    building them costs about 4 ms on a 46-service scenario."""
    values = np.full((scenario.n_bins, len(scenario.pods), N_METRICS), np.nan, dtype=np.float32)
    for m, name in enumerate(scenario.metrics):
        values[:, :, METRIC_NAMES.index(name)] = transform(scenario.values[:, :, m], name)
    services = scenario.services
    service_index = {s: i for i, s in enumerate(services)}
    logs = scenario.logs
    templates = sorted(set(logs["template"].tolist())) if len(logs) else []
    template_index = {t: i for i, t in enumerate(templates)}
    if len(logs):
        rows = np.stack(
            [
                logs["service"].map(service_index).to_numpy(dtype=np.int64),
                logs["template"].map(template_index).to_numpy(dtype=np.int64),
                logs["bin"].to_numpy(dtype=np.int64),
                logs["count"].to_numpy(dtype=np.int64),
            ],
            axis=1,
        )
        level = logs["level"].to_numpy(dtype=object)
        error, warn = np.isin(level, ["ERROR", "FATAL"]), level == "WARN"
    else:
        rows, error, warn = np.zeros((0, 4), np.int64), np.zeros(0, bool), np.zeros(0, bool)
    return Prepared(
        scenario_id=scenario.id,
        services=services,
        pod_service=scenario.pod_service_index(),
        metrics=values,
        log_rows=rows,
        log_error=error,
        log_warn=warn,
        template_vectors=embedder.embed(templates) if templates else np.zeros((0, DIM), np.float32),
        name_vectors=embedder.embed([service_name_text(s) for s in services]),
        **(trace_arrays(scenario) if traces else {}),
    )


def trace_arrays(scenario: Scenario) -> dict[str, np.ndarray]:
    """The scenario's trace frames as dense arrays (NaN where a bin is uncovered or a service has no data)."""
    T, index = scenario.n_bins, {s: i for i, s in enumerate(scenario.services)}
    svc = np.full((T, len(index), len(SERVICE_TRACE_SERIES)), np.nan, np.float32)
    frame = scenario.service_metrics
    if frame is not None and len(frame):
        rows = frame["bin"].to_numpy(np.int64)
        cols = frame["service"].map(index).to_numpy(np.int64)
        for k, name in enumerate(SERVICE_TRACE_SERIES):
            svc[rows, cols, k] = np.log1p(frame[name].to_numpy(np.float64))
    frame = scenario.edges
    if frame is not None and len(frame):
        pairs = frame[["client", "server"]].drop_duplicates().sort_values(["client", "server"])
        keys = list(zip(pairs["client"], pairs["server"], strict=True))
        pair_index = {k: i for i, k in enumerate(keys)}
        edge_pairs = np.array([[index[c], index[d]] for c, d in keys], np.int64).reshape(-1, 2)
        edges = np.full((T, len(keys), len(EDGE_TRACE_SERIES)), np.nan, np.float32)
        rows = frame["bin"].to_numpy(np.int64)
        cols = np.array([pair_index[k] for k in zip(frame["client"], frame["server"], strict=True)], np.int64)
        edges[rows, cols, 0] = np.log1p(frame["edge_requests"].to_numpy(np.float64))
        edges[rows, cols, 1] = np.log1p(frame["edge_latency_p95_s"].to_numpy(np.float64) * _EDGE_LATENCY_SCALE)
    else:
        edge_pairs = np.zeros((0, 2), np.int64)
        edges = np.zeros((T, 0, len(EDGE_TRACE_SERIES)), np.float32)
    return {"service_traces": svc, "edge_pairs": edge_pairs, "edge_traces": edges}


def _window(series: np.ndarray, start: int, length: int) -> np.ndarray:
    out = np.full((length, *series.shape[1:]), np.nan, np.float32)
    lo, hi = max(start, 0), min(start + length, series.shape[0])
    if hi > lo:
        out[lo - start : hi - start] = series[lo:hi]
    return out


def trace_summary(window: np.ndarray, onset_pos: int, floor: np.ndarray) -> np.ndarray:
    """(W, N, K) log series of one crop -> (N, 3K + 3) features normalised by the crop's own pre-onset bins.

    Per series: mean signed and max absolute deviation from the pre-onset median (scaled by the pre-onset IQR,
    floored), after the onset, and the mean level after the onset. A series with no pre-onset sample has no
    deviation (0, its mask says why). Masks: any sample before the onset, any after it, and the share of bins after
    the onset with a count. Missing bins (NaN) never count as 0."""
    _, N, K = window.shape
    out = np.zeros((N, 3 * K + 3), np.float32)
    if N == 0:
        return out
    before, after = window[:onset_pos], window[onset_pos:]
    present_before, present_after = ~np.isnan(before), ~np.isnan(after)
    with np.errstate(invalid="ignore"):
        q25, median, q75 = nan_quantiles(before, (0.25, 0.5, 0.75))
        scale = np.maximum(np.where(np.isnan(q75 - q25), 0.0, q75 - q25), floor)
        deviation = np.clip((after - median) / scale, -CLIP, CLIP)  # NaN where either side is missing
        has_dev = ~np.isnan(deviation)
        n_dev = has_dev.sum(axis=0)
        mean_dev = np.where(n_dev > 0, np.nansum(deviation, axis=0) / np.maximum(n_dev, 1), 0.0)
        max_dev = np.where(n_dev > 0, np.nanmax(np.where(has_dev, np.abs(deviation), -1.0), axis=0), 0.0)
        n_after = present_after.sum(axis=0)
        level = np.where(n_after > 0, np.nansum(after, axis=0) / np.maximum(n_after, 1), 0.0) / _TRACE_LEVEL_SCALE
    out[:, :K] = mean_dev
    out[:, K : 2 * K] = np.maximum(max_dev, 0.0)
    out[:, 2 * K : 3 * K] = np.clip(level, -CLIP, CLIP)
    out[:, 3 * K] = present_before[:, :, 0].any(axis=0)
    out[:, 3 * K + 1] = present_after[:, :, 0].any(axis=0)
    out[:, 3 * K + 2] = present_after[:, :, 0].mean(axis=0) if len(after) else 0.0
    return out


@dataclass
class Crop:
    """Model inputs for bins [start, start + length) with the onset at `onset_pos` inside the crop."""

    metrics: np.ndarray  # (W, P, METRIC_FEATURES) float32, finite
    pod_valid: np.ndarray  # (W, P) bool: any metric present at this bin
    onset_pos: int
    logs: np.ndarray  # (S, LOG_FEATURES) float32
    names: np.ndarray  # (S, DIM)
    pod_service: np.ndarray  # (P,)
    traces: np.ndarray | None = None  # (S, SERVICE_TRACE_FEATURES_N) float32, when traces are used
    edge_pairs: np.ndarray | None = None  # (E, 2) int64 client, server
    edge_traces: np.ndarray | None = None  # (E, EDGE_TRACE_FEATURES_N) float32


def crop(
    prep: Prepared,
    start: int,
    length: int,
    onset_pos: int,
    metric_keep: np.ndarray | None = None,
    use_logs: bool = True,
    use_traces: bool = False,
) -> Crop:
    """Cut and normalise. Bins outside the scenario are missing (masked), never invented."""
    T, P, _ = prep.metrics.shape
    window = np.full((length, P, N_METRICS), np.nan, dtype=np.float32)
    lo, hi = max(start, 0), min(start + length, T)
    if hi > lo:
        window[lo - start : hi - start] = prep.metrics[lo:hi]
    if metric_keep is not None:
        window[:, :, ~metric_keep] = np.nan
    onset_pos = int(np.clip(onset_pos, 1, length - 1))
    valid = ~np.isnan(window)
    q25, median, q75 = nan_quantiles(window[:onset_pos], (0.25, 0.5, 0.75))
    (fallback,) = nan_quantiles(window, (0.5,))  # series with no pre-onset sample: centre on the crop
    median = np.where(np.isnan(median), fallback, median)
    iqr = np.where(np.isnan(q75 - q25), 0.0, q75 - q25)
    scale = np.maximum(iqr, _SCALE_FLOOR)
    deviation = np.clip((window - median) / scale, -CLIP, CLIP)
    level_scale = np.array([_LEVEL_SCALE[spec(m).type] for m in METRIC_NAMES], dtype=np.float32)
    level = np.clip(window / level_scale, -CLIP, CLIP)
    features = np.concatenate(
        [np.nan_to_num(deviation), np.nan_to_num(level), valid.astype(np.float32)], axis=2
    ).astype(np.float32)
    logs = log_features(prep, start, length, onset_pos) if use_logs else np.zeros(
        (len(prep.services), LOG_FEATURES), np.float32
    )
    out = Crop(features, valid.any(axis=2), onset_pos, logs, prep.name_vectors, prep.pod_service)
    if use_traces:
        out.traces, out.edge_pairs, out.edge_traces = trace_features(prep, start, length, onset_pos)
    return out


def trace_features(prep: Prepared, start: int, length: int, onset_pos: int) -> tuple[np.ndarray, ...]:
    """Per service and per edge trace features of one crop (zeros, masks 0, for a scenario without traces)."""
    S = len(prep.services)
    if prep.service_traces is None:
        return (np.zeros((S, SERVICE_TRACE_FEATURES_N), np.float32), np.zeros((0, 2), np.int64),
                np.zeros((0, EDGE_TRACE_FEATURES_N), np.float32))
    onset_pos = int(np.clip(onset_pos, 1, length - 1))
    services = trace_summary(_window(prep.service_traces, start, length), onset_pos, _SERVICE_TRACE_FLOOR)
    edges = trace_summary(_window(prep.edge_traces, start, length), onset_pos, _EDGE_TRACE_FLOOR)
    return services, prep.edge_pairs.astype(np.int64), edges


def log_features(prep: Prepared, start: int, length: int, onset_pos: int) -> np.ndarray:
    """Per service: volume, error and warn shares before/after the onset, novelty, and two embeddings: the mean
    of templates after the onset and the mean of templates that appeared or grew after it."""
    S = len(prep.services)
    out = np.zeros((S, LOG_FEATURES), dtype=np.float32)
    rows = prep.log_rows
    if len(rows) == 0:
        return out
    rel = rows[:, 2] - start
    inside = (rel >= 0) & (rel < length)
    if not inside.any():
        return out
    rows, error, warn, rel = rows[inside], prep.log_error[inside], prep.log_warn[inside], rel[inside]
    after = rel >= onset_pos
    n_before, n_after = max(onset_pos, 1), max(length - onset_pos, 1)
    U = len(prep.template_vectors)
    for s in np.unique(rows[:, 0]):
        own = rows[:, 0] == s
        counts = rows[own, 3].astype(np.float64)
        a = after[own]
        before_total, after_total = counts[~a].sum(), counts[a].sum()
        err_b = counts[~a & error[own]].sum() / max(before_total, 1)
        err_a = counts[a & error[own]].sum() / max(after_total, 1)
        warn_b = counts[~a & warn[own]].sum() / max(before_total, 1)
        warn_a = counts[a & warn[own]].sum() / max(after_total, 1)
        rate_b = np.bincount(rows[own][~a, 1], weights=counts[~a], minlength=U) / n_before
        rate_a = np.bincount(rows[own][a, 1], weights=counts[a], minlength=U) / n_after
        growth = np.maximum(rate_a - rate_b, 0.0)
        new = (rate_a > 0) & (rate_b == 0)
        novel_share = rate_a[new].sum() / max(rate_a.sum(), 1e-9)
        out[s, :LOG_SCALARS] = [
            1.0,
            np.log1p(before_total / n_before),
            np.log1p(after_total / n_after),
            np.log1p(after_total / n_after) - np.log1p(before_total / n_before),
            err_b,
            err_a,
            err_a - err_b,
            warn_a - warn_b,
            novel_share,
            np.log1p(new.sum()),
        ]
        if rate_a.sum() > 0:
            out[s, LOG_SCALARS : LOG_SCALARS + DIM] = _unit(rate_a @ prep.template_vectors)
        if growth.sum() > 0:
            out[s, LOG_SCALARS + DIM :] = _unit(growth @ prep.template_vectors)
    return out


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector
