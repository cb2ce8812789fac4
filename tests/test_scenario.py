from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from lemzha.scenario import Label, Scenario, ScenarioError
from lemzha.scenario_io import load_scenario, save_scenario

START = datetime(2023, 1, 29, 8, 0, 0, tzinfo=UTC)


def make(**overrides) -> Scenario:
    pods = ("a-5dc8d4f9fd-46997", "b-5dc8d4f9fd-llznp", "b-5dc8d4f9fd-zzzzz")
    values = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    values[1, 0, 0] = np.nan
    args = dict(
        id="t/1",
        app="test",
        namespace="ns",
        start=START,
        pods=pods,
        pod_service={pods[0]: "a", pods[1]: "b", pods[2]: "b"},
        metrics=("cpu_millicores", "memory_bytes"),
        values=values,
        logs=pd.DataFrame(
            {"service": ["a", "b"], "bin": [0, 3], "template": ["x <num>", "error y"], "count": [2, 1],
             "level": ["INFO", "ERROR"]}
        ),
        onset=START + timedelta(seconds=65),
        label=Label("b", pods[1:], "cpu_contention", START + timedelta(seconds=65), 2),
    )
    args.update(overrides)
    return Scenario(**args)


def test_valid_scenario_derives_services_mask_and_bins():
    s = make()
    assert s.services == ("a", "b")
    assert s.n_bins == 4
    assert not s.mask[1, 0, 0] and s.mask[0, 0, 0]
    assert list(s.pod_service_index()) == [0, 1, 1]
    assert s.bin_starts[1] == pd.Timestamp("2023-01-29 08:00:30", tz="UTC")
    assert s.onset_bin == 2


def test_without_label_drops_only_the_label():
    s = make()
    bare = s.without_label()
    assert bare.label is None and s.label is not None
    assert bare.onset == s.onset
    np.testing.assert_array_equal(bare.values, s.values)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"values": np.zeros((4, 2, 2), np.float32)}, "shape"),
        ({"pod_service": {"a-5dc8d4f9fd-46997": "a"}}, "without a service"),
        ({"metrics": ("memory_bytes", "cpu_millicores")}, "catalog order"),
        ({"metrics": ("cpu_millicores", "nonsense")}, "not in the catalog"),
        ({"start": START + timedelta(seconds=7)}, "aligned"),
        ({"pods": ()}, "no pods"),
        ({"values": np.zeros((0, 3, 2), np.float32)}, "zero bins"),
        ({"label": Label("zzz", (), None, START, 0)}, "root cause"),
        ({"label": Label("b", (), None, START, 9)}, "fault_bin"),
        ({"logs": pd.DataFrame({"service": ["q"], "bin": [0], "template": ["t"], "count": [1], "level": ["INFO"]})},
         "unknown services"),
        ({"logs": pd.DataFrame({"service": ["a"], "bin": [7], "template": ["t"], "count": [1], "level": ["INFO"]})},
         "log bins"),
        ({"logs": pd.DataFrame({"service": ["a"], "bin": [0], "template": ["t"], "count": [1], "level": ["LOUD"]})},
         "levels"),
    ],
)
def test_constructor_refuses_invalid_data(override, message):
    with pytest.raises(ScenarioError, match=message):
        make(**override)


def test_round_trip_on_disk(tmp_path):
    s = make()
    save_scenario(s, tmp_path / "t1")
    back = load_scenario(tmp_path / "t1")
    np.testing.assert_array_equal(back.values, s.values)
    assert back.pods == s.pods and back.metrics == s.metrics and back.start == s.start
    assert back.label == s.label and back.onset == s.onset
    pd.testing.assert_frame_equal(back.logs, s.logs)
    assert load_scenario(tmp_path / "t1", with_label=False).label is None


def test_save_replaces_whole_and_leaves_no_temp(tmp_path):
    save_scenario(make(), tmp_path / "t1")
    save_scenario(make(label=None), tmp_path / "t1")
    assert not (tmp_path / "t1" / "label.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1"]


def test_load_refuses_unknown_schema(tmp_path):
    save_scenario(make(), tmp_path / "t1")
    meta = (tmp_path / "t1" / "scenario.json")
    meta.write_text(meta.read_text().replace('"schema_version": 1', '"schema_version": 99'))
    with pytest.raises(ScenarioError, match="schema_version"):
        load_scenario(tmp_path / "t1")
    with pytest.raises(ScenarioError, match="not a scenario"):
        load_scenario(tmp_path / "missing")


# -- trace series ----------------------------------------------------------------------------------------------------
def _trace_frames(n_bins: int = 4):
    from lemzha.catalog import BUCKET_COLUMNS

    rows, edges = [], []
    for b in range(n_bins):
        covered = b != 1
        for service, calls in (("a", 3), ("b", 0)):
            buckets = [0.0] * 5 + [1.0] * 5 + [float(calls)] * (len(BUCKET_COLUMNS) - 10) if calls else [0.0] * len(
                BUCKET_COLUMNS)
            row = {"bin": b, "service": service, "covered": covered, "trace_calls": float(calls),
                   "duration_sum_ms": 30.0 * calls, **dict(zip(BUCKET_COLUMNS, buckets, strict=True))}
            if not covered:
                row.update({k: np.nan for k in ("trace_calls", "duration_sum_ms", *BUCKET_COLUMNS)})
            rows.append(row)
        edge = {"bin": b, "client": "a", "server": "b", "covered": covered, "edge_requests": 1.0,
                "duration_sum_ms": 3.0, "client_duration_sum_ms": 5.0, **dict.fromkeys(BUCKET_COLUMNS, 1.0)}
        if not covered:
            edge.update({k: np.nan for k in ("edge_requests", "duration_sum_ms", "client_duration_sum_ms",
                                             *BUCKET_COLUMNS)})
        edges.append(edge)
    return pd.DataFrame(rows), pd.DataFrame(edges)


def test_trace_frames_are_typed_derived_cropped_and_round_trip(tmp_path):
    sm, ed = _trace_frames()
    s = make(service_metrics=sm, edges=ed)
    a = s.service_metrics.loc[(s.service_metrics["service"] == "a") & (s.service_metrics["bin"] == 0)].iloc[0]
    assert a["trace_latency_mean_ms"] == 30.0
    assert a["trace_latency_p50_ms"] == pytest.approx(850.0)  # rank 1.5 of 3 in (800, 1000]: 800 + 200 * 0.5 / 2
    assert np.isnan(s.service_metrics.loc[s.service_metrics["bin"] == 1, "trace_latency_p95_ms"]).all()
    assert np.isnan(s.service_metrics.loc[s.service_metrics["service"] == "b", "trace_latency_p95_ms"]).all()
    assert s.edges["edge_latency_p95_s"].dropna().eq(0.002 * 0.95).all()  # one request in (0, 2 ms]
    assert s.edges["edge_client_gap_ms"].dropna().eq(2.0).all()  # (client 5 ms - server 3 ms) / 1 request
    w = s.window(1, 2)
    assert w.service_metrics["bin"].tolist() == [0, 0, 1, 1] and not w.service_metrics["covered"].iloc[0]
    assert w.edges["bin"].tolist() == [0, 1]
    save_scenario(s, tmp_path / "s")
    assert (tmp_path / "s" / "service_metrics.parquet").is_file() and (tmp_path / "s" / "edges.parquet").is_file()
    back = load_scenario(tmp_path / "s")
    pd.testing.assert_frame_equal(back.service_metrics, s.service_metrics)
    pd.testing.assert_frame_equal(back.edges, s.edges)
    assert s.without_label().service_metrics is s.service_metrics  # normalised once, not per replace()


def test_scenario_without_traces_still_saves_and_loads(tmp_path):
    s = make()
    assert len(s.service_metrics) == 0 and len(s.edges) == 0
    save_scenario(s, tmp_path / "s")
    assert not (tmp_path / "s" / "service_metrics.parquet").exists()
    back = load_scenario(tmp_path / "s")
    assert len(back.service_metrics) == 0 and list(back.edges.columns) == list(s.edges.columns)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sm, ed: sm.assign(service=sm["service"].replace("b", "zz")), "unknown services"),
        (lambda sm, ed: sm.assign(bin=sm["bin"] + 1), "bins outside"),
        (lambda sm, ed: pd.concat([sm, sm.iloc[:1]]), "duplicate"),
        (lambda sm, ed: sm.assign(trace_calls=sm["trace_calls"].fillna(0), duration_sum_ms=0.0,
                                  **{c: sm[c].fillna(0) for c in sm.columns if c.startswith("le_")}), "NaN exactly"),
        (lambda sm, ed: sm.assign(le_2ms=sm["le_inf"] + 1), "cumulative"),
        (lambda sm, ed: sm.assign(trace_calls=sm["trace_calls"] + 1), "le_inf"),
        (lambda sm, ed: sm.drop(columns=["le_50ms"]), "lacks columns"),
    ],
)
def test_invalid_trace_frames_are_refused(mutate, message):
    sm, ed = _trace_frames()
    with pytest.raises(ScenarioError, match=message):
        make(service_metrics=mutate(sm, ed), edges=ed)


def test_edges_must_agree_with_service_coverage():
    sm, ed = _trace_frames()
    ed = ed.assign(covered=True, edge_requests=1.0, duration_sum_ms=3.0, client_duration_sum_ms=5.0,
                   **{c: 1.0 for c in ed.columns if c.startswith("le_")})
    with pytest.raises(ScenarioError, match="disagree"):
        make(service_metrics=sm, edges=ed)
