"""Metric signals: how far each pod metric moved from its pre-onset median, in robust sigmas (1.4826 MAD, never
below the metric type's resolution, `lemzha.catalog.RESOLUTION`).

A signal groups the catalog metrics that measure one thing (`METRIC_SIGNALS`). Resources and latencies count only
when they rise (a fault consumes CPU or slows requests; a drop follows from less traffic), traffic and I/O count
either way. Node-scoped metrics are left out: they are copied onto every pod of a node, so they cannot point at one
service. A service takes the largest value over its pods and the group's metrics.
"""

from __future__ import annotations

import warnings

import numpy as np

from lemzha.catalog import RESOLUTION, spec
from lemzha.evidence import IQR_FLOOR_ABS, robust_deviation
from lemzha.memo import memo
from lemzha.scenario import Scenario
from lemzha.signals import best_per_group

# signal -> (catalog metrics, counts a rise only)
METRIC_SIGNALS: dict[str, tuple[tuple[str, ...], bool]] = {
    "cpu": (("cpu_millicores", "cpu_percent"), True),
    "memory": (("memory_bytes", "memory_percent"), True),
    "server_latency": (("latency_server_p90", "latency_server_p95", "latency_server_p99"), True),
    "client_latency": (("latency_client_p90", "latency_client_p95", "latency_client_p99"), True),
    "workload": (("workload",), False),
    "network": (("network_receive", "network_transmit"), False),
    "syscalls": (("syscall_read", "syscall_write"), False),
}


def metric_signals(scenario: Scenario, onset_bin: int, horizon: int
                   ) -> tuple[tuple[str, ...], np.ndarray, dict[tuple[str, str], dict]]:
    """(signal names, (S, K) values, detail) for the metric signals."""
    services = scenario.services
    names = tuple(METRIC_SIGNALS)
    values = np.zeros((len(services), len(names)))
    detail: dict[tuple[str, str], dict] = {}
    after = slice(onset_bin, min(scenario.n_bins, onset_bin + horizon))
    columns = {m: j for j, m in enumerate(scenario.metrics)}
    wanted = sorted({columns[m] for group, _ in METRIC_SIGNALS.values() for m in group if m in columns})
    if not wanted or after.start >= after.stop:
        return names, values, detail
    series = memo(scenario, "metric_series", lambda: _float64_columns(scenario.values, wanted))
    resolution = np.array([RESOLUTION.get(spec(scenario.metrics[c]).type, IQR_FLOOR_ABS) for c in wanted])
    deviation = robust_deviation(series, onset_bin, spread="mad", resolution=resolution, rows=after)  # (H, P, m)
    position = {c: i for i, c in enumerate(wanted)}
    pod_service = scenario.pod_service_index()
    for k, (signal, (group, rise_only)) in enumerate(METRIC_SIGNALS.items()):
        present = [m for m in group if m in columns]
        if not present:
            continue
        block = deviation[:, :, [position[columns[m]] for m in present]]
        block = block if rise_only else np.abs(block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # series without a sample after the onset
            peak = np.nanmax(block, axis=0)  # (P, len(present))
        peak = np.where(np.isnan(peak), 0.0, np.maximum(peak, 0.0))
        best_metric = np.argmax(peak, axis=1)
        pod_peak = peak[np.arange(len(peak)), best_metric]
        best, pod = best_per_group(pod_peak, pod_service, len(services))
        for s in np.flatnonzero(best > 0):
            values[s, k] = best[s]
            detail[(services[s], signal)] = {"metric": present[best_metric[pod[s]]], "pod": scenario.pods[pod[s]],
                                             "z": round(float(best[s]), 2)}
    return names, values, detail


def _float64_columns(values: np.ndarray, columns: list[int]) -> np.ndarray:
    """values[:, :, columns] as float64, column by column: no float32 copy of the whole selection on the way."""
    out = np.empty((*values.shape[:2], len(columns)))
    for j, c in enumerate(columns):
        out[:, :, j] = values[:, :, c]
    return out
