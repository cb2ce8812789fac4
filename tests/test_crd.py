"""The RCAIncident CRD, driven through kubectl as a user would, against the kube-apiserver stand-in.

Schema and CEL checks here run in offline/bench/standins/kube_standin.py (jsonschema + cel-python), not in a real API
server.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from offline.bench.standins.kube_standin import CRD_DIR, KubeStandin

CRD_PATH = CRD_DIR / "rcaincident.yaml"
EXAMPLE = CRD_DIR.parent / "charts" / "lemzha" / "examples" / "incident-trainticket.yaml"
NAME = "nezha-20230129-05"


class Kubectl:
    """kubectl against one stand-in, with its own discovery cache (kubectl caches per host:port)."""

    def __init__(self, standin: KubeStandin, tmp: Path) -> None:
        self.base = ["kubectl", "--kubeconfig", str(standin.kubeconfig), "--cache-dir", str(tmp / "kubectl-cache")]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.base, *args], input=stdin, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done

    def apply(self, manifest: dict[str, Any] | Path, *extra: str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        # --validate=false: the stand-in has no OpenAPI endpoint for client-side validation.
        if isinstance(manifest, Path):
            return self("apply", "--validate=false", "-f", str(manifest), *extra, check=check)
        return self("apply", "--validate=false", "-f", "-", *extra, stdin=yaml.safe_dump(manifest), check=check)

    def get_json(self, name: str, namespace: str = "ts") -> dict[str, Any]:
        return json.loads(self("get", "rcai", name, "-n", namespace, "-o", "json").stdout)


@pytest.fixture()
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    with KubeStandin(tmp_path / "kubeconfig") as standin:
        yield Kubectl(standin, tmp_path)


def incident(name: str = "x", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "lemzha.io/v1alpha1", "kind": "RCAIncident",
            "metadata": {"name": name, "namespace": "ts"}, "spec": spec}


def _schema_nodes(node: dict[str, Any], where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, node
    for key, sub in node.get("properties", {}).items():
        yield from _schema_nodes(sub, f"{where}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _schema_nodes(node[key], f"{where}[{key}]")


def test_crd_is_a_valid_structural_crd() -> None:
    """Names, printer columns, status subresource; every schema node typed; spec closed; CEL rules compile."""
    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    assert len(docs) == 1
    crd = docs[0]
    assert (crd["apiVersion"], crd["kind"]) == ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}" == "rcaincidents.lemzha.io"
    names = spec["names"]
    assert (spec["scope"], names["kind"], names["shortNames"]) == ("Namespaced", "RCAIncident", ["rcai"])
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Phase": ".status.phase", "Top-Cause": ".status.rootCauses[0].service",
                       "Score": ".status.rootCauses[0].score", "Age": ".metadata.creationTimestamp"}

    root = version["schema"]["openAPIV3Schema"]
    env = celpy.Environment()
    for where, node in _schema_nodes(root):
        assert "type" in node, f"{where or 'root'} has no type (not structural)"
        # A v1 CRD may not say additionalProperties: false; properties and additionalProperties are exclusive.
        assert node.get("additionalProperties") is not False, where
        assert not ("properties" in node and "additionalProperties" in node), where
        for rule in node.get("x-kubernetes-validations", []):
            env.compile(rule["rule"])  # raises on a syntax error
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(root)
    spec_schema = root["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec is immutable"} in spec_schema["x-kubernetes-validations"]
    props = spec_schema["properties"]
    assert (props["topK"]["default"], props["topK"]["minimum"], props["topK"]["maximum"]) == (5, 1, 10)
    assert (props["timeoutSeconds"]["default"], props["timeoutSeconds"]["minimum"]) == (900, 30)
    status = root["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Analyzing", "Completed", "Failed"]
    assert status["rootCauses"]["maxItems"] == 10


def test_example_fault_time_is_the_datasets_inject_time(nezha_root: Path) -> None:
    """The example's faultTime is nezha/20230129_05's inject_time, not a made-up one."""
    from offline.data.nezha import NezhaDay, list_faults

    fault = list_faults(nezha_root, NezhaDay("2023-01-29", "trainticket", "ts"))[5]
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    assert spec["faultTime"] == fault.time.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert fault.pod.startswith("ts-basic-service")


def test_example_applies_and_lists_with_printer_columns(kubectl: Kubectl) -> None:
    """`kubectl apply` the example, then `kubectl get rcai` shows it with the CRD's columns and defaults."""
    assert "created" in kubectl.apply(EXAMPLE).stdout
    listing = kubectl("get", "rcai", "-n", "ts")
    header, row = listing.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "TOP-CAUSE", "SCORE", "AGE"]
    assert row.startswith(NAME)
    assert "Warning" not in listing.stderr
    obj = kubectl.get_json(NAME)
    meta = obj["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0
    assert obj["spec"]["faultTime"] == "2023-01-29T09:21:39Z"

    one = kubectl("get", "rcai", NAME, "-n", "ts")  # a table GET of one name shows that one only
    assert len(one.stdout.splitlines()) == 2
    missing = kubectl("get", "rcai", "no-such-incident", "-n", "ts", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr + missing.stdout

    # Defaults come from the schema: an incident that leaves topK/timeoutSeconds out gets 5/900.
    kubectl.apply(incident("defaults", recent="15m"))
    assert {k: kubectl.get_json("defaults")["spec"].get(k) for k in ("topK", "timeoutSeconds")} == {
        "topK": 5, "timeoutSeconds": 900}


@pytest.mark.parametrize("spec", [
    pytest.param({"from": "2023-01-29T09:00:00Z", "to": "2023-01-29T09:30:00Z"}, id="from-to"),
    pytest.param({"recent": "2h"}, id="recent-2h"),
    pytest.param({"faultTime": "2023-01-29T09:21:39+08:00", "before": "1m", "after": "1m"}, id="fault-2m"),
    pytest.param({"faultTime": "2023-01-29T09:21:39Z", "targetNamespace": "ts", "topK": 10, "timeoutSeconds": 30,
                  "ttlSecondsAfterFinished": 0,
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ts-basic-service", "tier": ""},
                                  "matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b-1"]},
                                                       {"key": "canary", "operator": "DoesNotExist"}]}},
                 id="everything"),
])
def test_good_specs_pass_server_dry_run(kubectl: Kubectl, spec: dict[str, Any]) -> None:
    """Valid windows and selectors pass; dryRun answers without storing (the stand-in's dryRun gap is filled)."""
    done = kubectl.apply(incident("good", **spec), "--dry-run=server")
    assert "(server dry run)" in done.stdout
    assert "NotFound" in kubectl("get", "rcai", "good", "-n", "ts", check=False).stderr


WINDOW = "the window (to - from) must be between 2m and 2h"
BAD = [
    ({"faultTime": "2023-01-29 09:21"}, "spec.faultTime in body must be of type date-time"),
    ({"faultTime": "2023-13-29T09:21:39Z"}, "must be of type date-time"),
    ({"from": "2023-01-29T10:00:00Z", "to": "2023-01-29T09:30:00Z"}, "to must be after from"),
    ({"from": "2023-01-29T09:00:00Z", "to": "2023-01-29T11:00:01Z"}, WINDOW),  # too long
    ({"from": "2023-01-29T09:00:00Z", "to": "2023-01-29T09:01:59Z"}, WINDOW),  # too short
    ({"faultTime": "2023-01-29T09:21:39Z", "before": "90m", "after": "31m"}, "(before + after) must be between"),
    ({"faultTime": "2023-01-29T09:21:39Z", "before": "30s", "after": "30s"}, "(before + after) must be between"),
    ({"faultTime": "2023-01-29T09:21:39Z", "before": "2m", "after": "0s"}, "before and after must each be at least 1m"),
    ({"faultTime": "2023-01-29T09:21:39Z", "after": "80m"}, "(before + after) must be between"),  # before: 60m
    ({"recent": "121m"}, "recent must be between 2m and 2h"),
    ({"recent": "15 minutes"}, "spec.recent in body should match '^[0-9]+[smh]$'"),
    ({"recent": "15m", "topK": 0}, "spec.topK in body should be greater than or equal to 1"),
    ({"recent": "15m", "topK": 11},
     "spec.topK: Invalid value: 11: spec.topK in body should be less than or equal to 10"),
    ({"recent": "15m", "timeoutSeconds": 10}, "spec.timeoutSeconds in body should be greater than or equal to 30"),
    ({"recent": "15m", "ttlSecondsAfterFinished": -1}, "greater than or equal to 0"),
    ({"recent": "15m", "faultTime": "2023-01-29T09:21:39Z"}, "give the window in exactly one form"),
    ({"recent": "15m", "from": "2023-01-29T09:00:00Z", "to": "2023-01-29T09:30:00Z"}, "exactly one form"),
    ({"topK": 3}, "give the window in exactly one form"),
    ({"from": "2023-01-29T09:00:00Z"}, "from and to must be given together"),
    ({"recent": "15m", "before": "5m"}, "before/after are only allowed with faultTime"),
    ({"recent": "15m", "windowSize": "10m"}, 'unknown field "spec.windowSize"'),
    ({"recent": "15m", "podSelector": {"matchLabel": {"app": "a"}}}, 'unknown field "spec.podSelector.matchLabel"'),
    ({"recent": "15m", "targetNamespace": 'ts"} or vector(1)'}, "spec.targetNamespace in body should match"),
    ({"recent": "15m", "targetNamespace": "TS"}, "spec.targetNamespace in body should match"),
    ({"recent": "15m", "podSelector": {"matchLabels": {"app": 'a"}'}}},
     "spec.podSelector.matchLabels.app in body should match"),
    ({"recent": "15m", "podSelector": {"matchLabels": {'app"} or vector(1) #': "a"}}},
     "matchLabels keys must be label keys"),
    ({"recent": "15m", "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a'|b"]}]}},
     "spec.podSelector.matchExpressions[0].values[0] in body should match"),
    ({"recent": "15m", "podSelector": {"matchExpressions": [{"key": "app", "operator": "Like", "values": ["a"]}]}},
     'Unsupported value: "Like"'),
    ({"recent": "15m", "podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
     "In/NotIn need values"),
]


@pytest.mark.parametrize(("spec", "message"), BAD, ids=[f"{i:02d}-{m[:40]}" for i, (_, m) in enumerate(BAD)])
def test_bad_spec_is_rejected_with_the_schema_or_cel_message(kubectl: Kubectl, spec: dict[str, Any],
                                                             message: str) -> None:
    """kubectl fails, prints the schema/CEL message, and nothing is stored."""
    done = kubectl.apply(incident("bad", **spec), check=False)
    assert done.returncode != 0, done.stdout
    assert message in done.stderr
    assert "NotFound" in kubectl("get", "rcai", "bad", "-n", "ts", check=False).stderr


def test_spec_is_immutable_but_metadata_is_not(kubectl: Kubectl) -> None:
    """Re-applying a changed spec fails with the CEL transition rule's message; labels can still change."""
    kubectl.apply(EXAMPLE)
    changed = yaml.safe_load(EXAMPLE.read_text())
    changed["spec"]["topK"] = 3
    done = kubectl.apply(changed, check=False)
    assert done.returncode != 0
    assert f'"{NAME}" is invalid: spec: Invalid value: "object": spec is immutable' in done.stderr
    assert kubectl.get_json(NAME)["spec"]["topK"] == 5

    labelled = yaml.safe_load(EXAMPLE.read_text())
    labelled["metadata"]["labels"] = {"team": "sre"}
    kubectl.apply(labelled)
    obj = kubectl.get_json(NAME)
    assert obj["metadata"]["labels"] == {"team": "sre"}
    assert obj["metadata"]["generation"] == 1  # only spec changes bump generation


def test_status_is_written_through_the_status_subresource(kubectl: Kubectl) -> None:
    """The operator's status patch shows in `kubectl get rcai`; status sent to the main resource is ignored."""
    kubectl.apply(EXAMPLE)
    status = {
        "phase": "Completed", "observedGeneration": 1, "method": "lemzha-k",
        "resolvedWindow": {"from": "2023-01-29T09:11:39Z", "to": "2023-01-29T09:31:39Z"},
        "onset": {"time": "2023-01-29T09:21:39Z", "source": "given"},
        "rootCauses": [{"rank": 1, "service": "ts-basic-service", "score": 0.93,
                        "evidence": {"metrics": [{"pod": "ts-basic-service-5dc8d4f9fd-46997",
                                                  "metric": "container_cpu_usage_seconds_total", "z": 7.5}],
                                     "logs": [{"template": "Exception in <*>", "count": 12, "level": "error"}],
                                     "traces": [{"client": "ts-travel-service", "gapBeforeMs": 3.1,
                                                 "gapAfterMs": 1497.3}]}},
                       {"rank": 2, "service": "ts-station-service", "score": 0.41}],
        "dataCoverage": {"pods": 64, "metrics": 1200, "logLines": 50000, "bins": 40,
                         "missingMetrics": ["latency_client_p90", "workload"]},
        "conditions": [{"type": "Completed", "status": "True", "reason": "Ranked", "message": "2 causes",
                        "lastTransitionTime": "2023-01-29T09:40:00Z", "observedGeneration": 1}],
    }
    kubectl("patch", "rcai", NAME, "-n", "ts", "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": status}))
    row = kubectl("get", "rcai", "-n", "ts").stdout.splitlines()[1].split()
    assert row[:4] == [NAME, "Completed", "ts-basic-service", "0.93"]
    assert kubectl.get_json(NAME)["status"] == status

    # Status patched on the main resource is dropped, as with a real status subresource.
    kubectl("patch", "rcai", NAME, "-n", "ts", "--type=merge", "-p", '{"status": {"phase": "Failed"}}')
    assert kubectl.get_json(NAME)["status"]["phase"] == "Completed"

    bad = kubectl("patch", "rcai", NAME, "-n", "ts", "--subresource=status", "--type=merge", "-p",
                  '{"status": {"phase": "Done"}}', check=False)
    assert bad.returncode != 0 and 'status.phase: Unsupported value: "Done"' in bad.stderr


OPERATOR = '''
import kopf

@kopf.on.login()
def login(**kwargs):
    return kopf.login_via_client(**kwargs)

@kopf.on.create("lemzha.io", "v1alpha1", "rcaincidents")
def created(patch, **_):
    patch.status["phase"] = "Completed"
    patch.status["rootCauses"] = [{"rank": 1, "service": "ts-basic-service", "score": 0.9}]

@kopf.on.delete("lemzha.io", "v1alpha1", "rcaincidents")
def deleted(**_):
    pass
'''


def test_a_kopf_operator_runs_against_the_standin(tmp_path: Path) -> None:
    """`kopf run -n ts` sees the incident, patches status, and finalizes deletion (kmock 0.8 alone cannot)."""
    import os
    import sys

    (tmp_path / "op.py").write_text(OPERATOR)
    with KubeStandin(tmp_path / "kubeconfig") as standin:
        kubectl = Kubectl(standin, tmp_path)
        env = {**os.environ, "KUBECONFIG": str(standin.kubeconfig)}
        log = (tmp_path / "op.log").open("w")
        operator = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-n", "ts",
                                     str(tmp_path / "op.py")], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            kubectl.apply(EXAMPLE)
            kubectl("wait", "-n", "ts", f"rcai/{NAME}", "--for=jsonpath={.status.phase}=Completed", "--timeout=30s")
            assert kubectl.get_json(NAME)["metadata"]["finalizers"]  # kopf's finalizer went in via a JSON patch
            kubectl("delete", "-n", "ts", f"rcai/{NAME}", "--timeout=30s")
            assert "NotFound" in kubectl("get", "rcai", NAME, "-n", "ts", check=False).stderr
        finally:
            operator.terminate()
            operator.wait(30)
            log.close()
        assert "Handler 'deleted' succeeded" in (tmp_path / "op.log").read_text()


def test_lists_honour_label_selectors(kubectl: Kubectl) -> None:
    """`kubectl get rcai -l …` as against a real API server (the stand-in ignored labelSelector)."""
    for name, labels in (("a", {"team": "pay", "tier": "web"}), ("b", {"team": "ops"}), ("c", {})):
        body = incident(name, recent="15m")
        body["metadata"]["labels"] = labels
        kubectl.apply(body)

    def names(selector: str) -> list[str]:
        out = kubectl("get", "rcai", "-n", "ts", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}").stdout
        return sorted(out.split())

    assert names("team=pay") == ["a"] and names("team!=pay") == ["b", "c"]
    assert names("team in (pay,ops)") == ["a", "b"] and names("team notin (pay)") == ["b", "c"]
    assert names("team,!tier") == ["b"] and names("team==ops,tier") == []


def test_kubectl_apply_validates_without_validate_false(kubectl: Kubectl) -> None:
    """The stand-in serves the OpenAPI v3 kubectl's validation reads: a plain apply creates a good incident and an
    unknown field is refused by the server's strict field validation (before, kubectl failed to download openapi)."""
    good = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(incident("plain", recent="15m")))
    assert "created" in good.stdout
    bad = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(incident("typo", recent="15m", windowSize="5m")),
                  check=False)
    assert bad.returncode != 0 and 'unknown field "spec.windowSize"' in bad.stderr, bad.stderr
