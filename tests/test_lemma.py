"""offline.data.lemma: lemzha-k -> LEMMA Scenarios and Nezha OnlineBoutique day log tables, each defect undone."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lemzha.catalog import MIB
from lemzha.logs import clean, extract_message
from offline.data import lemma as loader
from offline.errors import DataError

LEMMA_METRICS = ("cpu_millicores", "memory_bytes", "network_receive", "network_transmit")
LEMMA_ROOT_CAUSES = {
    "lemma/20231207": "productpage",
    "lemma/20231221": "ratings",
    "lemma/20240115": "scenario10-malware-deployment",
    "lemma/20240215": "details",
}
OB_SERVICES = {
    "adservice", "cartservice", "checkoutservice", "currencyservice", "emailservice", "frontend", "paymentservice",
    "productcatalogservice", "recommendationservice", "shippingservice",
}  # fmt: skip
KEY = ["bin_time", "service", "template", "level"]


# -- fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(lemzhak_root: Path) -> Path:
    return lemzhak_root


@pytest.fixture(scope="module")
def lemma(root: Path) -> dict:
    return {s.id: s for s in loader.load_lemma(root)}


@pytest.fixture(scope="module")
def ob_day(root: Path) -> pd.DataFrame:
    return loader.ob_day_log_table(root, "2022-08-22")


@pytest.fixture(scope="module")
def ob_day_parts(root: Path) -> dict[str, pd.DataFrame]:
    return {
        sid: loader.log_table(root, sid) for sid in loader.nezha_scenario_ids(root) if sid.startswith("20220822_")
    }


def _write_tree(base: Path, sid: str, pods: list[str], metrics: dict[str, pd.DataFrame], logs: pd.DataFrame | None):
    """A minimal lemzha-k tree: manifest, pod_<stem>.parquet files, optionally the log parquet."""
    (base / loader.META_DIR / sid).mkdir(parents=True)
    (base / loader.META_DIR / sid / "manifest.json").write_text(json.dumps({"dataset": "nezha", "pods": pods}))
    (base / loader.METRICS_DIR / sid).mkdir(parents=True)
    for stem, frame in metrics.items():
        frame.to_parquet(base / loader.METRICS_DIR / sid / f"pod_{stem}.parquet")
    if logs is not None:
        (base / loader.LOGS_DIR / sid).mkdir(parents=True)
        logs.to_parquet(base / loader.LOGS_DIR / sid / loader.LOG_FILE)


def _index(n: int, offset_s: int = 0) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp("2024-02-14 05:56:00", tz="UTC") + pd.Timedelta(seconds=offset_s),
                         periods=n, freq="30s")  # fmt: skip


# -- parse_log_cell --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("", []),
        ("plain:x3", [("plain", 3)]),
        ("a:x1 | b:x22", [("a", 1), ("b", 22)]),
        ("get / | 200 | 0.10:x7 | next:x1", [("get / | 200 | 0.10", 7), ("next", 1)]),  # " | " inside a template
        ("foo:x5 bar:x2 | baz:x1", [("foo:x5 bar", 2), ("baz", 1)]),  # ":x5" not followed by the separator
        ("value:x5:x3", [("value:x5", 3)]),  # a template ending in ":x<digits>" itself
        ("--|--|:x30 | stdout f:x15", [("--|--|", 30), ("stdout f", 15)]),
        ("line one\nline two:x2", [("line one\nline two", 2)]),
    ],
)
def test_parse_log_cell_tricky(cell: str, expected: list[tuple[str, int]]) -> None:
    assert loader.parse_log_cell(cell) == expected


@pytest.mark.parametrize("cell", ["no count here", "a:x1 | b", "a:xq"])
def test_parse_log_cell_rejects_malformed(cell: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        loader.parse_log_cell(cell)


def test_parse_log_cell_real_cells_round_trip(root: Path) -> None:
    """Every real cell of a LEMMA day parses into at most 10 entries that rebuild it exactly, including the
    loadgenerator's ASCII tables whose templates contain " | "."""
    frame = pd.read_parquet(root / loader.LOGS_DIR / "20231207" / loader.LOG_FILE)
    tricky = 0
    for column in frame.columns:
        for cell in frame[column]:
            entries = loader.parse_log_cell(cell)
            assert " | ".join(f"{t}:x{c}" for t, c in entries) == cell
            assert len(entries) <= 10
            assert all(c > 0 for _, c in entries)
            tricky += len(entries) < cell.count(" | ") + 1 if cell else 0
    assert tricky > 0, "expected real cells whose templates contain ' | '"
    table_cell = next(c for c in frame["loadgenerator"] if "|----" in c)
    first = loader.parse_log_cell(table_cell)[0]
    assert first[0].startswith("stdout f --------|") and first[0].endswith("|-----------")
    assert first[1] == 30


# -- unrepeat --------------------------------------------------------------------------------------------------------
def test_unrepeat_handmade() -> None:
    nan = np.nan
    values = np.array([[1.0, 5.0], [1.0, nan], [2.0, 5.0], [2.0, 5.0], [1.0, 6.0], [1.0, 6.0]])
    expected = np.array([[1.0, 5.0], [nan, nan], [2.0, 5.0], [nan, nan], [1.0, 6.0], [nan, nan]])
    before = values.copy()
    out = loader.unrepeat(values)
    np.testing.assert_array_equal(out, expected)  # NaNs compare equal positionally here
    np.testing.assert_array_equal(values, before)  # the input is not modified


def test_unrepeat_3d_and_integer_input() -> None:
    values = np.array([[[1, 2]], [[1, 3]], [[4, 3]]])  # (T=3, P=1, M=2) integers
    out = loader.unrepeat(values)
    assert out.dtype == np.float64 and out.shape == values.shape
    np.testing.assert_array_equal(out[:, 0, 0], [1.0, np.nan, 4.0])
    np.testing.assert_array_equal(out[:, 0, 1], [2.0, 3.0, np.nan])
    assert loader.unrepeat(np.array([7.0])).tolist() == [7.0]


# -- load_metrics / log_table on a synthetic tree --------------------------------------------------------------------
def test_load_metrics_synthetic(tmp_path: Path) -> None:
    pods = ["pod-b", "pod-a"]
    index = _index(4, offset_s=8)  # LEMMA 20240215 style: samples at :08 and :38
    memory = pd.DataFrame({"pod-a": [1.0, 1.0, 2.0, 2.0], "pod-b": [3.0, 4.0, 4.0, 5.0]}, index=index)  # MiB
    cpu = pd.DataFrame({"pod-a": [10.0, 11.0, 12.0, 13.0], "pod-b": [0.0, 0.0, 0.0, 0.0]}, index=index)
    dead = pd.DataFrame({"pod-a": [np.nan] * 4, "pod-b": [np.nan] * 4}, index=index)
    metrics = {"memory_usage": memory, "cpu_usage_m": cpu, "latency_server_p95": dead, "pod_success_rate": cpu}
    _write_tree(tmp_path, "s1", pods, metrics, None)

    bins, got_pods, names, values = loader.load_metrics(tmp_path, "s1")

    assert got_pods == pods  # manifest order, not the parquet's column order
    assert names == ("cpu_millicores", "memory_bytes")  # catalog order; all-NaN and DROPPED stems absent
    assert values.dtype == np.float32 and values.shape == (4, 2, 2)
    assert bins[0] == pd.Timestamp("2024-02-14 05:56:00", tz="UTC")  # aligned down to the 30 s grid
    assert (bins.asi8 % (30 * 10**9) == 0).all()
    np.testing.assert_array_equal(values[:, 1, 1], np.array([1, np.nan, 2, np.nan]) * MIB)  # pod-a memory
    np.testing.assert_array_equal(values[:, 0, 1], np.array([3, 4, np.nan, 5]) * MIB)  # pod-b memory
    np.testing.assert_array_equal(values[:, 0, 0], [0.0, np.nan, np.nan, np.nan])  # constant keeps its first


def test_load_metrics_unknown_stem_is_an_error(tmp_path: Path) -> None:
    frame = pd.DataFrame({"p-1": [1.0, 2.0]}, index=_index(2))
    _write_tree(tmp_path, "s1", ["p-1"], {"memory_usage": frame, "mystery_metric": frame}, None)
    with pytest.raises(DataError, match="mystery_metric"):
        loader.load_metrics(tmp_path, "s1")


def test_load_metrics_pod_outside_manifest_is_an_error(tmp_path: Path) -> None:
    frame = pd.DataFrame({"p-1": [1.0, 2.0], "stranger": [1.0, 2.0]}, index=_index(2))
    _write_tree(tmp_path, "s1", ["p-1"], {"memory_usage": frame}, None)
    with pytest.raises(DataError, match="stranger"):
        loader.load_metrics(tmp_path, "s1")


def test_log_table_synthetic(tmp_path: Path) -> None:
    index = _index(2, offset_s=8)
    logs = pd.DataFrame(
        {
            "a": ["ERROR failed to connect | retry:x2 | ok:x1", ""],
            "b": ["ERROR failed to connect | retry:x3", "ok:x4"],
            "c": ["dropped:x9", "dropped:x9"],
        },
        index=index,
    )
    frame = pd.DataFrame({"p-1": [1.0, 2.0]}, index=index)
    _write_tree(tmp_path, "s1", ["p-1"], {"memory_usage": frame}, logs)

    table = loader.log_table(tmp_path, "s1", {"a": "svc", "b": "svc"}.get)

    assert list(table.columns) == list(loader.LOG_TABLE_COLUMNS)
    assert str(table["bin_time"].dtype) == "datetime64[ns, UTC]"
    assert set(table["service"]) == {"svc"}  # column "c" mapped to None: dropped
    assert not table.duplicated(KEY).any()
    first_bin = pd.Timestamp("2024-02-14 05:56:00", tz="UTC")
    assert set(table["bin_time"]) == {first_bin, first_bin + pd.Timedelta(seconds=30)}
    raw = "ERROR failed to connect | retry"
    row = table[(table["bin_time"] == first_bin) & (table["template"] == clean(raw))]
    assert row["count"].tolist() == [5]  # 2 from "a" + 3 from "b", summed
    assert row["level"].tolist() == [extract_message(raw)[1]]
    assert table["count"].sum() == 2 + 1 + 3 + 4
    assert loader.log_table(tmp_path, "s1", lambda _column: None).empty


# -- LEMMA -----------------------------------------------------------------------------------------------------------
def test_lemma_four_scenarios_with_catalog_metrics(lemma: dict) -> None:
    assert sorted(lemma) == sorted(LEMMA_ROOT_CAUSES)
    for scenario in lemma.values():
        assert scenario.app == "lemma" and scenario.namespace == "lemma"
        assert scenario.metrics == LEMMA_METRICS  # latency_*_p95 and workload are all-NaN in lemzha-k: absent
        assert scenario.label is not None and scenario.label.other_injections == ()
        assert scenario.mask.any(axis=(0, 1)).all()
        assert scenario.onset == scenario.label.injection_time
        assert len(scenario.logs) > 0


def test_lemma_services_are_not_first_token(lemma: dict) -> None:
    s = lemma["lemma/20231207"]
    assert s.pod_service["carts-db-644ff6b576-4qc2m"] == "carts-db"
    assert s.pod_service["carts-b59845878-bhpkg"] == "carts"
    assert s.pod_service["aws-node-2fjwc"] == "aws-node"
    assert s.pod_service["productpage-v1-94d68db49-j7t55"] == "productpage"
    assert len(s.services) == 61  # lemzha-k's first-token rule gives 48
    assert lemma["lemma/20231221"].pod_service["ratings-aggregated"] == "ratings"


def test_lemma_root_cause_pods_are_the_service_pods(lemma: dict, root: Path) -> None:
    for sid, scenario in lemma.items():
        label = scenario.label
        assert label.root_cause_service == LEMMA_ROOT_CAUSES[sid]
        service_pods = {p for p in scenario.pods if scenario.pod_service[p] == label.root_cause_service}
        assert set(label.root_cause_pods) == service_pods
        truth = json.loads((root / loader.META_DIR / sid.split("/")[1] / "ground_truth.json").read_text())
        assert set(truth["root_cause_pods"]) <= service_pods
    assert len(lemma["lemma/20240115"].label.root_cause_pods) == 1  # not the 30 scenario10-bot pods
    assert len(lemma["lemma/20231221"].label.root_cause_pods) == 3


def test_lemma_root_cause_majority_with_note() -> None:
    service, note = loader.lemma_root_cause(["a-1", "a-2", "b-1"], {"a-1": "a", "a-2": "a", "b-1": "b"})
    assert service == "a" and note is not None and "'b': 1" in note
    assert loader.lemma_root_cause(["a-1"], {"a-1": "a"}) == ("a", None)
    with pytest.raises(DataError):
        loader.lemma_root_cause(["ghost"], {"a-1": "a"})


def test_lemma_label_times(lemma: dict) -> None:
    types = {s.label.fault_type for s in lemma.values()}
    assert types == {"cpu_stress", "pod_migration", "malware", "network"}
    for scenario in lemma.values():
        assert scenario.label.fault_bin == scenario.bin_of(scenario.label.injection_time)
        assert scenario.start.timestamp() % 30 == 0
    late = lemma["lemma/20240215"]
    assert late.start == pd.Timestamp("2024-02-14 05:56:00", tz="UTC")  # grid was at :08 / :38
    assert late.label.injection_time == pd.Timestamp("2024-02-14 06:11:29", tz="UTC")
    assert late.label.fault_bin == 30 and late.n_bins == 90


def test_lemma_values_unrepeated_and_cpu_on_one_scale(lemma: dict, root: Path) -> None:
    s = lemma["lemma/20231207"]  # on the 30 s grid already: stored rows and bins correspond one to one
    for stem, m in (("memory_working_set", 1), ("cpu_usage_total", 0)):
        raw = pd.read_parquet(root / loader.METRICS_DIR / "20231207" / f"pod_{stem}.parquet")[list(s.pods)]
        raw = raw.to_numpy(dtype=np.float64)
        repeat = np.zeros_like(raw, dtype=bool)
        repeat[1:] = raw[1:] == raw[:-1]
        assert repeat.sum() > 100 if m == 1 else repeat.any()
        np.testing.assert_array_equal(s.mask[:, :, m], ~np.isnan(raw) & ~repeat)  # real = stored and not a repeat
    medians = {sid: np.nanmedian(s.values[:, :, 0]) for sid, s in lemma.items()}
    ratio = medians["lemma/20240215"] / medians["lemma/20231207"]
    assert 0.1 < ratio < 10, medians  # 20240215 stores millicores, the others cores
    memory = {sid: np.nanmedian(s.values[:, :, 1]) for sid, s in lemma.items()}
    assert all(1e6 < m < 1e9 for m in memory.values()), memory  # bytes


def test_lemma_logs_mapped_only_when_unambiguous(lemma: dict, root: Path) -> None:
    s = lemma["lemma/20231207"]
    services = set(s.logs["service"])
    assert services <= set(s.services)
    assert {"dashboard-metrics-scraper", "productpage"} <= services  # columns "dashboard", "productpage"
    assert not services & {"carts", "carts-db", "aws-node"}  # columns "carts", "aws": ambiguous, dropped
    report = loader.lemma_log_mapping_report(root)
    entry = report["20231207"]
    assert entry["dropped"]["carts"] == ["carts", "carts-db"]
    assert entry["mapped"]["front"] == "front-end"
    assert entry["n_mapped"] + entry["n_dropped"] == entry["columns"] == 48
    assert report["20240115"]["dropped"]["scenario10"] == ["scenario10-bot-deployment", "scenario10-malware-deployment"]
    assert report["20231221"]["mapped"]["ratings"] == "ratings"
    assert s.logs["count"].sum() == entry["lines_mapped"]
    assert report["total"]["columns"] == sum(report[sid]["columns"] for sid in loader.LEMMA_IDS)


# -- OnlineBoutique day log tables -----------------------------------------------------------------------------------
def test_ob_day_table_has_unique_rows(ob_day: pd.DataFrame) -> None:
    assert list(ob_day.columns) == list(loader.LOG_TABLE_COLUMNS)
    assert str(ob_day["bin_time"].dtype) == "datetime64[ns, UTC]"
    assert len(ob_day) > 1000
    assert not ob_day.duplicated(KEY).any()
    assert set(ob_day["service"]) == OB_SERVICES
    assert (ob_day["bin_time"].dt.strftime("%Y-%m-%d") == "2022-08-22").all()
    assert (ob_day["count"] > 0).all()


def _cells(table: pd.DataFrame) -> dict[tuple, tuple]:
    """(bin_time, service) -> its sorted (template, level, count) rows."""
    cells: dict[tuple, list] = {}
    for t, service, template, count, level in table[list(loader.LOG_TABLE_COLUMNS)].itertuples(index=False):
        cells.setdefault((t, service), []).append((template, level, count))
    return {key: tuple(sorted(rows)) for key, rows in cells.items()}


def test_ob_day_shared_bins_are_not_doubled(ob_day: pd.DataFrame, ob_day_parts: dict[str, pd.DataFrame]) -> None:
    day_cells = _cells(ob_day)
    copies: dict[tuple, list[tuple]] = {}
    for table in ob_day_parts.values():
        for key, cell in _cells(table).items():
            copies.setdefault(key, []).append(cell)
    shared = {k: cs for k, cs in copies.items() if len(cs) > 1}
    identical = [k for k, cs in shared.items() if len(set(cs)) == 1]
    differing = [k for k, cs in shared.items() if len(set(cs)) > 1]
    assert len(identical) > 20 and len(differing) >= 10
    for key in identical:  # the same content in several windows counts once
        assert day_cells[key] == copies[key][0]
    for key in differing:  # the fullest copy wins, whole
        totals = [sum(row[2] for row in cell) for cell in copies[key]]
        assert day_cells[key] == copies[key][totals.index(max(totals))]
    assert set(day_cells) == set(copies)


def test_ob_day_rejects_other_days(root: Path) -> None:
    with pytest.raises(ValueError, match="OnlineBoutique"):
        loader.ob_day_log_table(root, "2023-01-29")


# -- ids -------------------------------------------------------------------------------------------------------------
def test_nezha_scenario_ids(root: Path) -> None:
    ids = loader.nezha_scenario_ids(root)
    assert len(ids) == 94 and len(set(ids)) == 94
    assert Counter(i.split("_")[0] for i in ids) == {"20220822": 21, "20220823": 30, "20230129": 28, "20230130": 15}
    assert not set(ids) & set(loader.LEMMA_IDS)
    assert ids.index("20220822_nezha_2") < ids.index("20220822_nezha_10")  # numeric, not lexical
