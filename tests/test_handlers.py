from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest

from lemzha_operator.cluster import merge_conditions
from lemzha_operator.handlers import status_patch
from lemzha_operator.pipeline import Outcome, condition
from lemzha_operator.settings import Settings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_last_transition_time_moves_only_on_change():
    first = merge_conditions([], [condition("Ready", False, "WaitingForWindow", "wait")], 1, T0)
    same = merge_conditions(first, [condition("Ready", False, "WaitingForWindow", "still")], 1, T0 + timedelta(1))
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert same[0]["message"] == "still"
    flipped = merge_conditions(same, [condition("Ready", True, "Completed", "done")], 2, T0 + timedelta(2))
    assert flipped[0]["lastTransitionTime"] == "2026-01-03T12:00:00Z" and flipped[0]["observedGeneration"] == 2


def test_status_patch_keeps_other_conditions_and_sets_phase():
    previous = {"conditions": merge_conditions([], [condition("DataFetched", True, "DataFetched", "ok")], 1, T0)}
    outcome = Outcome("Completed", {"rootCauses": []}, [condition("Ready", True, "Completed", "done")])
    patch = status_patch(outcome, previous, 1, T0)
    assert patch["phase"] == "Completed" and patch["observedGeneration"] == 1
    assert [c["type"] for c in patch["conditions"]] == ["DataFetched", "Ready"]


def test_settings_from_env():
    s = Settings.from_env({"LEMZHA_PROMETHEUS_URL": "http://p:9090", "LEMZHA_BUNDLE": "/b", "LEMZHA_CONCURRENCY": "4"})
    assert s.prometheus_url == "http://p:9090" and str(s.bundle_dir) == "/b" and s.concurrency == 4
    assert s.loki_url is None
    try:
        Settings.from_env({})
    except ValueError as err:
        assert "LEMZHA_PROMETHEUS_URL" in str(err)
    else:
        raise AssertionError("missing Prometheus URL must be an error")


def test_operator_modules_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, lemzha_operator.main, lemzha_operator.pipeline; "
            "print([m for m in ('torch', 'sentence_transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ttl_counts_from_finished_at():
    from lemzha_operator.handlers import ttl_due

    done = {"phase": "Completed", "finishedAt": "2026-01-01T12:00:00Z"}
    assert not ttl_due({"ttlSecondsAfterFinished": 60}, done, T0 + timedelta(seconds=59))
    assert ttl_due({"ttlSecondsAfterFinished": 60}, done, T0 + timedelta(seconds=60))
    assert not ttl_due({}, done, T0 + timedelta(days=9))  # no ttl: kept forever
    assert not ttl_due({"ttlSecondsAfterFinished": 0}, {"phase": "Analyzing"}, T0)  # never before it finishes


def test_expired_incidents_skips_running_kept_and_already_deleting():
    from lemzha_operator.handlers import expired_incidents

    def obj(name, ttl=None, phase="Completed", deleting=False):
        meta = {"name": name, "namespace": "ts", **({"deletionTimestamp": "x"} if deleting else {})}
        spec = {} if ttl is None else {"ttlSecondsAfterFinished": ttl}
        return {"metadata": meta, "spec": spec, "status": {"phase": phase, "finishedAt": "2026-01-01T12:00:00Z"}}

    items = [obj("old", 10), obj("kept"), obj("running", 0, phase="Analyzing"), obj("gone", 0, deleting=True)]
    assert expired_incidents(items, T0 + timedelta(minutes=1)) == [("ts", "old")]


async def test_startup_sets_watch_timeouts_concurrency_and_falls_back_without_a_bundle(tmp_path, monkeypatch):
    import kopf

    from lemzha_operator import handlers
    from offline.bench.standins.kube_standin import write_kubeconfig

    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1")))
    for name, value in {"LEMZHA_PROMETHEUS_URL": "http://127.0.0.1:1", "LEMZHA_BUNDLE": "", "LEMZHA_CONCURRENCY": "3",
                        "LEMZHA_METRICS_PORT": "0", "LEMZHA_TEMPLATE_CACHE": str(tmp_path / "t"),
                        "POD_NAME": "lemzha-0"}.items():
        monkeypatch.setenv(name, value)
    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    await handlers.startup(settings=settings, memo=memo, logger=__import__("logging").getLogger("test"))
    try:
        # kopf #1276: a watch must not hang forever on a silent connection
        assert settings.watching.server_timeout and settings.watching.client_timeout > settings.watching.server_timeout
        assert settings.watching.connect_timeout and settings.networking.request_timeout
        assert settings.execution.max_workers == 3 and settings.posting.enabled is False
        from lemzha_operator.settings import peering_priority

        assert settings.peering.priority == peering_priority("lemzha-0")
        assert memo.model_problem.reason == "NoBundle" and memo.model == {"bundle": "none", "sha": ""}
    finally:
        memo.janitor.cancel()


class _Recorder:
    """Stands in for the Kubernetes APIs the handler calls: records status patches and Events."""

    def __init__(self, live: dict | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.live = live or {}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return self.live

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        self.calls.append(("status", body))

    def create_namespaced_event(self, namespace, body, **_):
        self.calls.append(("event", body))


def _memo(tmp_path, fetch_metrics):
    import kopf

    from lemzha.baselines import Baro
    from lemzha_operator.handlers import InFlight
    from lemzha_operator.sources import Fallback

    memo = kopf.Memo()
    memo.config = Settings(prometheus_url="http://p:9090", loki_url=None, bundle_dir=None, cache_dir=tmp_path)
    memo.ranker, memo.model_problem, memo.model = Fallback(Baro()), None, {"bundle": "none", "sha": ""}
    memo.fetch_metrics, memo.fetch_logs, memo.fetch_pod_info, memo.fetch_traces = fetch_metrics, None, None, None
    memo.onset_estimator, memo.in_flight = None, InFlight()
    memo.objects = memo.core = _Recorder()
    return memo


def _attempt(memo, spec, status=None):
    import logging

    import kopf

    from lemzha_operator.handlers import analyze_incident

    meta = {"name": "inc", "namespace": "ts", "uid": "u-1", "generation": 1,
            "creationTimestamp": "2026-12-04T19:00:00Z"}
    patch = kopf.Patch()
    analyze_incident(spec=spec, status=status or {}, meta=meta, namespace="ts", patch=patch, memo=memo,
                     logger=logging.getLogger("test"))
    return dict(patch.get("status", {}))


def test_an_attempt_that_raises_ends_failed_with_a_condition_and_an_event(tmp_path):
    # year 1: `onset - before` overflowed and kopf retried the handler forever without a status
    memo = _memo(tmp_path, lambda *a: (_ for _ in ()).throw(AssertionError("no fetch")))
    status = _attempt(memo, {"faultTime": "0001-01-01T00:05:00Z", "timeoutSeconds": 30})
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert status["phase"] == "Failed" and status["finishedAt"] and ready["reason"] == "InvalidSpec"
    events = [body for kind, body in memo.core.calls if kind == "event"]
    assert [(e["reason"], e["type"]) for e in events] == [("Failed", "Warning")]
    assert events[0]["message"] == ready["message"]
    # any other exception inside the attempt: Failed, reason AnalysisError, named, never a retried handler error
    memo = _memo(tmp_path, lambda *a: (_ for _ in ()).throw(ZeroDivisionError("odd data")))
    status = _attempt(memo, {"faultTime": "2023-01-29T09:00:00Z"})
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert status["phase"] == "Failed" and ready["reason"] == "AnalysisError"
    assert "ZeroDivisionError" in ready["message"]


class _Clock(datetime):
    """datetime whose now() steps through given moments: the attempt's start, then the status write."""

    moments: ClassVar[list[datetime]] = []

    @classmethod
    def now(cls, tz=None):
        return cls.moments.pop(0) if len(cls.moments) > 1 else cls.moments[0]


def test_finished_at_and_transition_times_carry_the_time_the_status_is_written(tmp_path, monkeypatch):
    from lemzha_operator import handlers

    started, written = T0, T0 + timedelta(seconds=5, microseconds=200_000)
    monkeypatch.setattr(handlers, "datetime", type("Clock", (_Clock,), {"moments": [started, written]}))
    seen = []

    def step(*args, **kwargs):
        seen.append(list(memo.objects.calls))
        return Outcome("Completed", {"rootCauses": []}, [condition("Ready", True, "Completed", "done")])

    memo = _memo(tmp_path, None)
    monkeypatch.setattr(handlers, "step", step)
    status = _attempt(memo, {"faultTime": "2023-01-29T09:00:00Z"})
    assert status["finishedAt"] == "2026-01-01T12:00:05Z"
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {"2026-01-01T12:00:05Z"}
    # the phase was written before the attempt ran (its data is in, so it analyses)
    assert seen == [[("status", {"status": {"phase": "Analyzing"}})]]


def test_a_missing_prometheus_url_stops_startup_permanently_naming_the_variable(tmp_path, monkeypatch):
    import asyncio

    import kopf

    from lemzha_operator import handlers

    monkeypatch.delenv("LEMZHA_PROMETHEUS_URL", raising=False)
    with pytest.raises(kopf.PermanentError, match="LEMZHA_PROMETHEUS_URL"):  # kopf then exits non-zero
        asyncio.run(handlers.startup(settings=kopf.OperatorSettings(), memo=kopf.Memo(),
                                     logger=__import__("logging").getLogger("test")))


def test_a_long_message_is_cut_to_what_the_crd_allows():
    # a hostile spec value quoted in an InvalidSpec message must not make the status write fail
    outcome = Outcome("Failed", {"message": "x" * 5000}, [condition("Ready", False, "InvalidSpec", "y" * 5000)])
    patch = status_patch(outcome, {}, 1, T0)
    assert len(patch["message"]) == 1024 and len(patch["conditions"][0]["message"]) == 1024


def test_a_garbled_frozen_window_still_ends_in_a_final_status(tmp_path):
    memo = _memo(tmp_path, lambda *a: (_ for _ in ()).throw(AssertionError("no fetch")))
    status = _attempt(memo, {"faultTime": "2023-01-29T09:00:00Z"}, {"resolvedWindow": {"from": "soon", "to": "later"}})
    assert status["phase"] == "Failed" and {c["type"]: c for c in status["conditions"]}["Ready"]["reason"] == \
        "AnalysisError"


def test_a_stale_body_of_a_finished_incident_is_not_analysed_again(tmp_path, monkeypatch):
    """kopf may hand the create handler a body older than its own patch (the phase written at the start makes an
    extra event): the live status says Completed, so nothing runs, nothing is written."""
    from lemzha_operator import handlers

    monkeypatch.setattr(handlers, "step", lambda *a, **k: pytest.fail("analysed a finished incident again"))
    memo = _memo(tmp_path, None)
    memo.objects = memo.core = _Recorder({"status": {"phase": "Completed", "finishedAt": "2026-12-04T19:00:05Z"}})
    assert _attempt(memo, {"faultTime": "2023-01-29T09:00:00Z"}, {"phase": "Analyzing"}) == {}
    assert memo.objects.calls == []
