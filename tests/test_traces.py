"""Trace modality: histogram_quantile, the span-role rule and the derivation on real Nezha trace files."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from lemzha.catalog import BUCKET_COLUMNS, BUCKET_NS, SERVICE_GRAPH_BUCKETS_S, SPAN_BUCKETS_MS
from lemzha.histogram import histogram_quantile
from lemzha.services import service_of_pod
from offline.data import nezha, traces
from offline.data.store import ensure_extracted

TT_DAY = nezha.DAYS[3]  # 2023-01-30, complete and the smallest
OB_DAY = nezha.DAYS[0]  # 2022-08-22, 29 of 72 trace files missing


@pytest.fixture(scope="module")
def traces_root():
    return ensure_extracted("nezha-traces")


@pytest.fixture(scope="module")
def tt_day(traces_root):
    return traces.read_day_traces(traces_root, TT_DAY)


def cumulative_counts(values, bounds) -> np.ndarray:
    """(len(bounds) + 1,) cumulative bucket counts of `values` with upper-inclusive bounds (`le`), +Inf last: a
    histogram as Prometheus exports it, for the synthetic cases below."""
    per_bucket = np.bincount(np.searchsorted(np.asarray(bounds), np.asarray(values), side="left"),
                             minlength=len(bounds) + 1)
    return np.cumsum(per_bucket)


def _pandas_day(traces_root, day) -> pd.DataFrame:
    """An independent reading with pandas: de-duplicated spans with parent pod, service and duration."""
    files = [p for part in ("rca_data", "construct_data") for p in sorted(
        (traces_root / part / day.day / "trace").glob("*_trace.csv"))]  # the fault-time files and the reference
    frame = pd.concat([pd.read_csv(p, dtype={"TraceID": str, "SpanID": str, "ParentID": str, "PodName": str})
                       for p in files], ignore_index=True)
    frame = frame.drop_duplicates(["TraceID", "SpanID"])
    # the parent's duration in int64 before the merge (a left merge turns missing rows into float64 NaN, and
    # float64 epoch nanoseconds lose ~100 ns)
    parents = frame[["SpanID", "PodName"]].rename(columns={"SpanID": "ParentID", "PodName": "ParentPod"}).assign(
        parent_dur_ns=frame["EndTimeUnixNano"] - frame["StartTimeUnixNano"])
    frame = frame.merge(parents, on="ParentID", how="left")
    frame["service"] = frame["PodName"].map(service_of_pod)
    frame["caller"] = frame["ParentPod"].map(lambda p: service_of_pod(p) if isinstance(p, str) else None)
    cross = frame["ParentPod"].notna() & (frame["ParentPod"] != frame["PodName"])
    frame["server"] = (frame["ParentID"] == "root") | cross
    frame["dur_ns"] = frame["EndTimeUnixNano"] - frame["StartTimeUnixNano"]
    frame["bin_time"] = frame["StartTimeUnixNano"] // 30_000_000_000 * 30_000_000_000
    return frame


# -- histogram_quantile: hand-computed cases -------------------------------------------------------------------------
def test_histogram_quantile_hand_computed():
    bounds = [1.0, 2.0, 4.0]
    cum = [2, 6, 8, 10]  # 2 in (0,1], 4 in (1,2], 2 in (2,4], 2 above 4
    assert histogram_quantile(0.5, bounds, cum) == pytest.approx(1.75)  # rank 5: 1 + 1 * (5 - 2) / 4
    assert histogram_quantile(0.1, bounds, cum) == pytest.approx(0.5)  # lowest bucket interpolates from 0
    assert histogram_quantile(0.7, bounds, cum) == pytest.approx(3.0)  # rank 7: 2 + 2 * (7 - 6) / 2
    assert histogram_quantile(0.95, bounds, cum) == 4.0  # rank 9.5 lies in +Inf: the highest finite bound
    assert histogram_quantile(1.0, bounds, [2, 6, 10, 10]) == 4.0  # rank 10 reached exactly at le=4
    assert np.isnan(histogram_quantile(0.5, bounds, [0, 0, 0, 0]))  # no observation
    assert np.isnan(histogram_quantile(0.5, bounds, [np.nan] * 4))  # missing
    assert histogram_quantile(1.5, bounds, cum) == np.inf and histogram_quantile(-0.1, bounds, cum) == -np.inf
    rows = histogram_quantile(0.5, bounds, [[2, 6, 8, 10], [0, 0, 0, 0], [0, 0, 0, 3]])
    assert rows.shape == (3,) and rows[0] == pytest.approx(1.75) and np.isnan(rows[1]) and rows[2] == 4.0
    with pytest.raises(ValueError):
        histogram_quantile(0.5, bounds, [1, 2, 3])


def _go_bucket_quantile(q, bounds, cum):
    """Prometheus 2.x bucketQuantile, line by line, for one histogram."""
    buckets = [*zip([*bounds, np.inf], [float(c) for c in cum], strict=True)]
    observations = buckets[-1][1]
    if observations == 0:
        return np.nan
    rank = q * observations
    b = next((i for i in range(len(buckets) - 1) if buckets[i][1] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / count)


def test_histogram_quantile_matches_prometheus_rule_bit_for_bit():
    rng = np.random.default_rng(0)
    bounds = [float(b) for b in SERVICE_GRAPH_BUCKETS_S]
    for _ in range(300):
        cum = cumulative_counts(rng.lognormal(-3, 1.5, rng.integers(1, 60)), bounds)
        for q in (0.5, 0.95, 0.99):
            assert histogram_quantile(q, bounds, cum) == _go_bucket_quantile(q, bounds, cum)


def test_cumulative_counts_are_upper_inclusive():
    assert cumulative_counts([1.0, 1.0000001, 2.0, 5.0], [1.0, 2.0]).tolist() == [1, 3, 4]


# -- the span-role rule -----------------------------------------------------------------------------------------------
def test_span_roles_synthetic():
    span = np.array(["r", "a", "b", "c", "o"], dtype=object)
    parent = np.array(["root", "r", "a", "b", "gone"], dtype=object)
    pods = np.array([0, 0, 1, 1, 2])  # a is in r's pod, b crosses to pod 1, c stays in it, o's parent is absent
    server, caller = traces.span_roles(span, parent, pods)
    assert server.tolist() == [True, False, True, False, False]
    assert caller.tolist() == [-1, -1, 1, -1, -1]  # b's caller is a's row (its pod 0)


@pytest.mark.slow
def test_span_roles_on_a_real_file(traces_root):
    path = traces_root / "rca_data" / TT_DAY.day / "trace" / "12_00_trace.csv"
    frame = pd.read_csv(path, dtype=str).drop_duplicates(["TraceID", "SpanID"]).reset_index(drop=True)
    pods = frame["PodName"].astype("category").cat.codes.to_numpy()
    server, caller = traces.span_roles(frame["SpanID"].to_numpy(), frame["ParentID"].to_numpy(), pods)
    root = (frame["ParentID"] == "root").to_numpy()
    assert root.any() and server[root].all() and (caller[root] == -1).all()
    pod_of = dict(zip(frame["SpanID"], frame["PodName"], strict=True))
    parent_pod = frame["ParentID"].map(pod_of)
    same = (parent_pod == frame["PodName"]).to_numpy()
    assert same.any() and not server[same].any()  # a child in its parent's pod is never a server span
    cross = (parent_pod.notna() & (parent_pod != frame["PodName"])).to_numpy()
    assert cross.any() and server[cross].all()
    assert (frame["PodName"].to_numpy()[caller[cross]] == parent_pod.to_numpy()[cross]).all()  # caller: parent's pod
    assert server.sum() == root.sum() + cross.sum()


# -- the derivation on real files -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_counts_and_buckets_per_bin_match_a_direct_pandas_computation(traces_root, tt_day):
    direct = _pandas_day(traces_root, TT_DAY)
    servers = direct.loc[direct["server"]]
    want = servers.groupby(["bin_time", "service"]).size()
    got = tt_day.services.set_index(["bin_time", "service"])["trace_calls"]
    assert got.sort_index().astype(int).to_dict() == want.sort_index().to_dict()
    edges = servers.loc[servers["caller"].notna()].groupby(["bin_time", "caller", "service"]).size()
    got_edges = tt_day.edges.set_index(["bin_time", "client", "server"])["edge_requests"]
    assert got_edges.sort_index().astype(int).to_dict() == edges.sort_index().to_dict()
    # buckets of a sample of (bin, service) and (bin, edge) cells, counted bound by bound
    rng = np.random.default_rng(1)
    for i in rng.choice(len(tt_day.services), 25, replace=False):
        row = tt_day.services.iloc[i]
        d = servers.loc[(servers["bin_time"] == row["bin_time"]) & (servers["service"] == row["service"]), "dur_ns"]
        assert [row[c] for c in BUCKET_COLUMNS] == [*(float((d <= b).sum()) for b in BUCKET_NS), float(len(d))]
        assert row["duration_sum_ms"] == pytest.approx(d.sum() / 1e6, rel=1e-9)
    for i in rng.choice(len(tt_day.edges), 25, replace=False):
        row = tt_day.edges.iloc[i]
        cell = servers.loc[(servers["bin_time"] == row["bin_time"]) & (servers["caller"] == row["client"])
                           & (servers["service"] == row["server"])]
        d = cell["dur_ns"]
        assert [row[c] for c in BUCKET_COLUMNS] == [*(float((d <= b).sum()) for b in BUCKET_NS), float(len(d))]
        # the client side of a request is its parent span (the caller's outgoing call)
        assert row["client_duration_sum_ms"] == pytest.approx(cell["parent_dur_ns"].sum() / 1e6, rel=1e-9)
    # a call encloses the server span it causes, up to clock skew between pods (98 % of the cells on this day)
    assert (tt_day.edges["client_duration_sum_ms"] >= tt_day.edges["duration_sum_ms"] - 1e-6).mean() > 0.95


@pytest.mark.slow
def test_one_minute_file_counts_and_coverage(traces_root, tmp_path):
    """A tree with one minute file: counts equal a direct count of that file, and only its interval is covered."""
    src = traces_root / "rca_data" / TT_DAY.day / "trace" / "12_00_trace.csv"
    (tmp_path / "rca_data" / TT_DAY.day / "trace").mkdir(parents=True)
    shutil.copy(src, tmp_path / "rca_data" / TT_DAY.day / "trace" / src.name)
    day = traces.read_day_traces(tmp_path, TT_DAY)
    assert day.quality.files == ["12_00"] and day.quality.missing == []
    frame = pd.read_csv(src, dtype={"SpanID": str, "ParentID": str, "PodName": str}).drop_duplicates(
        ["TraceID", "SpanID"])
    roots = frame.loc[frame["ParentID"] == "root", "StartTimeUnixNano"]
    assert day.intervals.tolist() == [[roots.min(), roots.max()]]
    bins = day.covered_bins
    assert len(bins) == 1 + (bins[-1] - bins[0]) // 30_000_000_000  # contiguous
    assert bins[0] >= roots.min() - 1_000_000_000 and bins[-1] + 30_000_000_000 <= roots.max() + 1_000_000_000
    gateway = frame.loc[frame["ParentID"] == "root"].assign(b=lambda f: f["StartTimeUnixNano"] // 30_000_000_000)
    assert gateway["PodName"].map(service_of_pod).eq("ts-gateway-service").all()
    got = day.services.loc[day.services["service"] == "ts-gateway-service"].set_index("bin_time")["trace_calls"]
    assert {int(k) // 30_000_000_000: int(v) for k, v in got.items()} == gateway.groupby("b").size().to_dict()


@pytest.mark.slow
def test_missing_onlineboutique_files_give_masked_bins_not_zeros(traces_root, nezha_root):
    day = traces.read_day_traces(traces_root, OB_DAY)
    # 72 fault-time minutes and the construct_data reference minute (its trace file is missing too)
    assert len(day.quality.expected) == 73 and len(day.quality.missing) == 30 and "04_10" in day.quality.missing
    fault = nezha.list_faults(nezha_root, OB_DAY)[2]  # 04:10:20; files 04_11 and 04_12 exist, 04_10 does not
    assert fault.time == datetime(2022, 8, 22, 4, 10, 20, tzinfo=UTC)
    start, n_bins = nezha.Window().bounds(fault.time)
    services = {"frontend", "cartservice", "redis-cart"}
    svc, edges = traces.scenario_traces(day, start, n_bins, services)
    assert set(svc["service"]) == {"frontend", "cartservice"}  # redis-cart has no span: not traced
    front = svc.loc[svc["service"] == "frontend"].set_index("bin")
    missing_minute = [int((datetime(2022, 8, 22, 4, 9, s, tzinfo=UTC) - start).total_seconds() // 30) for s in (0, 30)]
    for b in missing_minute:  # the minute file 04_10 would hold
        assert not front.loc[b, "covered"] and np.isnan(front.loc[b, "trace_calls"])
    after = missing_minute[1] + 2  # 04:10:30, inside 04_11
    assert front.loc[after, "covered"] and front.loc[after, "trace_calls"] > 0
    assert svc.groupby("bin")["covered"].first().sum() == round(traces.trace_coverage(day, start, n_bins) * n_bins)
    # edges share the coverage and are NaN exactly where it is missing
    assert set(edges.groupby("bin")["covered"].first().loc[lambda s: ~s].index) >= set(missing_minute)
    assert edges.loc[~edges["covered"], "edge_requests"].isna().all()
    assert (edges.loc[edges["covered"], "edge_requests"] >= 0).all()


def test_a_day_without_trace_files_is_empty_not_an_error(tmp_path):
    (tmp_path / "rca_data" / TT_DAY.day).mkdir(parents=True)
    day = traces.read_day_traces(tmp_path, TT_DAY)
    assert len(day.services) == 0 and len(day.covered_bins) == 0 and day.traced_services == ()
    svc, edges = traces.scenario_traces(day, datetime(2023, 1, 30, 12, tzinfo=UTC), 40, {"a"})
    assert len(svc) == 0 and len(edges) == 0


def test_covered_bins_rule():
    s = 1_000_000_000
    b0 = 1_700_000_010 * s - (1_700_000_010 * s) % (30 * s)  # a bin start
    # [b0 + 0.5 s, b0 + 89.5 s]: both ends stick out by <= 1 s, so bins b0, b0+30, b0+60 are covered
    assert traces.covered_bins(np.array([[b0 + s // 2, b0 + 89 * s + s // 2]])).tolist() == [b0, b0 + 30 * s,
                                                                                              b0 + 60 * s]
    # starting 2 s late loses the first bin
    assert traces.covered_bins(np.array([[b0 + 2 * s, b0 + 90 * s]])).tolist() == [b0 + 30 * s, b0 + 60 * s]
    merged = traces.merge_intervals([(0, 10 * s), (13 * s, 20 * s), (40 * s, 50 * s)])
    assert merged.tolist() == [[0, 20 * s], [40 * s, 50 * s]]


@pytest.mark.slow
def test_prepared_scenario_carries_the_day_series(prepared, traces_root, tt_day):
    scenario = prepared.load("nezha/20230130_00")
    sm = scenario.service_metrics
    assert len(sm) and set(sm["service"]) <= set(scenario.services)
    start, n_bins = scenario.start, scenario.n_bins
    want, _ = traces.scenario_traces(tt_day, start, n_bins, set(scenario.services))
    pd.testing.assert_frame_equal(sm.loc[:, list(want.columns)], want.sort_values(["bin", "service"]).reset_index(
        drop=True), check_dtype=False)
    covered = sm.groupby("bin")["covered"].first()
    assert covered.iloc[scenario.label.fault_bin]  # the fault's own bin has traces
    # derived features come from the same buckets as histogram_quantile
    row = sm.loc[sm["covered"] & (sm["trace_calls"] > 0)].iloc[0]
    q = histogram_quantile(0.95, [float(b) for b in SPAN_BUCKETS_MS], [row[c] for c in BUCKET_COLUMNS])
    assert row["trace_latency_p95_ms"] == q
    assert prepared.entry("nezha/20230130_00")["trace_coverage"] == pytest.approx(covered.mean(), abs=1e-3)
