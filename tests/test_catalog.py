import pytest

from lemzha.catalog import CATALOG, DROPPED, METRIC_NAMES, by_lemzhak_name, by_nezha_column, catalog_order, spec


def test_names_unique_and_dead_metrics_dropped_with_reason():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert "PodSuccessRate(%)" in DROPPED and "PodSuccessRate(%)" not in by_nezha_column()
    assert all(reason for reason in DROPPED.values())


def test_every_nezha_column_but_the_dead_one_is_mapped(nezha_root):
    header = next((nezha_root / "rca_data/2022-08-22/metric").glob("frontend-*_metric.csv")).open().readline()
    columns = set(header.strip().split(",")) - {"Time", "TimeStamp", "PodName"}
    assert columns == set(by_nezha_column()) | {"PodSuccessRate(%)"}


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
