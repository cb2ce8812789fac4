"""Alert -> incident with real parts: replayed Nezha data in a real Prometheus fires an alerting rule, a real
Alertmanager posts it (through a recording relay) to the operator's webhook, and the incident it opens completes
with the ranking the offline model gives the same scenario. Once per app (TrainTicket in ts, OnlineBoutique in
hipster), in one Prometheus, one Alertmanager and one operator.

Prometheus evaluates rules only at the present time, so `offline.replay --shift-to-now` moves each fault's window
to end at the next 30 s boundary, E. Each rule's `for` is sized so that it fires just after E: the alert's startsAt
then falls in the bin after the window, and the incident's window [startsAt - 20m, startsAt], floored to bins, is
the fault's window bin for bin. The operator waits the usual 60 s ingestion grace after E before it analyses.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from lemzha.binning import rfc3339
from lemzha.catalog import CATALOG
from lemzha_operator.alerts import incident_name, parse_payload
from offline.bench import replay
from offline.bench.standins.alertmanager_server import WebhookRelay, alertmanager_server, push_alerts
from offline.bench.standins.kube_standin import KubeStandin
from offline.bench.standins.loki_standin import LokiStandIn
from offline.bench.standins.operator_harness import KUBECTL, OperatorProcess
from offline.bench.standins.prometheus_server import free_port, prometheus_server
from tests.marks import requires_alertmanager, requires_prometheus
from tests.test_operator_e2e import Env, _live_scenario, _log_totals
from tests.test_webhook import TOKEN, refuses_each_hostile_post

APPS = {"ts": "nezha/20230129_05", "hipster": "nezha/20220822_03"}  # namespace -> fault, one per app
DAYS = {"ts": "2023-01-29", "hipster": "2022-08-22"}
LATENCY = next(spec for spec in CATALOG if spec.name == "latency_server_p90").replay.series
ALERTNAME = "PodServerLatencyHigh"

pytestmark = [
    pytest.mark.slow,
    requires_prometheus,
    requires_alertmanager,
    pytest.mark.skipif(not KUBECTL.is_file(), reason="kubectl not installed"),
]


def rules(for_seconds: int) -> str:
    """One alerting rule per namespace: some pod's p90 server latency went over 1 s in the last 20 minutes (both
    faults' windows reach 2 s), grouped by namespace so the alert names the namespace and no workload."""
    return yaml.safe_dump({"groups": [{"name": "lemzha-e2e", "rules": [
        {"alert": ALERTNAME, "expr": f'max by (namespace) (max_over_time({LATENCY}{{namespace="{ns}"}}[20m])) > 1',
         "for": f"{for_seconds}s", "labels": {"severity": "page"},
         "annotations": {"summary": "a pod's p90 server latency went over 1 s"}}
        for ns in APPS]}]})


class AlertEnv(Env):
    def __init__(self, *args, relay: WebhookRelay, alertmanager: str, webhook: str, window_end: datetime,
                 names: dict[str, str]) -> None:
        super().__init__(*args)
        self.relay, self.alertmanager, self.webhook = relay, alertmanager, webhook
        self.window_end, self.names = window_end, names


def _first_posts(relay: WebhookRelay, namespaces: set[str], timeout: float) -> dict[str, str]:
    """namespace -> the incident name of the first firing alert Alertmanager posted for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for posted in relay.received():
            for alert in parse_payload(posted.body):
                if alert.status == "firing" and alert.labels.get("alertname") == ALERTNAME:
                    found.setdefault(alert.labels["namespace"], incident_name(alert))
        if set(found) >= namespaces:
            return found
        time.sleep(0.2)
    raise AssertionError(f"Alertmanager posted no firing {ALERTNAME} for {namespaces - set(found)} within "
                         f"{timeout:.0f} s; posts: {[p.status for p in relay.received()]}")


@pytest.fixture(scope="module")
def alerted(prepared, shipped_bundle, tmp_path_factory) -> Iterator[AlertEnv]:
    root = tmp_path_factory.mktemp("alerts-e2e")
    token = root / "token"
    token.write_text(TOKEN)
    prom_port, webhook_port = free_port(), free_port()
    webhook = f"http://127.0.0.1:{webhook_port}/alerts"
    with KubeStandin(root / "kubeconfig") as kube, LokiStandIn() as loki, WebhookRelay(webhook) as relay, \
            alertmanager_server(relay.url, token_file=token, repeat_interval="2s") as am:
        operator = OperatorProcess({
            "KUBECONFIG": str(kube.kubeconfig), "LEMZHA_PROMETHEUS_URL": f"http://127.0.0.1:{prom_port}",
            "LEMZHA_LOKI_URL": loki.url, "LEMZHA_BUNDLE": str(shipped_bundle),
            "LEMZHA_TEMPLATE_CACHE": str(root / "templates"), "LEMZHA_WATCH_NAMESPACES": ",".join(APPS),
            "LEMZHA_ALERTS_PORT": str(webhook_port), "LEMZHA_ALERTS_HOST": "127.0.0.1",
            "LEMZHA_ALERTS_TOKEN_FILE": str(token)}, root / "operator.log", root)
        with operator:
            report = replay.run(replay.parse_args([
                "--ids", ",".join(APPS.values()), "--prom-data", str(root / "data"), "--logs",
                str(root / "logs.jsonl"), "--shift-to-now", "--no-progress",
                "--cache-dir", str(prepared.directory.parent.parent)]))
            ends = {datetime.fromisoformat(report["shifts"][day]["window_end"]) for day in DAYS.values()}
            assert len(ends) == 1, f"both windows should end at the same boundary: {report['shifts']}"
            (end,) = ends
            loki.load_jsonl(root / "logs.jsonl")
            for_seconds = max(0, math.ceil(end.timestamp() - time.time())) + 1  # fire just after the window
            with prometheus_server(root / "data", rules=rules(for_seconds), alertmanager=am.removeprefix("http://"),
                                   port=prom_port) as prom_url:
                fired = time.time() - end.timestamp()
                env = AlertEnv(prom_url, loki.url, kube.kubeconfig, root, shipped_bundle, relay=relay, alertmanager=am,
                               webhook=webhook, window_end=end,
                               names=_first_posts(relay, set(APPS), timeout=for_seconds + 60))
                env.operator = operator
                print(f"window end {rfc3339(end)}, Prometheus started {fired:+.1f} s after it, rule for "
                      f"{for_seconds} s; incidents {env.names}")
                yield env


@pytest.mark.parametrize("namespace", list(APPS))
def test_a_firing_alert_opens_an_incident_that_ranks_like_offline(alerted: AlertEnv, prepared, namespace: str):
    name = alerted.names[namespace]
    obj = alerted.kubectl.wait_until(name, namespace, lambda o: o.get("status", {}).get("phase") == "Completed",
                                     timeout=150, what="Completed")
    meta, spec, status = obj["metadata"], obj["spec"], obj["status"]
    # linked back to the alert
    starts_at = datetime.fromisoformat(meta["annotations"]["lemzha.io/alert-starts-at"])
    assert meta["labels"]["lemzha.io/alertname"] == ALERTNAME and meta["labels"]["lemzha.io/source"] == "alertmanager"
    url = urlsplit(meta["annotations"]["lemzha.io/alert-generator-url"])  # Prometheus names its host, not 127.0.0.1
    assert url.port == urlsplit(alerted.prom_url).port and url.path == "/graph" and "g0.expr=" in url.query
    assert name == f"alert-{meta['labels']['lemzha.io/alert-fingerprint']}-{starts_at:%Y%m%d-%H%M%S}"
    # the alert fired in the bin after the fault's window, so the incident's window is the fault's, bin for bin
    assert alerted.window_end <= starts_at < alerted.window_end + timedelta(seconds=30), (starts_at, alerted.window_end)
    assert (spec["from"], spec["to"]) == (rfc3339(starts_at - timedelta(minutes=70)), rfc3339(starts_at))
    assert "faultTime" not in spec and "podSelector" not in spec
    offline = prepared.load(APPS[namespace])
    shift = alerted.window_end - offline.end
    assert status["resolvedWindow"] == {"from": rfc3339(offline.start + shift), "to": rfc3339(alerted.window_end)}
    assert status["onset"]["source"] == "estimated" and status["method"] == "evidence"
    # the ranking the offline model gives the unshifted scenario without an onset (it scans the window)
    from lemzha.bundle_ranker import open_ranker

    expected = open_ranker(alerted.bundle, cache_dir=alerted.cache / "offline-templates").rank(
        offline.without_label().with_onset(None))
    causes = status["rootCauses"]
    assert [c["service"] for c in causes] == list(expected.services[:len(causes)])
    np.testing.assert_allclose([c["score"] for c in causes], expected.scores[:len(causes)], rtol=0, atol=5.1e-5)
    truth = offline.label.root_cause_service
    print(f"{namespace}: top causes {[c['service'] for c in causes]}; the injected cause {truth} is ranked "
          f"{list(expected.services).index(truth) + 1}")


def test_the_shifted_replay_reads_back_as_the_unshifted_scenario(alerted: AlertEnv, prepared):
    """--shift-to-now moved metrics, logs and traces together: the operator's fetchers read the shifted window back
    as the offline scenario, value for value."""
    for namespace, scenario_id in APPS.items():
        offline = prepared.load(scenario_id)
        shift = alerted.window_end - offline.end
        status = {"resolvedWindow": {"from": (offline.start + shift).isoformat(),
                                     "to": alerted.window_end.isoformat()}}
        live = _live_scenario(alerted, status, namespace, scenario_id)
        assert (live.start, live.n_bins) == (offline.start + shift, offline.n_bins)
        assert live.pod_service == {p: offline.pod_service[p] for p in live.pods} and set(live.pods) == set(
            offline.pods)
        order = [offline.pods.index(p) for p in live.pods]
        np.testing.assert_allclose(live.values, offline.values[:, order, :], rtol=1e-5, atol=0, equal_nan=True)
        pd.testing.assert_series_equal(_log_totals(live.logs), _log_totals(offline.logs), check_dtype=False,
                                       check_names=False)
        for live_frame, offline_frame in ((live.service_metrics, offline.service_metrics), (live.edges, offline.edges)):
            assert len(offline_frame), f"{scenario_id}: no trace rows to compare"
            pd.testing.assert_frame_equal(live_frame[["bin", "covered"]], offline_frame[["bin", "covered"]])
            counts = [c for c in live_frame.columns if c.startswith("le_") or c in ("trace_calls", "edge_requests")]
            np.testing.assert_allclose(live_frame[counts], offline_frame[counts], rtol=1e-9)


def test_repeats_and_a_retried_post_leave_one_incident(alerted: AlertEnv):
    name = alerted.names["ts"]
    deadline = time.monotonic() + 30
    while True:  # Alertmanager repeats the firing alert every repeat_interval (2 s)
        repeats = [p for p in alerted.relay.received()
                   if any(incident_name(a) == name for a in parse_payload(p.body))]
        if len(repeats) >= 3:
            break
        assert time.monotonic() < deadline, f"Alertmanager repeated the alert {len(repeats)} times in 30 s"
        time.sleep(0.5)
    assert all(p.status == 200 for p in repeats), [p.status for p in repeats]
    assert repeats[0].authorization == f"Bearer {TOKEN}", "Alertmanager sends the token from its credentials_file"
    retried = requests.post(alerted.webhook, data=repeats[0].body, timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert retried.status_code == 200 and retried.json()["alreadyOpen"] == [name], retried.text
    opened = alerted.kubectl("get", "rcai", "-n", "ts", "-l", "lemzha.io/source=alertmanager", "-o", "json").stdout
    assert [o["metadata"]["name"] for o in json.loads(opened)["items"]] == [name]


def _metric(alerted: AlertEnv, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(alerted.operator.metrics_url, timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_skipped_and_resolved_alerts_are_counted(alerted: AlertEnv):
    """Through Alertmanager: an alert for a namespace the operator does not watch (firing, then resolved) and one
    without a namespace label open nothing and show in /metrics with their reasons."""
    reasons = ("unwatched_namespace", "no_namespace_label", "resolved")
    before = {r: _metric(alerted, "lemzha_alerts_skipped_total", reason=r) for r in reasons}
    now = datetime.now(UTC)
    push_alerts(alerted.alertmanager, [
        {"labels": {"alertname": "Elsewhere", "namespace": "payments"}, "startsAt": rfc3339(now),
         "endsAt": rfc3339(now + timedelta(seconds=2))},
        {"labels": {"alertname": "NoNamespace"}, "startsAt": rfc3339(now)},
    ])
    deadline = time.monotonic() + 30
    while any(_metric(alerted, "lemzha_alerts_skipped_total", reason=r) <= before[r] for r in reasons):
        assert time.monotonic() < deadline, {r: _metric(alerted, "lemzha_alerts_skipped_total", reason=r) - before[r]
                                             for r in reasons}
        time.sleep(0.5)
    assert "payments" not in alerted.kubectl("get", "rcai", "-A", "-o", "name").stdout


def test_hostile_posts_are_refused_by_the_operator(alerted: AlertEnv):
    def incidents() -> list[str]:
        return sorted(alerted.kubectl("get", "rcai", "-A", "-o", "name").stdout.split())

    before = _metric(alerted, "lemzha_alert_posts_total", code="400")
    names = incidents()
    refuses_each_hostile_post(alerted.webhook)
    assert incidents() == names
    assert _metric(alerted, "lemzha_alert_posts_total", code="400") == before + 3

