"""Trace signals, from the scenario's span series (service metrics and service-graph edges).

- `call_gap`: the largest rise of the client - server gap among the edges into a service (`lemzha.tracegap`): a
  network delay on a pod lengthens the calls into it, not its own server spans;
- `span_p95`: the rise of the service's server-span P95 latency, log(1 + median P95 after) - log(1 + median P95
  before), over covered bins only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lemzha.memo import memo
from lemzha.scenario import Scenario
from lemzha.signals import best_per_group
from lemzha.tracegap import gap_rises

TRACE_SIGNALS = ("call_gap", "span_p95")


def trace_signals(scenario: Scenario, onset_bin: int, horizon: int, starved: frozenset[str] = frozenset()
                  ) -> tuple[tuple[str, ...], np.ndarray, dict[tuple[str, str], dict]]:
    """(signal names, (S, K) values, detail) for the trace signals. The edges of `starved` callers (their CPU rose
    with the fault: a caller waiting for CPU is slow to finish its own outgoing calls, which widens the gap of
    every call it makes) say nothing about their callees and are left out of `call_gap`."""
    services = scenario.services
    index = {s: i for i, s in enumerate(services)}
    values = np.zeros((len(services), len(TRACE_SIGNALS)))
    detail: dict[tuple[str, str], dict] = {}
    clients, servers, before, after, rise = gap_rises(scenario, onset_bin)
    if len(rise):
        owner = np.array([index.get(s, -1) for s in servers], dtype=np.int64)
        known = (owner >= 0) & ~np.isin(np.asarray(clients, dtype=object), list(starved))
        best, where = best_per_group(rise[known], owner[known], len(services))
        items = np.flatnonzero(known)
        for i in np.flatnonzero(best > 0):
            e = items[where[i]]
            values[i, 0] = best[i]
            detail[(services[i], "call_gap")] = {"client": clients[e], "before_ms": round(float(before[e]), 1),
                                                 "after_ms": round(float(after[e]), 1)}
    frame = scenario.service_metrics
    if frame is None or not len(frame):
        return TRACE_SIGNALS, values, detail
    code, names, bins, p95 = memo(scenario, "span_p95", lambda: _span_p95(frame))
    side = np.where(bins < onset_bin, 0, np.where(bins < onset_bin + horizon, 1, -1))
    p95_before, p95_after = (_group_median(code[side == k], p95[side == k], len(names)) for k in (0, 1))
    rise = np.log1p(p95_after) - np.log1p(p95_before)
    for service, value, old, new in zip(names, rise, p95_before, p95_after, strict=True):
        i = index.get(str(service))
        if i is not None and np.isfinite(value) and value > 0:
            values[i, 1] = float(value)
            detail[(str(service), "span_p95")] = {"before_ms": round(float(old), 1), "after_ms": round(float(new), 1)}
    return TRACE_SIGNALS, values, detail


def _span_p95(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(service codes, service names, bins, P95) of the covered service bins that had calls (onset-free)."""
    p95 = frame["trace_latency_p95_ms"].to_numpy(np.float64)
    keep = ~np.isnan(p95)
    code, names = pd.factorize(frame["service"].to_numpy(object)[keep])
    return code.astype(np.int64), np.asarray(names, dtype=object), frame["bin"].to_numpy()[keep], p95[keep]


def _group_median(code: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of `values` per group code; NaN for a group without values."""
    out = np.full(n_groups, np.nan)
    if not len(code):
        return out
    order = np.lexsort((values, code))
    code, values = code[order], values[order]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    counts = np.diff(np.r_[starts, len(code)])
    out[code[starts]] = (values[starts + (counts - 1) // 2] + values[starts + counts // 2]) / 2
    return out
