"""Raw Nezha -> Scenarios: all 101 faults, no exclusions.

Rules (each one tested):
- fault times come from the `inject_time` string, read as UTC; the epoch `inject_timestamp` is wrong for many faults
- metric times come from the `Time` string, never the `TimeStamp` epoch (year 2028 for 2022-08-22 adservice)
- TrainTicket logs are read raw: docker envelope, inner text or JSON, de-duplicated on (TimeUnixNano, PodName, Log),
  binned by the outer `Timestamp`
- OnlineBoutique raw logs are mostly missing from this copy; a window that raw files do not cover takes lemzha-k's
  processed templates instead (re-cleaned by the one cleaner)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from lemzha.binning import BIN_SECONDS, as_utc, bin_indices, epoch_ns, last_sample_per_bin, window_bins
from lemzha.catalog import CATALOG
from lemzha.logs import templates_and_levels
from lemzha.scenario import Injection, Label, Scenario, empty_logs
from lemzha.services import service_of_pod
from offline.errors import DataError

MALFORMED_LIMIT = 0.01  # a file with more malformed rows than this share is an error, not noise


@dataclass(frozen=True)
class NezhaDay:
    day: str  # YYYY-MM-DD
    app: str
    namespace: str

    @property
    def compact(self) -> str:
        return self.day.replace("-", "")


DAYS: tuple[NezhaDay, ...] = (
    NezhaDay("2022-08-22", "onlineboutique", "hipster"),
    NezhaDay("2022-08-23", "onlineboutique", "hipster"),
    NezhaDay("2023-01-29", "trainticket", "ts"),
    NezhaDay("2023-01-30", "trainticket", "ts"),
)


@dataclass(frozen=True)
class Window:
    """Scenario window around the fault time; the default leaves room for random training crops."""

    before: timedelta = timedelta(minutes=60)
    after: timedelta = timedelta(minutes=10)

    def bounds(self, fault_time: datetime) -> tuple[datetime, int]:
        return window_bins(fault_time - self.before, fault_time + self.after)


@dataclass(frozen=True)
class Fault:
    day: NezhaDay
    index: int  # position in the day's time-sorted fault list
    time: datetime
    pod: str
    fault_type: str
    epoch_offset_s: float  # inject_timestamp - inject_time: a recorded defect, never used

    @property
    def scenario_id(self) -> str:
        return f"nezha/{self.day.compact}_{self.index:02d}"

    @property
    def service(self) -> str:
        return service_of_pod(self.pod)


@dataclass
class Quality:
    """Per-file-set counts for `validate`: nothing is dropped silently."""

    rows: int = 0
    malformed: int = 0
    duplicates: int = 0
    files: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: Quality) -> None:
        self.rows += other.rows
        self.malformed += other.malformed
        self.duplicates += other.duplicates
        self.files += other.files
        self.notes += other.notes


def day_dir(root: Path, day: NezhaDay) -> Path:
    path = Path(root) / "rca_data" / day.day
    if not path.is_dir():
        raise DataError(f"Nezha day directory missing: {path}")
    return path


def day_folders(root: Path, day: NezhaDay, kind: str) -> list[Path]:
    """The day's `kind` folders ("log", "trace", "traceid") that exist: `rca_data/<day>/<kind>`, then
    `construct_data/<day>/<kind>`. Nezha recorded the construct_data minute as the day's fault-free reference
    (its README); it is the same day's data at its own times, so it joins the fault-time files."""
    folders = [day_dir(root, day) / kind, Path(root) / "construct_data" / day.day / kind]
    return [f for f in folders if f.is_dir()]


def list_faults(root: Path, day: NezhaDay) -> list[Fault]:
    path = day_dir(root, day) / f"{day.day}-fault_list.json"
    try:
        by_hour = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read fault list ({err})") from None
    raw = [entry for hour in sorted(by_hour) for entry in by_hour[hour]]
    faults = []
    for entry in raw:
        try:
            when = as_utc(pd.Timestamp(entry["inject_time"]))
            epoch = float(entry.get("inject_timestamp") or "nan")
            faults.append((when, entry["inject_pod"], entry["inject_type"], epoch - when.timestamp()))
        except (KeyError, ValueError) as err:
            raise DataError(f"{path}: malformed fault entry {entry!r} ({err})") from None
    faults.sort(key=lambda f: (f[0], f[1]))
    return [Fault(day, i, t, pod, kind, off) for i, (t, pod, kind, off) in enumerate(faults)]


# -- metrics -------------------------------------------------------------------------------------------------------
_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?) ([+-]\d{4})")


def parse_go_time(values: pd.Series) -> pd.Series:
    """Parse Go's `time.Time.String()` ("2022-08-22 03:51:19.607158889 +0000 UTC m=+0.11") to UTC; NaT if bad."""
    parts = values.astype("string").str.extract(_TIME)
    text = parts[0] + " " + parts[1]
    return pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S.%f %z", utc=True, errors="coerce")


@dataclass
class PodSeries:
    times: pd.DatetimeIndex
    values: np.ndarray  # (N, M) in catalog units, catalog order


@dataclass
class DayMetrics:
    pods: tuple[str, ...]
    series: dict[str, PodSeries]
    quality: Quality


def read_day_metrics(root: Path, day: NezhaDay) -> DayMetrics:
    folder = day_dir(root, day) / "metric"
    files = sorted(folder.glob("*_metric.csv"))
    if not files:
        raise DataError(f"{folder}: no *_metric.csv files")
    quality = Quality()
    series: dict[str, PodSeries] = {}
    for path in files:
        pod = path.name.removesuffix("_metric.csv")
        try:
            frame = pd.read_csv(path, dtype=str, on_bad_lines="skip")
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: unreadable CSV ({err})") from None
        if "Time" not in frame.columns:
            raise DataError(f"{path}: no Time column")
        times = parse_go_time(frame["Time"])
        numeric = np.full((len(frame), len(CATALOG)), np.nan)
        bad = times.isna().to_numpy().copy()
        for m, spec in enumerate(CATALOG):
            if spec.nezha_column in frame.columns:
                col = pd.to_numeric(frame[spec.nezha_column], errors="coerce")
                bad |= col.isna().to_numpy() & frame[spec.nezha_column].notna().to_numpy()
                numeric[:, m] = col.to_numpy() * spec.source_factor
        physical = _count_records(path)
        malformed = int(bad.sum()) + max(0, physical - len(frame))
        _check_malformed(path, malformed, physical)
        quality.rows += physical
        quality.malformed += malformed
        quality.files += 1
        keep = ~bad
        order = np.argsort(times[keep].to_numpy(), kind="stable")
        series[pod] = PodSeries(pd.DatetimeIndex(times[keep]).take(order), numeric[keep][order])
    return DayMetrics(tuple(sorted(series)), series, quality)


def _count_records(path: Path) -> int:
    with path.open("rb") as handle:
        return max(0, sum(1 for _ in handle) - 1)


def _check_malformed(path: Path, malformed: int, total: int) -> None:
    if total and malformed / total > MALFORMED_LIMIT:
        raise DataError(f"{path}: {malformed} of {total} rows malformed (more than {MALFORMED_LIMIT:.0%})")


# -- logs ----------------------------------------------------------------------------------------------------------
LOG_TABLE_COLUMNS = ("bin_time", "service", "template", "count", "level")


@dataclass
class DayLogs:
    table: pd.DataFrame  # bin_time (int64 ns, bin start), service, template, count, level
    minutes: frozenset[int]  # epoch minutes that raw files cover
    quality: Quality


def _file_minute(day: NezhaDay, path: Path) -> int | None:
    """Epoch minute a `HH_MM_log.csv` file covers: it holds roughly the minute *before* HH:MM."""
    match = re.match(r"^(\d{2})_(\d{2})_log\.csv$", path.name)
    if not match:
        return None
    stamp = pd.Timestamp(f"{day.day} {match[1]}:{match[2]}:00", tz="UTC") - pd.Timedelta(minutes=1)
    return int(stamp.timestamp() // 60)


def read_day_logs(root: Path, day: NezhaDay) -> DayLogs:
    files = sorted((p for f in day_folders(root, day, "log") for p in f.glob("*_log.csv")), key=lambda p: p.name)
    quality = Quality()
    frames = []
    minutes = set()
    for path in files:
        minute = _file_minute(day, path)
        if minute is not None:
            minutes.add(minute)
        try:
            frame = pd.read_csv(
                path, usecols=["Timestamp", "TimeUnixNano", "PodName", "Log"], dtype=str, on_bad_lines="skip"
            )
        except ValueError as err:  # missing columns or a parser failure
            raise DataError(f"{path}: unreadable log CSV ({err})") from None
        physical = _count_records(path)
        stamps = pd.to_datetime(frame["Timestamp"], utc=True, errors="coerce", format="ISO8601")
        bad = stamps.isna() | frame["PodName"].isna() | frame["Log"].isna()
        malformed = int(bad.sum()) + max(0, physical - len(frame))
        _check_malformed(path, malformed, physical)
        quality.rows += physical
        quality.malformed += malformed
        quality.files += 1
        frame = frame.loc[~bad].copy()
        frame["bin_time"] = epoch_ns(stamps[~bad]) // (BIN_SECONDS * 10**9) * (BIN_SECONDS * 10**9)
        frames.append(frame)
    if not frames:
        return DayLogs(_empty_day_logs(), frozenset(minutes), quality)
    logs = pd.concat(frames, ignore_index=True)
    before = len(logs)
    logs = logs.drop_duplicates(subset=["TimeUnixNano", "PodName", "Log"])
    quality.duplicates = before - len(logs)
    logs["template"], logs["level"] = templates_and_levels(logs["Log"])
    logs["service"] = logs["PodName"].map({p: service_of_pod(p) for p in logs["PodName"].unique()})
    logs = logs.loc[logs["template"] != ""]
    table = (
        logs.groupby(["bin_time", "service", "template", "level"], observed=True)
        .size()
        .rename("count")
        .reset_index()
    )
    return DayLogs(table.loc[:, list(LOG_TABLE_COLUMNS)], frozenset(minutes), quality)


def _empty_day_logs() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("bin_time", "count") else "string")
                         for c in LOG_TABLE_COLUMNS})


def window_logs(table: pd.DataFrame, start: datetime, n_bins: int, services: set[str]) -> pd.DataFrame:
    """Slice a day-level log table (bin_time in ns or datetime) to a window, as Scenario log rows."""
    if table is None or len(table) == 0:
        return empty_logs()
    bins = bin_indices(pd.to_datetime(table["bin_time"], utc=True), start)
    inside = (bins >= 0) & (bins < n_bins) & table["service"].isin(services).to_numpy()
    out = table.loc[inside, ["service", "template", "count", "level"]].copy()
    out.insert(1, "bin", bins[inside].astype(np.int32))
    return out.groupby(["service", "bin", "template", "level"], observed=True, as_index=False)["count"].sum()


def raw_log_coverage(minutes: frozenset[int], start: datetime, n_bins: int) -> float:
    first = int(start.timestamp() // 60)
    last = int((start.timestamp() + n_bins * BIN_SECONDS - 1) // 60)
    wanted = range(first, last + 1)
    return sum(m in minutes for m in wanted) / len(wanted)


# -- scenarios -----------------------------------------------------------------------------------------------------
@dataclass
class BuiltScenario:
    scenario: Scenario
    log_source: str  # "raw" or "lemzha-k" or "none"
    raw_log_coverage: float
    epoch_offset_s: float


def build_scenario(
    fault: Fault,
    day_faults: list[Fault],
    metrics: DayMetrics,
    raw_logs: DayLogs,
    fallback_logs: pd.DataFrame | None,
    window: Window,
) -> BuiltScenario:
    start, n_bins = window.bounds(fault.time)
    pods = metrics.pods
    if fault.pod not in pods:
        raise DataError(f"{fault.scenario_id}: injected pod {fault.pod} has no metric file")
    values = np.stack(
        [last_sample_per_bin(metrics.series[p].times, metrics.series[p].values, start, n_bins) for p in pods], axis=1
    )
    pod_service = {p: service_of_pod(p) for p in pods}
    services = set(pod_service.values())
    coverage = raw_log_coverage(raw_logs.minutes, start, n_bins)
    if coverage >= 0.9 or fallback_logs is None:
        logs, source = window_logs(raw_logs.table, start, n_bins, services), "raw"
    else:
        logs, source = window_logs(fallback_logs, start, n_bins, services), "lemzha-k"
    if len(logs) == 0:
        source = "none"
    end = start + timedelta(seconds=n_bins * BIN_SECONDS)
    others = tuple(
        Injection(f.service, f.pod, f.fault_type, f.time)
        for f in day_faults
        if f is not fault and start <= f.time < end
    )
    label = Label(
        root_cause_service=fault.service,
        root_cause_pods=tuple(p for p in pods if pod_service[p] == fault.service),
        fault_type=fault.fault_type,
        injection_time=fault.time,
        fault_bin=int((fault.time - start).total_seconds() // BIN_SECONDS),
        other_injections=others,
    )
    scenario = Scenario(
        id=fault.scenario_id,
        app=fault.day.app,
        namespace=fault.day.namespace,
        start=start,
        pods=pods,
        pod_service=pod_service,
        metrics=tuple(s.name for s in CATALOG),
        values=values,
        logs=logs,
        onset=fault.time,
        label=label,
        dataset="nezha",
    )
    return BuiltScenario(scenario, source, coverage, fault.epoch_offset_s)
