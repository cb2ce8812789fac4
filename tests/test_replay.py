"""Replay into a real Prometheus and read back live: live metrics must equal the offline scenario exactly."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from lemzha.catalog import CATALOG, METRIC_NAMES
from lemzha.services import service_of_pod, workload_of_pod
from lemzha_operator import prometheus
from lemzha_operator.prometheus import (
    PodInfo,
    PrometheusQueryError,
    PrometheusUnavailable,
    fetch_metrics,
    fetch_pod_info,
    metrics_fetcher,
    pod_info_fetcher,
    query_range,
)
from offline.bench import replay
from offline.bench.openmetrics import fmt_ts, series_labels
from offline.bench.standins.prometheus_server import prometheus_server
from tests.marks import requires_prometheus

TT_ID = "nezha/20230129_05"
OB_ID = "nezha/20220822_03"




# -- pure units (fast) -----------------------------------------------------------------------------------------------
def test_counter_samples_irate_gives_back_the_value():
    times = np.array([60_500, 120_400, 180_700, 600_100], dtype=np.int64)  # a gap of > 2 m before the last
    values = np.array([5.0, 7.0, 0.0, 3.0])
    out_t, out_v = replay.counter_samples(times, values, 1e-3)
    # an anchor before the first sample and before the one after the gap, 60 s back
    assert out_t == [500, 60_500, 120_400, 180_700, 540_100, 600_100]
    rates = {t: (out_v[i] - out_v[i - 1]) / ((t - out_t[i - 1]) / 1000) for i, t in enumerate(out_t) if t in times}
    assert np.allclose([rates[t] for t in times], values * 1e-3, rtol=1e-12)
    assert all(b >= a for a, b in itertools.pairwise(out_v))  # monotone: never read as a reset


def test_counter_anchor_moves_closer_when_60s_back_would_see_the_previous_sample():
    # previous sample 155 s back: an anchor 60 s back (96 s) would have it inside its bin's irate window, and that
    # bin (empty offline) would get a value; 30 s back (126 s) is far enough
    times = np.array([1_000, 156_000], dtype=np.int64)
    out_t, _ = replay.counter_samples(times, np.array([1.0, 2.0]), 1.0)
    assert out_t[-2:] == [126_000, 156_000]
    # previous sample 119.999 s, next at a bin start (270 s): 60 s back would see it, so 30 s back
    out_t, _ = replay.counter_samples(np.array([119_999, 270_000], dtype=np.int64), np.array([1.0, 2.0]), 1.0)
    assert out_t[-2:] == [240_000, 270_000]


def test_counter_rejects_negative_values():
    with pytest.raises(replay.DataError, match="negative"):
        replay.counter_samples(np.array([1_000], dtype=np.int64), np.array([-1.0]), 1.0)


def test_series_labels_satisfy_the_catalog_selectors():
    for s in CATALOG:
        labels = dict(series_labels(s, "ts", "p-1"))
        assert labels["namespace"] == "ts" and labels["pod"] == "p-1"
        if "container" in s.selector_extra:
            assert labels["container"] not in ("", "POD")
        for key, value in s.replay.labels:
            assert labels[key] == value


def test_hostile_namespace_is_escaped_in_every_query():
    hostile = 'ts"} or vector(1) or {x="'
    for s in CATALOG:
        query = s.promql(hostile)
        assert 'namespace="ts\\"} or vector(1) or {x=\\""' in query
        assert query.count('namespace="') == query.count("namespace=")  # no second, injected matcher


def test_unknown_id_is_a_one_line_error(capsys, prepared):
    from offline.cli import run_cli

    code = run_cli(replay.main, ["--ids", "nezha/20990101_00", "--prom-data", "/tmp/unused-lemzha-prom",
                                 "--cache-dir", str(prepared.directory.parent.parent), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nezha/20990101_00" in err and err.startswith("error:")


def test_unknown_day_is_a_one_line_error(capsys):
    from offline.cli import run_cli

    assert run_cli(replay.main, ["--days", "2020-01-01", "--prom-data", "/tmp/unused-lemzha-prom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2020-01-01" in err


def test_missing_promtool_says_how_to_install(capsys, monkeypatch):
    from offline.cli import run_cli

    monkeypatch.setattr(replay.shutil, "which", lambda name: None)
    monkeypatch.setattr(replay, "PROMTOOL", "/nonexistent/promtool")
    assert run_cli(replay.main, ["--days", "2023-01-29", "--prom-data", "/tmp/unused-lemzha-prom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install prometheus" in err


def test_unreachable_prometheus_raises_unavailable():
    with pytest.raises(PrometheusUnavailable):
        fetch_metrics("http://127.0.0.1:1", "ts", datetime(2023, 1, 29, tzinfo=UTC), 4)


def test_pipeline_adapter_turns_an_outage_into_source_unavailable():
    from lemzha_operator.fetchers import SourceUnavailable

    with pytest.raises(SourceUnavailable) as err:
        metrics_fetcher("http://127.0.0.1:1")("ts", datetime(2023, 1, 29, tzinfo=UTC), 4)
    assert err.value.reason == "PrometheusUnavailable"


def test_pod_info_outage_is_unavailable_and_source_unavailable_in_the_adapter():
    from lemzha_operator.fetchers import SourceUnavailable

    with pytest.raises(PrometheusUnavailable):
        fetch_pod_info("http://127.0.0.1:1", "ts", datetime(2023, 1, 29, tzinfo=UTC), 4)
    with pytest.raises(SourceUnavailable) as err:
        pod_info_fetcher("http://127.0.0.1:1")("ts", datetime(2023, 1, 29, tzinfo=UTC), 4)
    assert err.value.reason == "PrometheusUnavailable"


def test_pod_info_resolves_the_top_controller(monkeypatch):
    """Deployment through its ReplicaSet; a StatefulSet or a ReplicaSet without a Deployment is the direct owner;
    an owner-less pod (kube-state-metrics' "<none>") has none. Queries escape the namespace and cover the window."""
    answers = {
        "kube_pod_owner": [
            {"metric": {"pod": "web-7d4b9c8f6-xk2pq", "owner_kind": "ReplicaSet", "owner_name": "web-7d4b9c8f6"}},
            {"metric": {"pod": "db-0", "owner_kind": "StatefulSet", "owner_name": "db"}},
            {"metric": {"pod": "lone-5c6d7f8b9-abcde", "owner_kind": "ReplicaSet", "owner_name": "lone-5c6d7f8b9"}},
            {"metric": {"pod": "bare", "owner_kind": "<none>", "owner_name": "<none>"}},
        ],
        "kube_replicaset_owner": [
            {"metric": {"replicaset": "web-7d4b9c8f6", "owner_kind": "Deployment", "owner_name": "web"}}],
        "kube_pod_labels": [
            {"metric": {"namespace": "n", "pod": "web-7d4b9c8f6-xk2pq", "label_app": "web", "label_a_b_c": "1"}}],
    }
    seen = []

    def fake(prom, query, time_s, timeout=30.0):
        seen.append((query, time_s))
        return next(v for k, v in answers.items() if f"{k}{{" in query)

    monkeypatch.setattr(prometheus, "query_instant", fake)
    monkeypatch.setattr(prometheus, "server_version", lambda prom, timeout=30.0: "2.42.0")
    start = datetime(2023, 1, 29, tzinfo=UTC)
    info = fetch_pod_info("http://unused", 'n"x', start, 4)
    owners = {"web-7d4b9c8f6-xk2pq": "web", "db-0": "db", "lone-5c6d7f8b9-abcde": "lone-5c6d7f8b9"}
    assert info == PodInfo(owners=owners, labels={"web-7d4b9c8f6-xk2pq": {"app": "web", "a_b_c": "1"}})
    assert len(seen) == 3
    for query, time_s in seen:
        assert 'namespace="n\\"x"' in query and "[119999ms]" in query
        assert time_s == pytest.approx(start.timestamp() + 120 - 0.001, abs=1e-6)
    # Prometheus 3 excludes a range's lower end: the same four bins are a 120 s range there
    monkeypatch.setattr(prometheus, "server_version", lambda prom, timeout=30.0: "3.1.0")
    seen.clear()
    assert fetch_pod_info("http://unused", 'n"x', start, 4) == info
    assert all("[120s]" in query for query, _ in seen) and len(seen) == 3


def test_a_shift_moves_every_sample_by_the_same_whole_bins(tmp_path):
    """--shift-to moves metrics and pod info alike (traces and logs take the same shift_ms); values unchanged."""
    day = _edge_day(EDGE_OFFSETS_MS)
    plain, moved = tmp_path / "plain.om.txt", tmp_path / "moved.om.txt"
    shift = 1_000 * 30_000
    replay.write_openmetrics([(day, "edge", None)], plain, progress=False)
    replay.write_openmetrics([(day, "edge", None)], moved, progress=False, shifts_ms=[shift])
    pairs = list(zip(plain.read_text().splitlines(), moved.read_text().splitlines(), strict=True))
    samples = [(a, b) for a, b in pairs if not a.startswith("#")]
    assert samples and all(a == b for a, b in pairs if a.startswith("#"))
    for a, b in samples:
        head_a, t_a = a.rsplit(" ", 1)
        head_b, t_b = b.rsplit(" ", 1)
        assert head_a == head_b and round((float(t_b) - float(t_a)) * 1000) == shift, (a, b)


def test_shifted_targets_end_at_the_bin_and_never_overlap():
    ts, ob = replay._day("2023-01-29"), replay._day("2022-08-22")
    targets = [replay.Target(ts, ((1_000_000_020_000, 1_000_001_220_000),)),
               replay.Target(ob, ((2_000_000_010_000, 2_000_000_610_000), (2_000_000_910_000, 2_000_002_110_000)))]
    end = 1_796_000_012_345  # not on a bin: rounded down
    for target in replay.shifted(targets, end):
        assert target.shift_ms % 30_000 == 0
        assert max(hi for _, hi in target.windows) + target.shift_ms == end - end % 30_000
    with pytest.raises(ValueError, match="overlap"):
        replay.shifted([targets[0], replay.Target(replay._day("2023-01-30"), targets[0].windows)], end)


@pytest.mark.parametrize(("argv", "message"), [
    (["--days", "2023-01-29", "--shift-to-now"], "give --ids"),
    (["--ids", TT_ID, "--shift-to", "tomorrow"], "not an RFC 3339 time"),
    (["--ids", TT_ID, "--shift-to", "2026-01-01T00:00:00"], "no time zone"),
])
def test_shift_arguments_are_checked_first(argv, message, capsys):
    from offline.cli import run_cli

    assert run_cli(replay.main, [*argv, "--prom-data", "/tmp/unused-lemzha-prom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_info_series_for_every_replayed_pod(tmp_path):
    day = _edge_day(EDGE_OFFSETS_MS)
    om = tmp_path / "edge.om.txt"
    replay.write_openmetrics([(day, "edge", None)], om, progress=False)
    text = om.read_text().splitlines()
    for pod in day.pods:
        rs = pod.rsplit("-", 1)[0]
        stamps = {fmt_ts(ms) for ms in (replay.epoch_ns(day.series[pod].times) // 1_000_000).tolist()}
        owner = [line for line in text if line.startswith(f'kube_pod_owner{{namespace="edge",pod="{pod}",')]
        assert owner and all(f'owner_kind="ReplicaSet",owner_name="{rs}",owner_is_controller="true"}} 1 ' in line
                             for line in owner)
        assert {line.rsplit(" ", 1)[1] for line in owner} == stamps  # every sample time of the pod, once each
        labels = [line for line in text if line.startswith(f'kube_pod_labels{{namespace="edge",pod="{pod}",')]
        assert len(labels) == len(stamps) and f'label_app="{service_of_pod(pod)}"' in labels[0]
        assert any(line.startswith(f'kube_replicaset_owner{{namespace="edge",replicaset="{rs}",owner_kind="Deployment"')
                   for line in text)


def test_start_must_be_aligned():
    with pytest.raises(ValueError, match="aligned"):
        fetch_metrics("http://127.0.0.1:1", "ts", datetime(2023, 1, 29, 0, 0, 7, tzinfo=UTC), 4)


# -- against a real Prometheus (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
@requires_prometheus
@pytest.mark.parametrize("scenario_id", [TT_ID, OB_ID])
def test_live_fetch_equals_offline_scenario(replayed, prepared, scenario_id):
    offline = prepared.load(scenario_id)
    with prometheus_server(replayed["data"]) as url:
        pods, values, names = fetch_metrics(url, offline.namespace, offline.start, offline.n_bins)[:3]
    assert set(pods) == set(offline.pods)
    assert names == METRIC_NAMES == offline.metrics
    order = [offline.pods.index(p) for p in pods]
    expected = offline.values[:, order, :]
    assert values.shape == expected.shape and values.dtype == np.float32
    for m, name in enumerate(names):
        live, want = values[:, :, m], expected[:, :, m]
        assert np.array_equal(np.isnan(live), np.isnan(want)), f"{name}: live mask differs from offline"
        assert np.isfinite(want).sum() > 0, f"{name}: nothing to compare"
        np.testing.assert_allclose(live, want, rtol=1e-5, atol=0, equal_nan=True, err_msg=name)


EDGE_START = datetime(2023, 3, 1, tzinfo=UTC)
EDGE_BINS = 40
# Sample times (ms after EDGE_START) at and next to bin edges, sub-millisecond ones, two samples in one bin, and
# gaps of 150 s (anchor exactly at the 2 m boundary) and more than 2 m (counter anchors).
EDGE_OFFSETS_MS = {
    "edge-a-1": [0, 29_999, 30_000, 77_300, 119_998.5, 270_000, 300_000, 301_000, 640_000, 1_199_999],
    "edge-b-1": [15_000, 45_000, 59_999.9999, 60_000, 330_000, 340_000, 1_170_000],
    "edge-d-1": [1_000, 156_000, 190_000, 305_000, 450_000],  # anchors 30 s back and at the sample's own bin start
}
# On a bin's last millisecond and followed by an empty bin: Prometheus 2 (Debian's 2.42) closes a range's lower end,
# so [30s] evaluated at bin end - 1 ms is 30.001 s long and sees this sample again in the next bin.
LAST_MS_OFFSETS_MS = {"edge-c-1": [89_999, 150_000, 209_999, 600_000.25]}


def _edge_day(offsets_by_pod: dict[str, list[float]], seed: int = 0):
    from offline.data.nezha import DayMetrics, PodSeries, Quality

    rng = np.random.default_rng(seed)
    base_ns = int(EDGE_START.timestamp()) * 10**9
    series = {}
    for pod, offsets in offsets_by_pod.items():
        times = pd.to_datetime([base_ns + round(ms * 1_000_000) for ms in offsets], utc=True)
        values = rng.uniform(0.5, 1000.0, size=(len(offsets), len(CATALOG)))
        values[1, 3] = np.nan  # a missing column in one row
        values[2, 0] = 0.0  # an idle counter
        series[pod] = PodSeries(pd.DatetimeIndex(times), values)
    return DayMetrics(tuple(sorted(series)), series, Quality())


@pytest.mark.slow
@requires_prometheus
def test_bin_edges_and_counter_gaps_read_back_exactly(tmp_path):
    """Synthetic samples on the bin edges: this is what pins the bin-end-minus-1-ms grid and the counter anchors,
    which the Nezha samples (never within a second of an edge) cannot."""
    day = _edge_day(EDGE_OFFSETS_MS)
    pods, values, names, _ = _replay_and_fetch(day, tmp_path)
    assert pods == day.pods and names == METRIC_NAMES
    _assert_same(values, _offline(day), names)


def _replay_and_fetch(day, tmp_path: Path) -> tuple:
    om = tmp_path / "edge.om.txt"
    replay.write_openmetrics([(day, "edge", None)], om, progress=False)
    replay.backfill(om, tmp_path / "data")
    with prometheus_server(tmp_path / "data") as url:
        version = requests.get(f"{url}/api/v1/status/buildinfo", timeout=5).json()["data"]["version"]
        return (*fetch_metrics(url, "edge", EDGE_START, EDGE_BINS)[:3], version)


def _offline(day) -> np.ndarray:
    from lemzha.binning import last_sample_per_bin

    return np.stack([last_sample_per_bin(day.series[p].times, day.series[p].values, EDGE_START, EDGE_BINS)
                     for p in day.pods], axis=1)


def _assert_same(values: np.ndarray, expected: np.ndarray, names: tuple[str, ...]) -> None:
    for m, name in enumerate(names):
        live, want = values[:, :, m], expected[:, :, m]
        assert np.array_equal(np.isnan(live), np.isnan(want)), (
            f"{name}: mask differs at (bin, pod) {np.argwhere(np.isnan(live) != np.isnan(want)).tolist()}")
        np.testing.assert_allclose(live, want, rtol=1e-5, atol=0, equal_nan=True, err_msg=name)


def _bin_ranges(queries: list[str]) -> set[str]:
    """The bin-sized ranges of the catalog queries sent (irate's [2m] excluded)."""
    return {r for q in queries for r in re.findall(r"\[(\w+)\]", q) if r != "2m"}


@pytest.mark.slow
@requires_prometheus
def test_bin_range_follows_the_server_version(tmp_path):
    """The operator reads /api/v1/status/buildinfo and sends one bin's range for that version.

    Prometheus 2.x, the real Debian 2.42: 29999ms (its ranges include the lower end), so a sample on a bin's last
    millisecond stays in its bin, exactly as offline. Prometheus 3.x: no 3.x binary is installable here, so a proxy
    fakes only the buildinfo answer (3.0.0) in front of the same 2.42; the operator then sends 30s ranges, 3.x's one
    bin, and on the 2.42 behind the proxy those ranges visibly see the previous bin's last millisecond: the branch
    changes the queries. (The 30s range on a real 3.x is not run here.)"""
    from lemzha.catalog import bin_range
    from offline.bench.standins.fault_proxy import FaultProxy

    day = _edge_day(LAST_MS_OFFSETS_MS)
    om = tmp_path / "edge.om.txt"
    replay.write_openmetrics([(day, "edge", None)], om, progress=False)
    replay.backfill(om, tmp_path / "data")
    expected = _offline(day)
    for empty in (3, 7):  # empty offline, right after bins whose last sample is at 29.999 s
        assert np.isnan(expected[empty]).all()
    with prometheus_server(tmp_path / "data") as url, FaultProxy(url) as proxy:
        version = requests.get(f"{url}/api/v1/status/buildinfo", timeout=5).json()["data"]["version"]
        assert version.startswith("2."), f"the tests pin Prometheus 2.x (the Debian package), not {version}"
        assert prometheus.server_version(proxy.url) == version
        values, names = fetch_metrics(proxy.url, "edge", EDGE_START, EDGE_BINS)[1:3]
        fetch_pod_info(proxy.url, "edge", EDGE_START, EDGE_BINS)
        assert _bin_ranges(proxy.queries) == {"29999ms", f"{EDGE_BINS * 30_000 - 1}ms"} == {
            bin_range(version), bin_range(version, EDGE_BINS)}
        _assert_same(values, expected, names)

        proxy.version, proxy.queries = "3.0.0", []
        assert prometheus.server_version(proxy.url) == "3.0.0"
        faked = fetch_metrics(proxy.url, "edge", EDGE_START, EDGE_BINS)[1]
        fetch_pod_info(proxy.url, "edge", EDGE_START, EDGE_BINS)
        assert _bin_ranges(proxy.queries) == {"30s", f"{EDGE_BINS * 30}s"}
        assert not np.isnan(faked[3]).all() and not np.isnan(faked[7]).all()  # 2.42 closes the 30 s range's start


def test_a_slow_buildinfo_is_one_timeout_not_four():
    """The operator's client retries a GET (buildinfo is one) four times; the version lookup bypasses that, so a
    hung Prometheus costs one query timeout and is reported as a timeout, as the (POST) queries are."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from lemzha_operator.settings import Settings
    from lemzha_operator.sources import prometheus_client_for

    class Hung(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(1.5)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hung)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prom = prometheus_client_for(Settings(prometheus_url=f"http://127.0.0.1:{server.server_address[1]}", loki_url=None,
                                bundle_dir=None, cache_dir=Path("/tmp")))
    t0 = time.monotonic()
    try:
        with pytest.raises(PrometheusUnavailable, match=r"did not answer within 0\.3 s") as err:
            prometheus.server_version(prom, timeout=0.3)
        assert err.value.kind == "timeout" and time.monotonic() - t0 < 1.2
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_without_buildinfo_is_taken_as_2x(monkeypatch):
    """Some Prometheus-compatible backends answer 404 for buildinfo: the 2.x range is assumed, not an error."""

    def not_found(prom, method, path, body, timeout, what, retries=True):
        raise PrometheusQueryError(f"Prometheus rejected {what}: 404 page not found")

    monkeypatch.setattr(prometheus, "_call", not_found)
    assert prometheus.server_version("http://unused") is None
    assert prometheus.server_bin_range("http://unused") == "29999ms"


@pytest.mark.slow
@requires_prometheus
def test_hostile_namespace_cannot_inject(replayed, prepared):
    offline = prepared.load(TT_ID)
    hostile = 'ts"} or vector(1) or {x="'
    with prometheus_server(replayed["data"]) as url:
        pods, values, _ = fetch_metrics(url, hostile, offline.start, offline.n_bins)[:3]
        assert pods == () and values.shape == (offline.n_bins, 0, len(METRIC_NAMES))
        # not vacuous: the same window with the real namespace has pods
        assert fetch_metrics(url, "ts", offline.start, offline.n_bins, metrics=["cpu_percent"])[0]
        with pytest.raises(PrometheusQueryError):  # a 4xx is a query bug, not an outage to retry
            query_range(url, "sum(", offline.start.timestamp(), offline.start.timestamp() + 60, 30)


@pytest.mark.slow
@requires_prometheus
def test_pod_info_of_the_replayed_scenario(replayed, prepared):
    offline = prepared.load(TT_ID)
    with prometheus_server(replayed["data"]) as url:
        info = fetch_pod_info(url, offline.namespace, offline.start, offline.n_bins)
        hostile = fetch_pod_info(url, 'ts"} or vector(1) or {x="', offline.start, offline.n_bins)
    assert set(info.owners) == set(offline.pods) == set(info.labels)
    for pod in offline.pods:
        owner = info.owners[pod]
        assert owner == workload_of_pod(pod), pod  # the Deployment, through the ReplicaSet, not the ReplicaSet
        assert service_of_pod(pod, owner) == service_of_pod(pod) == offline.pod_service[pod], pod
        assert info.labels[pod]["app"] == service_of_pod(pod)
        assert info.labels[pod]["pod_template_hash"]
    assert hostile == PodInfo()


@pytest.mark.slow
def test_log_file_format(replayed, prepared):
    lines = replayed["logs"].read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(set(r) == {"labels", "ts_ns", "line"} for r in records)
    assert all(set(r["labels"]) == {"namespace", "pod"} and isinstance(r["ts_ns"], int) for r in records)
    assert [r["ts_ns"] for r in records] == sorted(r["ts_ns"] for r in records)
    tt, ob = prepared.load(TT_ID), prepared.load(OB_ID)
    for sc in (tt, ob):
        mine = [r for r in records if r["labels"]["namespace"] == sc.namespace]
        assert mine and {r["labels"]["pod"] for r in mine} <= set(sc.pods)
        lo = int(sc.start.timestamp()) * 10**9
        assert all(lo <= r["ts_ns"] < lo + sc.n_bins * 30 * 10**9 for r in mine)
    # OnlineBoutique: one line per counted template occurrence, carrying the template and level
    ob_lines = [r for r in records if r["labels"]["namespace"] == ob.namespace]
    assert len(ob_lines) == int(ob.logs["count"].sum())
    first = ob.logs.iloc[0]
    body = {"message": first["template"]} | ({} if first["level"] == "UNKNOWN" else {"severity": first["level"]})
    assert any(json.loads(r["line"]) == body for r in ob_lines)
    # TrainTicket: raw lines, deduplicated
    tt_lines = [r for r in records if r["labels"]["namespace"] == tt.namespace]
    assert tt_lines and all(r["line"] for r in tt_lines)


# -- traces ------------------------------------------------------------------------------------------------------------
def _live_grid(url, query: str, start: datetime, n_bins: int, keys: tuple[str, ...]) -> dict[tuple, float]:
    """{(label values..., bin): value} of a catalog trace query on the bin grid (bin end - 1 ms)."""
    first = start.timestamp() + 30 - 0.001
    out = {}
    for series in query_range(url, query, first, first + (n_bins - 1) * 30, 30):
        key = tuple(series["metric"].get(k, "") for k in keys)
        for ts, text in series["values"]:
            out[(*key, round((float(ts) - first) / 30))] = float(text)
    return out


@pytest.mark.slow
@requires_prometheus
@pytest.mark.parametrize("scenario_id", [TT_ID, OB_ID])
def test_live_trace_series_equal_offline(replayed, prepared, scenario_id):
    """The catalog's live PromQL for every trace feature (and the raw buckets) gives back the offline per-bin values
    through a real Prometheus: counts and buckets exactly, quantiles from the same buckets exactly, means to 1e-9
    (the edges' client-server gap also to 1e-6 ms);
    bins the trace files do not cover (OnlineBoutique's missing files included) are absent live."""
    from lemzha.catalog import (
        BUCKET_COLUMNS,
        SERVICE_GRAPH_BUCKETS_S,
        SPAN_BUCKETS_MS,
        TRACE_FEATURES,
        edge_bucket_promql,
        service_bucket_promql,
    )

    offline = prepared.load(scenario_id)
    sm, edges = offline.service_metrics, offline.edges
    assert len(sm) and len(edges) and sm["covered"].any() and not sm["covered"].all()
    def bucket_of(bounds):
        return dict(zip([*(replay._fmt_le(b) for b in bounds), "+Inf"], BUCKET_COLUMNS, strict=True))

    with prometheus_server(replayed["data"]) as url:
        for feature in TRACE_FEATURES:
            keys, frame = (("service_name",), sm) if feature.level == "service" else (("client", "server"), edges)
            live = _live_grid(url, feature.promql(offline.namespace), offline.start, offline.n_bins, keys)
            cols = ["service"] if feature.level == "service" else ["client", "server"]
            for row in frame.itertuples(index=False):
                row = row._asdict()
                key = (*(row[c] for c in cols), row["bin"])
                want = row[feature.name]
                if not row["covered"]:
                    assert key not in live, f"{feature.name} {key}: live value in a bin the traces do not cover"
                elif np.isnan(want):
                    assert np.isnan(live[key]), f"{feature.name} {key}: {live[key]} live, NaN offline"
                elif feature.kind in ("mean", "gap"):
                    # a gap is a difference of two sums: absolute error at the sums' rounding, 1e-6 ms
                    tolerance = {"rel": 1e-9, "abs": 1e-6 if feature.kind == "gap" else 0.0}
                    assert live[key] == pytest.approx(want, **tolerance), f"{feature.name} {key}"
                else:
                    assert live[key] == want, f"{feature.name} {key}: {live[key]} live, {want} offline"
            services = set(offline.services)
            assert {k[:-1] for k in live} >= {tuple(r) for r in frame[cols].drop_duplicates().to_numpy()}
            assert all(set(k[:-1]) <= services or feature.level == "edge" for k in live)
        for query, keys, frame, cols, bounds in (
            (service_bucket_promql(offline.namespace), ("service_name", "le"), sm, ["service"], SPAN_BUCKETS_MS),
            (edge_bucket_promql(offline.namespace), ("client", "server", "le"), edges, ["client", "server"],
             SERVICE_GRAPH_BUCKETS_S),
        ):
            live = _live_grid(url, query, offline.start, offline.n_bins, keys)
            covered = frame.loc[frame["covered"]]
            for row in covered.itertuples(index=False):
                row = row._asdict()
                for le, col in bucket_of(bounds).items():
                    assert live[(*(row[c] for c in cols), le, row["bin"])] == row[col]

