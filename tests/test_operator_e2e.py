"""End to end, as a user would run it: replayed metrics in a real Prometheus, replayed logs in the Loki stand-in, the
kube stand-in as API server, the operator as a `kopf run` subprocess, incidents applied and awaited with kubectl.

The live status must match the offline pipeline: the Scenario the operator's fetchers build equals the offline one,
and the ranked services equal `python -m offline.rank` with the same bundle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lemzha_operator.pipeline import build_scenario, window_from_status
from lemzha_operator.settings import Settings
from lemzha_operator.sources import make_sources
from offline.bench.standins.kube_standin import KubeStandin
from offline.bench.standins.loki_standin import LokiStandIn
from offline.bench.standins.operator_harness import KUBECTL, REPO, Kubectl, OperatorProcess
from offline.bench.standins.prometheus_server import prometheus_server
from tests.marks import requires_prometheus

TT_ID, OB_ID = "nezha/20230129_05", "nezha/20220822_03"
OB_NAME = "nezha-20220822-03"
EXAMPLE = REPO / "charts" / "lemzha" / "examples" / "incident-trainticket.yaml"

pytestmark = [
    pytest.mark.slow,
    requires_prometheus,
    pytest.mark.skipif(not KUBECTL.is_file(), reason="kubectl not installed"),
]


class Env:
    """Everything the tests share: the sources' URLs, kubectl, the operator process."""

    def __init__(self, prom_url: str, loki_url: str, kubeconfig: Path, cache: Path, bundle: Path) -> None:
        self.prom_url, self.loki_url, self.kubeconfig = prom_url, loki_url, kubeconfig
        self.cache, self.bundle = cache, bundle
        self.operator: OperatorProcess | None = None
        self.kubectl = Kubectl(kubeconfig, cache / "kubectl", lambda: self.operator_log())

    def operator_log(self, tail: int = 4000) -> str:
        return self.operator.tail(tail) if self.operator is not None else "(no operator)"

    def settings(self) -> Settings:
        return Settings(prometheus_url=self.prom_url, loki_url=self.loki_url, bundle_dir=self.bundle,
                        cache_dir=self.cache / "templates")


@pytest.fixture(scope="module")
def cluster(replayed, shipped_bundle, tmp_path_factory) -> Iterator[Env]:
    """Prometheus + Loki stand-in + kube stand-in + the operator subprocess; yields once all are up."""
    root = tmp_path_factory.mktemp("e2e")
    with prometheus_server(replayed["data"]) as prom_url, LokiStandIn() as loki, \
            KubeStandin(root / "kubeconfig") as kube:
        loki.load_jsonl(replayed["logs"])
        env = Env(prom_url, loki.url, kube.kubeconfig, root, shipped_bundle)
        # the stand-in registers crds/*.yaml itself; nothing to apply
        assert "rcaincidents" in env.kubectl("api-resources", "--api-group=lemzha.io").stdout
        env.operator = OperatorProcess({"KUBECONFIG": str(kube.kubeconfig), "LEMZHA_PROMETHEUS_URL": prom_url,
                                        "LEMZHA_LOKI_URL": loki.url, "LEMZHA_BUNDLE": str(shipped_bundle),
                                        "LEMZHA_TEMPLATE_CACHE": str(root / "templates"),
                                        "LEMZHA_TTL_CHECK_SECONDS": "1"}, root / "operator.log", root)
        with env.operator:
            yield env


def _ob_incident(prepared) -> str:
    onset = prepared.load(OB_ID).label.injection_time
    return yaml.safe_dump({
        "apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
        "metadata": {"name": OB_NAME, "namespace": "hipster"},
        "spec": {"targetNamespace": "hipster", "faultTime": onset.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "before": "60m", "after": "10m", "topK": 5},
    })


def _offline_rank(prepared, scenario_id: str, bundle: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "offline.rank", str(prepared.directory / scenario_id),
                          "--bundle", str(bundle)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    return sorted(json.loads(out.stdout)["ranking"], key=lambda r: r["rank"])


def _log_totals(logs: pd.DataFrame | None) -> pd.Series:
    """Counts per (service, bin, template): the comparable part of two log frames."""
    if logs is None or logs.empty:
        return pd.Series(dtype="int64")
    frame = logs.astype({"service": str, "template": str, "bin": int, "count": int})
    return frame.groupby(["service", "bin", "template"])["count"].sum().sort_index()


def _live_scenario(env: Env, status: dict, namespace: str, incident_id: str):
    """The Scenario rebuilt with the operator's own fetchers over the window frozen in status."""
    window = window_from_status(status)
    assert window is not None
    fetch_metrics, fetch_logs, _, fetch_traces = make_sources(env.settings())
    pods, values, names, _ = fetch_metrics(namespace, window.start, window.n_bins)
    from lemzha.services import service_of_pod

    pod_service = {p: service_of_pod(p) for p in pods}
    logs = fetch_logs(namespace, window.start, window.n_bins, lambda: pod_service)
    traces = fetch_traces(namespace, window.start, window.n_bins, set(pod_service.values()))
    return build_scenario(incident_id, namespace, window, pods, values, names, logs, traces=traces)


@pytest.mark.parametrize(("scenario_id", "namespace", "name"), [
    (TT_ID, "ts", "nezha-20230129-05"),
    (OB_ID, "hipster", OB_NAME),
])
def test_incident_completes_like_offline(cluster: Env, prepared, shipped_bundle, tmp_path,
                                         scenario_id: str, namespace: str, name: str) -> None:
    if scenario_id == TT_ID:
        cluster.kubectl("apply", "--validate=false", "-f", str(EXAMPLE))
    else:
        manifest = tmp_path / "ob.yaml"
        manifest.write_text(_ob_incident(prepared))
        cluster.kubectl("apply", "--validate=false", "-f", str(manifest))
    t0 = time.monotonic()
    cluster.kubectl("wait", "--for=jsonpath={.status.phase}=Completed", f"rcai/{name}", "-n", namespace,
                    "--timeout=120s", timeout=150)
    print(f"{scenario_id}: Completed after {time.monotonic() - t0:.1f} s")
    obj = json.loads(cluster.kubectl("get", f"rcai/{name}", "-n", namespace, "-o", "json").stdout)
    status = obj["status"]
    offline = prepared.load(scenario_id)

    # status: top-k causes with evidence, Ready=True, the offline bin count
    causes = status["rootCauses"]
    assert 0 < len(causes) <= obj["spec"]["topK"]
    assert all(c.get("evidence") for c in causes)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True", ready
    assert status["dataCoverage"]["bins"] == offline.n_bins
    import hashlib

    assert status["method"] == "evidence" and status["model"] == {
        "bundle": shipped_bundle.name, "sha": hashlib.sha256((shipped_bundle / "bundle.json").read_bytes()).hexdigest()}
    assert status["finishedAt"] and status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["dataCoverage"]["logs"] == "complete" and "finalizers" not in obj["metadata"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Degraded"]["status"] == "False" and conditions["ModelLoaded"]["status"] == "True"

    # the live Scenario equals the offline one
    live = _live_scenario(cluster, status, namespace, f"{namespace}/{name}")
    assert live.start == offline.start and live.n_bins == offline.n_bins
    assert set(live.pods) == set(offline.pods)
    assert live.pod_service == {p: offline.pod_service[p] for p in live.pods}
    assert live.metrics == offline.metrics
    order = [offline.pods.index(p) for p in live.pods]
    expected = offline.values[:, order, :]
    assert np.array_equal(np.isnan(live.values), np.isnan(expected))
    np.testing.assert_allclose(live.values, expected, rtol=1e-5, atol=0, equal_nan=True)
    live_logs, offline_logs = _log_totals(live.logs), _log_totals(offline.logs)
    # replayed raw TrainTicket lines and lemzha-k templates expanded to lines both read back to the offline rows
    assert len(offline_logs) > 0
    pd.testing.assert_series_equal(live_logs, offline_logs, check_dtype=False, check_names=False)
    # trace series: the catalog's live PromQL gives the offline rows; uncovered bins NaN in both
    assert len(offline.service_metrics) and len(offline.edges)
    for live_frame, offline_frame in ((live.service_metrics, offline.service_metrics), (live.edges, offline.edges)):
        sums = [c for c in ("duration_sum_ms", "client_duration_sum_ms", "edge_client_gap_ms") if c in offline_frame]
        pd.testing.assert_frame_equal(live_frame.drop(columns=sums), offline_frame.drop(columns=sums),
                                      check_exact=False, rtol=1e-9)
        for column in sums:  # sums travel as float seconds
            np.testing.assert_allclose(live_frame[column], offline_frame[column], rtol=1e-6, atol=1e-6)

    # one Event on the incident, naming the top cause
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    mine = [(e["reason"], e["message"]) for e in events if e["involvedObject"]["name"] == name]
    assert mine == [("Completed", f"top cause: {causes[0]['service']}")], events

    # the same ranking as offline.rank with the same bundle
    ranking = _offline_rank(prepared, scenario_id, shipped_bundle)
    assert [c["service"] for c in causes] == [r["service"] for r in ranking[:len(causes)]]
    np.testing.assert_allclose([float(c["score"]) for c in causes], [r["score"] for r in ranking[:len(causes)]],
                               rtol=0, atol=5.1e-5)  # status rounds scores to 4 decimals


def test_bad_spec_is_rejected_with_the_cel_message(cluster: Env, tmp_path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
        "metadata": {"name": "bad-window", "namespace": "ts"},
        "spec": {"faultTime": "2023-01-29T09:21:39Z", "recent": "10m"},
    }))
    out = cluster.kubectl("apply", "--validate=false", "-f", str(manifest), check=False)
    assert out.returncode != 0
    assert "give the window in exactly one form: faultTime, from/to, or recent" in out.stderr
    # nothing was stored (listed by name: the stand-in answers a GET of a missing name with the whole list)
    assert "bad-window" not in cluster.kubectl("get", "rcai", "-n", "ts", "-o", "name").stdout


def test_finished_incident_is_deleted_after_its_ttl(cluster: Env, tmp_path) -> None:
    manifest = tmp_path / "ttl.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
        "metadata": {"name": "short-lived", "namespace": "ts"},
        "spec": {"faultTime": "2023-01-29T09:21:39Z", "ttlSecondsAfterFinished": 5},
    }))
    cluster.kubectl("apply", "--validate=false", "-f", str(manifest))
    cluster.kubectl("wait", "--for=jsonpath={.status.phase}=Completed", "rcai/short-lived", "-n", "ts",
                    "--timeout=120s", timeout=130)
    assert cluster.kubectl("get", "rcai", "short-lived", "-n", "ts", "-o", "json").stdout  # still there at first
    deadline = time.monotonic() + 60
    while "short-lived" in cluster.kubectl("get", "rcai", "-n", "ts", "-o", "name").stdout:
        assert time.monotonic() < deadline, "not deleted after its ttl:\n" + "\n".join(
            line for line in cluster.operator_log(200_000).splitlines() if "short-lived" in line)[-3000:]
        time.sleep(0.5)
