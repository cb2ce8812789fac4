"""Coverage ablation (lemzha.coverage): a scenario as a cluster with only some exporters would see it."""

from __future__ import annotations

import numpy as np
import pytest

from lemzha.catalog import CATALOG, EXPORTER_PRESETS, METRIC_NAMES, Exporter, metrics_provided
from lemzha.coverage import exporters_of, with_exporters
from tests.test_scenario import _trace_frames, make

CADVISOR = ("cpu_millicores", "memory_bytes", "syscall_read", "syscall_write", "network_receive", "network_transmit")


def full_scenario():
    pods = ("a-5dc8d4f9fd-46997", "b-5dc8d4f9fd-llznp", "b-5dc8d4f9fd-zzzzz")
    values = np.arange(4 * 3 * len(METRIC_NAMES), dtype=np.float32).reshape(4, 3, len(METRIC_NAMES))
    service_metrics, edges = _trace_frames()
    return make(pods=pods, pod_service={pods[0]: "a", pods[1]: "b", pods[2]: "b"}, metrics=METRIC_NAMES,
                values=values, service_metrics=service_metrics, edges=edges)


def test_every_metric_names_its_exporters():
    assert all(s.sources and set(s.sources) <= set(Exporter) for s in CATALOG)
    assert metrics_provided(EXPORTER_PRESETS["cadvisor"]) == CADVISOR
    assert set(metrics_provided(EXPORTER_PRESETS["cadvisor_ksm_node"])) == set(CADVISOR) | {
        "cpu_percent", "memory_percent", "node_cpu_percent", "node_memory_percent", "node_network_receive"}
    assert metrics_provided(EXPORTER_PRESETS["full"]) == METRIC_NAMES
    # node metrics need the pod -> node join of kube-state-metrics, not only node-exporter
    assert "node_cpu_percent" not in metrics_provided({"cadvisor", "node-exporter"})


@pytest.mark.parametrize("preset", ["cadvisor", "cadvisor_ksm_node"])
def test_preset_keeps_only_what_its_exporters_provide(preset):
    scenario = full_scenario()
    before = scenario.values.copy()
    masked = with_exporters(scenario, preset)
    kept = set(metrics_provided(EXPORTER_PRESETS[preset]))
    assert 0 < len(kept) < len(METRIC_NAMES)
    for m, name in enumerate(masked.metrics):
        if name in kept:
            np.testing.assert_array_equal(masked.values[:, :, m], before[:, :, m])
        else:
            assert np.isnan(masked.values[:, :, m]).all(), name
    assert masked.service_metrics.empty and masked.edges.empty  # no OpenTelemetry collector: no trace features
    assert masked.metrics == scenario.metrics and masked.pods == scenario.pods and masked.label == scenario.label
    assert masked.logs.equals(scenario.logs)  # Loki is not an exporter: logs stay
    np.testing.assert_array_equal(scenario.values, before)  # the input is untouched
    assert len(scenario.service_metrics) and len(scenario.edges)


def test_full_preset_and_traces_keep_everything():
    scenario = full_scenario()
    full = with_exporters(scenario, "full")
    np.testing.assert_array_equal(full.values, scenario.values)
    assert full.service_metrics.equals(scenario.service_metrics) and full.edges.equals(scenario.edges)
    traced = with_exporters(scenario, ["cadvisor", "traces"])
    assert len(traced.service_metrics) and np.isnan(traced.values[:, :, METRIC_NAMES.index("workload")]).all()


def test_unknown_preset_or_exporter_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown exporter preset 'cadvisr'.*cadvisor, cadvisor_ksm_node, full"):
        exporters_of("cadvisr")
    with pytest.raises(ValueError, match=r"unknown exporter 'prometheus'.*cadvisor, kube-state-metrics"):
        with_exporters(full_scenario(), ["cadvisor", "prometheus"])
