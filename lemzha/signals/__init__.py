"""Per-service anomaly signals of one scenario: what moved, on which service, and by how much.

Every signal compares the bins from the onset (`HORIZON_BINS` of them) with the scenario's own bins before the onset
(the reference), per service, and is >= 0 (0: no evidence, or no data). None reads a label or a service name, so a
consistent renaming of services permutes the table and changes nothing else.

- metrics (`lemzha.signals.metrics`): the robust z of a pod metric's rise over its reference median, max over the
  service's pods: `cpu`, `memory`, `server_latency`, `client_latency`, `workload`, `network`, `syscalls`;
- logs (`lemzha.signals.logs`): overdispersion-aware z-scores of error lines rising (`log_errors`), a log event that
  the service wrote steadily going quiet (`log_vanished`), events never seen in the reference (`log_new`), and the
  service's log volume dropping (`log_volume_drop`);
- traces (`lemzha.signals.traces`): the call gap rising on the edges into a service (`call_gap`) and its server
  spans' P95 rising (`span_p95`).

`SignalTable.detail` keeps what a person needs to read an alert: the metric and pod, the log event, the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lemzha.memo import memo
from lemzha.scenario import Scenario

HORIZON_BINS = 10  # 5 min from the onset: the fault itself, not its aftermath (fixed before any evaluation)
STARVED_CPU_Z = 3.0  # a caller whose CPU rose this many robust sigmas delays its own outgoing calls


@dataclass(frozen=True)
class SignalTable:
    """`values[i, j]`: signal `signals[j]` of service `services[i]`, >= 0. `detail[(service, signal)]` describes
    the strongest piece of evidence behind a non-zero value."""

    services: tuple[str, ...]
    signals: tuple[str, ...]
    values: np.ndarray
    detail: dict[tuple[str, str], dict] = field(default_factory=dict)
    calls: tuple[tuple[str, str], ...] = ()  # (caller, callee) pairs the window's traces saw, callers != callees

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.shape != (len(self.services), len(self.signals)):
            raise ValueError(f"signal values {values.shape} != ({len(self.services)}, {len(self.signals)})")
        if np.isnan(values).any() or (values < 0).any():
            raise ValueError("signal values must be finite and >= 0")
        object.__setattr__(self, "values", values)

    def column(self, signal: str) -> np.ndarray:
        return self.values[:, self.signals.index(signal)]

    def select(self, signals: tuple[str, ...]) -> np.ndarray:
        """The (S, len(signals)) block of the named signals; a signal this table lacks reads as 0."""
        out = np.zeros((len(self.services), len(signals)))
        for j, name in enumerate(signals):
            if name in self.signals:
                out[:, j] = self.column(name)
        return out


def best_per_group(scores: np.ndarray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(largest score per group, index of the item holding it); groups without items get -inf and -1."""
    best = np.full(n_groups, -np.inf)
    where = np.full(n_groups, -1, dtype=np.int64)
    if len(scores):
        order = np.lexsort((-scores, group))
        first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
        best[group[first]] = scores[first]
        where[group[first]] = first
    return best, where


def signal_names() -> tuple[str, ...]:
    """Every signal a table has, in table order."""
    from lemzha.signals.logs import LOG_SIGNALS
    from lemzha.signals.metrics import METRIC_SIGNALS
    from lemzha.signals.traces import TRACE_SIGNALS

    return (*METRIC_SIGNALS, *LOG_SIGNALS, *TRACE_SIGNALS)


def signal_table(scenario: Scenario, onset_bin: int, horizon: int = HORIZON_BINS) -> SignalTable:
    """Every signal of every service of `scenario`, the reference being the bins before `onset_bin`."""
    from lemzha.signals.logs import log_signals
    from lemzha.signals.metrics import metric_signals
    from lemzha.signals.traces import trace_signals

    onset_bin = int(np.clip(onset_bin, 1, max(1, scenario.n_bins - 1)))
    metrics = metric_signals(scenario, onset_bin, horizon)
    cpu = metrics[1][:, metrics[0].index("cpu")]
    starved = frozenset(s for s, z in zip(scenario.services, cpu, strict=True) if z >= STARVED_CPU_Z)
    parts = [metrics, log_signals(scenario, onset_bin, horizon), trace_signals(scenario, onset_bin, horizon, starved)]
    names = tuple(name for part in parts for name in part[0])
    values = np.concatenate([part[1] for part in parts], axis=1)
    detail = {key: value for part in parts for key, value in part[2].items()}
    return SignalTable(scenario.services, names, values, detail, memo(scenario, "calls", lambda: _calls(scenario)))


def _calls(scenario: Scenario) -> tuple[tuple[str, str], ...]:
    edges = scenario.edges
    if edges is None or not len(edges):
        return ()
    client, clients = pd.factorize(edges["client"])
    server, servers = pd.factorize(edges["server"])
    pairs = np.unique(client.astype(np.int64) * len(servers) + server)
    named = ((str(clients[p // len(servers)]), str(servers[p % len(servers)])) for p in pairs.tolist())
    return tuple(sorted((a, b) for a, b in named if a != b))
