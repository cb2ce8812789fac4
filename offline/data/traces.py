"""Nezha trace CSVs -> per-service and per-edge trace series per 30 s bin (the data half of the trace
modality).

Input: `rca_data/<day>/trace/<HH>_<MM>_trace.csv` (TraceID, SpanID, ParentID, PodName, OperationName,
StartTimeUnixNano, EndTimeUnixNano, Duration) from `nezha-traces.tar.xz`, read with pyarrow.csv (only the needed
columns, typed). `rca_data/<day>/traceid/<HH>_<MM>_traceid.csv` lists the minute files Nezha collected, so a
trace file that is absent from this copy is known to be missing.

Rules (each one tested in tests/test_traces.py):
- Spans are de-duplicated on (TraceID, SpanID): consecutive minute files overlap by a few seconds.
- Span role (Nezha has no span kind): a span is a *server* span when it has no parent (ParentID is the literal
  "root") or when its parent span is in another pod; the caller of that request is the parent's pod. A span whose
  parent is in the same pod is internal (a handler step or an outgoing client call). A span whose parent is not in
  the data (none in this copy) is counted in `quality.orphans` and used for nothing.
- Pods map to services by the one rule, `lemzha.services.service_of_pod`; an edge is caller service -> callee
  service (both from pods). Root spans have no caller, so they count as calls but make no edge.
- A span counts in the 30 s bin holding its *start* time, `floor(start_ns / 30 s)` (the `lemzha.binning` rule).
  Its duration is EndTimeUnixNano - StartTimeUnixNano (ns; Nezha's `Duration` column is the same in whole µs).
- Per service and bin: the number of server spans (`trace_calls`), their summed duration (`duration_sum_ms`) and the
  cumulative bucket counts over the catalog's bounds (`le` semantics: d <= bound). Per edge and bin: the same for
  the server spans whose caller is in another service's pod (`edge_requests`), plus the summed duration of their
  parent spans, the caller's side of each request (`client_duration_sum_ms`, the service graph's client seconds).
- Coverage: each minute file holds the traces whose root started in roughly the 60 s before HH:MM (plus ~10-50 s;
  e.g. 03_53 holds roots from 03:52:19 to 03:53:19; one TrainTicket file, 2023-01-29 08_52, holds 3 minutes). A
  file's covered interval is [first, last] root start; intervals closer than 15 s are merged (consecutive files'
  first roots are ~60 s apart, but with TrainTicket's ~1 root/s the last root of a file can come up to 8.4 s
  before the next file's first, e.g. 2023-01-29 10_26/10_27; a missing file leaves a gap of 60 s or more, nothing
  in between), and a bin is covered when it lies inside a merged interval up to 1 s at either end. Bins that are
  not covered are *missing* (NaN and `covered` False in the scenario), never zero; a covered bin without a call of
  a traced service is a real 0.
- Nezha collected traces only around each fault (3 minute files per fault), so a 20 min scenario window has about
  5 covered bins around its fault (and some around neighbouring faults), TrainTicket included.

Scenario rows (see `lemzha.scenario`): for a window with at least one covered bin, every bin x every *traced*
service of the scenario (a service with at least one server span that day), and every bin x every edge seen that
day between two services of the scenario.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from lemzha.binning import BIN_SECONDS, as_utc
from lemzha.catalog import BUCKET_COLUMNS, BUCKET_NS
from lemzha.scenario import EDGE_BASE_COLUMNS, SERVICE_METRIC_BASE_COLUMNS, empty_edges, empty_service_metrics
from lemzha.services import service_of_pod
from offline.data import nezha
from offline.data.nezha import NezhaDay, day_dir, day_folders
from offline.errors import DataError

BIN_NS = BIN_SECONDS * 1_000_000_000
MERGE_GAP_NS = 15 * 1_000_000_000  # consecutive files' root intervals closer than this are one interval
EDGE_TOLERANCE_NS = 1 * 1_000_000_000  # a bin may stick out of a covered interval by this much at either end
ROOT = "root"
_COLUMNS = ("TraceID", "SpanID", "ParentID", "PodName", "StartTimeUnixNano", "EndTimeUnixNano")
_TYPES = {"TraceID": pa.string(), "SpanID": pa.string(), "ParentID": pa.string(),
          "PodName": pa.dictionary(pa.int32(), pa.string()), "StartTimeUnixNano": pa.int64(),
          "EndTimeUnixNano": pa.int64()}
_FILE = re.compile(r"^(\d{2})_(\d{2})_trace(?:id)?\.csv$")


@dataclass
class TraceQuality:
    """What the loader saw, for the data card: nothing is dropped silently."""

    files: list[str] = field(default_factory=list)  # HH_MM of the trace files present
    expected: list[str] = field(default_factory=list)  # HH_MM Nezha collected (traceid files and trace files)
    rows: int = 0
    duplicates: int = 0
    spans: int = 0  # after de-duplication
    roots: int = 0
    cross_pod: int = 0  # server spans with a caller in another pod
    orphans: int = 0  # parent not in the data
    negative_durations: int = 0  # end < start, clipped to 0
    unknown_services: list[str] = field(default_factory=list)  # traced services that have no metric pod

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.expected) - set(self.files))

    def to_json(self) -> dict:
        return {"trace_files": len(self.files), "trace_files_expected": len(self.expected),
                "trace_files_missing": self.missing, "span_rows": self.rows, "span_rows_duplicate": self.duplicates,
                "spans": self.spans, "root_spans": self.roots, "cross_pod_server_spans": self.cross_pod,
                "orphan_spans": self.orphans, "negative_durations": self.negative_durations}


@dataclass
class DayTraces:
    """A day's trace series, at day level; `scenario_traces` cuts a window out of it."""

    day: NezhaDay
    services: pd.DataFrame  # bin_time (int64 ns), service, trace_calls, duration_sum_ms, le_* (cumulative)
    edges: pd.DataFrame  # bin_time, client, server, edge_requests, duration_sum_ms, le_*
    intervals: np.ndarray  # (K, 2) int64 ns, merged covered intervals of root start times
    covered_bins: np.ndarray  # sorted int64 ns bin starts that are covered
    traced_services: tuple[str, ...]
    edge_pairs: tuple[tuple[str, str], ...]
    quality: TraceQuality


def _hhmm(path: Path) -> str | None:
    match = _FILE.match(path.name)
    return f"{match[1]}_{match[2]}" if match else None


def read_trace_file(path: Path) -> pa.Table:
    try:
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=list(_COLUMNS),
                                                                           column_types=_TYPES))
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: unreadable trace CSV ({str(err).splitlines()[0]})") from None


def merge_intervals(intervals: list[tuple[int, int]], gap_ns: int = MERGE_GAP_NS) -> np.ndarray:
    merged: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo - merged[-1][1] <= gap_ns:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return np.asarray(merged, dtype=np.int64).reshape(-1, 2)


def covered_bins(intervals: np.ndarray, tolerance_ns: int = EDGE_TOLERANCE_NS) -> np.ndarray:
    """Bin starts (ns) of the bins inside one of the intervals, each end allowed to stick out by `tolerance_ns`."""
    out = []
    for lo, hi in intervals.tolist():
        first = -(-(lo - tolerance_ns) // BIN_NS) * BIN_NS  # ceil to a bin start
        last = (hi + tolerance_ns - BIN_NS) // BIN_NS * BIN_NS  # the last bin start whose bin ends by hi + tol
        if last >= first:
            out.append(np.arange(first, last + 1, BIN_NS, dtype=np.int64))
    return np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def span_roles(span_ids: np.ndarray, parent_ids: np.ndarray, pods: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(server mask, caller index) for de-duplicated spans. `pods` are integer pod codes; the caller index is the
    row of the parent span for cross-pod server spans, -1 for roots, internal spans and orphans.

    Server span: ParentID == "root", or the parent is in another pod. Orphans (parent not found) are neither."""
    index = pd.Index(span_ids)
    if not index.is_unique:
        raise DataError("span ids repeat across traces: de-duplicate on (TraceID, SpanID) and key by both")
    parent = index.get_indexer(parent_ids)
    root = parent_ids == ROOT
    found = parent >= 0
    cross = found & (pods[np.maximum(parent, 0)] != pods)
    server = root | cross
    caller = np.where(cross, parent, -1)
    return server, caller


def _aggregate(keys: np.ndarray, n_keys: int, buckets: np.ndarray, duration_ms: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(n_keys, n_buckets + 1) cumulative counts and (n_keys,) duration sums."""
    n_b = len(BUCKET_NS) + 1
    per_bucket = np.bincount(keys * n_b + buckets, minlength=n_keys * n_b).reshape(n_keys, n_b)
    sums = np.bincount(keys, weights=duration_ms, minlength=n_keys)
    return np.cumsum(per_bucket, axis=1), sums


def read_day_traces(root: Path, day: NezhaDay, metric_services: set[str] | None = None) -> DayTraces:
    """Read and aggregate one day's trace files. `metric_services` (the services with metric pods) is only used to
    report traced services that no scenario can hold."""
    folder = day_dir(root, day) / "trace"
    files = sorted((p for f in day_folders(root, day, "trace") for p in f.glob("*_trace.csv")), key=lambda p: p.name)
    quality = TraceQuality()
    quality.files = [h for h in (_hhmm(p) for p in files) if h]
    listed = [_hhmm(p) for f in day_folders(root, day, "traceid") for p in f.glob("*_traceid.csv")]
    quality.expected = sorted({h for h in listed if h} | set(quality.files))
    tables, raw_intervals = [], []
    for path in files:
        table = read_trace_file(path)
        if table.num_rows == 0:
            continue
        starts = table["StartTimeUnixNano"].to_numpy()
        is_root = table["ParentID"].to_numpy(zero_copy_only=False) == ROOT
        ref = starts[is_root] if is_root.any() else starts
        raw_intervals.append((int(ref.min()), int(ref.max())))
        tables.append(table)
        quality.rows += table.num_rows
    intervals = merge_intervals(raw_intervals)
    if not tables:
        return _empty_day(day, intervals, quality)
    table = pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()
    table = table.combine_chunks()
    frame = pd.DataFrame({
        "trace": table["TraceID"].to_numpy(zero_copy_only=False),
        "span": table["SpanID"].to_numpy(zero_copy_only=False),
    })
    keep = ~frame.duplicated(["trace", "span"]).to_numpy()
    quality.duplicates = int((~keep).sum())
    pod_col = table["PodName"].chunk(0) if table["PodName"].num_chunks == 1 else table["PodName"].combine_chunks()
    pods_codes = pod_col.indices.to_numpy(zero_copy_only=False)[keep]
    pod_names = pod_col.dictionary.to_pylist()
    span_ids = frame["span"].to_numpy()[keep]
    parent_ids = table["ParentID"].to_numpy(zero_copy_only=False)[keep]
    start = table["StartTimeUnixNano"].to_numpy()[keep]
    end = table["EndTimeUnixNano"].to_numpy()[keep]
    if pd.isna(span_ids).any() or pd.isna(parent_ids).any() or pod_col.null_count:
        raise DataError(f"{folder}: trace rows with an empty SpanID, ParentID or PodName")
    quality.spans = len(span_ids)
    server, caller = span_roles(span_ids, parent_ids, pods_codes)
    quality.roots = int((parent_ids == ROOT).sum())
    quality.cross_pod = int((caller >= 0).sum())
    index = pd.Index(span_ids)
    quality.orphans = int(((index.get_indexer(parent_ids) < 0) & (parent_ids != ROOT)).sum())

    services = sorted({service_of_pod(p) for p in pod_names})
    service_of_code = np.array([services.index(service_of_pod(p)) for p in pod_names], dtype=np.int64)
    duration = end - start
    quality.negative_durations = int((duration < 0).sum())
    duration = np.maximum(duration, 0)
    bucket = np.searchsorted(np.asarray(BUCKET_NS, dtype=np.int64), duration, side="left")
    bin_time = start // BIN_NS * BIN_NS
    first_bin = int(bin_time.min())
    bin_idx = (bin_time - first_bin) // BIN_NS
    n_bins = int(bin_idx.max()) + 1
    n_s = len(services)
    svc = service_of_code[pods_codes]

    rows = np.nonzero(server)[0]
    cum, sums = _aggregate(bin_idx[rows] * n_s + svc[rows], n_bins * n_s, bucket[rows], duration[rows] / 1e6)
    nz = np.nonzero(cum[:, -1])[0]
    service_table = _table(first_bin + (nz // n_s) * BIN_NS, {"service": np.asarray(services, dtype=object)[nz % n_s]},
                           cum[nz], sums[nz], "trace_calls")

    rows = np.nonzero(caller >= 0)[0]
    client = svc[caller[rows]]
    key = (bin_idx[rows] * n_s + client) * n_s + svc[rows]
    uniq, inverse = np.unique(key, return_inverse=True)
    cum, sums = _aggregate(inverse, len(uniq), bucket[rows], duration[rows] / 1e6)
    # the client side of each request is its parent span in the caller's pod (the outgoing call)
    client_sums = np.bincount(inverse, weights=duration[caller[rows]] / 1e6, minlength=len(uniq))
    pair = uniq % (n_s * n_s)
    names = np.asarray(services, dtype=object)
    edge_table = _table(first_bin + (uniq // (n_s * n_s)) * BIN_NS,
                        {"client": names[pair // n_s], "server": names[pair % n_s]}, cum, sums, "edge_requests")
    edge_table.insert(edge_table.columns.get_loc("duration_sum_ms") + 1, "client_duration_sum_ms",
                      client_sums.astype(np.float64))
    traced = tuple(sorted(set(service_table["service"])))
    pairs = tuple(sorted(set(zip(edge_table["client"], edge_table["server"], strict=True))))
    if metric_services is not None:
        quality.unknown_services = sorted(set(traced) - metric_services)
    return DayTraces(day, service_table, edge_table, intervals, covered_bins(intervals), traced, pairs, quality)


def _table(bin_time: np.ndarray, keys: dict, cum: np.ndarray, sums: np.ndarray, count_name: str) -> pd.DataFrame:
    data = {"bin_time": np.asarray(bin_time, dtype=np.int64), **keys, count_name: cum[:, -1].astype(np.float64),
            "duration_sum_ms": sums.astype(np.float64)}
    data.update({col: cum[:, i].astype(np.float64) for i, col in enumerate(BUCKET_COLUMNS)})
    return pd.DataFrame(data)


def _empty_day(day: NezhaDay, intervals: np.ndarray, quality: TraceQuality) -> DayTraces:
    services = empty_service_metrics().drop(columns=["bin", "covered"]).assign(bin_time=pd.Series(dtype="int64"))
    edges = empty_edges().drop(columns=["bin", "covered"]).assign(bin_time=pd.Series(dtype="int64"))
    return DayTraces(day, services, edges, intervals, covered_bins(intervals), (), (), quality)


def scenario_traces(day: DayTraces, start: datetime, n_bins: int, services: set[str]
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The window's service_metrics and edges rows (Scenario schema), without the derived feature columns (the
    Scenario computes them). Empty frames when no bin of the window is covered."""
    start_ns = int(pd.Timestamp(as_utc(start)).as_unit("ns").value)
    cov = (day.covered_bins - start_ns) // BIN_NS
    cov = cov[(cov >= 0) & (cov < n_bins)]
    if len(cov) == 0:
        return empty_service_metrics(), empty_edges()
    covered = np.zeros(n_bins, dtype=bool)
    covered[cov] = True
    traced = [s for s in day.traced_services if s in services]
    pairs = [(c, s) for c, s in day.edge_pairs if c in services and s in services]
    svc = _grid(day.services, ["service"], [(s,) for s in traced], start_ns, n_bins, covered, "trace_calls")
    edges = _grid(day.edges, ["client", "server"], pairs, start_ns, n_bins, covered, "edge_requests")
    return svc.loc[:, list(SERVICE_METRIC_BASE_COLUMNS)], edges.loc[:, list(EDGE_BASE_COLUMNS)]


def _grid(table: pd.DataFrame, keys: list[str], members: list[tuple], start_ns: int, n_bins: int,
          covered: np.ndarray, count_name: str) -> pd.DataFrame:
    values = [c for c in table.columns if c not in ("bin_time", *keys)]
    n_m = len(members)
    grid = pd.DataFrame({"bin": np.repeat(np.arange(n_bins, dtype=np.int32), n_m),
                         **{k: [m[i] for _ in range(n_bins) for m in members] for i, k in enumerate(keys)}})
    grid["covered"] = np.repeat(covered, n_m)
    block = np.zeros((n_bins * n_m, len(values)), dtype=np.float64)
    if n_m and len(table):
        bins = (table["bin_time"].to_numpy() - start_ns) // BIN_NS
        inside = (bins >= 0) & (bins < n_bins)
        sub = table.loc[inside]
        member_index = {m: i for i, m in enumerate(members)}
        idx = np.array([member_index.get(m, -1) for m in zip(*(sub[k] for k in keys), strict=True)], dtype=np.int64)
        ok = idx >= 0
        rows = bins[inside][ok] * n_m + idx[ok]
        block[rows] = sub.loc[:, values].to_numpy(dtype=np.float64)[ok]
    block[~grid["covered"].to_numpy()] = np.nan
    for i, col in enumerate(values):
        grid[col] = block[:, i]
    return grid


def trace_coverage(day: DayTraces, start: datetime, n_bins: int) -> float:
    """Share of a window's bins that the trace files cover."""
    start_ns = int(pd.Timestamp(as_utc(start)).as_unit("ns").value)
    cov = (day.covered_bins - start_ns) // BIN_NS
    return float(((cov >= 0) & (cov < n_bins)).sum() / n_bins)


# -- all scenarios (the benchmark's unit of work) ---------------------------------------------------------------------
def derive_all(nezha_root: Path, traces_dir: Path, window=None, workers: int = 1) -> dict:
    """Trace frames of all 101 Nezha scenarios (service_metrics and edges with derived features), from the raw
    trace files; returns per-day figures. Scenario services come from the metric file names (pods), as in
    `offline.data.nezha.build_scenario`. With workers > 1 the days are read in a process pool."""
    window = window or nezha.Window()
    days = list(nezha.DAYS)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_derive_day, [nezha_root] * len(days), [traces_dir] * len(days), days,
                                    [window] * len(days)))
    else:
        results = [_derive_day(nezha_root, traces_dir, day, window) for day in days]
    return {day.day: result for day, result in zip(days, results, strict=True)}


def _derive_day(nezha_root: Path, traces_dir: Path, day: NezhaDay, window) -> dict:
    from lemzha.histogram import trace_features

    pods = [p.name.removesuffix("_metric.csv") for p in (day_dir(nezha_root, day) / "metric").glob("*_metric.csv")]
    services = {service_of_pod(p) for p in pods}
    data = read_day_traces(traces_dir, day, services)
    faults = nezha.list_faults(nezha_root, day)
    rows = edges = covered = fault_covered = 0
    for fault in faults:
        start, n_bins = window.bounds(fault.time)
        svc, edge = scenario_traces(data, start, n_bins, services)
        for frame, level in ((svc, "service"), (edge, "edge")):
            for name, value in trace_features(frame, level).items():
                frame[name] = value
        rows += len(svc)
        edges += len(edge)
        cov = trace_coverage(data, start, n_bins)
        covered += cov
        fault_bin = int((fault.time - start).total_seconds() // BIN_SECONDS)
        fault_covered += bool(len(svc)) and bool(svc.loc[svc["bin"] == fault_bin, "covered"].any())
    return {"scenarios": len(faults), "service_rows": rows, "edge_rows": edges,
            "mean_trace_coverage": round(covered / max(1, len(faults)), 3), "fault_bin_covered": fault_covered,
            **data.quality.to_json(), "trace_files_missing": len(data.quality.missing),
            "covered_bins": len(data.covered_bins), "traced_services": len(data.traced_services),
            "edges": len(data.edge_pairs)}


def main(argv: list[str] | None = None) -> int:
    """`python -m offline.data.traces [--datasets DIR] [--cache DIR] [--workers N]`: extract the archives if needed and
    derive the trace frames of all 101 Nezha scenarios; prints timings and per-day figures as JSON."""
    import argparse
    import json
    import time

    from offline.data.store import ensure_extracted

    parser = argparse.ArgumentParser(prog="python -m offline.data.traces", description=main.__doc__)
    parser.add_argument("--datasets", type=Path)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    nezha_root = ensure_extracted("nezha", args.datasets, args.cache)
    traces_dir = ensure_extracted("nezha-traces", args.datasets, args.cache)
    t1 = time.perf_counter()
    days = derive_all(nezha_root, traces_dir, workers=max(1, args.workers))
    t2 = time.perf_counter()
    print(json.dumps({"extract_s": round(t1 - t0, 2), "derive_s": round(t2 - t1, 2),
                      "scenarios": sum(d["scenarios"] for d in days.values()), "days": days}, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    from offline.cli import run_cli

    sys.exit(run_cli(main))
