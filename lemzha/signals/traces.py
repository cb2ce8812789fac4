"""Trace signals, from the scenario's span series (service metrics and service-graph edges).

- `call_gap`: the largest rise of the client - server gap among the edges into a service (`lemzha.tracegap`): a
  network delay on a pod lengthens the calls into it, not its own server spans;
- `span_p95`: the rise of the service's server-span P95 latency, log(1 + median P95 after) - log(1 + median P95
  before), over covered bins only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lemzha.scenario import Scenario
from lemzha.tracegap import edge_gaps

TRACE_SIGNALS = ("call_gap", "span_p95")


def trace_signals(scenario: Scenario, onset_bin: int, horizon: int
                  ) -> tuple[tuple[str, ...], np.ndarray, dict[tuple[str, str], dict]]:
    """(signal names, (S, K) values, detail) for the trace signals."""
    services = scenario.services
    index = {s: i for i, s in enumerate(services)}
    values = np.zeros((len(services), len(TRACE_SIGNALS)))
    detail: dict[tuple[str, str], dict] = {}
    gaps = edge_gaps(scenario, onset_bin)
    for (client, server), row in gaps.iterrows():  # largest rise first: the first edge of a server is its best
        i = index.get(str(server))
        if i is None or row["rise"] <= values[i, 0]:
            continue
        values[i, 0] = float(row["rise"])
        detail[(str(server), "call_gap")] = {"client": str(client), "before_ms": round(float(row["before_ms"]), 1),
                                             "after_ms": round(float(row["after_ms"]), 1)}
    frame = scenario.service_metrics
    if frame is None or not len(frame):
        return TRACE_SIGNALS, values, detail
    bins = frame["bin"].to_numpy()
    side = np.where(bins < onset_bin, 0, np.where(bins < onset_bin + horizon, 1, -1))
    keep = side >= 0
    medians = (pd.DataFrame({"service": frame["service"].to_numpy(object)[keep], "side": side[keep],
                             "p95": frame["trace_latency_p95_ms"].to_numpy(np.float64)[keep]})
               .groupby(["service", "side"])["p95"].median().unstack("side").reindex(columns=[0, 1]))
    p95_before, p95_after = medians[0].to_numpy(), medians[1].to_numpy()
    rise = np.log1p(p95_after) - np.log1p(p95_before)
    for service, value, old, new in zip(medians.index, rise, p95_before, p95_after, strict=True):
        i = index.get(str(service))
        if i is not None and np.isfinite(value) and value > 0:
            values[i, 1] = float(value)
            detail[(str(service), "span_p95")] = {"before_ms": round(float(old), 1), "after_ms": round(float(new), 1)}
    return TRACE_SIGNALS, values, detail
