import json

import pytest

from lemzha.baselines import Baro
from lemzha_operator.analysis import MAX_EVIDENCE, analyze

TT_CPU = "nezha/20230129_00"  # a TrainTicket cpu_contention fault


def test_status_names_the_cause_with_bounded_evidence(prepared):
    scenario = prepared.load(TT_CPU)
    status = analyze(scenario.without_label(), Baro(), top_k=5)
    causes = status["rootCauses"]
    assert [c["rank"] for c in causes] == [1, 2, 3, 4, 5]
    assert causes[0]["score"] >= causes[-1]["score"]
    for cause in causes:
        assert len(cause["evidence"]["metrics"]) <= MAX_EVIDENCE and len(cause["evidence"]["logs"]) <= MAX_EVIDENCE
        zs = [m["z"] for m in cause["evidence"]["metrics"]]
        assert zs == sorted(zs, reverse=True)
    assert status["onset"]["source"] == "given"
    assert status["dataCoverage"] == {"pods": 46, "metrics": 18, "logLines": int(scenario.logs["count"].sum()),
                                      "bins": scenario.n_bins}
    assert len(json.dumps(status)) < 20_000  # small enough for an object's status


def test_evidence_of_the_true_cause_shows_its_anomaly(prepared):
    scenario = prepared.load(TT_CPU)
    status = analyze(scenario.without_label(), Baro(), top_k=46)
    truth = next(c for c in status["rootCauses"] if c["service"] == scenario.label.root_cause_service)
    assert truth["evidence"]["metrics"] and truth["evidence"]["metrics"][0]["z"] > 3


def test_without_onset_the_onset_is_estimated(prepared):
    scenario = prepared.load(TT_CPU).without_label().with_onset(None)
    status = analyze(scenario, Baro(), top_k=3)
    assert status["onset"]["source"] == "estimated" and len(status["rootCauses"]) == 3


def test_labelled_scenarios_are_refused(prepared):
    with pytest.raises(ValueError, match="no label"):
        analyze(prepared.load(TT_CPU), Baro(), top_k=3)


TT_DELAY = "nezha/20230130_00"  # a TrainTicket network_delay on ts-contacts-service


def test_trace_evidence_shows_the_calls_waiting_on_a_delayed_service(prepared):
    from lemzha.baselines import TraceGap

    scenario = prepared.load(TT_DELAY)
    status = analyze(scenario.without_label(), TraceGap(), top_k=3)
    top = status["rootCauses"][0]
    assert top["service"] == scenario.label.root_cause_service == "ts-contacts-service"
    edges = top["evidence"]["traces"]
    assert 0 < len(edges) <= MAX_EVIDENCE
    assert all(e["gapAfterMs"] > 10 * max(e["gapBeforeMs"], 1.0) for e in edges)  # ~3 ms before, seconds after
    assert {e["client"] for e in edges} <= set(scenario.services)
    assert len(json.dumps(status)) < 20_000


def test_no_traces_no_trace_evidence(prepared):
    from dataclasses import replace

    scenario = replace(prepared.load(TT_DELAY), service_metrics=None, edges=None).without_label()
    status = analyze(scenario, Baro(), top_k=3)
    assert all(c["evidence"]["traces"] == [] for c in status["rootCauses"])
