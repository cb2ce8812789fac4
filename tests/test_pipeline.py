"""The incident pipeline without a cluster: fake sources around real scenarios."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from lemzha.baselines import Baro
from lemzha.binning import rfc3339
from lemzha_operator.fetchers import SourceUnavailable
from lemzha_operator.pipeline import build_scenario, step

CASE = "nezha/20230129_05"


@pytest.fixture(scope="module")
def case(prepared):
    return prepared.load(CASE)


def spec_for(scenario, **extra):
    return {"faultTime": scenario.label.injection_time.isoformat(), "before": "60m", "after": "10m", **extra}


def sources(scenario, metrics_error=None, logs_error=None, empty=False):
    calls = {"metrics": 0, "logs": 0}

    def fetch_metrics(namespace, start, n_bins):
        calls["metrics"] += 1
        if metrics_error:
            raise metrics_error
        assert namespace == scenario.namespace
        shift = scenario.bin_of(start)
        values = scenario.values[shift:shift + n_bins]
        return (scenario.pods, np.full_like(values, np.nan) if empty else values, scenario.metrics)

    def fetch_logs(namespace, start, n_bins, pod_service):
        calls["logs"] += 1
        if logs_error:
            raise logs_error
        logs = scenario.logs.copy()
        logs["bin"] -= scenario.bin_of(start)
        return logs.loc[(logs["bin"] >= 0) & (logs["bin"] < n_bins)]

    return fetch_metrics, fetch_logs, calls


def run(case, spec, status=None, now_offset=timedelta(days=1), created_offset=timedelta(0), store=None,
        pod_info=None, attempt=0, backoff=lambda a: 30.0, **kw):
    fm, fl, calls = sources(case, **kw)
    now = case.label.injection_time + now_offset
    outcome = step(case.id, spec, status or {}, case.namespace, now, now - created_offset, fm, fl, Baro(),
                   fetch_pod_info=pod_info, store=store, attempt=attempt, backoff=backoff)
    return outcome, calls


def test_completed_incident_ranks_like_the_offline_ranker(case):
    outcome, calls = run(case, spec_for(case, topK=3))
    assert outcome.phase == "Completed" and outcome.retry_after is None
    offline = Baro().rank(case.without_label())
    assert [c["service"] for c in outcome.status["rootCauses"]] == list(offline.top(3))
    assert outcome.status["onset"]["source"] == "given"
    kinds = {c["type"]: c for c in outcome.conditions}
    assert set(kinds) == {"DataFetched", "Degraded", "Analyzed", "Ready"}
    assert kinds["Degraded"]["status"] == "False" and outcome.status["method"] == "baro"
    assert outcome.status["dataCoverage"]["logs"] == "complete"
    assert outcome.status["dataCoverage"]["missingMetrics"] == []
    assert calls == {"metrics": 1, "logs": 1}
    assert {"metrics", "logs", "scenario", "rank"} <= set(outcome.timings) and outcome.source_errors == []


def test_live_scenario_equals_the_offline_one(case):
    from lemzha_operator.window import resolve_window

    window = resolve_window(spec_for(case), case.label.injection_time + timedelta(days=1))
    assert window.start == case.start and window.n_bins == case.n_bins
    live = build_scenario(case.id, case.namespace, window, case.pods, case.values, case.metrics, case.logs)
    assert live.pods == case.pods and live.services == case.services and live.metrics == case.metrics
    np.testing.assert_array_equal(live.mask, case.mask)
    np.testing.assert_allclose(live.values[live.mask], case.values[case.mask])


def test_invalid_spec_fails_permanently(case):
    outcome, calls = run(case, {"recent": "10 minutes"})
    assert outcome.phase == "Failed" and outcome.permanent
    assert outcome.conditions[0]["reason"] == "InvalidSpec" and calls["metrics"] == 0


def test_window_in_the_future_waits_then_times_out(case):
    outcome, _ = run(case, spec_for(case), now_offset=timedelta(minutes=5))
    assert outcome.phase == "Pending" and 0 < outcome.retry_after <= 300
    assert outcome.conditions[0]["reason"] == "WaitingForWindow"
    outcome, _ = run(case, spec_for(case, timeoutSeconds=60), now_offset=timedelta(minutes=5),
                     created_offset=timedelta(minutes=2))
    assert outcome.phase == "Failed" and outcome.conditions[0]["reason"] == "DataUnavailable"
    assert "timeoutSeconds=60" in outcome.conditions[0]["message"]


def test_prometheus_down_retries_with_backoff_then_fails_at_the_timeout(case):
    down = SourceUnavailable("PrometheusUnavailable", "refused", kind="timeout")
    delays = [run(case, spec_for(case), metrics_error=down, attempt=a, backoff=lambda a: 2.0 ** a)[0].retry_after
              for a in range(4)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    outcome, _ = run(case, spec_for(case), metrics_error=down)
    assert outcome.phase == "Analyzing" and not outcome.permanent
    kinds = {c["type"]: c for c in outcome.conditions}
    assert kinds["Degraded"]["status"] == "True" and kinds["Degraded"]["reason"] == "PrometheusUnavailable"
    assert kinds["DataFetched"]["status"] == "False" and outcome.source_errors == [("prometheus", "timeout")]
    # the next try never lands far past the deadline
    late, _ = run(case, spec_for(case, timeoutSeconds=100), metrics_error=down, created_offset=timedelta(seconds=95),
                  backoff=lambda a: 300.0)
    assert late.phase == "Analyzing" and late.retry_after == 6.0
    failed, _ = run(case, spec_for(case, timeoutSeconds=100), metrics_error=down,
                    created_offset=timedelta(seconds=101))
    assert failed.phase == "Failed" and failed.permanent
    assert failed.conditions[0]["reason"] == "DataUnavailable" and "refused" in failed.conditions[0]["message"]


def test_loki_down_gives_a_metrics_only_answer_that_says_so(case):
    outcome, _ = run(case, spec_for(case), logs_error=SourceUnavailable("LokiUnavailable", "refused"))
    assert outcome.phase == "Completed" and outcome.status["method"] == "baro (metrics only)"
    degraded = {c["type"]: c for c in outcome.conditions}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "LokiUnavailable"
    assert outcome.status["dataCoverage"]["logs"] == "unavailable" and outcome.status["dataCoverage"]["logLines"] == 0
    assert outcome.source_errors == [("loki", "unreachable")]


def test_truncated_logs_and_prometheus_warnings_are_surfaced(case):
    fm, fl, _ = sources(case)

    def truncated_logs(*args):
        logs = fl(*args)
        logs.attrs["truncated"] = True
        return logs

    def warned_metrics(*args):
        from lemzha_operator.prometheus import FetchedMetrics

        return FetchedMetrics(*fm(*args), warnings=("partial response: store s3 unreachable",))

    now = case.label.injection_time + timedelta(days=1)
    outcome = step(case.id, spec_for(case), {}, case.namespace, now, now, warned_metrics, truncated_logs, Baro(),
                   log_cap=1000)
    assert outcome.phase == "Completed"
    coverage = outcome.status["dataCoverage"]
    assert coverage["logs"] == "truncated" and coverage["logLinesCap"] == 1000
    assert coverage["warnings"] == ["partial response: store s3 unreachable"]
    degraded = {c["type"]: c for c in outcome.conditions}["Degraded"]
    assert degraded["reason"] == "LogsTruncated" and "(1000)" in degraded["message"]
    assert "s3 unreachable" in degraded["message"]


def test_absent_metrics_are_listed_and_make_the_answer_degraded(case):
    """A cluster without a mesh: the latency and workload metrics are absent for every pod. The incident still
    completes, status.dataCoverage.missingMetrics names them and Degraded=True/MetricsMissing says so; a source
    outage stays the condition's reason, with both messages."""
    fm, fl, _ = sources(case)
    absent = [m for m in case.metrics if m.startswith("latency_") or m == "workload"]

    def mesh_less(*args):
        pods, values, names = fm(*args)
        values = values.copy()
        values[:, :, [names.index(m) for m in absent]] = np.nan
        return pods, values, names

    now = case.label.injection_time + timedelta(days=1)
    outcome = step(case.id, spec_for(case), {}, case.namespace, now, now, mesh_less, fl, Baro())
    assert outcome.phase == "Completed" and len(absent) == 7
    assert outcome.status["dataCoverage"]["missingMetrics"] == absent
    assert outcome.status["dataCoverage"]["metrics"] == len(case.metrics) - 7
    degraded = {c["type"]: c for c in outcome.conditions}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "MetricsMissing"
    assert f"ranked without 7 of its {len(case.metrics)} input metrics" in degraded["message"]
    assert all(m in degraded["message"] for m in absent) and "lemzha_operator.doctor" in degraded["message"]

    def loki_down(*args):
        raise SourceUnavailable("LokiUnavailable", "refused")

    both = step(case.id, spec_for(case), {}, case.namespace, now, now, mesh_less, loki_down, Baro())
    degraded = {c["type"]: c for c in both.conditions}["Degraded"]
    assert degraded["reason"] == "LokiUnavailable" and "workload" in degraded["message"]


def test_no_data_fails_with_a_reason(case):
    outcome, _ = run(case, spec_for(case), empty=True)
    assert outcome.phase == "Failed" and outcome.conditions[0]["reason"] == "DataUnavailable"


def test_frozen_window_is_reused_on_retry(case):
    first, _ = run(case, spec_for(case), now_offset=timedelta(minutes=5))
    again, _ = run(case, {"recent": "15m"}, status=first.status)  # the spec is ignored once a window is frozen
    assert again.status["resolvedWindow"] == first.status["resolvedWindow"]
    # the given onset is frozen with the window; status.onset is written by the analysis only, and says "given"
    assert first.phase == "Pending" and "onset" not in first.status
    assert first.status["resolvedWindow"]["onset"] == rfc3339(case.label.injection_time)
    assert again.status["onset"]["source"] == "given"


def test_a_retry_reuses_the_fetched_scenario(case, tmp_path):
    store = tmp_path / "incident-uid"
    first, calls = run(case, spec_for(case), store=store)
    assert first.phase == "Completed" and calls["metrics"] == 1 and (store / "scenario" / "scenario.json").is_file()
    down = SourceUnavailable("PrometheusUnavailable", "refused")
    again, calls = run(case, spec_for(case), status={}, store=store, metrics_error=down)  # status lost in a crash
    assert again.phase == "Completed" and calls["metrics"] == 0
    assert again.status["rootCauses"] == first.status["rootCauses"]
    assert again.status["dataCoverage"] == first.status["dataCoverage"]
    assert "reused" in again.conditions[0]["message"]


def test_a_retry_keeps_the_notes_of_a_degraded_fetch(case, tmp_path):
    store = tmp_path / "incident-uid"
    first, _ = run(case, spec_for(case), store=store, logs_error=SourceUnavailable("LokiUnavailable", "refused"))
    again, calls = run(case, spec_for(case), store=store)
    assert calls == {"metrics": 0, "logs": 0}
    assert again.status["method"] == first.status["method"] == "baro (metrics only)"
    assert {c["type"]: c for c in again.conditions}["Degraded"]["reason"] == "LokiUnavailable"


def test_pod_selector_without_kube_state_metrics_fails_with_a_reason(case):
    outcome, _ = run(case, spec_for(case, podSelector={"matchLabels": {"app": "ts-basic-service"}}))
    assert outcome.phase == "Failed" and "kube_pod_labels" in outcome.conditions[0]["message"]


def test_fetched_traces_reach_the_stored_scenario(case, tmp_path):
    """`fetch_traces` is a source of its own (the fourth of `make_sources`); step() stores the traces in the
    Scenario, a trace outage degrades the incident instead of failing it, and without the fetcher there are none."""
    from lemzha.scenario_io import load_scenario

    fm, fl, _ = sources(case)
    asked = []

    def fetch_traces(namespace, start, n_bins, services):
        asked.append(services)
        window = case.window(case.bin_of(start), n_bins)
        return window.service_metrics, window.edges

    now = case.label.injection_time + timedelta(days=1)
    outcome = step(case.id, spec_for(case), {}, case.namespace, now, now, fm, fl, Baro(), fetch_traces=fetch_traces,
                   store=tmp_path / "i")
    assert outcome.phase == "Completed" and asked == [set(case.services)] and "traces" in outcome.timings
    stored = load_scenario(tmp_path / "i" / "scenario", with_label=False)
    assert len(stored.service_metrics) == len(case.service_metrics) > 0
    np.testing.assert_array_equal(stored.edges["edge_requests"], case.edges["edge_requests"])

    def down(namespace, start, n_bins, services):
        raise SourceUnavailable("PrometheusUnavailable", "connection refused")

    outcome = step(case.id, spec_for(case), {}, case.namespace, now, now, fm, fl, Baro(), fetch_traces=down)
    degraded = {c["type"]: c for c in outcome.conditions}["Degraded"]
    assert outcome.phase == "Completed" and degraded["status"] == "True" and "without traces" in degraded["message"]
    assert outcome.source_errors == [("prometheus", "unreachable")]

    outcome = step(case.id, spec_for(case), {}, case.namespace, now, now, fm, fl, Baro(), fetch_traces=None,
                   store=tmp_path / "none")
    assert outcome.phase == "Completed" and "traces" not in outcome.timings
    untraced = load_scenario(tmp_path / "none" / "scenario", with_label=False)
    assert untraced.service_metrics.empty and untraced.edges.empty


def test_a_window_without_fault_time_gets_an_estimated_onset_with_its_estimator(case):
    from lemzha.detect.onset import onset_estimator

    spec = {"from": case.start.isoformat(), "to": case.end.isoformat()}
    fm, fl, _ = sources(case)
    now = case.label.injection_time + timedelta(days=1)
    for setting in ("cusum", "robust_z:0.900"):
        estimator = onset_estimator(setting)
        outcome = step(case.id, spec, {}, case.namespace, now, now, fm, fl, Baro(), onset_estimator=estimator)
        onset = outcome.status["onset"]
        assert onset["source"] == "estimated" and onset["estimator"] == setting
        expected = case.start + timedelta(seconds=30 * estimator(case.values))
        assert onset["time"] == rfc3339(expected)
    with pytest.raises(ValueError, match="robust_z:2"):
        onset_estimator("robust_z:2")
    with pytest.raises(ValueError, match="use cusum or"):
        onset_estimator("lstm:0.5")


def _no_fetch(*args):
    raise AssertionError("fetched although the attempt should not have")


def test_a_pending_incident_is_retried_by_its_deadline_and_fails_there():
    created = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
    spec = {"faultTime": rfc3339(created + timedelta(minutes=20)), "timeoutSeconds": 30}
    first = step("ts/x", spec, {}, "ts", created, created, _no_fetch, None, Baro())
    # the window ends in 30 min: the next look is at the deadline, not 300 s later
    assert first.phase == "Pending" and first.retry_after <= 31
    at_deadline = created + timedelta(seconds=first.retry_after)
    failed = step("ts/x", spec, first.status, "ts", at_deadline, created, _no_fetch, None, Baro())
    assert failed.phase == "Failed" and failed.permanent
    ready = failed.conditions[-1]
    assert ready["reason"] == "DataUnavailable" and "timeoutSeconds=30" in ready["message"]
    assert "not in yet" in ready["message"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), OverflowError("date value out of range"), KeyError("pod")])
def test_any_exception_in_an_attempt_ends_in_a_failed_explained_outcome(error):
    def broken(*args):
        raise error

    spec = {"faultTime": "2023-01-29T09:00:00Z"}
    now = datetime(2023, 1, 30, tzinfo=UTC)
    outcome = step("ts/x", spec, {}, "ts", now, now, broken, None, Baro())
    assert outcome.phase == "Failed" and outcome.permanent and outcome.retry_after is None
    ready = outcome.conditions[-1]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "AnalysisError")
    assert type(error).__name__ in ready["message"] and outcome.status["message"] == ready["message"]


@pytest.mark.parametrize(("field", "value"), [("timeoutSeconds", "30"), ("timeoutSeconds", 0), ("topK", 11),
                                              ("topK", True)])
def test_bad_numbers_in_a_spec_are_invalid_specs(field, value):
    now = datetime(2023, 1, 30, tzinfo=UTC)
    outcome = step("ts/x", {"faultTime": "2023-01-29T09:00:00Z", field: value}, {}, "ts", now, now, _no_fetch,
                   None, Baro())
    assert outcome.phase == "Failed" and outcome.conditions[-1]["reason"] == "InvalidSpec"
    assert f"spec.{field}" in outcome.conditions[-1]["message"]


def test_the_phase_an_attempt_starts_in():
    from lemzha_operator.pipeline import starting_phase

    now = datetime(2023, 1, 29, 9, 5, tzinfo=UTC)
    assert starting_phase({"faultTime": "2023-01-29T09:00:00Z"}, {}, now) == "Pending"  # ends 09:10
    assert starting_phase({"faultTime": "2023-01-29T09:00:00Z"}, {}, now + timedelta(minutes=10)) == "Analyzing"
    assert starting_phase({"faultTime": "0001-01-01T00:05:00Z"}, {}, now) is None


def test_metrics_logs_and_traces_are_fetched_at_once(case):
    """The logs are fetched and cleaned while the metrics are fetched, and the traces while the logs are: each fake
    source waits (at most 10 s) for the one it should overlap with to have started; fetched one after the other,
    none of them would see the other start. The logs get the pod->service map only once the metrics are in."""
    import threading

    fm, fl, _ = sources(case)
    started = {name: threading.Event() for name in ("metrics", "logs", "traces")}
    seen: dict[str, object] = {}

    def fetch_metrics(*args):
        started["metrics"].set()
        seen["logs started during metrics"] = started["logs"].wait(10)
        return fm(*args)

    def fetch_logs(namespace, start, n_bins, pod_service):
        started["logs"].set()
        seen["metrics started before the logs' map"] = started["metrics"].is_set()
        seen["map"] = pod_service()
        seen["traces started during logs"] = started["traces"].wait(10)
        return fl(namespace, start, n_bins, pod_service)

    def fetch_traces(namespace, start, n_bins, services):
        started["traces"].set()
        window = case.window(case.bin_of(start), n_bins)
        return window.service_metrics, window.edges

    now = case.label.injection_time + timedelta(days=1)
    outcome = step(case.id, spec_for(case), {}, case.namespace, now, now, fetch_metrics, fetch_logs, Baro(),
                   fetch_traces=fetch_traces)
    assert outcome.phase == "Completed" and outcome.source_errors == []
    assert seen["logs started during metrics"] and seen["traces started during logs"]
    assert seen["map"] == dict(case.pod_service)
    plain = step(case.id, spec_for(case), {}, case.namespace, now, now, fm, fl, Baro(),
                 fetch_traces=fetch_traces)
    assert outcome.status["rootCauses"] == plain.status["rootCauses"]


def test_a_metrics_outage_stops_the_sources_waiting_for_its_pods(case):
    """When the metrics fail no pod->service map comes: a logs fetch waiting for one stops (the step returns, no
    thread is left waiting) and its time is not counted."""
    asked = []

    def fetch_logs(namespace, start, n_bins, pod_service):
        asked.append("logs")
        pod_service()
        raise AssertionError("pod_service() must raise when the metrics failed")

    fm, _, _ = sources(case, metrics_error=SourceUnavailable("PrometheusUnavailable", "refused"))
    now = case.label.injection_time + timedelta(days=1)
    outcome = step(case.id, spec_for(case), {}, case.namespace, now, now, fm, fetch_logs, Baro())
    assert outcome.phase == "Analyzing" and outcome.source_errors == [("prometheus", "unreachable")]
    assert asked == ["logs"] and "logs" not in outcome.timings
