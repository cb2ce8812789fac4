"""Hostile RCAIncident specs, as a new user (or a careless script) writes them.

Each row has two verdicts:
- at apply: the CRD's schema and CEL rules (checked here as the kube stand-in checks them,
  `offline/bench/standins/kube_standin.py`, which approximates the API server) refuse it with a message, or accept it;
- in the operator: one attempt of `pipeline.step` against fake sources. Whatever got past the CRD (or a CRD installed
  without its rules) must end in a final phase with a reason, never an exception or a silent retry.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml

from lemzha.baselines import Baro
from lemzha.catalog import CATALOG
from lemzha_operator.pipeline import step
from lemzha_operator.settings import FINAL_PHASES
from lemzha_operator.window import resolve_window
from offline.bench.standins.kube_standin import Invalid, KubeStandin, load_crds, validate

NOW = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)
CREATED = NOW - timedelta(seconds=31)  # past the smallest timeoutSeconds (30) for specs that wait
FAULT = "2026-12-04T18:00:00Z"  # long ended: its data is in
SOON = "2026-12-04T20:20:00Z"  # its window ends after NOW
NAMESPACE = "ts"  # the only namespace the fake Prometheus has data for
METRICS = tuple(m.name for m in CATALOG[:4])
WINDOW = "the window (before + after) must be between 2m and 2h long"
SIDES = "before and after must each be at least 1m"
SUBDOMAIN = "a lowercase RFC 1123 subdomain"

# (id, metadata.name, spec, message at apply or None, operator phase, reason in the operator's Ready condition)
ROWS = [
    ("year-1", "y1", {"faultTime": "0001-01-01T00:05:00Z", "timeoutSeconds": 30}, None, "Failed", "InvalidSpec"),
    ("year-9999", "y9999", {"faultTime": "9999-12-31T23:55:00Z", "timeoutSeconds": 30}, None, "Failed",
     "InvalidSpec"),
    ("from-to-year-1", "ft1", {"from": "0001-01-01T00:00:00Z", "to": "0001-01-01T00:30:00Z"}, None, "Failed",
     "DataUnavailable"),
    ("far-future", "fut", {"faultTime": "2030-01-01T00:00:00Z"}, None, "Failed", "InvalidSpec"),
    ("near-future-deadline", "soon", {"faultTime": SOON, "timeoutSeconds": 30}, None, "Failed", "DataUnavailable"),
    ("leap-second", "leap", {"faultTime": "2016-12-31T23:59:60Z"}, "must be of type date-time", "Failed",
     "InvalidSpec"),
    ("february-30", "feb30", {"faultTime": "2023-02-30T09:00:00Z"}, "must be of type date-time", "Failed",
     "InvalidSpec"),
    ("no-offset", "naive", {"faultTime": "2026-12-04T18:00:00"}, "must be of type date-time", "Completed", None),
    ("offset-plus-14", "tz14", {"faultTime": "2026-12-05T08:00:00+14:00"}, None, "Completed", None),
    ("offset-minus-0930", "tz9", {"faultTime": "2026-12-04T08:30:00-09:30"}, None, "Completed", None),
    ("offset-25h", "tz25", {"faultTime": "2026-12-04T18:00:00+25:00"}, "must be of type date-time", "Failed",
     "InvalidSpec"),
    ("lowercase-t-z", "lower", {"faultTime": "2026-12-04t18:00:00z"}, None, "Completed", None),
    ("after-0s", "after0", {"faultTime": FAULT, "before": "2m", "after": "0s"}, SIDES, "Failed", "InvalidSpec"),
    ("before-0s", "before0", {"faultTime": FAULT, "before": "0s", "after": "10m"}, SIDES, "Failed", "InvalidSpec"),
    ("both-0s", "both0", {"faultTime": FAULT, "before": "0s", "after": "0s"}, WINDOW, "Failed", "InvalidSpec"),
    ("recent-0s", "recent0", {"recent": "0s"}, "recent must be between 2m and 2h", "Failed", "InvalidSpec"),
    ("from-equals-to", "fteq", {"from": FAULT, "to": FAULT}, "to must be after from", "Failed", "InvalidSpec"),
    ("huge-duration", "huge", {"faultTime": FAULT, "before": "9999999h"}, WINDOW, "Failed", "InvalidSpec"),
    ("unknown-namespace", "nons", {"faultTime": FAULT, "targetNamespace": "no-such-namespace"}, None, "Failed",
     "DataUnavailable"),
    ("namespace-injection", "nsinj", {"faultTime": FAULT, "targetNamespace": 'ts"} or vector(1) #'},
     "spec.targetNamespace in body should match", "Failed", "DataUnavailable"),
    ("selector-value-injection", "selval",
     {"faultTime": FAULT, "podSelector": {"matchLabels": {"app": 'a"} or vector(1)'}}},
     "spec.podSelector.matchLabels.app in body should match", "Failed", "DataUnavailable"),
    ("selector-key-injection", "selkey",
     {"faultTime": FAULT, "podSelector": {"matchLabels": {'app"} or on() vector(1) #': "a"}}},
     "matchLabels keys must be label keys", "Failed", "DataUnavailable"),
    ("selector-regex-operator", "selop",
     {"faultTime": FAULT, "podSelector": {"matchExpressions": [{"key": "app", "operator": "=~", "values": [".*"]}]}},
     'Unsupported value: "=~"', "Failed", "DataUnavailable"),
    ("topk-as-string", "topks", {"faultTime": FAULT, "topK": "5"}, "spec.topK in body must be of type integer",
     "Failed", "InvalidSpec"),
    ("timeout-huge", "tbig", {"faultTime": FAULT, "timeoutSeconds": 10**12},
     "spec.timeoutSeconds in body should be less than or equal to 86400", "Failed", "InvalidSpec"),
    ("name-300-chars", "a" * 300, {"faultTime": FAULT}, "must be no more than 253 characters", "Completed", None),
    ("name-unicode", "incident-é", {"faultTime": FAULT}, SUBDOMAIN, "Completed", None),
    ("name-uppercase", "Incident", {"faultTime": FAULT}, SUBDOMAIN, "Completed", None),
    ("name-253-chars", "a" * 253, {"faultTime": FAULT}, None, "Completed", None),
]


@pytest.fixture(scope="module")
def crd():
    return next(c for c, _ in load_crds() if c.kind == "RCAIncident")


def fetch_metrics(namespace: str, start: datetime, n_bins: int):
    """Two pods in NAMESPACE (one of them busy from the middle of the window on), this century; nothing else."""
    if namespace != NAMESPACE or start.year < 2000:
        return (), np.zeros((n_bins, 0, len(METRICS))), METRICS
    rng = np.random.default_rng(0)
    values = 100 + rng.normal(0, 1, (n_bins, 2, len(METRICS)))
    values[n_bins // 2:, 0, :] += 50
    return ("ts-order-service-5d9c-abcde", "ts-route-service-7f4b-fghij"), values, METRICS


def apply_verdict(crd, name: str, spec: dict) -> str | None:
    """None when the CRD accepts the object, else the API server's message."""
    from offline.bench.standins.kube_standin import apply_defaults

    obj = {"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident", "metadata": {"name": name, "namespace": "ts"},
           "spec": dict(spec)}
    apply_defaults(crd.schema, obj)
    try:
        validate(crd, obj, None)
    except Invalid as err:
        return err.message or str(err)
    return None


@pytest.mark.parametrize(("name", "spec", "refused", "phase", "reason"), [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])
def test_a_hostile_spec_is_refused_at_apply_or_ends_in_a_final_phase(crd, name, spec, refused, phase, reason):
    message = apply_verdict(crd, name, spec)
    if refused is None:
        assert message is None, message
    else:
        assert message is not None and refused in message, message
    # the operator on its own (a CRD without its rules, or what the rules cannot see): a final, explained phase
    outcome = step(f"ts/{name}", dict(spec), {}, spec.get("targetNamespace", NAMESPACE), NOW, CREATED, fetch_metrics,
                   None, Baro())
    assert outcome.phase in FINAL_PHASES and outcome.retry_after is None
    ready = {c["type"]: c for c in outcome.conditions}["Ready"]
    assert outcome.phase == phase, ready
    if reason is not None:
        assert ready["reason"] == reason and ready["message"], ready


def test_a_time_zone_offset_names_the_same_window_as_utc():
    utc = resolve_window({"faultTime": FAULT}, NOW)
    for shifted in ("2026-12-05T08:00:00+14:00", "2026-12-04T08:30:00-09:30", "2026-12-04t18:00:00z"):
        assert resolve_window({"faultTime": shifted}, NOW) == utc


@pytest.mark.slow
def test_a_duplicate_yaml_key_applies_with_its_last_value_and_the_incident_completes(tmp_path):
    """kubectl (1.32, validation on) keeps the last of two equal keys without a word, as YAML parsers commonly do: it
    sends JSON, so no server sees the duplicate. The incident is then an ordinary one."""
    manifest = tmp_path / "dup.yaml"
    manifest.write_text(f"""apiVersion: lemzha.io/v1alpha1
kind: RCAIncident
metadata:
  name: dup
  namespace: ts
spec:
  faultTime: "2026-12-04T17:00:00Z"
  faultTime: "{FAULT}"
""")
    with KubeStandin(tmp_path / "kubeconfig") as kube:
        kubectl = ["kubectl", "--kubeconfig", str(kube.kubeconfig)]
        subprocess.run([*kubectl, "apply", "-f", str(manifest)], check=True, capture_output=True)
        stored = yaml.safe_load(subprocess.run([*kubectl, "get", "rcai", "dup", "-n", "ts", "-o", "yaml"], check=True,
                                               capture_output=True, text=True).stdout)
    assert stored["spec"]["faultTime"] == FAULT
    outcome = step("ts/dup", stored["spec"], {}, NAMESPACE, NOW, CREATED, fetch_metrics, None, Baro())
    assert outcome.phase == "Completed" and outcome.status["onset"]["time"] == FAULT
