"""End to end on raw exporter series: Nezha replayed as cAdvisor, kube-state-metrics, node-exporter and
Istio series into a real Prometheus, the chart's recording rules backfilled with `promtool tsdb create-blocks-from
rules`, Prometheus restarted, and the operator's live scenario compared with the offline one for one fault per app.
Also the preflight doctor against the same servers.

Tolerances, per metric (what the replay can and cannot keep; offline.bench.exporter_replay):
- cAdvisor metrics, workload, node memory and node network: equal to float32 precision (rtol 1e-6), same mask;
- node CPU: rtol 1e-6, and 1e-9 absolute (100 x (1 - idle) leaves 1e-13 where Nezha has 0);
- cpu_percent, memory_percent: exactly the rules' 100 x usage / limit (rtol 1e-6) with the replayed limits; against
  Nezha's own percentages at least 85 % of the cells within 0.1 % (Nezha's percent is not always usage over one
  constant limit: rounding, and one OnlineBoutique pod's memory);
- latency P90/P95/P99: exactly `histogram_quantile` over the replayed buckets (rtol 1e-6), and inside the Istio
  bucket holding Nezha's value (the resolution of Istio's default buckets); same mask except where Nezha gives only
  some of a side's three quantiles.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lemzha.binning import epoch_ns
from lemzha.catalog import METRIC_NAMES
from lemzha.histogram import histogram_quantile
from lemzha.recording_rules import chart_files
from lemzha_operator.pipeline import build_scenario, window_from_status
from lemzha_operator.prometheus import query_instant
from offline.bench import exporter_replay as xr
from offline.bench.standins.prometheus_server import prometheus_server
from tests.marks import requires_prometheus

TT_ID, OB_ID = "nezha/20230129_05", "nezha/20220822_03"
NO_MESH = "hipster-nomesh"  # the OnlineBoutique window again, as a cluster without a mesh would export it
ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "charts" / "lemzha" / "files" / "rules"
GUIDE = ROOT / "docs" / "operator.md"
EXACT = ("cpu_millicores", "memory_bytes", "syscall_read", "syscall_write", "network_receive", "network_transmit",
         "workload", "node_memory_percent", "node_network_receive")

pytestmark = [pytest.mark.slow, requires_prometheus]


@pytest.fixture(scope="module")
def exported(prepared, tmp_path_factory) -> dict:
    """Raw blocks, and raw + rule blocks, of TT_ID and OB_ID with Istio, and OB_ID without a mesh."""
    from offline.bench import replay
    from offline.data import nezha
    from offline.data.store import ensure_extracted

    root = tmp_path_factory.mktemp("exporters")
    targets = replay.resolve_targets([TT_ID, OB_ID], [], prepared)
    nezha_root = ensure_extracted("nezha")
    days = [(nezha.read_day_metrics(nezha_root, t.day), t.day.namespace, t.windows) for t in targets]
    ob = next(d for d in days if d[1] == "hipster")
    replay.write_openmetrics([*days, (ob[0], NO_MESH, ob[2])], root / "raw.om", False,
                             exporters=["istio"] * len(days) + ["none"])
    replay.backfill(root / "raw.om", root / "raw")
    with prometheus_server(root / "raw") as url:
        for target in targets:
            for lo, hi in target.windows:
                xr.backfill_rules(url, RULES_DIR, list(chart_files("istio")), lo // 1000 - 300, hi // 1000 + 30,
                                  root / "rules")
    (root / "all").mkdir()
    for blocks in (root / "raw", root / "rules"):
        for block in blocks.iterdir():
            if block.is_dir():
                shutil.copytree(block, root / "all" / block.name)
    return {"raw": root / "raw", "all": root / "all", "days": {namespace: metrics for metrics, namespace, _ in days}}


def _window(offline) -> dict:
    from datetime import UTC, datetime

    end = datetime.fromtimestamp(offline.start.timestamp() + offline.n_bins * 30, tz=UTC)
    return {"resolvedWindow": {"from": offline.start.isoformat(), "to": end.isoformat()}}


def test_rule_evaluation_offsets_leave_room_for_the_counter_pairs(exported, prepared):
    """Each group is evaluated at an offset of its own within the 30 s; the replayed counters need it past their
    first millisecond (offline.bench.exporter_replay.PAIR_MS). The offsets depend only on group and file names."""
    offline = prepared.load(TT_ID)
    at = offline.start.timestamp() + offline.n_bins * 30
    with prometheus_server(exported["all"]) as url:
        offsets = {}
        for record in ("lemzha:pod_cpu_usage:percent", "lemzha:pod_node_cpu_usage:percent",
                       "lemzha:pod_requests:rate"):
            result = query_instant(url, f'{record}{{namespace="ts"}}[20m]', at)
            offsets[record] = {round(float(t) * 1000) % 30_000 for s in result for t, _ in s["values"]}
    assert all(len(found) == 1 and min(found) > xr.PAIR_MS for found in offsets.values()), offsets


@pytest.mark.parametrize("scenario_id", [TT_ID, OB_ID])
def test_recorded_metrics_from_raw_exporters_equal_offline(exported, prepared, scenario_id):
    offline = prepared.load(scenario_id)
    with prometheus_server(exported["all"]) as url:
        live = _live_scenario(url, offline)
    assert live.metrics == METRIC_NAMES == offline.metrics and set(live.pods) == set(offline.pods)
    order = [offline.pods.index(p) for p in live.pods]
    want_all = offline.values[:, order, :].astype(np.float64)
    got_all = live.values.astype(np.float64)
    col = {name: m for m, name in enumerate(METRIC_NAMES)}

    for name in (*EXACT, "node_cpu_percent"):
        got, want = got_all[:, :, col[name]], want_all[:, :, col[name]]
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: mask differs"
        assert np.isfinite(want).sum() > 0, name
        atol = 1e-9 if name == "node_cpu_percent" else 0.0
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=atol, equal_nan=True, err_msg=name)

    # percentages: the rules' arithmetic with the replayed limits, and Nezha's own values mostly
    day = exported["days"][offline.namespace]
    limits = np.array([xr.pod_limits(day.series[p].values) for p in live.pods])  # (pods, 2)
    for name, usage, factor, k in (("cpu_percent", "cpu_millicores", 1e-3, 0), ("memory_percent", "memory_bytes",
                                                                              1.0, 1)):
        got, want = got_all[:, :, col[name]], want_all[:, :, col[name]]
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: mask differs"
        rule = 100 * want_all[:, :, col[usage]] * factor / limits[None, :, k]
        np.testing.assert_allclose(got, rule, rtol=1e-6, equal_nan=True, err_msg=f"{name}: not 100 x usage / limit")
        both = np.isfinite(want)
        close = np.abs(got[both] - want[both]) <= 1e-3 * np.abs(want[both]) + 1e-9
        print(f"{scenario_id} {name}: {close.mean():.3f} of {both.sum()} cells within 0.1 % of Nezha")
        assert close.mean() >= 0.85, f"{name}: only {close.mean():.3f} of the cells within 0.1 % of Nezha"

    # latency: histogram_quantile over the replayed buckets exactly, inside the bucket of Nezha's value; both from
    # the raw float64 samples the replay wrote (the scenario's float32 moves a value on a bucket bound off it)
    bounds = np.asarray(xr.ISTIO_BUCKETS_MS)
    start_ms = int(offline.start.timestamp() * 1000)
    for side in ("client", "server"):
        names = [f"latency_{side}_p{q}" for q in (90, 95, 99)]
        want = np.full((offline.n_bins, len(live.pods), 3), np.nan)
        for p, pod in enumerate(live.pods):
            series = day.series[pod]
            times, values = xr.last_per_bin(epoch_ns(series.times) // 1_000_000,
                                            series.values[:, [col[n] for n in names]], None)
            k = (times - start_ms) // 30_000
            inside_window = (k >= 0) & (k < offline.n_bins)
            want[k[inside_window], p] = values[inside_window]
        nezha_values = want_all[:, :, [col[n] for n in names]]
        assert np.array_equal(np.isfinite(want), np.isfinite(nezha_values) & np.isfinite(nezha_values).all(
            axis=2, keepdims=True)), "the raw samples are not the scenario's"
        want = np.where(np.isfinite(want), want, nezha_values)  # partial triplets: the scenario's values
        partial = np.isfinite(want).any(axis=2) & ~np.isfinite(want).all(axis=2)
        fractions, _ = xr.latency_cdf(np.nan_to_num(want.reshape(-1, 3)))
        cumulative = np.column_stack([fractions, np.ones(len(fractions))])
        for j, (name, q) in enumerate(zip(names, xr.QUANTILES, strict=True)):
            got = got_all[:, :, col[name]]
            assert np.array_equal(np.isnan(got)[~partial], np.isnan(want[:, :, j])[~partial]), f"{name}: mask"
            ok = np.isfinite(got)
            through = (histogram_quantile(q, bounds.tolist(), cumulative) / 1000).reshape(got.shape)
            np.testing.assert_allclose(got[ok], through[ok], rtol=1e-6, err_msg=f"{name}: not the bucket quantile")
            # a histogram holds only non-decreasing quantiles: Nezha's rare p50 > p90 rows have no bucket answer
            ok &= (np.diff(want, axis=2) >= 0).all(axis=2)
            v_ms = want[:, :, j][ok] * 1000
            lo = np.concatenate([[0.0], bounds])[np.searchsorted(bounds, v_ms, side="left")]
            hi = np.append(bounds, bounds[-1])[np.searchsorted(bounds, v_ms, side="left")]
            live_ms = got[ok] * 1000
            inside = (live_ms >= lo * (1 - 1e-6)) & (live_ms <= np.maximum(hi, v_ms) * (1 + 1e-6) + 1e-9)
            assert inside.all(), (f"{name}: {int((~inside).sum())} values outside the bucket of Nezha's value: "
                                  f"live {live_ms[~inside]} ms, Nezha {v_ms[~inside]} ms")
            rel = np.abs(live_ms - v_ms) / np.maximum(v_ms, 1e-9)
            print(f"{scenario_id} {name}: median relative difference to Nezha {np.median(rel):.3f}")


def _live_scenario(url, offline):
    from lemzha_operator.settings import Settings
    from lemzha_operator.sources import make_sources

    window = window_from_status(_window(offline))
    fetch_metrics = make_sources(Settings(prometheus_url=url, loki_url=None, bundle_dir=None,
                                          cache_dir=Path("/tmp")))[0]
    pods, values, names, _ = fetch_metrics(offline.namespace, window.start, window.n_bins)
    return build_scenario(offline.id, offline.namespace, window, pods, values, names, None)


# -- the preflight doctor, against the same servers --------------------------------------------------------------------
def doctor(url: str, namespace: str, at: str) -> subprocess.CompletedProcess:
    """`python -m lemzha_operator.doctor`, run in this process (tests/test_doctor.py covers its errors)."""
    from lemzha_operator import doctor as preflight

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = preflight.main(["--prometheus", url, "--namespace", namespace, "--at", at])
    return subprocess.CompletedProcess([], code, out.getvalue(), err.getvalue())


def _line(out: str, metric: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith(f"{metric} ")]
    return line


def test_doctor_names_what_is_missing(exported, prepared):
    offline = prepared.load(OB_ID)
    at = _window(offline)["resolvedWindow"]["to"]
    with prometheus_server(exported["raw"]) as url:  # exporters, but no recording rules
        raw = doctor(url, "hipster", at)
    assert raw.returncode == 1, raw.stderr
    assert "present" in _line(raw.stdout, "cpu_millicores") and "cAdvisor" in _line(raw.stdout, "cpu_millicores")
    assert "ABSENT" in _line(raw.stdout, "cpu_percent")
    assert "recording rule not loaded, its inputs are there" in raw.stdout
    assert "set recordingRules.latencySource=istio" in raw.stdout
    print(raw.stdout)
    assert "6 of 18 catalog metrics present" in raw.stdout
    with prometheus_server(exported["all"]) as url:
        full = doctor(url, "hipster", at)
        mesh_less = doctor(url, NO_MESH, at)
        nothing = doctor(url, "no-such-namespace", at)
    assert full.returncode == 0 and "18 of 18 catalog metrics present" in full.stdout, full.stdout + full.stderr
    assert "rule lemzha.mesh (istio)" in _line(full.stdout, "workload")
    assert "rule lemzha.node (node-exporter + kube-state-metrics)" in _line(full.stdout, "node_cpu_percent")
    # a cluster without a mesh: the rules are loaded, the mesh's series are not there
    shown = mesh_less.stdout.replace(url, "http://127.0.0.1:9090")
    print(shown)
    assert mesh_less.returncode == 1
    assert ("11 of 18 catalog metrics present; absent:\n- latency_client_p90, latency_client_p95, latency_client_p99, "
            "latency_server_p90, latency_server_p95, latency_server_p99, workload: no latency source: none of "
            "istio_request_duration_milliseconds_bucket") in mesh_less.stdout
    assert "present" in _line(mesh_less.stdout, "node_memory_percent")
    assert nothing.returncode == 1 and "nothing at all for namespace 'no-such-namespace'" in nothing.stdout
    guide = GUIDE.read_text()
    block = guide[guide.index("```text\n", guide.index("**Preflight.**")) + 8:]
    assert block[:block.index("```")] == shown, "the operator guide's doctor output is not what the doctor prints"
