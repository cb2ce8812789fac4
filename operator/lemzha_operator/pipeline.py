"""One incident, end to end, as plain functions: resolve window -> fetch metrics -> fetch logs -> Scenario -> rank
-> status. The kopf handlers call `step()` and translate its outcome; everything here runs without a cluster.

Partial progress (the resolved window) is kept in status, so a retry never re-resolves a `recent` window.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lemzha.binning import rfc3339
from lemzha.catalog import catalog_order
from lemzha.ranking import Ranker
from lemzha.scenario import Scenario
from lemzha.scenario_io import load_scenario, save_scenario
from lemzha.services import service_of_pod
from lemzha_operator.analysis import analyze
from lemzha_operator.fetchers import (
    DataUnavailable,
    LogsFetcher,
    MetricsFetcher,
    PodInfoFetcher,
    SourceUnavailable,
    TracesFetcher,
)
from lemzha_operator.window import InvalidSpec, ResolvedWindow, resolve_window, seconds_until_complete

LOGS_COMPLETE, LOGS_TRUNCATED, LOGS_UNAVAILABLE, LOGS_DISABLED = "complete", "truncated", "unavailable", "disabled"
FETCH_FILE = "fetch.json"  # beside the stored scenario: the sources' coverage notes and Degraded condition
MAX_WARNINGS = 5  # Prometheus warnings kept in status (bounded like the evidence)
MAX_WAIT = 300.0  # seconds between looks at a window that has not ended


@dataclass
class Outcome:
    """What one attempt decided: the status to write, and whether and when to try again."""

    phase: str
    status: dict = field(default_factory=dict)
    conditions: list[dict] = field(default_factory=list)  # {type, status, reason, message}
    retry_after: float | None = None  # seconds; None = final for this attempt
    permanent: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage of this attempt
    source_errors: list[tuple[str, str]] = field(default_factory=list)  # (source, kind) met in this attempt


class Stopwatch:
    """Seconds per pipeline stage, for the self-metrics and the latency benchmark (stages may run in threads)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.timings[name] = self.timings.get(name, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)


class _NoPods(Exception):
    """The metrics failed, so no pod->service map will come: a source waiting for one stops."""


def _source_job(clock: Stopwatch, stage: str, pods_known: Future, run: Callable[[Callable[[], dict]], object]):
    """`run(pods)` in a fetch thread, where `pods()` waits for the metrics' pod->service map. The stage's time is
    the run's, without that wait; a run stopped because the metrics failed gives None and no time."""
    waited = 0.0

    def pods() -> dict[str, str]:
        nonlocal waited
        t0 = time.perf_counter()
        try:
            return pods_known.result()
        finally:
            waited += time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        result = run(pods)
    except _NoPods:
        return None
    except BaseException:
        clock.add(stage, time.perf_counter() - t0 - waited)
        raise
    clock.add(stage, time.perf_counter() - t0 - waited)
    return result


def condition(kind: str, ok: bool, reason: str, message: str) -> dict:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message[:1024]}


def window_from_status(status: dict) -> ResolvedWindow | None:
    """The window resolved by an earlier attempt, frozen in status."""
    frozen = status.get("resolvedWindow")
    if not frozen:
        return None
    start = pd.Timestamp(frozen["from"]).to_pydatetime()
    end = pd.Timestamp(frozen["to"]).to_pydatetime()
    given = frozen.get("onset")
    return ResolvedWindow(start, int((end - start).total_seconds() // 30),
                          pd.Timestamp(given).to_pydatetime() if given else None)


def build_scenario(
    incident_id: str,
    namespace: str,
    window: ResolvedWindow,
    pods: tuple[str, ...],
    values: np.ndarray,
    metric_names: tuple[str, ...],
    logs: pd.DataFrame | None,
    owners: dict[str, str] | None = None,
    traces: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> Scenario:
    """The same Scenario the offline loaders build: catalog order, the one pod->service rule; `traces` is
    (service_metrics, edges) from `lemzha_operator.traces`, or None."""
    order = catalog_order(list(metric_names))
    index = [metric_names.index(m) for m in order]
    pod_service = {p: service_of_pod(p, (owners or {}).get(p)) for p in pods}
    return Scenario(
        id=incident_id,
        app=namespace,
        namespace=namespace,
        start=window.start,
        pods=pods,
        pod_service=pod_service,
        metrics=order,
        values=np.asarray(values, dtype=np.float32)[:, :, index],
        logs=logs,
        onset=window.onset,
        service_metrics=traces[0] if traces is not None else None,
        edges=traces[1] if traces is not None else None,
    )


def step(
    incident_id: str,
    spec: dict,
    status: dict,
    namespace: str,
    now: datetime,
    created: datetime,
    fetch_metrics: MetricsFetcher,
    fetch_logs: LogsFetcher | None,
    ranker: Ranker,
    fetch_pod_info: PodInfoFetcher | None = None,
    fetch_traces: TracesFetcher | None = None,
    store: Path | None = None,
    attempt: int = 0,
    backoff: Callable[[int], float] = lambda attempt: 30.0,
    log_cap: int | None = None,
    onset_estimator=None,
) -> Outcome:
    """One attempt at an incident. Never raises for data or spec problems: the outcome says what happened.

    `fetch_traces` reads the trace series (None: no traces); an outage of it marks the incident Degraded and ranks
    without traces, never fails it.

    `store` is this incident's directory (keyed by its uid, so a re-created incident never sees old data): the
    fetched scenario is kept there, so a retry after fetching (a crash, a failed status write) ranks what it has
    instead of querying Prometheus and Loki again. `attempt` counts earlier attempts; `backoff(attempt)` is the
    delay before the next one after a source outage. `log_cap` is the log client's line cap, for dataCoverage.
    `onset_estimator` places the onset of a window without faultTime (`analysis.analyze`).
    Any other exception (a bug, a library failing on odd data) also ends the incident: Failed, reason
    AnalysisError, with the exception named, instead of a handler error that kopf would retry forever."""
    try:
        return _attempt(incident_id, spec, status, namespace, now, created, fetch_metrics, fetch_logs, ranker,
                        fetch_pod_info, fetch_traces, store, attempt, backoff, log_cap, onset_estimator)
    except Exception as err:  # every failure must end in an explained status, never in kopf's silent retries
        message = f"the analysis failed: {type(err).__name__}: {err}"
        return Outcome("Failed", {"message": message[:1024]}, [condition("Ready", False, "AnalysisError", message)],
                       permanent=True)


@dataclass
class Fetched:
    """What the sources answered for one window: the metrics (required) and, each with its own error, the logs and
    the traces."""

    pods: tuple[str, ...]
    values: np.ndarray
    names: tuple[str, ...]
    owners: dict[str, str]
    warnings: list[str]
    logs: pd.DataFrame | None = None
    logs_error: SourceUnavailable | None = None
    traces: tuple | None = None
    traces_error: SourceUnavailable | None = None


def _attempt(incident_id: str, spec: dict, status: dict, namespace: str, now: datetime, created: datetime,
             fetch_metrics: MetricsFetcher, fetch_logs: LogsFetcher | None, ranker: Ranker,
             fetch_pod_info: PodInfoFetcher | None, fetch_traces: TracesFetcher | None, store: Path | None,
             attempt: int, backoff: Callable[[int], float], log_cap: int | None, onset_estimator) -> Outcome:
    """The stages, in order: resolve, wait for the window, reuse or fetch (metrics and pod_info, with logs and
    traces beside them), scenario, rank."""
    clock = Stopwatch()
    try:
        timeout = spec_integer(spec, "timeoutSeconds", 900, 30, 86400)
        top_k = spec_integer(spec, "topK", 5, 1, 10)
        window = window_from_status(status) or resolve_window(spec, now)
    except InvalidSpec as err:
        return Outcome("Failed", {"message": str(err)}, [condition("Ready", False, "InvalidSpec", str(err))],
                       permanent=True)
    frozen = {"resolvedWindow": window.to_status()}  # status.onset is the analysis's to write
    waited = (now - created).total_seconds()
    pending = _pending(window, frozen, now, timeout, waited)
    if pending is not None:
        return pending
    if store is not None and (store / "scenario" / "scenario.json").is_file():
        scenario = load_scenario(store / "scenario", with_label=False)
        fetched_before = json.loads((store / FETCH_FILE).read_text())
        conditions = [condition("DataFetched", True, "DataFetched", "reused the data fetched by an earlier attempt"),
                      *fetched_before["conditions"]]
        return _ranked(scenario, frozen, conditions, ranker, top_k, clock, fetched_before["coverage"], [],
                       onset_estimator)
    try:
        fetched = _fetch(namespace, window, spec, fetch_metrics, fetch_pod_info, fetch_logs, fetch_traces, clock)
    except SourceUnavailable as err:  # the metrics: retry the incident
        errors = [(err.source, err.kind)]
        if waited >= timeout:
            failed = _timeout(frozen, timeout, str(err))
            failed.source_errors, failed.timings = errors, clock.timings
            return failed
        delay = retry_delay(backoff(attempt), timeout, waited)
        return Outcome("Analyzing", frozen, [condition("DataFetched", False, err.reason, str(err)),
                                             condition("Degraded", True, err.reason,
                                                       f"{err}; retrying in {delay:.0f} s")],
                       retry_after=delay, timings=clock.timings, source_errors=errors)
    except DataUnavailable as err:
        return Outcome("Failed", {**frozen, "message": str(err)},
                       [condition("Ready", False, "DataUnavailable", str(err))], permanent=True,
                       timings=clock.timings)
    coverage, health, errors = _coverage(fetched, log_cap, fetch_logs is not None)
    with clock.stage("scenario"):
        scenario = build_scenario(incident_id, namespace, window, fetched.pods, fetched.values, fetched.names,
                                  fetched.logs, fetched.owners, fetched.traces)
        if store is not None:
            _keep(store, scenario, coverage, health)
    conditions = [condition("DataFetched", True, "DataFetched",
                            f"{len(fetched.pods)} pods, {len(fetched.names)} metrics, {window.n_bins} bins"), health]
    return _ranked(scenario, frozen, conditions, ranker, top_k, clock, coverage, errors, onset_estimator)


def _pending(window: ResolvedWindow, frozen: dict, now: datetime, timeout: float, waited: float) -> Outcome | None:
    """Pending while the window has not ended (looked at again by the deadline at the latest); None once it has."""
    wait = seconds_until_complete(window, now)
    if wait <= 0:
        return None
    if waited >= timeout:
        return _timeout(frozen, timeout, f"the window ends at {rfc3339(window.end)}, its data is not in yet")
    return Outcome("Pending", frozen, [condition("DataFetched", False, "WaitingForWindow",
                                                 f"window ends at {rfc3339(window.end)}")],
                   retry_after=retry_delay(min(wait, MAX_WAIT), timeout, waited))


def _fetch(namespace: str, window: ResolvedWindow, spec: dict, fetch_metrics: MetricsFetcher,
           fetch_pod_info: PodInfoFetcher | None, fetch_logs: LogsFetcher | None,
           fetch_traces: TracesFetcher | None, clock: Stopwatch) -> Fetched:
    """Metrics here, logs and traces in two threads at once: the logs fetch and clean their lines while the metrics
    are on their way, and both wait only for the pod->service map (`_source_job`). A metrics outage raises
    (SourceUnavailable, DataUnavailable); a logs or traces outage is kept in the result."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="lemzha-fetch") as pool:
        pods_known: Future = Future()
        logs_job = traces_job = None
        if fetch_logs is not None:
            logs_job = pool.submit(_source_job, clock, "logs", pods_known,
                                   lambda pods: fetch_logs(namespace, window.start, window.n_bins, pods))
        if fetch_traces is not None:
            traces_job = pool.submit(_source_job, clock, "traces", pods_known,
                                     lambda pods: fetch_traces(namespace, window.start, window.n_bins,
                                                               set(pods().values())))
        try:
            pods, values, names, owners, warnings = _fetch_metrics(namespace, window, spec, fetch_metrics,
                                                                   fetch_pod_info, clock)
            pods_known.set_result({p: service_of_pod(p, owners.get(p)) for p in pods})
        finally:
            if not pods_known.done():  # before the pool waits for its jobs: they must not wait for ever
                pods_known.set_exception(_NoPods())
    fetched = Fetched(pods, values, names, owners, warnings)
    if logs_job is not None:
        try:
            fetched.logs = logs_job.result()
        except SourceUnavailable as err:
            fetched.logs_error = err
    if traces_job is not None:
        try:
            fetched.traces = traces_job.result()
        except SourceUnavailable as err:
            fetched.traces_error = err
    return fetched


def _coverage(fetched: Fetched, log_cap: int | None, logs_configured: bool
              ) -> tuple[dict, dict, list[tuple[str, str]]]:
    """(status.dataCoverage, the Degraded condition, the sources' errors) of what was fetched: metrics alone still
    rank, so an outage of the logs or the traces, warnings and absent metrics are said, not fatal."""
    degraded: list[tuple[str, str]] = []  # (reason, message)
    errors: list[tuple[str, str]] = []
    coverage: dict = {"logs": LOGS_DISABLED}
    if fetched.logs_error is not None:
        err = fetched.logs_error
        degraded.append((err.reason, f"ranked without logs: {err}"))
        errors.append((err.source, err.kind))
        coverage["logs"] = LOGS_UNAVAILABLE
    elif logs_configured:
        coverage["logs"] = LOGS_COMPLETE
        if fetched.logs is not None and fetched.logs.attrs.get("truncated"):
            coverage["logs"] = LOGS_TRUNCATED
            degraded.append(("LogsTruncated", "Loki returned more lines than the cap"
                             + (f" ({log_cap})" if log_cap else "") + "; log counts are incomplete"))
    if fetched.traces_error is not None:
        err = fetched.traces_error
        degraded.append((err.reason, f"ranked without traces: {err}"))
        errors.append((err.source, err.kind))
    if log_cap is not None and logs_configured:
        coverage["logLinesCap"] = int(log_cap)
    warnings = fetched.warnings
    if warnings:
        coverage["warnings"] = [w[:256] for w in warnings[:MAX_WARNINGS]]
        degraded.append(("PrometheusWarnings", "Prometheus answered with warnings (results may be partial): "
                         + "; ".join(warnings[:MAX_WARNINGS])))
    missing = missing_metrics(fetched.values, fetched.names)
    coverage["missingMetrics"] = missing
    if missing:  # thin inputs: the ranker reads every catalog metric, and some are not there
        degraded.append(("MetricsMissing", f"ranked without {len(missing)} of its {len(fetched.names)} input "
                         f"metrics (absent for every pod of the window): {', '.join(missing)}; `python -m "
                         "lemzha_operator.doctor` names the exporter or recording rule each one needs"))
    if degraded:
        health = condition("Degraded", True, degraded[0][0], "; ".join(m for _, m in degraded))
    else:
        health = condition("Degraded", False, "AllSourcesAnswered", "every configured source answered")
    return coverage, health, errors


def _keep(store: Path, scenario: Scenario, coverage: dict, health: dict) -> None:
    """Keep the fetched scenario for a retry: what the sources said first, then the data, so that a kept scenario
    never lacks its notes."""
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".{FETCH_FILE}.tmp"
    tmp.write_text(json.dumps({"coverage": coverage, "conditions": [health]}))
    os.replace(tmp, store / FETCH_FILE)
    save_scenario(scenario, store / "scenario")


def spec_integer(spec: dict, field: str, default: int, low: int, high: int) -> int:
    """An integer field of the spec within [low, high] (the CRD's bounds; re-checked for objects created without
    them)."""
    value = spec.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSpec(f"spec.{field}: {value!r} is not an integer from {low} to {high}")
    return value


def retry_delay(wanted: float, timeout: float, waited: float) -> float:
    """Seconds to the next attempt: `wanted`, but never far past the deadline (timeoutSeconds after creation), so
    the incident fails on time; the second past it makes the next attempt see the deadline as reached."""
    return max(1.0, min(wanted, timeout - waited + 1.0))


def starting_phase(spec: dict, status: dict, now: datetime) -> str | None:
    """The phase to show while an attempt runs: Pending when its window has not ended (the attempt only waits),
    Analyzing when the data is in and the attempt fetches and ranks; None when the spec cannot give a window (the
    attempt fails at once)."""
    try:
        window = window_from_status(status) or resolve_window(spec, now)
    except Exception:  # the attempt itself meets the same problem and reports it
        return None
    return "Pending" if seconds_until_complete(window, now) > 0 else "Analyzing"


def _fetch_metrics(namespace: str, window: ResolvedWindow, spec: dict, fetch_metrics: MetricsFetcher,
                   fetch_pod_info: PodInfoFetcher | None, clock: Stopwatch):
    """(pods, values, metric names, owners, Prometheus warnings) of the window, the pods narrowed by podSelector;
    DataUnavailable when no pod has a metric."""
    with clock.stage("metrics"):
        fetched = fetch_metrics(namespace, window.start, window.n_bins)
    pods, values, names = fetched[:3]
    warnings = list(getattr(fetched, "warnings", ()))
    owners: dict[str, str] = {}
    if fetch_pod_info is not None or spec.get("podSelector"):
        with clock.stage("pod_info"):
            info = fetch_pod_info(namespace, window.start, window.n_bins) if fetch_pod_info else None
        owners = dict(getattr(info, "owners", {}) or {})
        pods, values = _selected(pods, values, spec.get("podSelector"), getattr(info, "labels", {}) or {})
    if not pods or not np.isfinite(values).any():
        raise DataUnavailable(f"no pod metrics in namespace {namespace!r} for the window"
                              + (" and podSelector" if spec.get("podSelector") else ""))
    return pods, values, names, owners, warnings


def missing_metrics(values: np.ndarray, names: tuple[str, ...]) -> list[str]:
    """The fetched metrics with no value for any pod in any bin of the window (catalog order): what Prometheus does
    not have for the namespace, e.g. a recording rule or an exporter the cluster lacks."""
    present = np.isfinite(values).any(axis=(0, 1))
    return [name for m, name in enumerate(names) if not present[m]]


def method_name(ranker: Ranker, logs: str) -> str:
    """status.method: the ranker's name, with notes when it is a fallback or ranked without logs."""
    notes = list(getattr(ranker, "notes", ()))
    if logs == LOGS_UNAVAILABLE:
        notes.append("metrics only")
    return ranker.name + (f" ({', '.join(notes)})" if notes else "")


def _ranked(scenario: Scenario, frozen: dict, conditions: list[dict], ranker: Ranker, top_k: int, clock: Stopwatch,
            coverage: dict, errors: list[tuple[str, str]], onset_estimator=None) -> Outcome:
    with clock.stage("rank"):
        result = analyze(scenario, ranker, top_k, onset_estimator)
    result["dataCoverage"] = {**coverage, **result["dataCoverage"]}
    result["method"] = method_name(ranker, result["dataCoverage"].get("logs", LOGS_DISABLED))
    top = result["rootCauses"][0] if result["rootCauses"] else None
    summary = f"top cause {top['service']} ({top['score']:.2f})" if top else "no services"
    conditions += [condition("Analyzed", True, "Ranked", summary), condition("Ready", True, "Completed", summary)]
    return Outcome("Completed", {**frozen, **result}, conditions, timings=clock.timings, source_errors=errors)


def _selected(pods: tuple[str, ...], values: np.ndarray, selector: dict | None,
              labels: dict[str, dict[str, str]]) -> tuple[tuple[str, ...], np.ndarray]:
    """Keep the pods the selector matches, from kube_pod_labels over the window (pods of a past window may be gone,
    so the cluster's current pods cannot answer this)."""
    if not selector:
        return pods, values
    if not labels:
        raise DataUnavailable("spec.podSelector needs kube_pod_labels (kube-state-metrics) in Prometheus")
    from lemzha_operator.selector import select_pods

    chosen = select_pods({p: labels.get(p, {}) for p in pods}, selector)
    keep = [i for i, p in enumerate(pods) if p in chosen]
    return tuple(pods[i] for i in keep), values[:, keep, :]


def _timeout(frozen: dict, timeout: float, detail: str) -> Outcome:
    message = f"no data within timeoutSeconds={timeout:.0f}: {detail}"
    return Outcome("Failed", {**frozen, "message": message}, [condition("Ready", False, "DataUnavailable", message)],
                   permanent=True)
