"""Replay raw Nezha metrics into a Prometheus TSDB (and logs into a JSON-lines file for the Loki stand-in).

    python -m offline.replay --ids nezha/20230129_05[,...] | --days 2023-01-29[,...] --prom-data DIR [--logs FILE]
                             [--shift-to-now | --shift-to TIME] [--exporters istio|none]

With --exporters the metrics are the raw series of cAdvisor, kube-state-metrics, node-exporter and Istio instead
(`offline.bench.exporter_replay`), for the chart's recording rules to be backfilled on
(`exporter_replay.backfill_rules`).

Metrics: every raw per-pod sample (exact time, floored to the millisecond Prometheus stores) is written through
the catalog's replay inverse, so that `MetricSpec.promql` evaluated at bin end minus 1 ms reads the offline binned
value back:
- a gauge is written as-is (value * factor);
- a counter is written cumulatively, so that irate() over the last two samples equals value * factor. A sample
  whose predecessor is outside irate's 2 m window gets an anchor sample before it (normally one 60 s step back),
  placed so that the anchor itself never makes a bin appear that offline is empty.
The OpenMetrics file is turned into blocks with `promtool tsdb create-blocks-from openmetrics`; DIR is replaced
whole. With --ids only samples from 5 minutes before each window to its end are written.

Traces (when the traces archive or a --source tree with trace folders is there, unless --no-traces): the
span-metrics and service-graph series of `lemzha.catalog` (TRACE_SERIES), per traced service and per edge, from the
day's trace files as `offline.data.traces` derives them. Each is a cumulative counter (histograms as `_bucket{le}`,
`_count` and `_sum`) with two samples per covered bin, at the bin start (the total before the bin) and at its end
minus 1 ms (the total after it), so that `increase(...[29999ms])` evaluated at bin end - 1 ms is exactly the bin's
count (both samples sit on the range's ends: Prometheus 2.x does not extrapolate) and `histogram_quantile` sees
the offline buckets. Bins the trace files do not cover get no sample, so live they are absent, as offline (NaN).
The service graph's client-side histogram is written as `_count` and `_sum` only: the call-gap feature reads its sum,
and no feature reads its buckets.

Shift (--shift-to-now, --shift-to TIME; with --ids): Prometheus evaluates alerting rules only at the present time,
so a replayed fault can fire an alert only when its data sits at the present. The shift moves each day's metrics,
pod info, trace series and logs together by one whole number of 30 s bins, so that the day's last replayed window
ends at TIME rounded down to a bin, or with --shift-to-now at the first bin boundary after the data is read (at
most 30 s ahead). Every sample keeps its place in its bin, so the live scenario of the shifted window is the
offline one. Two shifted days of one namespace would overlap and are refused.

Logs (--logs FILE): one JSON object per line, {"labels": {"namespace", "pod"}, "ts_ns": int, "line": str}, sorted
by ts_ns. TrainTicket lines are the raw log CSV rows (deduplicated on TimeUnixNano, PodName, Log), at the outer
`Timestamp`, line = the `Log` column. OnlineBoutique raw logs are mostly missing, so its lines are the prepared
scenarios' template rows expanded: `count` lines per row, the i-th at bin start + i ms, on the service's first pod
(sorted), line = {"severity": level, "message": template} (no severity when the level is UNKNOWN).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from lemzha.binning import epoch_ns
from lemzha.catalog import (
    CATALOG,
    EDGE_NAMESPACE_LABEL,
    GRAPH_CLIENT_SECONDS,
    GRAPH_REQUESTS,
    GRAPH_SERVER_SECONDS,
    SERVER_SPAN_KIND,
    SERVICE_GRAPH_BUCKETS_S,
    SPAN_BUCKETS_MS,
    SPAN_CALLS,
    SPAN_DURATION,
    TRACE_NAMESPACE_LABEL,
)
from lemzha.fsutil import replace_directory
from lemzha.services import service_of_pod, workload_of_pod
from offline.bench.openmetrics import BIN_MS, PROMTOOL, fmt_labels, fmt_ts, keep_samples, series_labels
from offline.cli import run_cli
from offline.data import nezha, traces
from offline.errors import DataError

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
IRATE_RANGE_MS = 120_000  # the catalog's irate(...[2m])
STEP_MS = 60_000  # Nezha's sampling step: where a counter's anchor normally goes


@dataclass(frozen=True)
class Target:
    """One Nezha day to replay and, with --ids, the windows (epoch ms, [lo, hi)) to keep; None keeps the day."""

    day: nezha.NezhaDay
    windows: tuple[tuple[int, int], ...] | None
    scenario_ids: tuple[str, ...] = ()
    shift_ms: int = 0  # added to every written time (a whole number of bins)


# -- metrics -------------------------------------------------------------------------------------------------------
def _bin_end(ms: int) -> int:
    return ms - ms % BIN_MS + BIN_MS


def counter_samples(times_ms: np.ndarray, values: np.ndarray, factor: float) -> tuple[list[int], list[float]]:
    """Cumulative counter samples (with anchors) whose irate at each sample's bin end - 1 ms is value * factor.

    `times_ms` is sorted and unique, `values` has no NaN. A sample whose predecessor is outside the 2 m window of its
    bin gets an anchor first: 60 s back, else 30 s back, else at its own bin start, the first place where the
    anchor's bin cannot see the predecessor (that bin is empty offline and must stay empty live).
    """
    out_t: list[int] = []
    out_v: list[float] = []
    total = 0.0
    prev: int | None = None
    for t, x in zip(times_ms.tolist(), values.tolist(), strict=True):
        if x < 0:
            raise DataError(f"negative value {x} for a counter metric at {t} ms: irate cannot return it")
        window_lo = _bin_end(t) - 1 - IRATE_RANGE_MS  # exclusive lower end of irate's window for t's bin
        if prev is None or prev <= window_lo:
            anchor = _anchor(t, prev, window_lo)
            if anchor is None:
                raise DataError(f"cannot place a counter anchor before the sample at {t} ms (previous {prev} ms)")
            out_t.append(anchor)
            out_v.append(total)
            prev = anchor
        total += x * factor * (t - prev) / 1000.0
        out_t.append(t)
        out_v.append(total)
        prev = t
    return out_t, out_v


def _anchor(t: int, prev: int | None, window_lo: int) -> int | None:
    bin_start = t - t % BIN_MS
    for candidate in (t - STEP_MS, t - BIN_MS, bin_start):
        if not window_lo < candidate < t or (prev is not None and candidate <= prev):
            continue
        same_bin = candidate - candidate % BIN_MS == bin_start
        # the anchor's own bin is empty offline: its irate must not find the previous sample too (strict `<`, so
        # this holds whether the range's lower end is open, Prometheus 3, or closed, Prometheus 2)
        if same_bin or prev is None or prev < _bin_end(candidate) - 1 - IRATE_RANGE_MS:
            return candidate
    return None


def metric_lines(metrics: nezha.DayMetrics, namespace: str, windows, progress: bool = False,
                 shift_ms: int = 0) -> Iterator[list[str]]:
    """OpenMetrics lines per catalog metric family (`# TYPE` + every pod's series, time-sorted); `windows` select in
    the data's own time, `shift_ms` moves what is written."""
    for m, spec in enumerate(tqdm(CATALOG, desc=f"replay {namespace}", unit="metric", disable=not progress)):
        name = spec.replay.series
        lines = [f"# TYPE {name} {'counter' if spec.replay.kind == 'counter' else 'gauge'}"]
        if spec.replay.kind == "counter" and not name.endswith("_total"):
            lines[0] = f"# TYPE {name} unknown"
        elif spec.replay.kind == "counter":
            lines[0] = f"# TYPE {name.removesuffix('_total')} counter"
        for pod in metrics.pods:
            series = metrics.series[pod]
            times_ms = epoch_ns(series.times) // 1_000_000  # floor: a bin edge is a whole millisecond
            vals = series.values[:, m]
            ok = ~np.isnan(vals) & keep_samples(times_ms, windows)
            if not ok.any():
                continue
            frame = pd.DataFrame({"t": times_ms[ok], "v": vals[ok]})
            # one sample per millisecond; the binning takes the last one, so keep the last (input is time-sorted)
            frame = frame.drop_duplicates("t", keep="last")
            t, v = frame["t"].to_numpy(), frame["v"].to_numpy(dtype=np.float64)
            if spec.replay.kind == "counter":
                out_t, out_v = counter_samples(t, v, spec.replay.factor)
            else:
                out_t, out_v = t.tolist(), (v * spec.replay.factor).tolist()
            head = f"{name}{{{fmt_labels(series_labels(spec, namespace, pod))}}} "
            lines += [f"{head}{value!r} {fmt_ts(ms + shift_ms)}" for ms, value in zip(out_t, out_v, strict=True)]
        yield lines


def pod_owners(pod: str) -> tuple[str, str, str]:
    """(ReplicaSet, its pod-template hash, Deployment) a replayed pod is given: the pod name minus its last "-"
    part, that name's last part, and `workload_of_pod`, so that the owner chain yields the offline service."""
    replicaset = pod.rsplit("-", 1)[0]
    template_hash = replicaset.rsplit("-", 1)[1] if "-" in replicaset else ""
    return replicaset, template_hash, workload_of_pod(pod)


def pod_info_lines(metrics: nezha.DayMetrics, namespace: str, windows, shift_ms: int = 0) -> Iterator[list[str]]:
    """kube-state-metrics info families (`kube_pod_owner`, `kube_replicaset_owner`, `kube_pod_labels`), value 1 at
    every kept sample time of each pod, so the pod's owners and labels exist over any window it has metrics in."""
    owner, rs_owner, labels = (["# TYPE kube_pod_owner gauge"], ["# TYPE kube_replicaset_owner gauge"],
                               ["# TYPE kube_pod_labels gauge"])
    for pod in metrics.pods:
        series = metrics.series[pod]
        times_ms = epoch_ns(series.times) // 1_000_000
        ok = ~np.isnan(series.values).all(axis=1) & keep_samples(times_ms, windows)
        stamps = [fmt_ts(ms + shift_ms) for ms in np.unique(times_ms[ok]).tolist()]
        if not stamps:
            continue
        replicaset, template_hash, deployment = pod_owners(pod)
        heads = (
            (owner, [("namespace", namespace), ("pod", pod), ("owner_kind", "ReplicaSet"),
                     ("owner_name", replicaset), ("owner_is_controller", "true")]),
            (rs_owner, [("namespace", namespace), ("replicaset", replicaset), ("owner_kind", "Deployment"),
                        ("owner_name", deployment), ("owner_is_controller", "true")]),
            (labels, [("namespace", namespace), ("pod", pod), ("label_app", service_of_pod(pod)),
                      ("label_pod_template_hash", template_hash)]),
        )
        for lines, label_pairs in heads:
            head = f"{lines[0].split()[2]}{{{fmt_labels(label_pairs)}}} 1 "
            lines += [head + stamp for stamp in stamps]
    # several pods may share one ReplicaSet: its series must not repeat a timestamp (promtool rejects it)
    rs_owner[1:] = sorted(set(rs_owner[1:]), key=lambda line: (line.rsplit(" ", 2)[0], float(line.rsplit(" ", 1)[1])))
    yield from (owner, rs_owner, labels)


# -- traces --------------------------------------------------------------------------------------------------------
def _fmt_le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _counter_pairs(bin_starts_ms: np.ndarray, increments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Times and cumulative values: per bin (start, total before) and (end - 1 ms, total after)."""
    after = np.cumsum(increments, axis=0)
    before = after - increments
    times = np.stack([bin_starts_ms, bin_starts_ms + BIN_MS - 1], axis=1).reshape(-1)
    values = np.stack([before, after], axis=1).reshape(-1, *increments.shape[1:])
    return times, values


def trace_lines(day: traces.DayTraces, namespace: str, windows, shift_ms: int = 0) -> Iterator[list[str]]:
    """OpenMetrics families of the span-metrics and service-graph series of one day (see the module doc)."""
    bins_ns = day.covered_bins
    starts_ms = bins_ns // 1_000_000
    starts_ms = starts_ms[_keep_bins(starts_ms, windows)]
    bins_ns = starts_ms * 1_000_000
    columns = ["duration_sum_ms", *traces.BUCKET_COLUMNS]
    calls = [f"# TYPE {SPAN_CALLS.name.removesuffix('_total')} counter"]
    spans = [f"# TYPE {SPAN_DURATION.name} histogram"]
    requests = [f"# TYPE {GRAPH_REQUESTS.name.removesuffix('_total')} counter"]
    graph = [f"# TYPE {GRAPH_SERVER_SECONDS.name} histogram"]
    client_graph = [f"# TYPE {GRAPH_CLIENT_SECONDS.name} histogram"]
    if len(bins_ns) == 0:
        return
    groups = (
        (day.services, ["service"], calls, spans, SPAN_CALLS.name, SPAN_DURATION.name, SPAN_BUCKETS_MS, 1.0,
         lambda key: [(TRACE_NAMESPACE_LABEL, namespace), ("service_name", key[0]), ("span_name", "all"),
                      ("span_kind", SERVER_SPAN_KIND), ("status_code", "STATUS_CODE_UNSET")],
         [(s,) for s in day.traced_services]),
        (day.edges, ["client", "server"], requests, graph, GRAPH_REQUESTS.name, GRAPH_SERVER_SECONDS.name,
         SERVICE_GRAPH_BUCKETS_S, 1e-3,
         lambda key: [("client", key[0]), ("client_k8s_namespace_name", namespace), ("server", key[1]),
                      (EDGE_NAMESPACE_LABEL, namespace)],
         list(day.edge_pairs)),
    )
    for table, keys, count_lines, hist_lines, count_name, hist_name, bounds, sum_factor, labels_of, members in groups:
        index = pd.MultiIndex.from_frame(table[keys]) if len(table) else None
        bin_pos = pd.Index(bins_ns)
        # edges also carry the client side of each request; its histogram gets `_count` and `_sum` only, since no
        # feature reads its buckets
        client = hist_name == GRAPH_SERVER_SECONDS.name
        read = [*columns, "client_duration_sum_ms"] if client else columns
        last = len(columns) - 1  # le_inf: the count
        for member in members:
            increments = np.zeros((len(bins_ns), len(read)), dtype=np.float64)
            if index is not None:
                sel = table.loc[index.isin([member])]
                pos = bin_pos.get_indexer(sel["bin_time"].to_numpy())
                ok = pos >= 0
                increments[pos[ok]] = sel.loc[:, read].to_numpy(dtype=np.float64)[ok]
            increments[:, 0] *= sum_factor
            if client:
                increments[:, -1] *= sum_factor
            times, values = _counter_pairs(starts_ms + shift_ms, increments)
            stamps = [fmt_ts(int(ms)) for ms in times.tolist()]
            label_pairs = labels_of(member)
            head = fmt_labels(label_pairs)

            def lines(name: str, column: int, head=head, values=values, stamps=stamps) -> list[str]:
                return [f"{name}{{{head}}} {v!r} {t}" for v, t in zip(values[:, column].tolist(), stamps, strict=True)]

            count_lines += lines(count_name, last)
            for i, bound in enumerate([*bounds, None]):
                le = "+Inf" if bound is None else _fmt_le(bound)
                bucket_head = f"{hist_name}_bucket{{{fmt_labels([*label_pairs, ('le', le)])}}} "
                hist_lines += [f"{bucket_head}{v!r} {t}" for v, t in zip(values[:, 1 + i].tolist(), stamps,
                                                                         strict=True)]
            hist_lines += lines(f"{hist_name}_count", last) + lines(f"{hist_name}_sum", 0)
            if client:
                client_graph += lines(f"{GRAPH_CLIENT_SECONDS.name}_count", last)
                client_graph += lines(f"{GRAPH_CLIENT_SECONDS.name}_sum", len(read) - 1)
    yield from (calls, spans, requests, graph, client_graph)


def _keep_bins(starts_ms: np.ndarray, windows) -> np.ndarray:
    if windows is None:
        return np.ones(len(starts_ms), dtype=bool)
    keep = np.zeros(len(starts_ms), dtype=bool)
    for lo, hi in windows:
        keep |= (starts_ms >= lo) & (starts_ms < hi)
    return keep


def write_openmetrics(days: list[tuple[nezha.DayMetrics, str, tuple | None]], path: Path, progress: bool,
                      day_traces: list[traces.DayTraces | None] | None = None,
                      shifts_ms: list[int] | None = None, exporters: str | list[str] | None = None) -> int:
    """One OpenMetrics file for (day metrics, namespace, windows or None) triples, and each day's trace series when
    `day_traces` gives them (same order, None for a day without), each day moved by its `shifts_ms` (default 0);
    returns the number of samples. `exporters` (istio or none; or one per day) writes the raw exporter series of
    `offline.bench.exporter_replay` in place of the catalog's series (unshifted: the two options exclude each other)."""
    from offline.bench.exporter_replay import exporter_lines

    families: dict[str, list[str]] = {}
    for d, (metrics, namespace, windows) in enumerate(days):
        trace_day = day_traces[d] if day_traces else None
        shift = shifts_ms[d] if shifts_ms else 0
        mesh = exporters[d] if isinstance(exporters, list) else exporters
        if mesh is not None and shift:
            raise ValueError("exporter series cannot be shifted in time")
        pod_metrics = (metric_lines(metrics, namespace, windows, progress, shift) if mesh is None
                       else exporter_lines(metrics, namespace, windows, mesh))
        for lines in itertools.chain(pod_metrics,
                                     pod_info_lines(metrics, namespace, windows, shift),
                                     trace_lines(trace_day, namespace, windows, shift) if trace_day is not None
                                     else ()):
            # a family must be contiguous in OpenMetrics: merge the days under one TYPE line
            families.setdefault(lines[0], []).extend(lines[1:])
    n = 0
    with path.open("w") as handle:
        for type_line, samples in families.items():
            handle.write(type_line + "\n")
            handle.writelines(s + "\n" for s in samples)
            n += len(samples)
        handle.write("# EOF\n")
    return n


def backfill(openmetrics: Path, data_dir: Path) -> None:
    """promtool's blocks into `data_dir`, replaced whole."""
    promtool = shutil.which("promtool") or (PROMTOOL if Path(PROMTOOL).is_file() else None)
    if promtool is None:
        raise FileNotFoundError("promtool not found: apt-get install prometheus")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.tmp-", dir=data_dir.parent))
    try:
        proc = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise DataError(f"promtool failed: {lines[-1] if lines else proc.returncode}")
        replace_directory(tmp, data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- logs ----------------------------------------------------------------------------------------------------------
def trainticket_log_records(nezha_root: Path, target: Target) -> pd.DataFrame:
    frames = []
    paths = [p for folder in nezha.day_folders(nezha_root, target.day, "log") for p in folder.glob("*_log.csv")]
    for path in sorted(paths):
        frame = pd.read_csv(path, usecols=["Timestamp", "TimeUnixNano", "PodName", "Log"], dtype=str,
                            on_bad_lines="skip")
        frames.append(frame.dropna(subset=["Timestamp", "PodName", "Log"]))
    if not frames:
        return pd.DataFrame({"pod": [], "ts_ns": [], "line": []})
    logs = pd.concat(frames, ignore_index=True).drop_duplicates(subset=["TimeUnixNano", "PodName", "Log"])
    stamps = pd.to_datetime(logs["Timestamp"], utc=True, errors="coerce", format="ISO8601")
    logs = logs.loc[stamps.notna().to_numpy()]
    ts_ns = epoch_ns(stamps.dropna())
    keep = np.ones(len(logs), dtype=bool) if target.windows is None else np.zeros(len(logs), dtype=bool)
    for lo, hi in target.windows or ():
        keep |= (ts_ns >= lo * 1_000_000) & (ts_ns < hi * 1_000_000)
    return pd.DataFrame({"pod": logs["PodName"].to_numpy()[keep], "ts_ns": ts_ns[keep],
                         "line": logs["Log"].to_numpy()[keep]})


def template_log_records(scenarios: list) -> pd.DataFrame:
    rows: dict[tuple, int] = {}
    for sc in scenarios:
        first_pod = {}
        for pod in sorted(sc.pods):
            first_pod.setdefault(sc.pod_service[pod], pod)
        start_ns = int(sc.start.timestamp()) * 1_000_000_000
        for r in sc.logs.itertuples(index=False):
            key = (first_pod[r.service], start_ns + int(r.bin) * BIN_MS * 1_000_000, r.template, r.level)
            rows[key] = int(r.count)  # overlapping windows repeat a row: count it once
    pods, stamps, lines = [], [], []
    for (pod, bin_ns, template, level), count in rows.items():
        body = {"message": template} if level == "UNKNOWN" else {"severity": level, "message": template}
        line = json.dumps(body, ensure_ascii=False)
        for i in range(count):
            pods.append(pod)
            stamps.append(bin_ns + i * 1_000_000)
            lines.append(line)
    return pd.DataFrame({"pod": pods, "ts_ns": np.asarray(stamps, dtype=np.int64), "line": lines})


def write_logs(records: list[tuple[str, pd.DataFrame]], path: Path) -> int:
    frame = pd.concat([f.assign(namespace=ns) for ns, f in records if len(f)], ignore_index=True) if any(
        len(f) for _, f in records) else pd.DataFrame({"namespace": [], "pod": [], "ts_ns": [], "line": []})
    frame = frame.sort_values("ts_ns", kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            for ns, pod, ts, line in zip(frame["namespace"], frame["pod"], frame["ts_ns"], frame["line"],
                                         strict=True):
                handle.write(json.dumps({"labels": {"namespace": ns, "pod": pod}, "ts_ns": int(ts), "line": line},
                                        ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(frame)


# -- CLI -----------------------------------------------------------------------------------------------------------
def _day(name: str) -> nezha.NezhaDay:
    for day in nezha.DAYS:
        if day.day == name or day.compact == name:
            return day
    raise ValueError(f"unknown Nezha day {name!r}; known: {', '.join(d.day for d in nezha.DAYS)}")


def resolve_targets(ids: list[str], days: list[str], prepared) -> list[Target]:
    if days:
        return [Target(_day(d), None) for d in dict.fromkeys(days)]
    by_day: dict[str, list[tuple[str, tuple[int, int]]]] = {}
    for scenario_id in ids:
        entry = prepared.entry(scenario_id)  # DataError for an unknown id
        if entry["dataset"] != "nezha":
            raise ValueError(f"{scenario_id}: only Nezha scenarios have raw samples to replay")
        sc = prepared.load(scenario_id)
        lo = int(sc.start.timestamp() * 1000)
        by_day.setdefault(entry["day"], []).append((scenario_id, (lo, lo + sc.n_bins * BIN_MS)))
    return [Target(_day(d), tuple(w for _, w in v), tuple(i for i, _ in v)) for d, v in by_day.items()]


def shifted(targets: list[Target], end_ms: int) -> list[Target]:
    """Each day moved so that its last window ends at `end_ms` rounded down to a bin (whole bins, so every sample
    keeps its place in its bin). Two days of one namespace would overlap there: refused."""
    namespaces = [t.day.namespace for t in targets]
    if len(set(namespaces)) < len(namespaces):
        raise ValueError("shifting two days of one namespace would overlap them: replay one day per namespace")
    end = end_ms - end_ms % BIN_MS
    return [dataclasses.replace(t, shift_ms=end - max(hi for _, hi in t.windows)) for t in targets]


def parse_time_ms(text: str) -> int:
    """An RFC 3339 time (with its zone) in epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--shift-to {text!r} is not an RFC 3339 time such as 2026-01-01T12:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"--shift-to {text!r} has no time zone (add Z for UTC)")
    return int(moment.timestamp() * 1000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m offline.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", help="scenario ids, comma-separated (e.g. nezha/20230129_05)")
    which.add_argument("--days", help="Nezha days, comma-separated (e.g. 2023-01-29)")
    parser.add_argument("--prom-data", type=Path, required=True, help="Prometheus data dir to write (replaced whole)")
    parser.add_argument("--logs", type=Path, help="JSON-lines log file for the Loki stand-in")
    parser.add_argument("--datasets-dir", type=Path, help="directory of the dataset archives")
    parser.add_argument("--cache-dir", type=Path, help="cache directory (default .cache)")
    parser.add_argument("--source", type=Path, help="an unpacked Nezha tree to read instead of the archive")
    parser.add_argument("--no-traces", action="store_true", help="do not write the trace-derived series")
    shift = parser.add_mutually_exclusive_group()
    shift.add_argument("--shift-to-now", action="store_true",
                       help="with --ids: move each day's data so its last window ends at the next 30 s boundary "
                            "after the data is read (for alerting rules, which Prometheus evaluates only now)")
    shift.add_argument("--shift-to", metavar="TIME", help="with --ids: the same, ending at TIME (RFC 3339)")
    shift.add_argument("--exporters", choices=("istio", "none"),
                       help="write the raw series of cAdvisor, kube-state-metrics, node-exporter and (istio) the "
                            "mesh instead of the recorded lemzha:* series; then backfill the chart's recording "
                            "rules (offline.bench.exporter_replay); not with a shift")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Replay as `args` say; returns what was written: samples, log lines and, per shifted day, the shift and the
    time its last window now ends."""
    ids = [s.strip() for s in (args.ids or "").split(",") if s.strip()]
    days = [s.strip() for s in (args.days or "").split(",") if s.strip()]
    if not ids and not days:
        raise ValueError("--ids or --days is empty")
    if days:
        [_day(d) for d in days]  # fail fast on a bad day, before any extraction
    if (args.shift_to_now or args.shift_to) and not ids:
        raise ValueError("--shift-to-now and --shift-to move fault windows: give --ids")
    shift_to = parse_time_ms(args.shift_to) if args.shift_to else None
    from offline.data.dataset import prepare, traces_root
    from offline.data.store import resolve_sources

    progress = not args.no_progress
    needs_prepared = bool(ids) or (args.logs is not None)
    prepared = prepare(args.datasets_dir, args.cache_dir, args.source, progress=progress) if needs_prepared else None
    nezha_root = resolve_sources(args.datasets_dir, args.cache_dir, args.source).nezha
    targets = resolve_targets(ids, days, prepared)  # an unknown id fails here, before anything is written
    if shift_to is not None:
        targets = shifted(targets, shift_to)  # a namespace shared by two days fails here too
    if shutil.which("promtool") is None and not Path(PROMTOOL).is_file():
        raise FileNotFoundError("promtool not found: apt-get install prometheus")

    t0 = time.perf_counter()
    day_data = [(nezha.read_day_metrics(nezha_root, t.day), t.day.namespace, t.windows) for t in targets]
    traces_dir = None if args.no_traces else traces_root(args.datasets_dir, args.cache_dir, args.source)
    day_traces = None if traces_dir is None else [traces.read_day_traces(traces_dir, t.day) for t in targets]
    records = _log_records(targets, nezha_root, prepared) if args.logs is not None else None
    if args.shift_to_now:  # decided once everything is read, so only the writing lies between it and now
        now_ms = int(time.time() * 1000)
        targets = shifted(targets, now_ms - now_ms % BIN_MS + BIN_MS)
    args.prom_data.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.prom_data.parent, prefix=".replay-") as scratch:
        om = Path(scratch) / "replay.om.txt"
        n = write_openmetrics(day_data, om, progress, day_traces, [t.shift_ms for t in targets], args.exporters)
        t1 = time.perf_counter()
        backfill(om, args.prom_data)
    t2 = time.perf_counter()
    print(f"replay: {n} samples written in {t1 - t0:.1f} s, backfilled into {args.prom_data} in {t2 - t1:.1f} s")
    report: dict = {"samples": n, "shifts": {}}
    for t in targets:
        if t.shift_ms:
            end = datetime.fromtimestamp((max(hi for _, hi in t.windows) + t.shift_ms) / 1000, UTC)
            report["shifts"][t.day.day] = {"seconds": t.shift_ms // 1000, "window_end": end.strftime(RFC3339)}
            print(f"replay: {t.day.day} moved by {t.shift_ms // 1000} s; its last window ends at "
                  f"{end.strftime(RFC3339)}")
    if records is not None:
        shifts = {t.day.namespace: t.shift_ms for t in targets}
        report["log_lines"] = write_logs([(ns, frame.assign(ts_ns=frame["ts_ns"] + shifts[ns] * 1_000_000))
                                          for ns, frame in records], args.logs)
        print(f"replay: {report['log_lines']} log lines written to {args.logs}")
    return report


def _log_records(targets: list[Target], nezha_root: Path, prepared) -> list[tuple[str, pd.DataFrame]]:
    records = []
    for target in targets:
        if target.day.app == "trainticket":
            records.append((target.day.namespace, trainticket_log_records(nezha_root, target)))
        else:
            ids_of_day = target.scenario_ids or tuple(
                e["id"] for e in prepared.index["scenarios"]
                if e["dataset"] == "nezha" and e["day"] == target.day.day
            )
            records.append((target.day.namespace, template_log_records([prepared.load(i) for i in ids_of_day])))
    return records


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
