"""Raw exporter series derived from Nezha: what cAdvisor, kube-state-metrics, node-exporter and Istio
would have exported for a replayed day, so the chart's recording rules run on them in a real Prometheus.

`python -m offline.replay ... --exporters istio|none` writes these instead of the recorded `lemzha:*` series; then
`backfill_rules` evaluates the rules over the range (`promtool tsdb create-blocks-from rules`, against a running
Prometheus serving the raw blocks), and a restarted Prometheus serves both. Derivations:

- **Times.** A recording rule is evaluated at an offset of its own within each 30 s (a live cluster's recorded
  series lag their inputs by up to that much); a sample later in its bin than that offset would reach the recorded
  series one bin late. Here every sample is written at the start of its bin, so any evaluation in the bin sees it,
  and the test checks the rules' arithmetic rather than that offset. One sample per bin: the last, as the binning.
- **Counters** are written as a pair per sample: the running total at the bin start and, PAIR_MS later, that total
  plus value x PAIR_MS. irate anywhere in the bin after that millisecond gives the value back, the total never moves
  between samples, and a bin without a sample has no fresh sample for the rules' freshness guard. (Evaluation
  offsets under PAIR_MS would miss it; the end-to-end test checks them.)
- **cAdvisor**: the catalog's own series (CPU seconds, working set, fs reads and writes, network bytes), labelled
  as `offline.replay` labels them.
- **kube-state-metrics**: one CPU and one memory limit per pod, the median of usage / percent over the pod's
  samples (Nezha's CpuUsageRate is CpuUsage over the limit); a pod that never uses anything gets 1 core / 1 GiB (any
  limit gives its 0 %). `kube_pod_info` puts each pod on its node.
- **node-exporter**: Nezha does not name nodes, so every pod gets a node of its own (`<namespace>-node-NNN`) with
  that pod's node columns: one CPU whose idle counter runs at 1 - percent / 100, MemTotal 16 GiB and MemAvailable =
  MemTotal x (1 - percent / 100), and an `eth0` receive counter. node-exporter runs as a pod in `monitoring` on each
  node (its own `kube_pod_info`), which is how the rules find its node. Many pods on one node: the promtool unit
  tests.
- **Istio**: per pod and side (reporter=destination from the server-side quantiles, reporter=source from the client
  side) a request-duration histogram in Istio's default buckets whose distribution has exactly Nezha's P90, P95 and
  P99 (a piecewise-linear CDF through them, the last 1 % up to 2 x P99), at HISTOGRAM_RATE observations per second;
  `istio_requests_total{reporter="destination"}` runs at the pod's workload. Read back through the buckets, a
  quantile lies in the bucket of Nezha's value: the resolution Istio's buckets have. A sample with only some of its
  three quantiles is left out (3 in all four days).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lemzha.binning import epoch_ns
from lemzha.catalog import (
    CATALOG,
    KSM_CPU_LIMIT,
    KSM_POD_INFO,
    METRIC_NAMES,
    NODE_CPU_IDLE,
    NODE_MEMORY_AVAILABLE,
    NODE_MEMORY_TOTAL,
    NODE_NETWORK_RECEIVE,
    latency_source,
)
from offline.bench.openmetrics import BIN_MS, PROMTOOL, fmt_labels, fmt_ts, keep_samples, series_labels
from offline.data import nezha
from offline.errors import DataError

ISTIO_BUCKETS_MS: tuple[float, ...] = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
                                       60_000, 300_000, 600_000, 1_800_000, 3_600_000)
"""Istio's default buckets of `istio_request_duration_milliseconds`."""
HISTOGRAM_RATE = 1000.0  # observations per second in every written histogram (quantiles do not depend on it)
NODE_MEMORY_BYTES = 16 * 1024.0**3
DEFAULT_LIMITS = (1.0, 1024.0**3)  # cores, bytes: for a pod whose usage is always 0
PAIR_MS = 1
MONITORING = "monitoring"
QUANTILES = (0.90, 0.95, 0.99)
MESHES = ("istio", "none")

_COL = {name: i for i, name in enumerate(METRIC_NAMES)}
Rows = list[tuple[list[tuple[str, str]], np.ndarray, np.ndarray]]  # (labels, times ms, values) per series


def node_of(namespace: str, index: int) -> str:
    return f"{namespace}-node-{index:03d}"


def pod_limits(values: np.ndarray) -> tuple[float, float]:
    """(CPU cores, memory bytes) limits of one pod: the median usage / percent over its samples."""
    out = []
    pairs = (("cpu_millicores", "cpu_percent", 1e-3), ("memory_bytes", "memory_percent", 1.0))
    for (usage, percent, factor), default in zip(pairs, DEFAULT_LIMITS, strict=True):
        u, p = values[:, _COL[usage]] * factor, values[:, _COL[percent]]
        ok = np.isfinite(u) & np.isfinite(p) & (u > 0) & (p > 0)
        out.append(float(np.median(u[ok] / (p[ok] / 100.0))) if ok.any() else default)
    return out[0], out[1]


def latency_cdf(quantiles_s: np.ndarray, bounds_ms=ISTIO_BUCKETS_MS) -> tuple[np.ndarray, np.ndarray]:
    """(fractions at each bound, mean in ms) per row of (P90, P95, P99) seconds: a piecewise-linear CDF through
    (0, 0), (P90, .90), (P95, .95), (P99, .99) and (2 x P99 + 1 us, 1), right-continuous where quantiles tie."""
    q_ms = np.maximum.accumulate(np.asarray(quantiles_s, dtype=np.float64) * 1000.0, axis=1)  # never decreasing
    xs = np.column_stack([np.zeros(len(q_ms)), q_ms, 2 * q_ms[:, -1] + 1e-3])
    ys = np.array([0.0, *QUANTILES, 1.0])
    bounds = np.asarray(bounds_ms, dtype=np.float64)
    fractions = np.empty((len(q_ms), len(bounds)))
    for r, x in enumerate(xs):
        k = np.searchsorted(x, bounds, side="right") - 1  # the last knot at or below each bound
        nxt = np.minimum(k + 1, len(x) - 1)
        width = x[nxt] - x[k]
        step = np.divide((ys[nxt] - ys[k]) * (bounds - x[k]), width, out=np.zeros(len(bounds)), where=width > 0)
        fractions[r] = ys[k] + step
    mean = ((ys[1:] - ys[:-1]) * (xs[:, 1:] + xs[:, :-1]) / 2).sum(axis=1)
    return fractions, mean


def _pairs(times: np.ndarray, rates: np.ndarray) -> tuple[list[int], list[float]]:
    """Counter samples: (t, total) and (t + PAIR_MS, total + rate x PAIR_MS) per sample (see the module doc)."""
    out_t: list[int] = []
    out_v: list[float] = []
    total = 0.0
    for t, rate in zip(times.tolist(), rates.tolist(), strict=True):
        if rate < 0:
            raise DataError(f"negative rate {rate} for a counter at {t} ms")
        out_t += [t, t + PAIR_MS]
        out_v += [total, total + rate * PAIR_MS / 1000.0]
        total = out_v[-1]
    return out_t, out_v


def _family(name: str, kind: str, rows: Rows, suffix: str = "") -> list[str]:
    """An OpenMetrics family: `kind` gauge (one sample per time) or counter (pairs), series `name + suffix`."""
    family = name.removesuffix("_total") if kind == "counter" else name
    lines = [f"# TYPE {family} {kind}"]
    for labels, times, values in rows:
        out_t, out_v = _pairs(times, values) if kind == "counter" else (times.tolist(), values.tolist())
        head = f"{name}{suffix}{{{fmt_labels(labels)}}} "
        lines += [f"{head}{v!r} {fmt_ts(int(t))}" for t, v in zip(out_t, out_v, strict=True)]
    return lines


def last_per_bin(times_ms: np.ndarray, values: np.ndarray, windows) -> tuple[np.ndarray, np.ndarray]:
    """(bin starts, values) of the samples kept by `windows`: rows with no NaN, the last one of each bin."""
    values = values.reshape(len(times_ms), -1)
    keep = keep_samples(times_ms, windows) & np.isfinite(values).all(axis=1)
    starts = times_ms[keep] - times_ms[keep] % BIN_MS
    last = np.r_[starts[1:] != starts[:-1], True] if len(starts) else np.zeros(0, dtype=bool)
    return starts[last], values[keep][last]


def exporter_lines(metrics: nezha.DayMetrics, namespace: str, windows, mesh: str = "istio") -> Iterator[list[str]]:
    """OpenMetrics families of the raw exporter series of one day (see the module doc)."""
    if mesh not in MESHES:
        raise ValueError(f"unknown mesh {mesh!r} to replay; known: {', '.join(MESHES)}")
    cadvisor: dict[str, Rows] = {s.name: [] for s in CATALOG if not s.recorded}
    limits, pod_info, idle, available, total, received = ([] for _ in range(6))
    for index, pod in enumerate(metrics.pods):
        series = metrics.series[pod]
        times = epoch_ns(series.times) // 1_000_000
        values = series.values
        for spec in CATALOG:
            if not spec.recorded:
                t, v = last_per_bin(times, values[:, _COL[spec.name]], windows)
                cadvisor[spec.name].append((list(series_labels(spec, namespace, pod)), t, v[:, 0] * spec.replay.factor))
        present, _ = last_per_bin(times, np.where(np.isnan(values).all(axis=1), np.nan, 0.0), windows)
        if not len(present):
            continue
        node = node_of(namespace, index)
        exporter_pod = f"node-exporter-{node}"
        cpu_limit, memory_limit = pod_limits(values)
        owner = [("namespace", namespace), ("pod", pod), ("container", "app"), ("node", node)]
        limits += [([*owner, ("resource", "cpu"), ("unit", "core")], present, np.full(len(present), cpu_limit)),
                   ([*owner, ("resource", "memory"), ("unit", "byte")], present, np.full(len(present), memory_limit))]
        ones = np.ones(len(present))
        pod_info += [([("namespace", namespace), ("pod", pod), ("node", node)], present, ones),
                     ([("namespace", MONITORING), ("pod", exporter_pod), ("node", node)], present, ones)]
        target = [("namespace", MONITORING), ("pod", exporter_pod), ("instance", f"{node}:9100"),
                  ("job", "node-exporter")]
        t, cpu = last_per_bin(times, values[:, _COL["node_cpu_percent"]], windows)
        idle.append(([*target, ("cpu", "0"), ("mode", "idle")], t, 1.0 - cpu[:, 0] / 100.0))
        t, memory = last_per_bin(times, values[:, _COL["node_memory_percent"]], windows)
        available.append((target, t, NODE_MEMORY_BYTES * (1.0 - memory[:, 0] / 100.0)))
        total.append((target, t, np.full(len(t), NODE_MEMORY_BYTES)))
        t, network = last_per_bin(times, values[:, _COL["node_network_receive"]], windows)
        received.append(([*target, ("device", "eth0")], t, network[:, 0]))
    for spec in CATALOG:
        if not spec.recorded:
            yield _family(spec.replay.series, spec.replay.kind, cadvisor[spec.name])
    yield _family(KSM_CPU_LIMIT.name, "gauge", limits)  # both resources: one family
    yield _family(KSM_POD_INFO.name, "gauge", pod_info)
    yield _family(NODE_CPU_IDLE.name, "counter", idle)
    yield _family(NODE_MEMORY_AVAILABLE.name, "gauge", available)
    yield _family(NODE_MEMORY_TOTAL.name, "gauge", total)
    yield _family(NODE_NETWORK_RECEIVE.name, "counter", received)
    if mesh == "istio":
        yield from _istio_lines(metrics, namespace, windows)


def _istio_lines(metrics: nezha.DayMetrics, namespace: str, windows) -> Iterator[list[str]]:
    source = latency_source("istio")
    buckets: Rows = []
    counts: Rows = []
    sums: Rows = []
    requests: Rows = []
    le_values = [*(f"{b:g}" for b in ISTIO_BUCKETS_MS), "+Inf"]
    for pod in metrics.pods:
        series = metrics.series[pod]
        times = epoch_ns(series.times) // 1_000_000
        owner = [("namespace", namespace), ("pod", pod)]
        for side, reporter in (("server", "destination"), ("client", "source")):
            columns = [_COL[f"latency_{side}_p{round(q * 100)}"] for q in QUANTILES]
            t, quantiles = last_per_bin(times, series.values[:, columns], windows)
            if not len(t):
                continue
            fractions, mean_ms = latency_cdf(quantiles)
            cumulative = np.column_stack([fractions, np.ones(len(t))]) * HISTOGRAM_RATE
            labels = [*owner, ("reporter", reporter)]
            buckets += [([*labels, ("le", le)], t, cumulative[:, b]) for b, le in enumerate(le_values)]
            counts.append((labels, t, cumulative[:, -1]))
            sums.append((labels, t, mean_ms * HISTOGRAM_RATE))
        t, workload = last_per_bin(times, series.values[:, _COL["workload"]], windows)
        requests.append(([*owner, ("reporter", "destination")], t, workload[:, 0]))
    histogram = [f"# TYPE {source.histogram} histogram"]
    for suffix, rows in (("_bucket", buckets), ("_count", counts), ("_sum", sums)):
        histogram += _family(source.histogram, "counter", rows, suffix)[1:]
    yield histogram
    yield _family(source.requests, "counter", requests)


def backfill_rules(url: str, rules_dir: Path, rule_files: list[str], start_s: int, end_s: int,
                   out_dir: Path) -> None:
    """Evaluate the recording rules (files named relative to `rules_dir`) over [start_s, end_s] against the
    Prometheus at `url`, which serves the raw series, into blocks in `out_dir` that a restarted Prometheus loads.

    Prometheus places a group's evaluations at an offset within the interval hashed from the group's name and file
    name; the files are given by their bare names, so the offsets do not depend on where the chart lies."""
    promtool = shutil.which("promtool") or (PROMTOOL if Path(PROMTOOL).is_file() else None)
    if promtool is None:
        raise FileNotFoundError("promtool not found: apt-get install prometheus")
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([promtool, "tsdb", "create-blocks-from", "rules", f"--url={url}", f"--start={start_s}",
                           f"--end={end_s}", f"--output-dir={out_dir.resolve()}", *rule_files],
                          capture_output=True, text=True, cwd=rules_dir)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataError(f"promtool create-blocks-from rules failed: {lines[-1] if lines else proc.returncode}")
