"""Named Events: posted once per incident and reason, through the Kubernetes client, against the kube stand-in."""

import json
import subprocess

import kubernetes
import pytest

from lemzha_operator.events import event_body, event_name, post_once
from offline.bench.standins.kube_standin import KubeStandin

META = {"name": "nezha-20230129-05", "namespace": "ts", "uid": "0b9c6a0e-5d1f-4c55-9a1c-3f2d7e8a9b10"}


def test_names_are_stable_per_incident_and_reason():
    assert event_name(META["name"], META["uid"], "Completed") == "nezha-20230129-05.0b9c6a0e5d1f.completed"
    assert event_name(META["name"], "another-uid", "Completed") != event_name(META["name"], META["uid"], "Completed")
    assert event_name(META["name"], META["uid"], "Failed") != event_name(META["name"], META["uid"], "Completed")
    assert len(event_name("x" * 253, META["uid"], "PrometheusUnavailable")) <= 253


@pytest.fixture()
def core(tmp_path):
    with KubeStandin(tmp_path / "kubeconfig") as kube:
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(kube.kubeconfig), client_configuration=config)
        yield kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config)), kube


def test_an_event_is_posted_once_however_often_it_is_sent(core):
    api, kube = core
    body = event_body(META, "RCAIncident", "Completed", "top cause: ts-order-service")
    assert post_once(api, body) is True
    assert post_once(api, body) is False  # a retry after a crash: AlreadyExists, not a second Event
    out = subprocess.run(["kubectl", "--kubeconfig", str(kube.kubeconfig), "get", "events", "-n", "ts", "-o", "json"],
                         capture_output=True, text=True, check=True)
    events = json.loads(out.stdout)["items"]
    assert [(e["reason"], e["message"], e["involvedObject"]["name"]) for e in events] == [
        ("Completed", "top cause: ts-order-service", META["name"])]


def test_other_api_errors_are_raised(core):
    api, _ = core
    body = event_body({**META, "namespace": "no-such-namespace!"}, "RCAIncident", "Completed", "x")
    with pytest.raises(kubernetes.client.exceptions.ApiException):
        post_once(api, {**body, "metadata": {**body["metadata"], "name": ""}})


def test_describe_lists_only_the_incidents_own_events(core):
    """`kubectl describe rcai X` asks for Events by involvedObject (name, namespace, kind, uid): X's own Events only,
    not its neighbours' nor those of a deleted incident that had the same name."""
    api, kube = core
    objects = kubernetes.client.CustomObjectsApi(api.api_client)
    spec = {"faultTime": "2023-01-29T09:00:00Z"}

    def create(name):
        body = {"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident", "metadata": {"name": name}, "spec": spec}
        return objects.create_namespaced_custom_object("lemzha.io", "v1alpha1", "ts", "rcaincidents", body)["metadata"]

    gone = create("inc-a")
    post_once(api, event_body(gone, "RCAIncident", "Failed", "from the deleted inc-a"))
    objects.delete_namespaced_custom_object("lemzha.io", "v1alpha1", "ts", "rcaincidents", "inc-a")
    own, other = create("inc-a"), create("inc-b")
    post_once(api, event_body(own, "RCAIncident", "Completed", "top cause: ts-order-service"))
    post_once(api, event_body(other, "RCAIncident", "Completed", "top cause: ts-route-service"))
    body = event_body(own, "RCAIncident", "Completed", "x")["involvedObject"]
    assert body == {"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident", "name": "inc-a", "namespace": "ts",
                    "uid": own["uid"]}
    out = subprocess.run(["kubectl", "--kubeconfig", str(kube.kubeconfig), "describe", "rcai", "inc-a", "-n", "ts"],
                         capture_output=True, text=True, check=True).stdout
    events = out[out.index("Events:"):]
    assert "top cause: ts-order-service" in events
    assert "ts-route-service" not in events and "from the deleted inc-a" not in events
