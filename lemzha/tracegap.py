"""The call-gap trace term: where requests start to wait between a caller and its callee.

A network delay on a pod does not lengthen its own server spans; it lengthens its callers' outgoing calls. The
service graph shows it as a rise in the *gap* of the edges into the pod: the client-side minus the server-side
duration of a request (`edge_client_gap_ms` in the catalog). The rise of an edge is

    max(0, log((1 + median gap from onset) / (1 + median gap before onset)))

over its covered bins in the `GAP_AFTER_BINS` from the onset and all covered bins before it, and a service scores
the largest rise among the edges it serves. Training-free and label-free; 0 for a service without a measured
edge on both sides (e.g. a scenario without traces), so the term then changes no ranking it is added to.
`lemzha.fusion` adds it to the model's scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lemzha.memo import memo
from lemzha.scenario import Scenario

GAP_AFTER_BINS = 10  # 5 min from the onset: the fault, not what follows it (set before any run, not tuned)
GAP_FEATURE = "edge_client_gap_ms"


def _measured_gaps(scenario: Scenario) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(client codes, client names, server codes, server names, bins, gaps) of the measured edge bins; onset-free,
    so remembered per scenario (`lemzha.memo`)."""
    edges = scenario.edges
    if edges is None or not len(edges):
        return (np.zeros(0, np.int64),) * 6
    gap = edges[GAP_FEATURE].to_numpy(np.float64)
    keep = ~np.isnan(gap)
    client_code, client_names = pd.factorize(edges["client"].loc[keep], sort=True)
    server_code, server_names = pd.factorize(edges["server"].loc[keep], sort=True)
    gap = np.maximum(gap[keep], 0.0)  # a gap below 0 is clock skew between pods; it carries no waiting time
    return (client_code.astype(np.int64), client_names, server_code.astype(np.int64), server_names,
            edges["bin"].to_numpy()[keep], gap)


def _gap_arrays(scenario: Scenario, onset_bin: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(clients, servers, median gap before, median gap from the onset) of the edges measured on both sides, in
    (client, server) order. numpy, not groupby: the operator ranks with this term, and groupby costs ~6 ms."""
    client_code, client_names, server_code, server_names, bins, gap = memo(
        scenario, "measured_gaps", lambda: _measured_gaps(scenario))
    keep = bins < onset_bin + GAP_AFTER_BINS
    if not keep.any():
        return [], [], np.zeros(0), np.zeros(0)
    client_code, server_code, gap, bins = client_code[keep], server_code[keep], gap[keep], bins[keep]
    side = (bins >= onset_bin).astype(np.int64)  # 0 before the onset, 1 from it
    n_servers = len(server_names)
    group = (client_code * n_servers + server_code) * 2 + side
    order = np.lexsort((gap, group))  # by group, then gap: each group's values sorted, for its median
    group, values = group[order], gap[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    counts = np.diff(np.r_[starts, len(group)])
    medians = (values[starts + (counts - 1) // 2] + values[starts + counts // 2]) / 2
    labels = group[starts]
    pairs_before, pairs_after = labels[labels % 2 == 0] // 2, labels[labels % 2 == 1] // 2
    both = np.intersect1d(pairs_before, pairs_after)  # sorted codes = (client, server) order
    before = medians[labels % 2 == 0][np.searchsorted(pairs_before, both)]
    after = medians[labels % 2 == 1][np.searchsorted(pairs_after, both)]
    clients = [str(client_names[p // n_servers]) for p in both.tolist()]
    servers = [str(server_names[p % n_servers]) for p in both.tolist()]
    return clients, servers, before, after


def _rise(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.maximum(np.log1p(after) - np.log1p(before), 0.0)


def gap_rises(scenario: Scenario, onset_bin: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(clients, servers, median gap before, median gap from the onset, rise) per edge measured on both sides."""
    clients, servers, before, after = _gap_arrays(scenario, onset_bin)
    return clients, servers, before, after, _rise(before, after)


def edge_gaps(scenario: Scenario, onset_bin: int) -> pd.DataFrame:
    """Per (client, server) edge measured on both sides of the onset: its median gap before and from the onset (ms)
    and the log rise (>= 0); indexed by (client, server), largest rise first (ties in (client, server) order)."""
    clients, servers, before, after = _gap_arrays(scenario, onset_bin)
    frame = pd.DataFrame({"before_ms": before, "after_ms": after, "rise": _rise(before, after)},
                         index=pd.MultiIndex.from_arrays([clients, servers], names=["client", "server"]))
    return frame.sort_values("rise", ascending=False, kind="stable")


def trace_gap_scores(scenario: Scenario, onset_bin: int) -> dict[str, float]:
    """Per service of the scenario, the largest gap rise among the edges into it (0 without one)."""
    scores = dict.fromkeys(scenario.services, 0.0)
    _, servers, before, after = _gap_arrays(scenario, onset_bin)
    for server, value in zip(servers, _rise(before, after).tolist(), strict=True):
        if server in scores and value > scores[server]:
            scores[server] = value
    return scores
