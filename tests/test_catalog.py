import pytest

from lemzha.catalog import CATALOG, DROPPED, METRIC_NAMES, by_lemzhak_name, catalog_order, spec

NEZHA_COLUMNS = {s.nezha_column for s in CATALOG if s.nezha_column}


def test_names_unique_and_dead_metrics_dropped_with_reason():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert "PodSuccessRate(%)" in DROPPED and "PodSuccessRate(%)" not in NEZHA_COLUMNS
    assert all(reason for reason in DROPPED.values())


def test_every_nezha_column_but_the_dead_one_is_mapped(nezha_root):
    header = next((nezha_root / "rca_data/2022-08-22/metric").glob("frontend-*_metric.csv")).open().readline()
    columns = set(header.strip().split(",")) - {"Time", "TimeStamp", "PodName"}
    assert columns == set(NEZHA_COLUMNS) | {"PodSuccessRate(%)"}


def test_lemma_aliases_map_to_canonical_metrics():
    mapping = by_lemzhak_name()
    assert mapping["cpu_usage_total"][0].name == "cpu_millicores"
    assert mapping["memory_working_set"][0].name == "memory_bytes"
    assert mapping["memory_usage"] == (spec("memory_bytes"), 1024.0 * 1024.0)


def test_promql_counter_uses_irate_and_requires_a_sample_in_the_bin():
    q = spec("cpu_millicores").promql("ts")
    assert "irate(container_cpu_usage_seconds_total{" in q and "last_over_time(" in q and '* 1000.0' in q
    assert 'namespace="ts"' in q
    gauge = spec("memory_bytes").promql('we"ird')
    assert gauge.startswith("sum by (pod) (last_over_time(container_memory_working_set_bytes{")
    assert 'namespace="we\\"ird"' in gauge


def test_catalog_order_sorts_and_rejects_unknown():
    assert catalog_order(["memory_bytes", "cpu_millicores"]) == ("cpu_millicores", "memory_bytes")
    with pytest.raises(ValueError, match="not in the catalog"):
        catalog_order(["nope"])


def test_every_metric_has_unit_type_and_doc():
    for m in CATALOG:
        assert m.unit and m.doc and m.replay.series


def test_trace_section_names_buckets_and_promql():
    from lemzha.catalog import (
        BUCKET_COLUMNS,
        BUCKET_NS,
        SERVICE_GRAPH_BUCKETS_S,
        SPAN_BUCKETS_MS,
        TRACE_FEATURES,
        TRACE_SERIES,
        trace_feature,
    )

    names = {s.name for s in TRACE_SERIES}
    assert names == {"traces_span_metrics_calls_total", "traces_span_metrics_duration_milliseconds",
                     "traces_service_graph_request_total", "traces_service_graph_request_server_seconds",
                     "traces_service_graph_request_client_seconds"}
    assert SPAN_BUCKETS_MS[0] == 2 and SPAN_BUCKETS_MS[-1] == 15_000 and len(BUCKET_COLUMNS) == len(BUCKET_NS) + 1
    assert [b * 1000 for b in SERVICE_GRAPH_BUCKETS_S] == [float(b) for b in SPAN_BUCKETS_MS]
    assert all(f.doc and f.unit for f in TRACE_FEATURES)
    calls = trace_feature("trace_calls").promql('we"ird')
    assert calls == ('sum by (service_name) (increase(traces_span_metrics_calls_total{k8s_namespace_name="we\\"ird",'
                     'span_kind="SPAN_KIND_SERVER"}[29999ms]))')
    p95 = trace_feature("trace_latency_p95_ms").promql("ts", namespace_label="namespace")
    assert p95.startswith("histogram_quantile(0.95, sum by (service_name, le) (increase("
                          'traces_span_metrics_duration_milliseconds_bucket{namespace="ts"')
    edge = trace_feature("edge_latency_p95_s").promql("ts")
    assert "traces_service_graph_request_server_seconds_bucket{server_k8s_namespace_name=\"ts\"}" in edge
    assert "sum by (client, server, le)" in edge
    assert "/" in trace_feature("trace_latency_mean_ms").promql("ts")
    gap = trace_feature("edge_client_gap_ms").promql("ts")
    assert gap == ('(sum by (client, server) (increase(traces_service_graph_request_client_seconds_sum'
                   '{server_k8s_namespace_name="ts"}[29999ms])) - sum by (client, server) (increase('
                   'traces_service_graph_request_server_seconds_sum{server_k8s_namespace_name="ts"}[29999ms]))) * 1000'
                   ' / sum by (client, server) (increase(traces_service_graph_request_server_seconds_count'
                   '{server_k8s_namespace_name="ts"}[29999ms]))')
    with pytest.raises(KeyError):
        trace_feature("nope")
