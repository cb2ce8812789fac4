"""The call-gap trace term (lemzha.tracegap), its baseline and its fusion with another ranker (lemzha.fusion)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lemzha.baselines import TraceGap
from lemzha.fusion import GAP_WEIGHTS, GapFusion, fuse, gap_term
from lemzha.ranking import Ranking
from lemzha.tracegap import GAP_AFTER_BINS, edge_gaps, trace_gap_scores
from tests.test_model import traced


def delayed(cause_server: str, wait_ms: float = 2000.0, seed: int = 0, from_bin: int = 20):
    """`traced` scenarios (charlie is the labelled cause) whose requests into `cause_server` wait `wait_ms` more on
    the client side from `from_bin` on: what a network delay on that service's pod looks like in the graph."""
    s = traced("charlie", seed)
    edges = s.edges.copy()
    hit = (edges["server"] == cause_server) & (edges["bin"] >= from_bin) & edges["covered"]
    edges.loc[hit, "client_duration_sum_ms"] += wait_ms * edges.loc[hit, "edge_requests"]
    return replace(s, edges=edges)


def test_the_edge_whose_gap_rises_names_its_callee():
    s = delayed("delta")
    rise = edge_gaps(s, 20)["rise"]
    assert rise[("charlie", "delta")] == pytest.approx(np.log1p(2003.0) - np.log1p(3.0))
    assert rise.drop(("charlie", "delta")).eq(0).all()  # the other edges keep their 3 ms gap
    scores = trace_gap_scores(s, 20)
    assert max(scores, key=scores.get) == "delta"
    assert scores["alpha"] == 0.0  # no edge into alpha: 0, not missing
    assert TraceGap().rank(s.without_label()).top(1) == ("delta",)


def test_a_rise_before_the_onset_or_after_the_horizon_is_not_counted():
    early = delayed("delta", from_bin=0)  # waits the whole window: no change at the onset
    assert edge_gaps(early, 20)["rise"].eq(0).all()
    late = delayed("delta", from_bin=20 + GAP_AFTER_BINS)  # only after the 10-bin horizon
    assert trace_gap_scores(late, 20)["delta"] == 0.0


def test_no_traces_and_negative_gaps_give_zero():
    s = traced("charlie", 0)
    bare = replace(s, service_metrics=None, edges=None)
    assert set(trace_gap_scores(bare, 20).values()) == {0.0}
    skewed = s.edges.copy()
    skewed["client_duration_sum_ms"] = skewed["duration_sum_ms"] - 50.0 * skewed["edge_requests"]  # clock skew
    assert set(trace_gap_scores(replace(s, edges=skewed), 20).values()) == {0.0}


def test_fusion_adds_the_weighted_term_and_weight_zero_is_the_base():
    s = delayed("delta").without_label()
    base = Ranking.from_scores({"alpha": 0.5, "bravo": 0.3, "charlie": 0.15, "delta": 0.05})
    assert fuse(base, gap_term(s), 0.0) is base
    gap = gap_term(s)
    fused = fuse(base, gap, 0.1)
    assert fused.top(1) == ("delta",)
    assert dict(zip(fused.services, fused.scores, strict=True))["delta"] == pytest.approx(0.05 + 0.1 * gap["delta"])
    assert fuse(base, gap, 0.0001).top(1) == ("alpha",)  # a small weight only breaks near-ties

    class Fixed:
        name = "fixed"
        fitted = False

        def fit(self, train):
            Fixed.fitted = True

        def rank(self, scenario):
            return base

    ranker = GapFusion(Fixed(), 0.1)
    ranker.fit([])
    assert Fixed.fitted and ranker.rank(s).top(1) == ("delta",)
    assert GapFusion(Fixed(), 0.0).rank(s) is base
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight"):
            GapFusion(Fixed(), bad)
    assert GAP_WEIGHTS[0] == 0.0 and list(GAP_WEIGHTS) == sorted(GAP_WEIGHTS)
