"""Alertmanager webhook payloads (version 4) -> RCAIncidents: plain decisions, no HTTP and no Kubernetes.

`Receiver.handle(body)` parses a post, refuses a malformed or hostile one whole (nothing is created), and opens one
incident per firing alert that names a watched namespace. The HTTP server (`webhook.py`) only moves bytes in and
the reply out; creating an incident is the callable it is given.

- Name: `alert-<fingerprint>-<startsAt yyyymmdd-hhmmss>`. Alertmanager repeats a firing alert (repeat_interval)
  and retries a failed post; both carry the same fingerprint and startsAt, so the create answers 409 and nothing new
  opens. A new firing of the same alert (a new startsAt) opens a new incident.
- Window: [startsAt - before, startsAt + after] (LEMZHA_ALERTS_BEFORE, _AFTER; default 70m and 0s: an hour of
  reference before a fault up to 10 minutes older than the alert, and no wait for data after it). With
  LEMZHA_ALERTS_ONSET=estimated (default) it is given as from/to and the ranker finds the onset in it; with
  `startsAt` it is given as faultTime = startsAt with before/after. startsAt is when the rule's condition had held
  for its `for`, later than the fault: a given onset there is late, and a misplaced onset costs more than scanning
  the window does (docs/operator.md, "Alerts").
- podSelector: only from the alert labels mapped in LEMZHA_ALERTS_SELECTOR_LABELS (`alertLabel=podLabelKey,...`);
  none by default, because a selector narrows the ranking to the alerting workload, which is often the symptom,
  not the cause, and a kube-state-metrics alert's `service` label names the exporter, not the app.
- A per-namespace token bucket (LEMZHA_ALERTS_MAX_PER_MINUTE) caps incidents during an alert storm; the overflow is
  counted and logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from lemzha.binning import as_utc, rfc3339
from lemzha_operator import selfmetrics
from lemzha_operator.settings import GROUP, VERSION, number_setting
from lemzha_operator.window import MAX_WINDOW, MIN_SIDE, MIN_WINDOW, parse_duration

log = logging.getLogger("lemzha.alerts")

PAYLOAD_VERSION = "4"
ONSETS = ("estimated", "startsAt")
SOURCE_LABEL, FINGERPRINT_LABEL, ALERTNAME_LABEL = "lemzha.io/source", "lemzha.io/alert-fingerprint", \
    "lemzha.io/alertname"
ANNOTATIONS = {"alertname": "lemzha.io/alertname", "fingerprint": "lemzha.io/alert-fingerprint",
               "generator_url": "lemzha.io/alert-generator-url", "starts_at": "lemzha.io/alert-starts-at"}
MAX_URL = 4096  # a generatorURL longer than this is refused, not cut (a cut link points nowhere)
SEEN_NAMES = 4096  # incidents recently opened or found open: a repeat skips the API and the rate cap

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a namespace name, at most 63 characters
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # a Kubernetes label value, <= 63
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_PROM_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{1,32}$")


class BadPayload(ValueError):
    """The post cannot be used; the reply is 400 with this message and nothing is created."""


@dataclass(frozen=True)
class AlertSettings:
    """The receiver's settings (LEMZHA_ALERTS_*); port 0 turns the receiver off."""

    port: int = 0
    host: str = "0.0.0.0"  # in a pod the Service reaches the pod IP; tests bind 127.0.0.1
    token_file: Path | None = None
    namespace_label: str = "namespace"
    selector_labels: tuple[tuple[str, str], ...] = ()  # (alert label, pod label key), in order of precedence
    max_per_minute: int = 10
    max_body_bytes: int = 1_048_576
    before: str = "70m"
    after: str = "0s"
    onset: str = "estimated"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AlertSettings:
        """Read and check every LEMZHA_ALERTS_* variable; a bad one stops startup with a message naming it."""
        def text(name: str, default: str) -> str:
            return env.get(name) or default

        settings = cls(
            port=number_setting(env, "LEMZHA_ALERTS_PORT", 0, int, minimum=0),
            host=text("LEMZHA_ALERTS_HOST", "0.0.0.0"),
            token_file=Path(env["LEMZHA_ALERTS_TOKEN_FILE"]) if env.get("LEMZHA_ALERTS_TOKEN_FILE") else None,
            namespace_label=text("LEMZHA_ALERTS_NAMESPACE_LABEL", "namespace"),
            selector_labels=parse_selector_labels(env.get("LEMZHA_ALERTS_SELECTOR_LABELS", "")),
            max_per_minute=number_setting(env, "LEMZHA_ALERTS_MAX_PER_MINUTE", 10, int, minimum=1),
            max_body_bytes=number_setting(env, "LEMZHA_ALERTS_MAX_BODY_BYTES", 1_048_576, int, minimum=1024),
            before=text("LEMZHA_ALERTS_BEFORE", "70m"),
            after=text("LEMZHA_ALERTS_AFTER", "0s"),
            onset=text("LEMZHA_ALERTS_ONSET", "estimated"),
        )
        if settings.port > 65535:
            raise ValueError(f"LEMZHA_ALERTS_PORT={settings.port} is not a port")
        if not _PROM_LABEL.match(settings.namespace_label):
            raise ValueError(f"LEMZHA_ALERTS_NAMESPACE_LABEL={settings.namespace_label!r} is not a label name")
        if settings.onset not in ONSETS:
            raise ValueError(f"LEMZHA_ALERTS_ONSET={settings.onset!r} must be one of {', '.join(ONSETS)}")
        try:
            length = settings.before_delta + settings.after_delta
        except ValueError as err:
            raise ValueError(f"LEMZHA_ALERTS_BEFORE / LEMZHA_ALERTS_AFTER: {err}") from None
        if not MIN_WINDOW <= length <= MAX_WINDOW:
            raise ValueError(f"LEMZHA_ALERTS_BEFORE + LEMZHA_ALERTS_AFTER = {length} is outside "
                             f"[{MIN_WINDOW}, {MAX_WINDOW}], the incident window's bounds")
        if settings.onset == "startsAt":  # a faultTime window must hold its onset: the incident refuses it otherwise
            for name, text_value, side in (("LEMZHA_ALERTS_BEFORE", settings.before, settings.before_delta),
                                           ("LEMZHA_ALERTS_AFTER", settings.after, settings.after_delta)):
                if side < MIN_SIDE:
                    raise ValueError(f"{name}={text_value!r} is under {MIN_SIDE} with LEMZHA_ALERTS_ONSET=startsAt: "
                                     "a faultTime window needs at least that on each side of the onset")
        return settings

    @property
    def before_delta(self) -> timedelta:
        return parse_duration(self.before, "before")

    @property
    def after_delta(self) -> timedelta:
        return parse_duration(self.after, "after")


def parse_selector_labels(text: str) -> tuple[tuple[str, str], ...]:
    """`alertLabel=podLabelKey,...` -> pairs; e.g. `deployment=app,service=app.kubernetes.io/name`."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        alert_label, sep, pod_key = (s.strip() for s in item.partition("="))
        if not sep or not _PROM_LABEL.match(alert_label) or not _LABEL_KEY.match(pod_key) or len(pod_key) > 317:
            raise ValueError(f"LEMZHA_ALERTS_SELECTOR_LABELS: {item!r} is not alertLabel=podLabelKey")
        pairs.append((alert_label, pod_key))
    return tuple(pairs)


@dataclass(frozen=True)
class Alert:
    status: str  # firing | resolved
    labels: Mapping[str, str]
    starts_at: datetime
    fingerprint: str
    generator_url: str


def parse_payload(body: bytes) -> list[Alert]:
    """A webhook post's alerts; BadPayload names what is wrong (malformed JSON, another version, a bad field)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadPayload(f"the body is not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise BadPayload("the body is not a JSON object")
    version = payload.get("version")
    if version != PAYLOAD_VERSION:
        raise BadPayload(f"payload version {version!r} is not supported; Alertmanager's webhook sends "
                         f"version {PAYLOAD_VERSION!r}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise BadPayload("`alerts` is missing or not a list")
    return [_alert(item, i) for i, item in enumerate(alerts)]


def _alert(item: object, i: int) -> Alert:
    where = f"alerts[{i}]"
    if not isinstance(item, dict):
        raise BadPayload(f"{where} is not an object")
    status = item.get("status")
    if status not in ("firing", "resolved"):
        raise BadPayload(f"{where}.status is {status!r}, not firing or resolved")
    labels = item.get("labels")
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise BadPayload(f"{where}.labels is not an object of strings")
    starts = item.get("startsAt")
    try:
        starts_at = as_utc(datetime.fromisoformat(str(starts)))
    except (TypeError, ValueError):
        raise BadPayload(f"{where}.startsAt {starts!r} is not an RFC 3339 time") from None
    fingerprint = item.get("fingerprint") or _fingerprint(labels)
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise BadPayload(f"{where}.fingerprint {fingerprint!r} is not a hex fingerprint")
    url = item.get("generatorURL") or ""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise BadPayload(f"{where}.generatorURL is not a string of at most {MAX_URL} characters")
    return Alert(status, dict(labels), starts_at, fingerprint, url)


def _fingerprint(labels: Mapping[str, str]) -> str:
    """A stand-in for Alertmanager's label-set fingerprint when a post lacks one: a hash of the sorted labels."""
    text = "\0".join(f"{k}\0{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def incident_name(alert: Alert) -> str:
    return f"alert-{alert.fingerprint}-{alert.starts_at.strftime('%Y%m%d-%H%M%S')}"


def check_labels(alert: Alert, settings: AlertSettings, where: str) -> None:
    """The label values the incident would carry: a namespace must be a namespace name and a selector value a label
    value, or the post is refused (a value such as `ts",pod=~".*` must never reach a selector or a query)."""
    namespace = alert.labels.get(settings.namespace_label)
    if namespace is not None and not (len(namespace) <= 63 and _DNS_LABEL.match(namespace)):
        raise BadPayload(f"{where}: label {settings.namespace_label}={namespace!r} is not a namespace name")
    for alert_label, _ in settings.selector_labels:
        value = alert.labels.get(alert_label)
        if value is not None and not (len(value) <= 63 and _LABEL_VALUE.match(value)):
            raise BadPayload(f"{where}: label {alert_label}={value!r} is not a Kubernetes label value")


def pod_selector(alert: Alert, settings: AlertSettings) -> dict | None:
    """matchLabels from the mapped alert labels; the first mapping of a pod label key wins."""
    match: dict[str, str] = {}
    for alert_label, pod_key in settings.selector_labels:
        if alert_label in alert.labels and pod_key not in match:
            match[pod_key] = alert.labels[alert_label]
    return {"matchLabels": match} if match else None


def incident_body(alert: Alert, settings: AlertSettings) -> dict:
    """The RCAIncident a firing alert opens, in the alert's namespace (see the module doc for the window)."""
    namespace = alert.labels[settings.namespace_label]
    if settings.onset == "startsAt":
        spec: dict = {"faultTime": rfc3339(alert.starts_at), "before": settings.before, "after": settings.after}
    else:
        spec = {"from": rfc3339(alert.starts_at - settings.before_delta),
                "to": rfc3339(alert.starts_at + settings.after_delta)}
    selector = pod_selector(alert, settings)
    if selector:
        spec["podSelector"] = selector
    alertname = alert.labels.get("alertname", "")
    labels = {SOURCE_LABEL: "alertmanager", FINGERPRINT_LABEL: alert.fingerprint}
    if alertname and len(alertname) <= 63 and _LABEL_VALUE.match(alertname):
        labels[ALERTNAME_LABEL] = alertname
    annotations = {ANNOTATIONS["alertname"]: alertname, ANNOTATIONS["fingerprint"]: alert.fingerprint,
                   ANNOTATIONS["starts_at"]: rfc3339(alert.starts_at)}
    if alert.generator_url:
        annotations[ANNOTATIONS["generator_url"]] = alert.generator_url
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RCAIncident",
            "metadata": {"name": incident_name(alert), "namespace": namespace, "labels": labels,
                         "annotations": annotations},
            "spec": spec}


class RateCap:
    """A token bucket per namespace: `per_minute` incidents at once, refilled at `per_minute` a minute."""

    MAX_NAMESPACES = 4096  # full buckets are forgotten beyond this; a forgotten bucket is a full one

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.rate, self.clock = float(per_minute), per_minute / 60.0, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # namespace -> (tokens, at)

    def _tokens(self, namespace: str, now: float) -> float:
        tokens, at = self.buckets.get(namespace, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def take(self, namespace: str) -> bool:
        now = self.clock()
        tokens = self._tokens(namespace, now)
        if tokens < 1.0:
            self.buckets[namespace] = (tokens, now)
            return False
        self.buckets[namespace] = (tokens - 1.0, now)
        if len(self.buckets) > self.MAX_NAMESPACES:
            self.buckets = {ns: v for ns, v in self.buckets.items() if self._tokens(ns, now) < self.capacity}
        return True

    def give_back(self, namespace: str) -> None:
        """Return a token that opened nothing (the incident existed already)."""
        now = self.clock()
        self.buckets[namespace] = (min(self.capacity, self._tokens(namespace, now) + 1.0), now)


@dataclass
class Reply:
    status: int
    body: dict = field(default_factory=dict)


class Receiver:
    """The webhook's decisions. `create(body)` creates an incident and returns False when one of that name exists
    (409); any other failure propagates, and the post is answered 503 so that Alertmanager retries it."""

    def __init__(self, settings: AlertSettings, watched: tuple[str, ...], create: Callable[[dict], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.watched, self.create = settings, frozenset(watched), create
        self.rate = RateCap(settings.max_per_minute, clock)
        self.seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def authorized(self, header: str | None) -> bool:
        """True without a token file; else the header must be `Bearer <the file's token>` (re-read per post, so a
        rotated Secret takes effect without a restart)."""
        if self.settings.token_file is None:
            return True
        expected = self.settings.token_file.read_text().strip()
        scheme, _, given = (header or "").partition(" ")
        return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                                    expected.encode())

    def handle(self, body: bytes) -> Reply:
        try:
            alerts = parse_payload(body)
            for i, alert in enumerate(alerts):
                check_labels(alert, self.settings, f"alerts[{i}]")
        except BadPayload as err:
            return Reply(400, {"error": str(err)})
        with self._lock:
            return Reply(200, self._open(alerts))

    def _open(self, alerts: list[Alert]) -> dict:
        result: dict = {"opened": [], "alreadyOpen": [], "skipped": {}}
        limited: dict[str, list[str]] = {}
        for alert in alerts:
            selfmetrics.ALERTS_RECEIVED.labels(alert.status).inc()
            reason = self._skip_reason(alert)
            if reason is not None:
                result["skipped"][reason] = result["skipped"].get(reason, 0) + 1
                selfmetrics.ALERTS_SKIPPED.labels(reason).inc()
                continue
            name, namespace = incident_name(alert), alert.labels[self.settings.namespace_label]
            if name in self.seen:
                self._already_open(result, name)
                continue
            if not self.rate.take(namespace):
                limited.setdefault(namespace, []).append(name)
                result["skipped"]["rate_limited"] = result["skipped"].get("rate_limited", 0) + 1
                selfmetrics.ALERTS_SKIPPED.labels("rate_limited").inc()
                continue
            try:
                created = self.create(incident_body(alert, self.settings))
            except Exception:
                self.rate.give_back(namespace)
                raise
            self._remember(name)
            if created:
                result["opened"].append(name)
                selfmetrics.ALERT_INCIDENTS.labels("opened").inc()
                log.info("%s/%s: opened from alert %s (%s)", namespace, name, alert.labels.get("alertname", "?"),
                         alert.fingerprint)
            else:
                self.rate.give_back(namespace)
                self._already_open(result, name)
        for namespace, names in limited.items():
            log.warning("%s: %d alert(s) over the rate cap of %d incidents per minute, not opened: %s", namespace,
                        len(names), self.settings.max_per_minute, ", ".join(names[:10]))
        return result

    def _skip_reason(self, alert: Alert) -> str | None:
        if alert.status == "resolved":
            return "resolved"
        namespace = alert.labels.get(self.settings.namespace_label)
        if not namespace:
            return "no_namespace_label"
        if self.watched and namespace not in self.watched:
            return "unwatched_namespace"
        return None

    def _already_open(self, result: dict, name: str) -> None:
        result["alreadyOpen"].append(name)
        selfmetrics.ALERT_INCIDENTS.labels("already_open").inc()

    def _remember(self, name: str) -> None:
        self.seen[name] = None
        self.seen.move_to_end(name)
        while len(self.seen) > SEEN_NAMES:
            self.seen.popitem(last=False)
