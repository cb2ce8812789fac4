"""Alertmanager payloads -> incidents (operator/lemzha_operator/alerts.py): parsing, refusals, the incident each
firing alert opens, skips with their reasons, idempotence, the rate cap, the token and the settings."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from lemzha_operator import selfmetrics
from lemzha_operator.alerts import (
    AlertSettings,
    BadPayload,
    Receiver,
    incident_body,
    incident_name,
    parse_payload,
)
from lemzha_operator.window import resolve_window

STARTS = "2023-01-29T09:31:30.123456789Z"


def alert(status: str = "firing", fingerprint: str = "0123456789abcdef", starts: str = STARTS, **labels) -> dict:
    return {"status": status, "labels": {"alertname": "PodCpuHigh", "namespace": "ts", **labels},
            "annotations": {"summary": "cpu"}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up", "fingerprint": fingerprint}


def post(*alerts: dict, version: str = "4") -> bytes:
    return json.dumps({"version": version, "groupKey": "{}:{}", "status": "firing", "receiver": "lemzha",
                       "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
                       "truncatedAlerts": 0, "alerts": list(alerts)}).encode()


class Creator:
    """Stands in for the Kubernetes API: stores bodies by name, 409 (False) on a name it has."""

    def __init__(self) -> None:
        self.store: dict[str, dict] = {}
        self.calls = 0
        self.fail: Exception | None = None

    def __call__(self, body: dict) -> bool:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        name = body["metadata"]["name"]
        if name in self.store:
            return False
        self.store[name] = body
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counter(name: str, **labels: str) -> float:
    return selfmetrics.REGISTRY.get_sample_value(name, labels) or 0.0


def receiver(creator: Creator, watched: tuple[str, ...] = ("ts", "hipster"), clock=None, **settings) -> Receiver:
    return Receiver(AlertSettings(**settings), watched, creator, **({"clock": clock} if clock else {}))


# -- parsing ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (post(alert(), version="3"), "payload version '3' is not supported"),
    (json.dumps({"alerts": []}).encode(), "payload version None is not supported"),
    (json.dumps({"version": "4"}).encode(), "`alerts` is missing"),
    (post({**alert(), "status": "pending"}), "alerts[0].status"),
    (post({**alert(), "labels": {"namespace": 5}}), "alerts[0].labels"),
    (post({**alert(), "startsAt": "yesterday"}), "alerts[0].startsAt"),
    (post(alert(), {**alert(), "fingerprint": "zz; rm"}), "alerts[1].fingerprint"),
    (post({**alert(), "generatorURL": "http://x/" + "a" * 5000}), "generatorURL"),
])
def test_bad_payloads_are_named(body, message):
    with pytest.raises(BadPayload, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_payload(body)


def test_a_payload_parses_to_alerts():
    (parsed,) = parse_payload(post(alert()))
    assert parsed.status == "firing" and parsed.labels["namespace"] == "ts"
    assert parsed.starts_at == datetime(2023, 1, 29, 9, 31, 30, 123456, tzinfo=UTC)  # nanoseconds cut
    assert parsed.fingerprint == "0123456789abcdef"
    # without a fingerprint: a hash of the label set, the same for the same labels
    no_fp = {k: v for k, v in alert().items() if k != "fingerprint"}
    assert parse_payload(post(no_fp))[0].fingerprint == parse_payload(post(no_fp))[0].fingerprint


# -- the incident ----------------------------------------------------------------------------------------------------
def test_incident_window_name_and_links():
    (parsed,) = parse_payload(post(alert()))
    body = incident_body(parsed, AlertSettings())
    meta, spec = body["metadata"], body["spec"]
    assert meta["name"] == incident_name(parsed) == "alert-0123456789abcdef-20230129-093130"
    assert meta["namespace"] == "ts"
    assert meta["labels"] == {"lemzha.io/source": "alertmanager", "lemzha.io/alert-fingerprint": "0123456789abcdef",
                              "lemzha.io/alertname": "PodCpuHigh"}
    assert meta["annotations"] == {"lemzha.io/alertname": "PodCpuHigh",
                                   "lemzha.io/alert-fingerprint": "0123456789abcdef",
                                   "lemzha.io/alert-starts-at": "2023-01-29T09:31:30Z",
                                   "lemzha.io/alert-generator-url": "http://prometheus:9090/graph?g0.expr=up"}
    # default: the 70 minutes up to startsAt, onset left to the ranker; the operator resolves it to 140 bins
    assert spec == {"from": "2023-01-29T08:21:30Z", "to": "2023-01-29T09:31:30Z"}
    window = resolve_window(spec, datetime(2026, 1, 1, tzinfo=UTC))
    assert (window.start, window.n_bins, window.onset) == (datetime(2023, 1, 29, 8, 21, 30, tzinfo=UTC), 140, None)
    # faultTime = startsAt when asked
    given = incident_body(parsed, AlertSettings(onset="startsAt", before="10m", after="5m"))["spec"]
    assert given == {"faultTime": "2023-01-29T09:31:30Z", "before": "10m", "after": "5m"}
    assert resolve_window(given, datetime(2026, 1, 1, tzinfo=UTC)).onset == datetime(2023, 1, 29, 9, 31, 30,
                                                                                     tzinfo=UTC)


def test_alertname_that_is_no_label_value_stays_an_annotation():
    (parsed,) = parse_payload(post(alert(alertname="CPU high: 90%")))
    meta = incident_body(parsed, AlertSettings())["metadata"]
    assert "lemzha.io/alertname" not in meta["labels"]
    assert meta["annotations"]["lemzha.io/alertname"] == "CPU high: 90%"


def test_pod_selector_only_from_mapped_labels():
    (parsed,) = parse_payload(post(alert(pod="ts-order-1", deployment="ts-order", service="kube-state-metrics")))
    assert "podSelector" not in incident_body(parsed, AlertSettings())["spec"], "no selector unless mapped"
    mapped = AlertSettings(selector_labels=(("deployment", "app"), ("service", "app"),
                                            ("pod", "statefulset.kubernetes.io/pod-name")))
    assert incident_body(parsed, mapped)["spec"]["podSelector"] == {"matchLabels": {
        "app": "ts-order", "statefulset.kubernetes.io/pod-name": "ts-order-1"}}  # the first mapping of a key wins
    (only_service,) = parse_payload(post(alert(service="ts-order-service")))
    assert incident_body(only_service, mapped)["spec"]["podSelector"] == {"matchLabels": {"app": "ts-order-service"}}


# -- the receiver ----------------------------------------------------------------------------------------------------
def test_repeats_and_retries_open_one_incident():
    creator = Creator()
    rx = receiver(creator)
    opened = counter("lemzha_alert_incidents_total", result="opened")
    first = rx.handle(post(alert()))
    assert first.status == 200 and first.body["opened"] == ["alert-0123456789abcdef-20230129-093130"]
    assert rx.handle(post(alert())).body["alreadyOpen"] == first.body["opened"]  # Alertmanager's repeat
    assert creator.calls == 1, "a repeat must not even reach the API"
    restarted = receiver(creator)  # an operator restart forgets what it saw: the API's 409 still holds
    assert restarted.handle(post(alert())).body == {"opened": [], "alreadyOpen": first.body["opened"], "skipped": {}}
    assert len(creator.store) == 1
    assert counter("lemzha_alert_incidents_total", result="opened") == opened + 1
    # a new firing of the same alert is a new incident
    assert rx.handle(post(alert(starts="2023-01-29T10:00:00Z"))).body["opened"] == [
        "alert-0123456789abcdef-20230129-100000"]


def test_skips_are_counted_with_their_reason():
    creator = Creator()
    rx = receiver(creator)
    before = {r: counter("lemzha_alerts_skipped_total", reason=r)
              for r in ("resolved", "no_namespace_label", "unwatched_namespace")}
    no_ns = alert(fingerprint="1")
    del no_ns["labels"]["namespace"]
    reply = rx.handle(post(alert(status="resolved"), no_ns, alert(fingerprint="2", namespace="payments"),
                           alert(fingerprint="3", namespace="hipster")))
    assert reply.body["skipped"] == {"resolved": 1, "no_namespace_label": 1, "unwatched_namespace": 1}
    assert reply.body["opened"] == ["alert-3-20230129-093130"] and list(creator.store) == reply.body["opened"]
    for reason, count in before.items():
        assert counter("lemzha_alerts_skipped_total", reason=reason) == count + 1, reason
    # watching every namespace (LEMZHA_WATCH_NAMESPACES empty): any valid namespace opens
    assert receiver(Creator(), watched=()).handle(post(alert(namespace="payments"))).body["opened"]


@pytest.mark.parametrize(("labels", "message"), [
    ({"namespace": 'ts",pod=~".*'}, "label namespace="),
    ({"namespace": "ts} or vector(1) #"}, "label namespace="),
    ({"namespace": "TS"}, "not a namespace name"),
    ({"namespace": "a" * 64}, "not a namespace name"),
    ({"deployment": "x,app in (a,b)"}, "label deployment="),
])
def test_a_hostile_label_refuses_the_whole_post(labels, message):
    creator = Creator()
    rx = receiver(creator, selector_labels=(("deployment", "app"),))
    reply = rx.handle(post(alert(fingerprint="1"), alert(fingerprint="2", **labels)))
    assert reply.status == 400 and message in reply.body["error"] and "alerts[1]" in reply.body["error"]
    assert creator.calls == 0, "nothing is created from a refused post"


def test_the_rate_cap_counts_and_logs_the_overflow(caplog):
    creator, clock = Creator(), Clock()
    rx = receiver(creator, clock=clock, max_per_minute=3)
    limited = counter("lemzha_alerts_skipped_total", reason="rate_limited")
    storm = [alert(fingerprint=f"{i:x}") for i in range(5)] + [alert(fingerprint="a", namespace="hipster")]
    with caplog.at_level(logging.WARNING, logger="lemzha.alerts"):
        reply = rx.handle(post(*storm))
    assert len(reply.body["opened"]) == 4 and reply.body["skipped"] == {"rate_limited": 2}  # 3 in ts, 1 hipster
    assert counter("lemzha_alerts_skipped_total", reason="rate_limited") == limited + 2
    assert "ts: 2 alert(s) over the rate cap of 3 incidents per minute" in caplog.text
    assert "alert-3-20230129-093130" in caplog.text
    clock.now += 20  # a third of a minute refills one token
    assert rx.handle(post(*storm)).body["opened"] == ["alert-3-20230129-093130"]
    assert rx.handle(post(alert(fingerprint="f"))).body["skipped"] == {"rate_limited": 1}


def test_an_existing_incident_gives_its_token_back():
    creator, clock = Creator(), Clock()
    creator.store["alert-1-20230129-093130"] = {}
    rx = receiver(creator, clock=clock, max_per_minute=1)
    assert rx.handle(post(alert(fingerprint="1"))).body["alreadyOpen"] == ["alert-1-20230129-093130"]
    assert rx.handle(post(alert(fingerprint="2"))).body["opened"] == ["alert-2-20230129-093130"]


def test_an_api_failure_propagates_and_the_retry_opens_it():
    creator = Creator()
    rx = receiver(creator, max_per_minute=1)
    creator.fail = ConnectionError("api down")
    with pytest.raises(ConnectionError):
        rx.handle(post(alert()))
    creator.fail = None
    assert rx.handle(post(alert())).body["opened"] == ["alert-0123456789abcdef-20230129-093130"]


def test_the_bearer_token_is_read_from_its_file(tmp_path):
    assert receiver(Creator()).authorized(None), "no token file: open"
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    rx = receiver(Creator(), token_file=token)
    assert rx.authorized("Bearer s3cret") and rx.authorized("bearer s3cret")
    assert not rx.authorized(None) and not rx.authorized("Bearer wrong") and not rx.authorized("Basic s3cret")
    token.write_text("rotated")
    assert rx.authorized("Bearer rotated") and not rx.authorized("Bearer s3cret")
    token.write_text("")
    assert not rx.authorized("Bearer "), "an empty token file admits nobody"


# -- settings --------------------------------------------------------------------------------------------------------
def test_settings_defaults_and_overrides(tmp_path):
    assert AlertSettings.from_env({}) == AlertSettings()
    assert AlertSettings().port == 0, "off unless a port is given"
    tuned = AlertSettings.from_env({
        "LEMZHA_ALERTS_PORT": "9095", "LEMZHA_ALERTS_HOST": "127.0.0.1", "LEMZHA_ALERTS_TOKEN_FILE": "/t/token",
        "LEMZHA_ALERTS_NAMESPACE_LABEL": "k8s_namespace", "LEMZHA_ALERTS_MAX_PER_MINUTE": "3",
        "LEMZHA_ALERTS_MAX_BODY_BYTES": "65536", "LEMZHA_ALERTS_SELECTOR_LABELS": "deployment=app, pod=x.io/pod",
        "LEMZHA_ALERTS_BEFORE": "15m", "LEMZHA_ALERTS_AFTER": "5m", "LEMZHA_ALERTS_ONSET": "startsAt"})
    assert (tuned.port, tuned.host, str(tuned.token_file), tuned.namespace_label) == (
        9095, "127.0.0.1", "/t/token", "k8s_namespace")
    assert (tuned.max_per_minute, tuned.max_body_bytes, tuned.before, tuned.after, tuned.onset) == (
        3, 65536, "15m", "5m", "startsAt")
    assert tuned.selector_labels == (("deployment", "app"), ("pod", "x.io/pod"))


def test_a_given_onset_needs_time_after_it():
    # faultTime = startsAt with after 0s is a window that ends at its onset: every incident would be refused
    with pytest.raises(ValueError, match="LEMZHA_ALERTS_AFTER='0s' is under 0:01:00 with LEMZHA_ALERTS_ONSET"):
        AlertSettings.from_env({"LEMZHA_ALERTS_ONSET": "startsAt"})
    assert AlertSettings.from_env({"LEMZHA_ALERTS_ONSET": "startsAt", "LEMZHA_ALERTS_AFTER": "1m"}).after == "1m"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LEMZHA_ALERTS_PORT", "-1", "must be at least 0"),
    ("LEMZHA_ALERTS_PORT", "70000", "is not a port"),
    ("LEMZHA_ALERTS_MAX_PER_MINUTE", "0", "must be at least 1"),
    ("LEMZHA_ALERTS_MAX_BODY_BYTES", "10", "must be at least 1024"),
    ("LEMZHA_ALERTS_ONSET", "soon", "must be one of estimated, startsAt"),
    ("LEMZHA_ALERTS_BEFORE", "20 minutes", "not a duration"),
    ("LEMZHA_ALERTS_BEFORE", "3h", "outside"),
    ("LEMZHA_ALERTS_AFTER", "1m", None),  # 20m + 1m is fine
    ("LEMZHA_ALERTS_NAMESPACE_LABEL", "k8s-namespace", "is not a label name"),
    ("LEMZHA_ALERTS_SELECTOR_LABELS", "deployment", "is not alertLabel=podLabelKey"),
    ("LEMZHA_ALERTS_SELECTOR_LABELS", "deployment=-bad-", "is not alertLabel=podLabelKey"),
])
def test_bad_settings_name_the_variable(name, value, message):
    if message is None:
        AlertSettings.from_env({name: value})
        return
    with pytest.raises(ValueError, match=f"{name}.*{message}"):
        AlertSettings.from_env({name: value})
