"""The call-gap trace term (issue #8): where requests start to wait between a caller and its callee.

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

from lemzha.scenario import Scenario

GAP_AFTER_BINS = 10  # 5 min from the onset: the same horizon the evidence uses
GAP_FEATURE = "edge_client_gap_ms"


def edge_gaps(scenario: Scenario, onset_bin: int) -> pd.DataFrame:
    """Per (client, server) edge measured on both sides of the onset: its median gap before and from the onset (ms)
    and the log rise (>= 0); indexed by (client, server), largest rise first."""
    edges = scenario.edges
    columns = ["before_ms", "after_ms", "rise"]
    if edges is None or not len(edges):
        return pd.DataFrame(columns=columns, dtype=np.float64)
    frame = edges.loc[edges[GAP_FEATURE].notna(), ["bin", "client", "server", GAP_FEATURE]]
    # a gap below 0 is clock skew between pods; it carries no waiting time
    frame = frame.assign(gap=frame[GAP_FEATURE].clip(lower=0.0))
    before = frame[frame["bin"] < onset_bin].groupby(["client", "server"])["gap"].median()
    after_rows = frame[(frame["bin"] >= onset_bin) & (frame["bin"] < onset_bin + GAP_AFTER_BINS)]
    after = after_rows.groupby(["client", "server"])["gap"].median()
    both = pd.concat({"before_ms": before, "after_ms": after}, axis=1).dropna().astype(np.float64)
    both["rise"] = (np.log1p(both["after_ms"]) - np.log1p(both["before_ms"])).clip(lower=0.0)
    return both.sort_values("rise", ascending=False, kind="stable")


def edge_gap_rise(scenario: Scenario, onset_bin: int) -> pd.Series:
    """Per (client, server) edge measured on both sides of the onset, the log rise of its median gap (>= 0)."""
    return edge_gaps(scenario, onset_bin)["rise"]


def trace_gap_scores(scenario: Scenario, onset_bin: int) -> dict[str, float]:
    """Per service of the scenario, the largest gap rise among the edges into it (0 without one)."""
    scores = dict.fromkeys(scenario.services, 0.0)
    rise = edge_gap_rise(scenario, onset_bin)
    if len(rise):
        for server, value in rise.groupby(level="server").max().items():
            if server in scores and np.isfinite(value):
                scores[str(server)] = float(value)
    return scores
