"""The operator when things go wrong, end to end: the real Prometheus (replayed Nezha data) and the Loki stand-in
behind fault proxies, the kube stand-in, the operator as a `kopf run` subprocess, incidents applied with kubectl.

Each outage test checks the answer after recovery against an undisturbed run of the same incident.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from offline.bench.standins.fault_proxy import FaultProxy
from offline.bench.standins.kube_standin import KubeStandin
from offline.bench.standins.loki_standin import LokiStandIn
from offline.bench.standins.operator_harness import KUBECTL, Kubectl, OperatorProcess, condition
from offline.bench.standins.prometheus_server import prometheus_server
from tests.marks import requires_prometheus

pytestmark = [pytest.mark.slow, requires_prometheus,
              pytest.mark.skipif(not KUBECTL.is_file(), reason="kubectl not installed")]

NAMESPACE = "hipster"
FAULT_TIME = "2022-08-22T04:18:35Z"  # nezha/20220822_03 (OnlineBoutique), replayed by the `replayed` fixture


def incident(name: str, **spec) -> dict:
    return {"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"targetNamespace": NAMESPACE, "faultTime": FAULT_TIME, "topK": 5, **spec}}


class Faults:
    """Sources behind proxies, the kube stand-in, and a way to (re)start the operator with settings."""

    def __init__(self, root: Path, prom: FaultProxy, loki: FaultProxy, kube: KubeStandin, bundle: Path) -> None:
        self.root, self.prom, self.loki, self.kube, self.bundle = root, prom, loki, kube, bundle
        self.operator: OperatorProcess | None = None
        self.kubectl = Kubectl(kube.kubeconfig, root / "kubectl", lambda: self.operator.tail() if self.operator
                               else "(no operator)")
        self.starts = 0

    def start(self, **env: str) -> OperatorProcess:
        self.stop()
        self.starts += 1
        base = {"KUBECONFIG": str(self.kube.kubeconfig), "LEMZHA_PROMETHEUS_URL": self.prom.url,
                "LEMZHA_LOKI_URL": self.loki.url, "LEMZHA_BUNDLE": str(self.bundle),
                "LEMZHA_TEMPLATE_CACHE": str(self.root / "templates"), "LEMZHA_RETRY_BASE_SECONDS": "0.5",
                "LEMZHA_RETRY_MAX_SECONDS": "2", "LEMZHA_QUERY_TIMEOUT_SECONDS": "3"}
        self.operator = OperatorProcess({**base, **env}, self.root / f"operator-{self.starts}.log", self.root).start()
        return self.operator

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def apply(self, *docs: dict) -> None:
        self.kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict:
        return self.kubectl.wait_until(name, NAMESPACE, lambda o: o.get("status", {}).get("phase") == phase,
                                       timeout, phase)

    def wait_condition(self, name: str, kind: str, reason: str, timeout: float = 60) -> dict:
        return self.kubectl.wait_until(name, NAMESPACE, lambda o: condition(o, kind).get("reason") == reason,
                                       timeout, f"{kind}/{reason}")


@pytest.fixture(scope="module")
def faults(replayed, shipped_bundle, tmp_path_factory) -> Iterator[Faults]:
    root = tmp_path_factory.mktemp("faults")
    with prometheus_server(replayed["data"]) as prom_url, LokiStandIn() as loki_server, \
            FaultProxy(prom_url) as prom, FaultProxy(loki_server.url) as loki, \
            KubeStandin(root / "kubeconfig") as kube:
        loki_server.load_jsonl(replayed["logs"])
        env = Faults(root, prom, loki, kube, shipped_bundle)
        try:
            yield env
        finally:
            env.stop()


@pytest.fixture(scope="module")
def reference(faults: Faults) -> dict:
    """The undisturbed answer for the incident window."""
    faults.start()
    faults.apply(incident("reference"))
    return faults.wait_phase("reference", "Completed")["status"]


def answer(status: dict) -> list[tuple[str, float]]:
    return [(c["service"], c["score"]) for c in status["rootCauses"]]


def test_prometheus_down_at_the_start_degrades_retries_and_recovers(faults: Faults, reference: dict) -> None:
    faults.start()
    faults.prom.set("refuse")
    faults.apply(incident("prom-down"))
    degraded = faults.wait_condition("prom-down", "Degraded", "PrometheusUnavailable")
    assert degraded["status"]["phase"] == "Analyzing"
    seen = faults.prom.requests
    time.sleep(3)
    assert faults.prom.requests > seen, "no retry while Prometheus was down"
    faults.prom.set("pass")
    done = faults.wait_phase("prom-down", "Completed")
    assert answer(done["status"]) == answer(reference)
    assert condition(done, "Degraded")["status"] == "False"
    assert sorted(faults.kubectl.events_of("prom-down", NAMESPACE)) == sorted([
        ("Completed", f"top cause: {reference['rootCauses'][0]['service']}"),
        ("PrometheusUnavailable", condition(degraded, "Degraded")["message"])])
    metrics = requests.get(faults.operator.metrics_url, timeout=5).text
    assert 'lemzha_source_errors_total{reason="unreachable",source="prometheus"}' in metrics


def test_prometheus_failing_mid_analysis_gives_the_same_answer_after_recovery(faults: Faults, reference) -> None:
    faults.start()
    faults.prom.set("pass", fail_after=6)  # buildinfo and 5 of the 18 metric queries work, then Prometheus goes away
    faults.apply(incident("prom-mid"))
    faults.wait_condition("prom-mid", "Degraded", "PrometheusUnavailable")
    faults.prom.set("pass")
    assert answer(faults.wait_phase("prom-mid", "Completed")["status"]) == answer(reference)


def test_prometheus_that_never_comes_back_fails_at_the_timeout(faults: Faults) -> None:
    faults.start()
    faults.prom.set("error")
    t0 = time.monotonic()
    faults.apply(incident("prom-gone", timeoutSeconds=30))
    failed = faults.wait_phase("prom-gone", "Failed", timeout=75)
    faults.prom.set("pass")
    assert 29 <= time.monotonic() - t0 < 60
    ready = condition(failed, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "DataUnavailable"
    assert "timeoutSeconds=30" in ready["message"] and "503" in ready["message"]
    assert ("Failed", ready["message"]) in faults.kubectl.events_of("prom-gone", NAMESPACE)


def test_slow_prometheus_queries_time_out_and_are_retried(faults: Faults, reference) -> None:
    faults.start()
    faults.prom.set("slow", delay=5)  # longer than LEMZHA_QUERY_TIMEOUT_SECONDS=3
    faults.apply(incident("prom-slow"))
    degraded = faults.wait_condition("prom-slow", "Degraded", "PrometheusUnavailable")
    assert "did not answer within 3 s" in condition(degraded, "Degraded")["message"]
    faults.prom.set("pass")
    assert answer(faults.wait_phase("prom-slow", "Completed")["status"]) == answer(reference)


def test_prometheus_warnings_are_surfaced(faults: Faults, reference) -> None:
    faults.start()
    warning = "partial response: store gateway 10.0.0.7:10901 unreachable"
    faults.prom.set("warn", warnings=[warning])
    faults.apply(incident("prom-warn"))
    done = faults.wait_phase("prom-warn", "Completed")
    faults.prom.set("pass")
    assert done["status"]["dataCoverage"]["warnings"] == [warning]
    assert condition(done, "Degraded")["reason"] == "PrometheusWarnings"
    assert warning in condition(done, "Degraded")["message"]
    assert answer(done["status"]) == answer(reference)


def test_loki_down_gives_a_metrics_only_answer(faults: Faults, prepared, shipped_bundle) -> None:
    faults.start()
    faults.loki.set("refuse")
    faults.apply(incident("loki-down"))
    done = faults.wait_phase("loki-down", "Completed")
    faults.loki.set("pass")
    status = done["status"]
    assert status["method"] == "evidence (metrics only)"
    assert condition(done, "Degraded")["reason"] == "LokiUnavailable"
    assert status["dataCoverage"]["logs"] == "unavailable" and status["dataCoverage"]["logLines"] == 0
    # the same ranking as the bundle gives the offline scenario without its logs
    import dataclasses

    from lemzha.bundle_ranker import open_ranker
    from lemzha.scenario import empty_logs

    offline = dataclasses.replace(prepared.load("nezha/20220822_03").without_label(), logs=empty_logs())
    expected = open_ranker(shipped_bundle).rank(offline)
    assert [c["service"] for c in status["rootCauses"]] == list(expected.services[:len(status["rootCauses"])])


def test_log_pagination_stops_at_the_cap(faults: Faults) -> None:
    faults.start(LEMZHA_LOKI_MAX_LINES="50")
    faults.apply(incident("log-cap"))
    done = faults.wait_phase("log-cap", "Completed")
    coverage = done["status"]["dataCoverage"]
    assert coverage["logs"] == "truncated" and coverage["logLinesCap"] == 50 and 0 < coverage["logLines"] <= 50
    assert condition(done, "Degraded")["reason"] == "LogsTruncated"


@pytest.mark.parametrize(("bundle", "reason"), [("corrupt", "BundleInvalid"), ("none", "NoBundle")])
def test_a_bad_or_missing_bundle_falls_back_to_baro(faults: Faults, tmp_path, bundle: str, reason: str) -> None:
    import shutil

    env = {"LEMZHA_BUNDLE": ""}
    if bundle == "corrupt":
        broken = tmp_path / "bundle"
        shutil.copytree(faults.bundle, broken)
        (broken / "MODEL_CARD.md").write_bytes((broken / "MODEL_CARD.md").read_bytes()[:-100])  # truncated download
        env["LEMZHA_BUNDLE"] = str(broken)
    faults.start(**env)
    name = f"fallback-{bundle}"
    faults.apply(incident(name))
    done = faults.wait_phase(name, "Completed")
    assert done["status"]["method"] == "baro (fallback)"
    model = condition(done, "ModelLoaded")
    assert model["status"] == "False" and model["reason"] == reason
    assert done["status"]["model"] == {"bundle": "none", "sha": ""}


def test_sigkill_mid_analysis_completes_exactly_once(faults: Faults, reference) -> None:
    first = faults.start()
    faults.prom.set("slow", delay=1)  # each query takes a second: the kill lands inside the fetch
    faults.apply(incident("killed"))
    deadline = time.monotonic() + 30
    while "killed: attempt 0 started" not in first.tail(100_000):
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.1)
    time.sleep(2)
    first.kill()
    assert faults.kubectl.get("killed", NAMESPACE).get("status", {}).get("phase") != "Completed"
    faults.prom.set("pass")
    second = faults.start()
    done = faults.wait_phase("killed", "Completed")
    assert answer(done["status"]) == answer(reference)
    logs = first.tail(10**7) + second.tail(10**7)
    assert logs.count("hipster/killed: Completed") == 1
    events = faults.kubectl.events_of("killed", NAMESPACE)
    assert events == [("Completed", f"top cause: {reference['rootCauses'][0]['service']}")]


def test_a_hundred_incidents_all_complete_with_bounded_concurrency(faults: Faults, reference) -> None:
    operator = faults.start(LEMZHA_CONCURRENCY="4")
    names = [f"load-{i:03d}" for i in range(100)]
    t0 = time.monotonic()
    faults.apply(*[incident(n) for n in names])
    deadline = t0 + 600
    while True:
        items = [o for o in faults.kubectl.incidents(NAMESPACE) if o["metadata"]["name"].startswith("load-")]
        done = [o for o in items if o.get("status", {}).get("phase") == "Completed"]
        if len(done) == len(names):
            break
        assert time.monotonic() < deadline, f"{len(done)}/{len(names)} Completed after 600 s\n{operator.tail()}"
        time.sleep(1)
    elapsed = time.monotonic() - t0
    assert all(answer(o["status"]) == answer(reference) for o in done)
    in_flight = [int(line.rsplit(", ", 1)[1].split()[0]) for line in operator.tail(10**8).splitlines()
                 if "/load-" in line and "attempt 0 started" in line]
    assert len(in_flight) == len(names)
    assert max(in_flight) == 4, f"peak in flight {max(in_flight)}, configured 4"
    print(f"100 incidents Completed in {elapsed:.1f} s ({100 / elapsed * 60:.0f}/min) at concurrency 4")


def test_health_endpoint_reflects_a_dead_watch(faults: Faults) -> None:
    operator = faults.start(LEMZHA_WATCH_STALE_SECONDS="2")
    assert requests.get(operator.health_url, timeout=10).status_code == 200
    faults.kube.emulator.watches_stalled = True
    try:
        faults.apply(incident("unseen"))
        deadline = time.monotonic() + 40
        while requests.get(operator.health_url, timeout=10).status_code == 200:
            assert time.monotonic() < deadline, "the health endpoint stayed green with a dead watch"
            time.sleep(1)
        assert requests.get(operator.health_url, timeout=10).status_code == 500
        assert "phase" not in faults.kubectl.get("unseen", NAMESPACE).get("status", {})
    finally:
        faults.kube.emulator.watches_stalled = False
        faults.kubectl("delete", "rcai/unseen", "-n", NAMESPACE, check=False)
