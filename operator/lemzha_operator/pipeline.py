"""One incident, end to end, as plain functions: resolve window -> fetch metrics -> fetch logs -> Scenario -> rank
-> status. The kopf handlers call `step()` and translate its outcome; everything here runs without a cluster.

Partial progress (the resolved window) is kept in status, so a retry never re-resolves a `recent` window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lemzha.catalog import catalog_order
from lemzha.ranking import Ranker
from lemzha.scenario import Scenario
from lemzha.scenario_io import load_scenario, save_scenario
from lemzha.services import service_of_pod
from lemzha_operator.analysis import analyze
from lemzha_operator.window import InvalidSpec, ResolvedWindow, resolve_window, seconds_until_complete

MetricsFetcher = Callable[[str, datetime, int], tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]]
LogsFetcher = Callable[[str, datetime, int, dict[str, str]], pd.DataFrame]
PodInfoFetcher = Callable[[str, datetime, int], object]  # -> PodInfo(owners: pod->controller, labels: pod->labels)


class DataUnavailable(RuntimeError):
    """The sources answered but hold no data for the window."""


class SourceUnavailable(RuntimeError):
    """A source could not be reached; `reason` is the condition reason (PrometheusUnavailable, LokiUnavailable)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Outcome:
    """What one attempt decided: the status to write, and whether and when to try again."""

    phase: str
    status: dict = field(default_factory=dict)
    conditions: list[dict] = field(default_factory=list)  # {type, status, reason, message}
    retry_after: float | None = None  # seconds; None = final for this attempt
    permanent: bool = False


def condition(kind: str, ok: bool, reason: str, message: str) -> dict:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message[:1024]}


def window_from_status(status: dict) -> ResolvedWindow | None:
    """The window resolved by an earlier attempt, frozen in status."""
    frozen = status.get("resolvedWindow")
    if not frozen:
        return None
    start = pd.Timestamp(frozen["from"]).to_pydatetime()
    end = pd.Timestamp(frozen["to"]).to_pydatetime()
    onset = status.get("onset", {})
    given = onset.get("time") if onset.get("source") == "given" else None
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
) -> Scenario:
    """The same Scenario the offline loaders build: catalog order, the one pod->service rule."""
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
    store: Path | None = None,
) -> Outcome:
    """One attempt at an incident. Never raises for data or spec problems: the outcome says what happened.

    `store` is this incident's directory (keyed by its uid, so a re-created incident never sees old data): the
    fetched scenario is kept there, so a retry after fetching (a crash, a failed status write) ranks what it has
    instead of querying Prometheus and Loki again."""
    timeout = float(spec.get("timeoutSeconds", 900))
    top_k = int(spec.get("topK", 5))
    try:
        window = window_from_status(status) or resolve_window(spec, now)
    except InvalidSpec as err:
        return Outcome("Failed", {"message": str(err)}, [condition("Ready", False, "InvalidSpec", str(err))],
                       permanent=True)
    frozen = {"resolvedWindow": window.to_status()}
    if window.onset is not None:
        frozen["onset"] = {"time": window.onset.isoformat(), "source": "given"}
    timed_out = (now - created).total_seconds() > timeout
    wait = seconds_until_complete(window, now)
    if wait > 0:
        if timed_out:
            return _timeout(frozen, timeout)
        return Outcome("Pending", frozen, [condition("DataFetched", False, "WaitingForWindow",
                                                     f"window ends at {window.end.isoformat()}")],
                       retry_after=min(wait, 300.0))
    stored = store
    if stored is not None and (stored / "scenario.json").is_file():
        scenario = load_scenario(stored, with_label=False)
        conditions = [condition("DataFetched", True, "DataFetched", "reused the data fetched by an earlier attempt")]
        return _ranked(scenario, frozen, conditions, ranker, top_k)
    try:
        pods, values, names = fetch_metrics(namespace, window.start, window.n_bins)
        owners: dict[str, str] = {}
        if fetch_pod_info is not None or spec.get("podSelector"):
            info = fetch_pod_info(namespace, window.start, window.n_bins) if fetch_pod_info else None
            owners = dict(getattr(info, "owners", {}) or {})
            pods, values = _selected(pods, values, spec.get("podSelector"), getattr(info, "labels", {}) or {})
        if not pods or not np.isfinite(values).any():
            raise DataUnavailable(f"no pod metrics in namespace {namespace!r} for the window"
                                  + (" and podSelector" if spec.get("podSelector") else ""))
    except SourceUnavailable as err:
        if timed_out:
            return _timeout(frozen, timeout, str(err))
        return Outcome("Analyzing", frozen, [condition("DataFetched", False, err.reason, str(err))], retry_after=30)
    except DataUnavailable as err:
        return Outcome("Failed", {**frozen, "message": str(err)},
                       [condition("Ready", False, "DataUnavailable", str(err))], permanent=True)
    conditions = []
    logs = None
    pod_service = {p: service_of_pod(p, owners.get(p)) for p in pods}
    if fetch_logs is not None:
        try:
            logs = fetch_logs(namespace, window.start, window.n_bins, pod_service)
        except SourceUnavailable as err:
            # metrics alone still rank; say so instead of failing the incident
            conditions.append(condition("Degraded", True, err.reason, f"ranked without logs: {err}"))
        else:
            if logs is not None and logs.attrs.get("truncated"):
                conditions.append(condition("Degraded", True, "LogsTruncated", "Loki returned more lines than the "
                                            "client's cap; log counts are incomplete"))
    scenario = build_scenario(incident_id, namespace, window, pods, values, names, logs, owners)
    if stored is not None:
        save_scenario(scenario, stored)
    conditions.append(condition("DataFetched", True, "DataFetched",
                                f"{len(pods)} pods, {len(names)} metrics, {window.n_bins} bins"))
    return _ranked(scenario, frozen, conditions, ranker, top_k)


def _ranked(scenario: Scenario, frozen: dict, conditions: list[dict], ranker: Ranker, top_k: int) -> Outcome:
    result = analyze(scenario, ranker, top_k)
    top = result["rootCauses"][0] if result["rootCauses"] else None
    summary = f"top cause {top['service']} ({top['score']:.2f})" if top else "no services"
    conditions += [condition("Analyzed", True, "Ranked", summary), condition("Ready", True, "Completed", summary)]
    return Outcome("Completed", {**frozen, **result}, conditions)


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


def _timeout(frozen: dict, timeout: float, detail: str = "") -> Outcome:
    message = f"gave up after timeoutSeconds={timeout:.0f}" + (f": {detail}" if detail else "")
    return Outcome("Failed", {**frozen, "message": message}, [condition("Ready", False, "Timeout", message)],
                   permanent=True)
