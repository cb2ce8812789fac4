"""`Scenario`: one incident window, the unit every ranker reads, offline and live.

Inputs and the label are separate types: a ranker gets `scenario.without_label()` and can read only inputs.
The constructor enforces the invariants, so a Scenario that exists is a valid one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from lemzha.binning import BIN_SECONDS, as_utc, floor_to_bin, rfc3339  # noqa: F401 - re-exported for loaders
from lemzha.catalog import BUCKET_COLUMNS, EDGE_TRACE_FEATURES, METRIC_NAMES, SERVICE_TRACE_FEATURES
from lemzha.histogram import trace_features
from lemzha.logs import LEVELS

LOG_COLUMNS = ("service", "bin", "template", "count", "level")
# Trace series. Counts are float64 so that a bin the traces do not cover is NaN (missing, never 0), as in
# `values`; `covered` says the same explicitly. Buckets are cumulative (`le`), the last one +Inf (= the count).
SERVICE_METRIC_BASE_COLUMNS = ("bin", "service", "covered", "trace_calls", "duration_sum_ms", *BUCKET_COLUMNS)
SERVICE_METRIC_COLUMNS = (*SERVICE_METRIC_BASE_COLUMNS, *(f for f in SERVICE_TRACE_FEATURES if f != "trace_calls"))
# `duration_sum_ms` is the servers' side of the requests, `client_duration_sum_ms` the callers' (their outgoing call)
EDGE_BASE_COLUMNS = ("bin", "client", "server", "covered", "edge_requests", "duration_sum_ms", "client_duration_sum_ms",
                     *BUCKET_COLUMNS)
EDGE_COLUMNS = (*EDGE_BASE_COLUMNS, *(f for f in EDGE_TRACE_FEATURES if f != "edge_requests"))


class ScenarioError(ValueError):
    """The data violates a Scenario invariant."""


@dataclass(frozen=True)
class Injection:
    """One fault injection: what the label knows about the true cause."""

    service: str
    pod: str
    fault_type: str
    time: datetime

    def to_json(self) -> dict:
        return {"service": self.service, "pod": self.pod, "fault_type": self.fault_type,
                "time": rfc3339(self.time, fraction=True)}

    @classmethod
    def from_json(cls, data: dict) -> Injection:
        return cls(data["service"], data["pod"], data["fault_type"], as_utc(data["time"]))


@dataclass(frozen=True)
class Label:
    """Ground truth. A ranker never reads this."""

    root_cause_service: str
    root_cause_pods: tuple[str, ...]
    fault_type: str | None
    injection_time: datetime
    fault_bin: int
    other_injections: tuple[Injection, ...] = ()

    @property
    def contaminated(self) -> bool:
        """Another injection in another service falls inside the window, so the label is ambiguous."""
        return any(inj.service != self.root_cause_service for inj in self.other_injections)

    def to_json(self) -> dict:
        return {
            "root_cause_service": self.root_cause_service,
            "root_cause_pods": list(self.root_cause_pods),
            "fault_type": self.fault_type,
            "injection_time": self.injection_time.isoformat(),
            "fault_bin": self.fault_bin,
            "other_injections": [inj.to_json() for inj in self.other_injections],
        }

    @classmethod
    def from_json(cls, data: dict) -> Label:
        return cls(
            root_cause_service=data["root_cause_service"],
            root_cause_pods=tuple(data["root_cause_pods"]),
            fault_type=data.get("fault_type"),
            injection_time=as_utc(data["injection_time"]),
            fault_bin=int(data["fault_bin"]),
            other_injections=tuple(Injection.from_json(d) for d in data.get("other_injections", [])),
        )


def empty_logs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service": pd.Series(dtype="string"),
            "bin": pd.Series(dtype="int32"),
            "template": pd.Series(dtype="string"),
            "count": pd.Series(dtype="int64"),
            "level": pd.Series(dtype="string"),
        }
    )


def _empty_trace_frame(columns: tuple[str, ...], keys: tuple[str, ...]) -> pd.DataFrame:
    dtypes = {"bin": "int32", "covered": "bool", **{k: "string" for k in keys}}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})


def empty_service_metrics() -> pd.DataFrame:
    return _empty_trace_frame(SERVICE_METRIC_COLUMNS, ("service",))


def empty_edges() -> pd.DataFrame:
    return _empty_trace_frame(EDGE_COLUMNS, ("client", "server"))


@dataclass(frozen=True, eq=False)
class Scenario:
    """T bins x P pods x M metrics of one namespace, plus per-service log templates per bin.

    `values[t, p, m]` is the last real sample of metric m for pod p inside bin t, NaN where there was none.
    `logs` has one row per (service, bin, template, level) with its count.
    `service_metrics` (optional, from traces) has one row per (bin, traced service): `covered`, `trace_calls`,
    `duration_sum_ms`, cumulative buckets `le_*`, and the derived features of the catalog (mean, p50/p95/p99 in ms),
    which the constructor computes from the buckets. `edges` has one row per (bin, client, server): `covered`,
    `edge_requests`, `duration_sum_ms`, `le_*` and `edge_latency_p95_s`. Uncovered bins are NaN; empty frames mean
    the scenario has no trace data.
    """

    id: str
    app: str
    namespace: str
    start: datetime
    pods: tuple[str, ...]
    pod_service: dict[str, str]
    metrics: tuple[str, ...]
    values: np.ndarray
    logs: pd.DataFrame = field(default_factory=empty_logs)
    onset: datetime | None = None
    label: Label | None = None
    bin_seconds: int = BIN_SECONDS
    service_metrics: pd.DataFrame | None = None  # None: no trace data (an empty frame after construction)
    edges: pd.DataFrame | None = None
    dataset: str = ""  # where it came from: "nezha", "lemma", "live" (folds and reports group by it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", as_utc(self.start))
        if self.onset is not None:
            object.__setattr__(self, "onset", as_utc(self.onset))
        object.__setattr__(self, "pods", tuple(self.pods))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "pod_service", dict(self.pod_service))
        object.__setattr__(self, "values", np.asarray(self.values, dtype=np.float32))
        object.__setattr__(self, "logs", _normalise_logs(self.logs))
        where = f"scenario {self.id!r}"
        object.__setattr__(self, "service_metrics",
                           _normalise_traces(self.service_metrics, "service", ("service",), where))
        object.__setattr__(self, "edges", _normalise_traces(self.edges, "edge", ("client", "server"), where))
        self._validate()

    # -- invariants ------------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        where = f"scenario {self.id!r}"
        if not self.id:
            raise ScenarioError("scenario id is empty")
        if self.bin_seconds <= 0:
            raise ScenarioError(f"{where}: bin_seconds must be positive")
        if self.start.timestamp() % self.bin_seconds:
            raise ScenarioError(f"{where}: start {self.start.isoformat()} is not aligned to {self.bin_seconds} s")
        if not self.pods:
            raise ScenarioError(f"{where}: has no pods")
        if len(set(self.pods)) != len(self.pods):
            raise ScenarioError(f"{where}: duplicate pod names")
        missing = [p for p in self.pods if not self.pod_service.get(p)]
        if missing:
            raise ScenarioError(f"{where}: pods without a service: {missing[:5]}")
        extra = sorted(set(self.pod_service) - set(self.pods))
        if extra:
            raise ScenarioError(f"{where}: pod_service names pods that are not in the scenario: {extra[:5]}")
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise ScenarioError(f"{where}: metrics not in the catalog: {unknown}")
        order = [METRIC_NAMES.index(m) for m in self.metrics]
        if order != sorted(set(order)):
            raise ScenarioError(f"{where}: metrics must be unique and in catalog order")
        if self.values.ndim != 3 or self.values.shape[1:] != (len(self.pods), len(self.metrics)):
            raise ScenarioError(
                f"{where}: values shape {self.values.shape} != (T, {len(self.pods)} pods, {len(self.metrics)} metrics)"
            )
        if self.values.shape[0] == 0:
            raise ScenarioError(f"{where}: has zero bins")
        if np.isinf(self.values).any():
            raise ScenarioError(f"{where}: values contain inf; missing data must be NaN")
        services = set(self.services)
        logs = self.logs
        if len(logs):
            bad_service = sorted(set(logs["service"].unique()) - services)
            if bad_service:
                raise ScenarioError(f"{where}: logs name unknown services {bad_service[:5]}")
            if logs["bin"].min() < 0 or logs["bin"].max() >= self.n_bins:
                raise ScenarioError(f"{where}: log bins outside [0, {self.n_bins})")
            if (logs["count"] <= 0).any():
                raise ScenarioError(f"{where}: log counts must be positive")
            bad_level = sorted(set(logs["level"].unique()) - set(LEVELS))
            if bad_level:
                raise ScenarioError(f"{where}: unknown log levels {bad_level}")
        self._validate_traces(where, services)
        if self.label is not None:
            lab = self.label
            if lab.root_cause_service not in services:
                raise ScenarioError(f"{where}: root cause {lab.root_cause_service!r} is not a service of the scenario")
            if not set(lab.root_cause_pods) <= set(self.pods):
                raise ScenarioError(f"{where}: root-cause pods are not all in the scenario")
            if not 0 <= lab.fault_bin < self.n_bins:
                raise ScenarioError(f"{where}: fault_bin {lab.fault_bin} outside [0, {self.n_bins})")

    def _validate_traces(self, where: str, services: set[str]) -> None:
        known = all(_VALIDATED.get(id(f)) is f for f in (self.service_metrics, self.edges))
        for name, frame, keys in (("service_metrics", self.service_metrics, ("service",)),
                                  ("edges", self.edges, ("client", "server"))):
            if len(frame) == 0:
                continue
            for key in keys:
                bad = sorted(set(frame[key].unique()) - services)
                if bad:
                    raise ScenarioError(f"{where}: {name} names unknown services {bad[:5]}")
            if frame["bin"].min() < 0 or frame["bin"].max() >= self.n_bins:
                raise ScenarioError(f"{where}: {name} bins outside [0, {self.n_bins})")
            if _VALIDATED.get(id(frame)) is frame:
                continue  # its rows passed the checks below in a Scenario already (or are a crop of such rows)
            if frame.duplicated(["bin", *keys]).any():
                raise ScenarioError(f"{where}: {name} has duplicate ({', '.join(('bin', *keys))}) rows")
            covered = frame["covered"].to_numpy()
            if frame.groupby("bin")["covered"].nunique().max() > 1:
                raise ScenarioError(f"{where}: {name} coverage differs between rows of one bin")
            counts = frame.loc[:, [*BUCKET_COLUMNS, "duration_sum_ms"]].to_numpy(dtype=np.float64)
            if np.isnan(counts[covered]).any() or not np.isnan(counts[~covered]).all():
                raise ScenarioError(f"{where}: {name} counts must be NaN exactly where a bin is not covered")
            real = counts[covered]
            if (real < 0).any() or (real[:, :-1] != np.round(real[:, :-1])).any():
                raise ScenarioError(f"{where}: {name} bucket counts must be non-negative integers")
            if (np.diff(real[:, :-1], axis=1) < 0).any():
                raise ScenarioError(f"{where}: {name} buckets must be cumulative (non-decreasing in le)")
        for frame in (self.service_metrics, self.edges):
            _VALIDATED[id(frame)] = frame
        if not known and len(self.service_metrics) and len(self.edges):
            a = self.service_metrics.groupby("bin")["covered"].first()
            b = self.edges.groupby("bin")["covered"].first()
            both = a.index.intersection(b.index)
            if (a[both] != b[both]).any():
                raise ScenarioError(f"{where}: service_metrics and edges disagree on which bins are covered")

    # -- derived views ---------------------------------------------------------------------------------------------
    @property
    def n_bins(self) -> int:
        return int(self.values.shape[0])

    @property
    def services(self) -> tuple[str, ...]:
        """Sorted services, each with at least one pod (a service without pods cannot exist by construction)."""
        return tuple(sorted(set(self.pod_service.values())))

    @property
    def mask(self) -> np.ndarray:
        """True where `values` holds a real sample."""
        return ~np.isnan(self.values)

    @property
    def bin_starts(self) -> pd.DatetimeIndex:
        return pd.date_range(self.start, periods=self.n_bins, freq=f"{self.bin_seconds}s", tz="UTC")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.bin_seconds * self.n_bins)

    def bin_of(self, moment: datetime) -> int:
        """Index of the bin holding `moment` (may be outside [0, n_bins))."""
        return int((as_utc(moment) - self.start).total_seconds() // self.bin_seconds)

    @property
    def onset_bin(self) -> int | None:
        return None if self.onset is None else self.bin_of(self.onset)

    def pod_service_index(self) -> np.ndarray:
        """For each pod, the index of its service in `services`."""
        index = {s: i for i, s in enumerate(self.services)}
        return np.array([index[self.pod_service[p]] for p in self.pods], dtype=np.int64)

    def window(self, start_bin: int, n_bins: int) -> Scenario:
        """The bins [start_bin, start_bin + n_bins) as a scenario of their own (label shifted, kept if inside)."""
        if start_bin < 0 or n_bins <= 0 or start_bin + n_bins > self.n_bins:
            raise ScenarioError(f"{self.id}: window [{start_bin}, {start_bin + n_bins}) outside [0, {self.n_bins})")
        logs = self.logs
        logs = logs.loc[(logs["bin"] >= start_bin) & (logs["bin"] < start_bin + n_bins)].copy()
        logs["bin"] -= start_bin
        label = self.label
        if label is not None:
            label = replace(label, fault_bin=label.fault_bin - start_bin)
        return replace(
            self,
            start=self.start + timedelta(seconds=start_bin * self.bin_seconds),
            values=self.values[start_bin : start_bin + n_bins],
            logs=logs,
            label=label,
            service_metrics=_crop(self.service_metrics, start_bin, n_bins),
            edges=_crop(self.edges, start_bin, n_bins),
        )

    def without_label(self) -> Scenario:
        return replace(self, label=None) if self.label is not None else self

    def with_onset(self, onset: datetime | None) -> Scenario:
        return replace(self, onset=onset)


def _crop(frame: pd.DataFrame, start_bin: int, n_bins: int) -> pd.DataFrame:
    """Rows of bins [start_bin, start_bin + n_bins), renumbered; a crop of a normalised (validated) frame is one."""
    if len(frame) == 0:
        return frame
    lo, hi = np.searchsorted(frame["bin"].to_numpy(), [start_bin, start_bin + n_bins])  # rows are sorted by bin
    out = frame.iloc[lo:hi].reset_index(drop=True)
    out["bin"] = (out["bin"].to_numpy() - start_bin).astype(np.int32)
    if _NORMALISED.get(id(frame)) is frame:
        _NORMALISED[id(out)] = out
    if _VALIDATED.get(id(frame)) is frame:
        _VALIDATED[id(out)] = out
    return out


def _normalise_traces(frame: pd.DataFrame | None, level: str, keys: tuple[str, ...], where: str) -> pd.DataFrame:
    """Typed columns in schema order, rows sorted by (bin, keys), derived features recomputed from the buckets."""
    if frame is not None and _NORMALISED.get(id(frame)) is frame:
        return frame  # already normalised by a Scenario (replace(), without_label(), with_onset())
    columns = SERVICE_METRIC_COLUMNS if level == "service" else EDGE_COLUMNS
    base = SERVICE_METRIC_BASE_COLUMNS if level == "service" else EDGE_BASE_COLUMNS
    if frame is None or len(frame) == 0:
        return _empty(level)
    missing = [c for c in base if c not in frame.columns]
    if missing:
        raise ScenarioError(f"{where}: {'service_metrics' if level == 'service' else 'edges'} lacks columns {missing}")
    out = frame.loc[:, list(base)].copy()
    out["bin"] = out["bin"].astype("int32")
    out["covered"] = out["covered"].astype(bool)
    for key in keys:
        out[key] = out[key].astype("string")
    for col in base[len(keys) + 2 :]:
        out[col] = out[col].astype("float64")
    count_col = "trace_calls" if level == "service" else "edge_requests"
    covered = out["covered"].to_numpy()
    if not np.array_equal(out[count_col].to_numpy()[covered], out["le_inf"].to_numpy()[covered]):
        raise ScenarioError(f"{where}: {count_col} must equal the +Inf bucket (le_inf)")
    out = out.sort_values(["bin", *keys], kind="stable").reset_index(drop=True)
    for name, value in trace_features(out, level).items():
        out[name] = value
    out = out.loc[:, list(columns)]
    _NORMALISED[id(out)] = out
    return out


# Frames this module normalised or validated, by id (weakly held): a Scenario built by replace() or window() from a
# valid one skips the per-row work. Scenario frames are read-only by convention, like `values`.
_NORMALISED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_VALIDATED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_EMPTY: dict[str, pd.DataFrame] = {}


def _empty(level: str) -> pd.DataFrame:
    """The shared empty frame of a level (a Scenario without traces holds it; never mutated)."""
    if level not in _EMPTY:
        _EMPTY[level] = empty_service_metrics() if level == "service" else empty_edges()
        _NORMALISED[id(_EMPTY[level])] = _EMPTY[level]
    return _EMPTY[level]


def _normalise_logs(logs: pd.DataFrame | None) -> pd.DataFrame:
    if logs is None or len(logs) == 0:
        return empty_logs()
    missing = [c for c in LOG_COLUMNS if c not in logs.columns]
    if missing:
        raise ScenarioError(f"log table lacks columns {missing}")
    out = logs.loc[:, list(LOG_COLUMNS)].copy()
    out["service"] = out["service"].astype("string")
    out["template"] = out["template"].astype("string")
    out["level"] = out["level"].astype("string")
    out["bin"] = out["bin"].astype("int32")
    out["count"] = out["count"].astype("int64")
    return out.reset_index(drop=True)
