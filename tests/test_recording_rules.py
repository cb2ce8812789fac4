"""The recording rules (lemzha.recording_rules): generated from the catalog, checked in under
charts/lemzha/files/rules, and evaluated by the real promtool (`check rules`, and `test rules` unit tests with input
series)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from lemzha import recording_rules as rules
from lemzha.catalog import CATALOG, LATENCY_SOURCE_NAMES, LATENCY_SOURCES, LatencySource
from lemzha.histogram import histogram_quantile
from offline.bench.standins.prometheus_server import PROMTOOL
from tests.marks import requires_prometheus

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "charts" / "lemzha" / "files" / "rules"
RECORDED = {s.replay.series for s in CATALOG if s.recorded}


def test_checked_in_rule_files_are_the_generated_ones():
    files = rules.file_rules()
    assert sorted(p.name for p in RULES_DIR.glob("*.yaml")) == sorted(files)
    for name, members in files.items():
        assert (RULES_DIR / name).read_text() == rules.render(members), (
            f"{name} is stale: python -m lemzha.recording_rules --out charts/lemzha/files/rules")
    assert rules.main(["--check", str(RULES_DIR)]) == 0


def test_check_names_a_stale_file(tmp_path, capsys):
    assert rules.main(["--out", str(tmp_path)]) == 0
    (tmp_path / "istio.yaml").write_text((tmp_path / "istio.yaml").read_text().replace("0.95", "0.5"))
    (tmp_path / "old.yaml").write_text("groups: []\n")
    assert rules.main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "stale or missing: istio.yaml" in err and "not generated: old.yaml" in err and "--out" in err


@pytest.mark.parametrize("latency", LATENCY_SOURCE_NAMES)
def test_rules_cover_every_recorded_series_the_catalog_queries(latency):
    chosen = rules.rules_for(latency)
    records = [r.record for r in chosen]
    assert len(records) == len(set(records)), "two rules record the same series"
    mesh = {s.replay.series for s in CATALOG if s.recorded and "mesh" in s.sources}
    assert set(records) == (RECORDED - mesh if latency == "none" else RECORDED)
    assert all(r.inputs and r.record.startswith("lemzha:") for r in chosen)
    files = rules.chart_files(latency)
    assert {r.record for f in files for r in rules.file_rules()[f]} == set(records)


def test_no_rule_reads_a_recorded_series():
    """promtool's rule backfill (create-blocks-from rules) cannot chain rules, so none may read another's output."""
    for members in rules.file_rules().values():
        for rule in members:
            assert "lemzha:" not in rule.expr, rule.record


def test_unknown_latency_source_is_refused():
    with pytest.raises(ValueError, match=r"unknown latency source 'kuma'.*istio, linkerd, otel-spanmetrics, none"):
        rules.rules_for("kuma")


# -- the real promtool -----------------------------------------------------------------------------------------------
def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@requires_prometheus
def test_promtool_check_rules_accepts_every_file():
    for path in sorted(RULES_DIR.glob("*.yaml")):
        result = promtool("check", "rules", str(path))
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"
        assert f"SUCCESS: {len(rules.file_rules()[path.name])} rules found" in result.stdout


@requires_prometheus
def test_promtool_check_rules_refuses_a_broken_file_with_the_reason(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((RULES_DIR / "kubernetes.yaml").read_text().replace("sum by (namespace, pod) (", "sum by (", 1))
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr, result.stdout + result.stderr


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _input(name: str, labels: dict[str, str], values: str) -> dict:
    return {"series": name + _labels(labels), "values": values}


def _expect(record: str, samples: dict[str, float]) -> dict:
    """A promql_expr_test of a recorded series at 2 m: `samples` maps a label string to its value."""
    return {"expr": record, "eval_time": "2m",
            "exp_samples": [{"labels": f"{record}{labels}", "value": value} for labels, value in samples.items()]}


# Inputs are sampled every 15 s and the rules evaluated every 30 s; every counter step below is chosen so that the
# rates, sums and quotients are exact in binary floating point, as promtool compares values exactly.
def kubernetes_unit_test() -> dict:
    ns = {"namespace": "ns"}
    cpu, mem, limits = "container_cpu_usage_seconds_total", "container_memory_working_set_bytes", \
        "kube_pod_container_resource_limits"
    series = [
        # web-1: two containers, 0.5 + 0.25 cores of limits 1 + 0.5; the POD and pod-cgroup ("") series are ignored
        _input(cpu, {**ns, "pod": "web-1", "container": "app"}, "0+7.5x20"),
        _input(cpu, {**ns, "pod": "web-1", "container": "sidecar"}, "0+3.75x20"),
        _input(cpu, {**ns, "pod": "web-1", "container": "POD"}, "0+15x20"),
        _input(cpu, {**ns, "pod": "web-1", "container": ""}, "0+30x20"),
        _input(limits, {**ns, "pod": "web-1", "container": "app", "resource": "cpu", "unit": "core"}, "1x20"),
        _input(limits, {**ns, "pod": "web-1", "container": "sidecar", "resource": "cpu", "unit": "core"}, "0.5x20"),
        _input(mem, {**ns, "pod": "web-1", "container": "app"}, "100x20"),
        _input(mem, {**ns, "pod": "web-1", "container": "sidecar"}, "50x20"),
        _input(limits, {**ns, "pod": "web-1", "container": "app", "resource": "memory", "unit": "byte"}, "200x20"),
        _input(limits, {**ns, "pod": "web-1", "container": "sidecar", "resource": "memory", "unit": "byte"}, "100x20"),
        # no limit: no percentage
        _input(cpu, {**ns, "pod": "free-1", "container": "app"}, "0+7.5x20"),
        _input(mem, {**ns, "pod": "free-1", "container": "app"}, "100x20"),
        # stopped reporting at 60 s: irate[2m] would still answer at 120 s, the freshness guard drops it
        _input(cpu, {**ns, "pod": "gone-1", "container": "app"}, "0+7.5x4"),
        _input(mem, {**ns, "pod": "gone-1", "container": "app"}, "100x4"),
        _input(limits, {**ns, "pod": "gone-1", "container": "app", "resource": "cpu", "unit": "core"}, "1x20"),
        _input(limits, {**ns, "pod": "gone-1", "container": "app", "resource": "memory", "unit": "byte"}, "200x20"),
    ]
    # two nodes; node-exporter runs as a pod on each and finds its node through its own kube_pod_info
    nodes = {"node-a": {"idle": ("0+11.25x20", "0+3.75x20"), "available": "25x20", "eth0": "0+1500x20",
                        "eth1": "0+750x20", "pods": ("web-1", "web-2")},
             "node-b": {"idle": ("0+15x20", "0+15x20"), "available": "50x20", "eth0": "0+750x20", "eth1": "0x20",
                        "pods": ("db-1",)}}
    for node, spec in nodes.items():
        exporter = {"namespace": "monitoring", "pod": f"node-exporter-{node[-1]}", "instance": f"{node}:9100"}
        series.append(_input("kube_pod_info", {"namespace": "monitoring", "pod": exporter["pod"], "node": node,
                                               "host_ip": "10.0.0.1"}, "1x20"))
        for pod in spec["pods"]:
            series.append(_input("kube_pod_info", {**ns, "pod": pod, "node": node, "host_ip": "10.0.0.1"}, "1x20"))
        for cpu_index, values in enumerate(spec["idle"]):
            series.append(_input("node_cpu_seconds_total", {**exporter, "cpu": str(cpu_index), "mode": "idle"},
                                 values))
            series.append(_input("node_cpu_seconds_total", {**exporter, "cpu": str(cpu_index), "mode": "user"},
                                 "0+15x20"))
        series.append(_input("node_memory_MemAvailable_bytes", exporter, spec["available"]))
        series.append(_input("node_memory_MemTotal_bytes", exporter, "100x20"))
        for device in ("eth0", "eth1"):
            series.append(_input("node_network_receive_bytes_total", {**exporter, "device": device}, spec[device]))
        for virtual in ("lo", "veth1a2b3c", "cali12345", "0123456789abcde"):
            series.append(_input("node_network_receive_bytes_total", {**exporter, "device": virtual}, "0+15000x20"))
    per_pod = {"web-1": "node-a", "web-2": "node-a", "db-1": "node-b"}

    def onto_pods(by_node: dict[str, float]) -> dict[str, float]:
        out = {f'{{namespace="ns",pod="{pod}"}}': by_node[node] for pod, node in per_pod.items()}
        out |= {f'{{namespace="monitoring",pod="node-exporter-{n[-1]}"}}': v for n, v in by_node.items()}
        return out

    web = '{namespace="ns",pod="web-1"}'
    return {"interval": "15s", "input_series": series, "promql_expr_test": [
        _expect("lemzha:pod_cpu_usage:percent", {web: 50.0}),  # 100 * (0.5 + 0.25) / (1 + 0.5)
        _expect("lemzha:pod_memory_usage:percent", {web: 50.0}),  # 100 * (100 + 50) / (200 + 100)
        _expect("lemzha:pod_node_cpu_usage:percent", onto_pods({"node-a": 50.0, "node-b": 0.0})),  # idle .75/.25
        _expect("lemzha:pod_node_memory_usage:percent", onto_pods({"node-a": 75.0, "node-b": 50.0})),
        _expect("lemzha:pod_node_network_receive:bytes_rate", onto_pods({"node-a": 150.0, "node-b": 50.0})),
    ]}


def _matcher_labels(matchers: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', matchers))


BOUNDS_MS = (10.0, 100.0, 1000.0)
# per 15 s: cumulative bucket steps of le=10, 100, 1000, +Inf (rates 1, 2, 2.5, 2.5 per second)
SERVER_STEPS = ("0+15x20", "0+30x20", "0+37.5x20", "0+37.5x20")
CLIENT_STEPS = ("0+0x20", "0+15x20", "0+30x20", "0+30x20")


def _quantile(q: float, steps: tuple[str, ...]) -> float:
    rates = [float(s.split("+")[1].split("x")[0]) / 15 for s in steps]
    return float(histogram_quantile(q, BOUNDS_MS, rates)) / 1000


def mesh_unit_test(source: LatencySource) -> dict:
    ns_label, pod_label = source.pod_labels
    # span metrics come through the collector's scrape, whose own namespace and pod labels must not leak through
    scrape = {} if ns_label == "namespace" else {"namespace": "observability", "pod": "otel-collector-0"}
    series = []
    for pod in ("web-1", "gone-1"):
        owner = {**scrape, ns_label: "ns", pod_label: pod}
        length = "20" if pod == "web-1" else "4"
        for side, steps in (("server", SERVER_STEPS), ("client", CLIENT_STEPS)):
            side_labels = _matcher_labels(source.server if side == "server" else source.client)
            for le, values in zip([*(f"{b:g}" for b in BOUNDS_MS), "+Inf"], steps, strict=True):
                series.append(_input(f"{source.histogram}_bucket", {**owner, **side_labels, "le": le},
                                     values.replace("x20", f"x{length}")))
        series.append(_input(source.requests, {**owner, **_matcher_labels(source.server)}, f"0+30x{length}"))
        series.append(_input(source.requests, {**owner, **_matcher_labels(source.client)}, f"0+300x{length}"))
    if ns_label != "namespace":  # a span series without the pod dimension: recorded without a pod label
        series.append(_input(source.requests, {**scrape, ns_label: "ns", **_matcher_labels(source.server)},
                             "0+15x20"))
    web = '{namespace="ns",pod="web-1"}'
    tests = [_expect(f"lemzha:pod_{side}_latency_p{q}:seconds",
                     {web: _quantile(q / 100, SERVER_STEPS if side == "server" else CLIENT_STEPS)})
             for side in ("client", "server") for q in (90, 95, 99)]
    workload = {web: 2.0} | ({'{namespace="ns"}': 1.0} if ns_label != "namespace" else {})
    tests.append(_expect("lemzha:pod_requests:rate", workload))
    return {"interval": "15s", "input_series": series, "promql_expr_test": tests}


def test_unit_test_expectations_are_not_trivial():
    """The quantiles the unit tests expect interpolate inside buckets (not a bound) and differ per side."""
    server = [_quantile(q, SERVER_STEPS) for q in (0.9, 0.95, 0.99)]
    client = [_quantile(q, CLIENT_STEPS) for q in (0.9, 0.95, 0.99)]
    assert np.all(np.diff(server) > 0) and np.all(np.diff(client) > 0) and server != client
    assert not {*server, *client} & {b / 1000 for b in BOUNDS_MS}


@requires_prometheus
@pytest.mark.parametrize("name", sorted(rules.file_rules()))
def test_promtool_unit_tests_evaluate_the_rules_on_input_series(name, tmp_path):
    source = next((s for s in LATENCY_SOURCES if f"{s.name}.yaml" == name), None)
    unit = kubernetes_unit_test() if source is None else mesh_unit_test(source)
    (tmp_path / name).write_text((RULES_DIR / name).read_text())
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": [name], "evaluation_interval": "30s",
                                                        "tests": [unit]}, sort_keys=False))
    result = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout


@requires_prometheus
def test_promtool_unit_test_fails_on_a_wrong_expectation(tmp_path):
    """Not vacuous: a wrong expected value makes `promtool test rules` fail and say which series."""
    unit = kubernetes_unit_test()
    unit["promql_expr_test"][0]["exp_samples"][0]["value"] = 51.0
    (tmp_path / "kubernetes.yaml").write_text((RULES_DIR / "kubernetes.yaml").read_text())
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["kubernetes.yaml"],
                                                        "evaluation_interval": "30s", "tests": [unit]}))
    result = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode != 0 and "lemzha:pod_cpu_usage:percent" in result.stdout + result.stderr
