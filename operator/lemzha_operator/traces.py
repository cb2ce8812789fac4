"""Trace-derived series from Prometheus, with the catalog's live PromQL, as the Scenario's
`service_metrics` and `edges` frames (the same rows `offline.data.traces` derives from span files).

The OpenTelemetry collector's spanmetrics and servicegraph connectors (or Tempo's metrics-generator) export the
series; `lemzha.catalog` names them and their queries. Per bin (bin end - 1 ms, a 29,999 ms range, as the pod
metrics) the counts, duration sums and cumulative bucket counts are read; the Scenario derives means and quantiles
from the buckets (`lemzha.histogram`, Prometheus' own rule). A bin with no trace sample is not covered: its row is
NaN, never 0. A window without any trace series gives empty frames (the model then sees no traces).
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd

from lemzha.binning import BIN_SECONDS, as_utc
from lemzha.catalog import (
    BIN_RANGE,
    BUCKET_COLUMNS,
    EDGE_NAMESPACE_LABEL,
    GRAPH_CLIENT_SECONDS,
    GRAPH_SERVER_SECONDS,
    SPAN_BUCKETS_MS,
    TRACE_NAMESPACE_LABEL,
    edge_bucket_promql,
    promql_escape,
    service_bucket_promql,
    trace_feature,
)
from lemzha_operator.fetchers import SourceUnavailable, TracesFetcher
from lemzha_operator.prometheus import Grid, PrometheusUnavailable, RangeCache, range_grids, server_bin_range


def _edge_sum_promql(namespace: str, series: str = GRAPH_SERVER_SECONDS.name, bin_range: str = BIN_RANGE) -> str:
    sel = f'{EDGE_NAMESPACE_LABEL}="{promql_escape(namespace)}"'
    return f"sum by (client, server) (increase({series}_sum{{{sel}}}[{bin_range}]))"


def queries(namespace: str, bin_range: str = BIN_RANGE) -> dict[str, str]:
    """The live PromQL of every trace input, from the catalog (namespace label: the catalog's defaults), with the
    server's one-bin range (`prometheus.server_bin_range`)."""
    mean = trace_feature("trace_latency_mean_ms").promql(namespace, TRACE_NAMESPACE_LABEL, bin_range)
    return {
        "service_calls": trace_feature("trace_calls").promql(namespace, TRACE_NAMESPACE_LABEL, bin_range),
        "service_sum_ms": mean.split(" / ")[0],  # the numerator of the catalog's mean: the bin's duration sum
        "service_buckets": service_bucket_promql(namespace, bin_range=bin_range),
        "edge_requests": trace_feature("edge_requests").promql(namespace, EDGE_NAMESPACE_LABEL, bin_range),
        "edge_sum_s": _edge_sum_promql(namespace, bin_range=bin_range),
        "edge_client_sum_s": _edge_sum_promql(namespace, GRAPH_CLIENT_SECONDS.name, bin_range),
        "edge_buckets": edge_bucket_promql(namespace, bin_range=bin_range),
    }


def _bucket_index(le: str, scale_to_ms: float) -> int | None:
    value = float(le)
    if math.isinf(value):
        return len(BUCKET_COLUMNS) - 1
    value_ms = value * scale_to_ms
    for i, bound in enumerate(SPAN_BUCKETS_MS):
        if abs(value_ms - bound) <= 1e-9 * bound:
            return i
    return None  # a bucket layout other than the catalog's: ignored


def fetch_traces(prom, namespace: str, start: datetime, n_bins: int, services: set[str],
                 bin_seconds: int = BIN_SECONDS, timeout: float = 30.0,
                 cache: RangeCache | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(service_metrics, edges) base columns for the window; only services in `services` (edges: both ends).
    `cache` keeps settled points for the next window (`prometheus.RangeCache`)."""
    start_s = as_utc(start).timestamp()
    first = start_s + bin_seconds - 0.001
    q = queries(namespace, server_bin_range(prom, timeout=timeout))

    def grid(series: Grid, keys: tuple[str, ...]) -> dict[tuple, np.ndarray]:
        out: dict[tuple, np.ndarray] = {}
        for labels, samples in series:
            values = out.setdefault(tuple(labels.get(k, "") for k in keys), np.full(n_bins, np.nan))
            values[:] = np.where(np.isnan(samples), values, samples)  # a later series of the key adds to it
        return out

    keys = {"service_calls": ("service_name",), "service_sum_ms": ("service_name",),
            "service_buckets": ("service_name", "le"), "edge_requests": ("client", "server"),
            "edge_sum_s": ("client", "server"), "edge_client_sum_s": ("client", "server"),
            "edge_buckets": ("client", "server", "le")}
    answers = dict(zip(keys, range_grids(prom, [q[name] for name in keys], first, n_bins, bin_seconds, timeout,
                                         cache=cache), strict=True))
    calls = {k: v for k, v in grid(answers["service_calls"], keys["service_calls"]).items() if k[0] in services}
    sums = grid(answers["service_sum_ms"], keys["service_sum_ms"])
    service_buckets = grid(answers["service_buckets"], keys["service_buckets"])
    requests = {k: v for k, v in grid(answers["edge_requests"], keys["edge_requests"]).items()
                if k[0] in services and k[1] in services}
    edge_sums = grid(answers["edge_sum_s"], keys["edge_sum_s"])
    edge_client_sums = grid(answers["edge_client_sum_s"], keys["edge_client_sum_s"])
    edge_buckets = grid(answers["edge_buckets"], keys["edge_buckets"])

    covered = np.zeros(n_bins, bool)
    for found in (calls, requests):
        for values in found.values():
            covered |= ~np.isnan(values)
    if not covered.any():
        from lemzha.scenario import empty_edges, empty_service_metrics

        return empty_service_metrics(), empty_edges()

    def frame(counts: dict, total: dict, buckets: dict, key_names: tuple[str, ...], count_col: str,
              to_ms: float, client_total: dict | None = None) -> pd.DataFrame:
        cumulative: dict[tuple, np.ndarray] = {}
        for key, values in buckets.items():
            index = _bucket_index(key[-1], to_ms)
            if index is not None and key[:-1] in counts:
                cumulative.setdefault(key[:-1], np.zeros((n_bins, len(BUCKET_COLUMNS))))[:, index] = np.nan_to_num(
                    values)
        ordered = sorted(counts)
        if not ordered:
            return pd.DataFrame()
        gone = np.tile(~covered, len(ordered))  # bins without any trace series: every value unknown, not zero
        count = np.concatenate([np.nan_to_num(counts[key]) for key in ordered])
        columns: dict[str, object] = {"bin": np.tile(np.arange(n_bins), len(ordered))}
        for i, name in enumerate(key_names):
            columns[name] = np.repeat(np.array([key[i] for key in ordered], dtype=object), n_bins)
        columns["covered"] = ~gone
        columns[count_col] = np.where(gone, np.nan, count)
        duration = np.concatenate([np.nan_to_num(total.get(key, np.zeros(n_bins))) for key in ordered]) * to_ms
        columns["duration_sum_ms"] = np.where(gone, np.nan, duration)
        table = np.concatenate([cumulative.get(key, np.zeros((n_bins, len(BUCKET_COLUMNS)))) for key in ordered])
        table[:, -1] = count  # le_inf: every call
        for c, name in enumerate(BUCKET_COLUMNS):
            columns[name] = np.where(gone, np.nan, table[:, c])
        if client_total is not None:
            # the edges' client side; a missing client series reads as no time outside the server span
            client = np.concatenate([np.nan_to_num(client_total.get(key, total.get(key, np.zeros(n_bins))))
                                     for key in ordered]) * to_ms
            columns["client_duration_sum_ms"] = np.where(gone, np.nan, client)
        return pd.DataFrame(columns)

    service_metrics = frame(calls, sums, service_buckets, ("service",), "trace_calls", 1.0)
    edges = frame(requests, edge_sums, edge_buckets, ("client", "server"), "edge_requests", 1000.0,
                  edge_client_sums)
    return service_metrics, edges


def traces_fetcher(prom, timeout: float = 30.0, cache: RangeCache | None = None) -> TracesFetcher:
    """`fetch_traces` bound to `prom`; an outage becomes `SourceUnavailable("PrometheusUnavailable", ...)`."""
    def fetch(namespace: str, start: datetime, n_bins: int, services: set) -> tuple[pd.DataFrame, pd.DataFrame]:
        try:
            return fetch_traces(prom, namespace, start, n_bins, services, timeout=timeout, cache=cache)
        except PrometheusUnavailable as err:
            raise SourceUnavailable("PrometheusUnavailable", str(err), err.kind) from err

    return fetch
