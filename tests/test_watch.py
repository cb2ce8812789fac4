"""RCAWatch decisions (operator/lemzha_operator/watch.py), the clock, and the CRD's bad-input cases through kubectl
against the kube stand-in (schema + CEL in offline/bench/standins/kube_standin.py, not a real API server)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from lemzha_operator import clock
from lemzha_operator import watch as W
from offline.bench.standins.kube_standin import CRD_DIR, KubeStandin, load_crds
from tests.clockfile import set_clock

T0 = datetime(2023, 1, 29, 9, 0, tzinfo=UTC)
META = {"name": "ts-watch", "namespace": "ts", "uid": "uid-1"}


def latest_firing(scores, threshold: float, min_bins: int, scan_bins: int):
    found = W.find_firings(scores, threshold, min_bins, scan_bins)
    return found[-1] if found else None


def spec(**over) -> dict:
    return {"targetNamespace": "ts", "detector": "robust_z", "threshold": 0.9, "minDuration": "1m",
            "cooldown": "10m", "interval": "1m", **over}


def watch(**over) -> W.WatchSpec:
    return W.WatchSpec.from_object(spec(**over), META)


# -- parsing ---------------------------------------------------------------------------------------------------------
def test_durations():
    assert W.parse_duration("30s", "interval") == timedelta(seconds=30)
    assert W.parse_duration("5m", "interval") == timedelta(minutes=5)
    assert W.parse_duration("2h", "interval") == timedelta(hours=2)
    for bad in ("5", "1d", "-1m", "1.5m", ""):
        with pytest.raises(ValueError):
            W.parse_duration(bad, "interval")


def test_spec_defaults_and_rejections():
    w = W.WatchSpec.from_object({"detector": "bocpd", "threshold": 1}, META)
    assert (w.target, w.min_duration, w.cooldown, w.interval, w.suspend) == (
        "ts", timedelta(minutes=1), timedelta(minutes=10), timedelta(minutes=1), False)
    assert (w.min_bins, w.interval_bins, w.history_bins) == (2, 2, 64)
    with pytest.raises(ValueError, match="unknown detector"):
        W.WatchSpec.from_object({"detector": "lstm", "threshold": 0.5}, META)
    with pytest.raises(ValueError, match="not in"):
        W.WatchSpec.from_object({"detector": "robust_z", "threshold": 0}, META)


def test_window_ends_at_the_last_complete_bin():
    w = watch()
    start, n = W.window_for(w, T0 + timedelta(seconds=47))
    assert n == w.history_bins + w.scan_bins == 24 + 2 + 2 + 2
    assert start + timedelta(seconds=30 * n) == T0 + timedelta(seconds=30)


def test_due():
    w = watch(interval="2m")
    assert W.due(w, None, T0)
    assert not W.due(w, T0, T0 + timedelta(seconds=119))
    assert W.due(w, T0, T0 + timedelta(minutes=2))
    assert W.due(w, T0, T0 - timedelta(minutes=5))  # the clock went back: a replay restarted


# -- firing ----------------------------------------------------------------------------------------------------------
def scores_with(n: int, runs: list[tuple[int, int]], high: float = 0.95, low: float = 0.1) -> np.ndarray:
    s = np.full(n, low)
    for start, length in runs:
        s[start:start + length] = high
    return s


def test_find_firing_needs_min_duration_and_a_start_in_the_scan_part():
    s = scores_with(40, [(35, 3)])
    assert latest_firing(s, 0.9, 2, 6) == W.Firing(35, 3)
    assert latest_firing(s, 0.9, 4, 6) is None  # too short
    assert latest_firing(scores_with(40, [(38, 1)]), 0.9, 2, 6) is None  # not yet long enough
    # a run that began before the scan part was seen by an earlier evaluation
    assert latest_firing(scores_with(40, [(30, 10)]), 0.9, 2, 6) is None
    # the latest qualifying run wins; a run at bin 0 (truncated) never counts
    assert latest_firing(scores_with(40, [(0, 40)]), 0.9, 2, 40) is None
    assert latest_firing(scores_with(40, [(33, 2), (37, 3)]), 0.9, 2, 8) == W.Firing(37, 3)
    assert latest_firing(scores_with(40, [(35, 3)]), 0.95, 2, 6) == W.Firing(35, 3)  # >= threshold


def test_decide_opens_dedupes_and_cools_down():
    w = watch(cooldown="10m")
    start = T0
    s = scores_with(30, [(26, 4)])
    onset = T0 + timedelta(seconds=26 * 30)
    d = W.decide(w, s, start, None)
    assert (d.action, d.onset) == ("open", onset)
    assert W.decide(w, s, start, onset).action == "seen"  # same time again: nothing new
    assert W.decide(w, s, start, onset - timedelta(minutes=9)).action == "cooldown"
    assert W.decide(w, s, start, onset - timedelta(minutes=10)).action == "open"
    assert W.decide(watch(cooldown="0s"), s, start, onset - timedelta(seconds=30)).action == "open"
    assert W.decide(w, scores_with(30, []), start, None).action == "quiet"


def test_several_runs_in_one_scan_part_are_taken_in_order():
    s = scores_with(40, [(30, 2), (34, 2), (38, 2)])
    assert [f.onset_bin for f in W.find_firings(s, 0.9, 2, 12)] == [30, 34, 38]
    every = W.decide(watch(cooldown="0s", interval="5m"), s, T0, None)
    assert [o for o, _ in every.opens] == [T0 + timedelta(seconds=b * 30) for b in (30, 34, 38)]
    spaced = W.decide(watch(cooldown="3m", interval="5m"), s, T0, None)  # 34 is 2 min after 30, 38 is 4 min after
    assert [o for o, _ in spaced.opens] == [T0 + timedelta(seconds=b * 30) for b in (30, 38)]
    assert spaced.action == "open" and spaced.onset == T0 + timedelta(seconds=38 * 30)
    later = W.decide(watch(cooldown="3m", interval="5m"), s, T0, T0 + timedelta(seconds=32 * 30))
    assert [o for o, _ in later.opens] == [T0 + timedelta(seconds=38 * 30)] and "opened 1" not in later.message


def test_incident_name_is_deterministic_and_a_dns_label():
    onset = datetime(2023, 1, 29, 9, 3, 30, tzinfo=UTC)
    assert W.incident_name("ts-watch", onset) == "ts-watch-20230129-090330"
    long = "w" * 200
    name = W.incident_name(long, onset)
    assert len(name) <= 63 and name == W.incident_name(long, onset) and name.endswith("-20230129-090330")
    assert name != W.incident_name("w" * 199, onset)
    assert len(W.watch_label(long)) <= 63 and W.watch_label("short") == "short"


def test_incident_body():
    w = watch(podSelector={"matchLabels": {"app": "ts"}})
    onset = datetime(2023, 1, 29, 9, 3, 30, tzinfo=UTC)
    body = W.incident_body(w, onset, 0.97)
    assert body["metadata"]["name"] == "ts-watch-20230129-090330"
    assert body["metadata"]["namespace"] == "ts"
    assert body["metadata"]["labels"] == {"lemzha.io/watch": "ts-watch"}
    assert body["metadata"]["ownerReferences"] == [{
        "apiVersion": "lemzha.io/v1alpha1", "kind": "RCAWatch", "name": "ts-watch", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": False}]
    assert body["spec"] == {"targetNamespace": "ts", "faultTime": "2023-01-29T09:03:30Z",
                            "podSelector": {"matchLabels": {"app": "ts"}}}
    # and it is a valid RCAIncident
    from offline.bench.standins.kube_standin import validate

    crd = next(c for c, _ in load_crds() if c.kind == "RCAIncident")
    validate(crd, body, None)


def test_open_incidents_are_owned_and_unfinished():
    def inc(name, uid, phase=None, deleting=False):
        meta = {"name": name, "ownerReferences": [{"kind": "RCAWatch", "uid": uid}]}
        if deleting:
            meta["deletionTimestamp"] = "2023-01-29T10:00:00Z"
        return {"metadata": meta, "status": {"phase": phase} if phase else {}}

    items = [inc("b", "uid-1", "Analyzing"), inc("a", "uid-1"), inc("c", "uid-1", "Completed"),
             inc("d", "other"), inc("e", "uid-1", "Failed"), inc("f", "uid-1", deleting=True),
             {"metadata": {"name": "g"}}]
    assert W.open_incidents(items, "uid-1") == ["a", "b"]


# -- one evaluation --------------------------------------------------------------------------------------------------
def anomalous_values(n_bins: int, jump_from: int) -> np.ndarray:
    """(T, 3 pods, 2 metrics): noise, then one pod's metrics jump far out of their trailing range."""
    rng = np.random.default_rng(0)
    values = 10 + rng.normal(0, 0.5, (n_bins, 3, 2)).astype(np.float32)
    values[jump_from:, 0, :] += 200
    return values


def test_evaluate_opens_once_and_is_idempotent():
    w = watch()
    now = T0 + timedelta(seconds=10)
    start, n = W.window_for(w, now)
    values = anomalous_values(n, n - 3)
    created: dict[str, dict] = {}

    def fetch(ns, s, nb):
        assert (ns, s, nb) == ("ts", start, n)
        return SimpleNamespace(values=values)

    def create(body):
        name = body["metadata"]["name"]
        if name in created:
            return False
        created[name] = body
        return True

    ev = W.evaluate(w, {}, now, fetch, create, lambda: list(created.values()))
    onset = start + timedelta(seconds=(n - 3) * 30)
    assert ev.decision.action == "open" and ev.created == f"ts-watch-{onset:%Y%m%d-%H%M%S}"
    assert ev.status["lastFiring"]["incident"] == ev.created and ev.status["incidentsOpened"] == 1
    assert ev.status["openIncidents"] == [ev.created]
    assert {c["type"]: c["reason"] for c in ev.conditions} == {"Ready": "Evaluated", "Firing": "IncidentOpened"}
    # the same time again, with the status written: nothing new
    again = W.evaluate(w, ev.status, now, fetch, create)
    assert again.decision.action == "seen" and again.created is None and len(created) == 1
    # the same time again, the status write lost: the create is a no-op (409)
    lost = W.evaluate(w, {}, now, fetch, create)
    assert lost.decision.action == "open" and lost.created is None and len(created) == 1
    assert lost.status["incidentsOpened"] == 0


def test_evaluate_suspended_and_no_data():
    ev = W.evaluate(watch(suspend=True), {}, T0, lambda *a: pytest.fail("fetched while suspended"),
                    lambda b: pytest.fail("created"))
    assert ev.conditions[0]["reason"] == "Suspended" and ev.status == {"lastEvaluation": "2023-01-29T09:00:00Z"}


@pytest.mark.parametrize("values", [np.zeros((88, 0, 18)), np.full((88, 3, 18), np.nan)], ids=["no-pods", "all-nan"])
def test_a_watch_without_data_says_no_data_in_its_headline_fields(values):
    # not Firing=False/BelowThreshold with lastScore 0: that reads as "quiet" when nothing was scored
    previous = {"lastScore": 0.42, "incidentsOpened": 2}
    empty = W.evaluate(watch(), previous, T0, lambda ns, s, nb: SimpleNamespace(values=values[:nb]),
                       lambda b: pytest.fail("created"))
    assert {c["type"]: (c["status"], c["reason"]) for c in empty.conditions} == {
        "Ready": ("False", "NoData"), "Firing": ("Unknown", "NoData")}
    # null: the merge patch removes the last score, so `kubectl get` shows none rather than a stale or zero one
    assert empty.status["lastScore"] is None and "lastScore" in empty.status
    assert empty.status["incidentsOpened"] == 2 and empty.decision is None


# -- clock -----------------------------------------------------------------------------------------------------------
def test_clock(tmp_path: Path):
    before = datetime.now(UTC)
    assert before <= clock.now({}) <= datetime.now(UTC)
    path = tmp_path / "clock"
    set_clock(path, datetime(2023, 1, 29, 9, 0, tzinfo=UTC))
    assert clock.now({clock.ENV: str(path)}) == datetime(2023, 1, 29, 9, 0, tzinfo=UTC)
    path.write_text("2023-01-29T10:00:00")  # naive: UTC
    assert clock.now({clock.ENV: str(path)}) == datetime(2023, 1, 29, 10, 0, tzinfo=UTC)
    path.write_text("yesterday")
    with pytest.raises(clock.ClockError, match="not an ISO-8601"):
        clock.now({clock.ENV: str(path)})
    with pytest.raises(clock.ClockError, match="cannot read"):
        clock.now({clock.ENV: str(tmp_path / "missing")})


# -- the CRD through kubectl ---------------------------------------------------------------------------------------
def rcawatch(name: str = "w", **over) -> dict:
    return {"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAWatch", "metadata": {"name": name, "namespace": "ts"},
            "spec": spec(**over)}


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch-crd")
    with KubeStandin(tmp / "kubeconfig") as standin:
        base = ["kubectl", "--kubeconfig", str(standin.kubeconfig), "--cache-dir", str(tmp / "cache")]

        def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*base, *args], input=stdin, capture_output=True, text=True, timeout=60)

        yield run


def apply(kubectl, obj: dict) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(obj))


def test_crd_accepts_a_good_watch_and_defaults_it(kubectl):
    minimal = rcawatch("good")
    for key in ("minDuration", "cooldown", "interval"):
        del minimal["spec"][key]
    done = apply(kubectl, minimal)
    assert done.returncode == 0, done.stderr
    got = json.loads(kubectl("get", "rcaw", "good", "-n", "ts", "-o", "json").stdout)
    assert got["spec"] == {**spec(), "suspend": False}
    table = kubectl("get", "rcawatches", "-n", "ts").stdout
    assert "DETECTOR" in table and "robust_z" in table


@pytest.mark.parametrize("over, message", [
    ({"threshold": 0}, "threshold must be greater than 0"),
    ({"threshold": 1.5}, "should be less than or equal to 1"),
    ({"threshold": -0.1}, "should be greater than or equal to 0"),
    ({"detector": "lstm"}, 'Unsupported value: "lstm": supported values: "robust_z", "bocpd"'),
    ({"detector": "isolation_forest"}, "Unsupported value"),
    ({"minDuration": "5 minutes"}, "spec.minDuration in body should match"),
    ({"cooldown": "1d"}, "spec.cooldown in body should match"),
    ({"interval": "5s"}, "interval must be between 10s and 1h"),
    ({"minDuration": "2h"}, "minDuration must be between 30s and 1h"),
    ({"cooldown": "25h"}, "cooldown must be between 0s and 24h"),
    ({"targetNamespace": "Bad_NS"}, "spec.targetNamespace in body should match"),
    ({"podSelector": {"matchLabels": {"app": "x\"}"}}}, "should match"),
])
def test_crd_rejects_bad_input_at_apply_time(kubectl, over, message):
    done = apply(kubectl, rcawatch("bad", **over))
    assert done.returncode != 0, f"accepted {over}"
    assert message in done.stderr, done.stderr


def test_crd_requires_detector_and_threshold(kubectl):
    obj = rcawatch("bad2")
    del obj["spec"]["threshold"]
    done = apply(kubectl, obj)
    assert done.returncode != 0 and "spec.threshold: Required value" in done.stderr, done.stderr


def test_crd_is_in_the_chart_and_structural():
    assert (CRD_DIR.parent / "charts" / "lemzha" / "crds" / "rcawatch.yaml").read_bytes() == (
        CRD_DIR / "rcawatch.yaml").read_bytes()
    crd = next(c for c, _ in load_crds() if c.kind == "RCAWatch")
    assert crd.status_subresource and crd.plural == "rcawatches"
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(crd.schema)


# -- the chart's RBAC for watches ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["defaults", "full-all-namespaces"])
def test_chart_grants_the_watch_loop_what_it_uses_and_no_more(name, tmp_path):
    from tests.test_chart import CONFIGS, objects

    rendered = objects(CONFIGS[name], tmp_path)
    roles = [o for o in rendered if o["kind"] in ("Role", "ClusterRole")]

    def verbs(resource: str) -> set[str]:
        return {v for o in roles for r in o["rules"] if resource in r["resources"] and "lemzha.io" in r["apiGroups"]
                for v in r["verbs"]}

    assert verbs("rcawatches") == {"get", "list"}
    assert verbs("rcawatches/status") == {"get", "patch"}
    assert "create" in verbs("rcaincidents")  # the incidents a watch opens
    holders = {(o["kind"], o["metadata"].get("namespace")) for o in roles
               if any("rcawatches" in r["resources"] for r in o["rules"])}
    incident_holders = {(o["kind"], o["metadata"].get("namespace")) for o in roles
                        if any("rcaincidents" in r["resources"] for r in o["rules"])}
    assert holders == incident_holders  # watches are granted exactly where incidents are


# -- the loop's per-watch step (watches.py) with a fake Kubernetes API ------------------------------------------------
class FakeObjects:
    """The CustomObjectsApi calls watches.py makes, kept in dicts."""

    def __init__(self) -> None:
        self.incidents: dict[str, dict] = {}
        self.status_patches: list[dict] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        from kubernetes.client.exceptions import ApiException

        assert (group, version, plural) == ("lemzha.io", "v1alpha1", "rcaincidents")
        if body["metadata"]["name"] in self.incidents:
            raise ApiException(status=409, reason="AlreadyExists")
        self.incidents[body["metadata"]["name"]] = body

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        assert label_selector == "lemzha.io/watch=ts-watch"
        return {"items": list(self.incidents.values())}

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        assert (plural, namespace, name) == ("rcawatches", "ts", "ts-watch")
        self.status_patches.append(body["status"])


def test_evaluate_one_writes_status_and_opens_once():
    from lemzha_operator import watches
    from lemzha_operator.fetchers import SourceUnavailable

    w = watch()
    now = T0 + timedelta(seconds=10)
    _, n = W.window_for(w, now)
    values = anomalous_values(n, n - 3)
    objects = FakeObjects()
    memo = SimpleNamespace(objects=objects, fetch_metrics=lambda ns, s, nb: SimpleNamespace(values=values))
    obj = {"metadata": {**META, "generation": 1}, "spec": spec()}
    assert watches.evaluate_one(memo, obj, now) == 1
    status = objects.status_patches[-1]
    assert list(objects.incidents) == [status["lastFiring"]["incident"]] == status["openIncidents"]
    assert status["lastEvaluation"] == "2023-01-29T09:00:10Z" and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Firing": "True", "Ready": "True"}
    # not due again before the interval has passed
    assert watches.evaluate_one(memo, {**obj, "status": status}, now + timedelta(seconds=30)) == 0
    # the status lost: evaluated again, the create answers 409, nothing new
    assert watches.evaluate_one(memo, obj, now) == 1
    assert len(objects.incidents) == 1 and "existed already" in objects.status_patches[-1]["message"]

    def down(ns, s, nb):
        raise SourceUnavailable("PrometheusUnavailable", "Prometheus at p unreachable")

    memo.fetch_metrics = down
    assert watches.evaluate_one(memo, {**obj, "status": status}, now + timedelta(minutes=1)) == 1
    failed = objects.status_patches[-1]
    assert "lastEvaluation" not in failed  # tried again at the next tick
    assert {c["type"]: c["reason"] for c in failed["conditions"]}["Ready"] == "PrometheusUnavailable"
    bad = {"metadata": {**META, "generation": 2}, "spec": spec(detector="lstm")}
    assert watches.evaluate_one(memo, bad, now) == 1
    assert objects.status_patches[-1]["conditions"][0]["reason"] == "InvalidSpec"
