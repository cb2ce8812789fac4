"""Live metrics fetch: one Prometheus range query per catalog metric -> the (T, P, M) array of a Scenario.

Torch-free. Each metric's `MetricSpec.promql(namespace, bin_range)` is evaluated on the grid
t_k = start + (k+1) * 30 s - 1 ms, so its one-bin range selector ending at t_k covers exactly bin
k = [start + k * 30 s, start + (k+1) * 30 s), the offline binning convention. How long that range is depends on
the server: Prometheus 2.x includes a range's lower end (29999ms), 3.x excludes it (30s); the server's version is
read from /api/v1/status/buildinfo before each fetch (`catalog.bin_range`). The HTTP API is called directly with
millisecond timestamps because prometheus-api-client's custom_query_range rounds start and end to whole seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import numpy as np
import requests

from lemzha.binning import BIN_SECONDS, as_utc
from lemzha.catalog import METRIC_NAMES, bin_range, catalog_order, promql_escape, spec
from lemzha.lru import SizedLRU
from lemzha_operator.fetchers import SourceUnavailable

QUERY_THREADS = 4  # range queries of one window in flight at once, shared by all incidents


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not be reached or answered with a server error (retry later). `kind`: unreachable,
    timeout, server_error or bad_answer."""

    def __init__(self, message: str, kind: str = "unreachable") -> None:
        super().__init__(message)
        self.kind = kind


class FetchedMetrics(NamedTuple):
    """One window's pod metrics; `warnings` are Prometheus' own (e.g. partial responses), surfaced in status."""

    pods: tuple[str, ...]
    values: np.ndarray
    names: tuple[str, ...]
    warnings: tuple[str, ...] = ()


class PrometheusQueryError(ValueError):
    """Prometheus rejected a query (4xx): a bug or a bad namespace, not worth retrying."""


def _endpoint(prom) -> tuple[str, requests.Session, dict, tuple | None]:
    """(base URL, session, headers, auth) from a PrometheusConnect or a plain URL.

    A PrometheusConnect's session carries its TLS setting and retry adapter (5xx retries end in a RetryError,
    reported as PrometheusUnavailable)."""
    if isinstance(prom, str):
        return prom.rstrip("/"), requests.Session(), {}, None
    session = getattr(prom, "_session", None) or requests.Session()
    return prom.url.rstrip("/"), session, dict(getattr(prom, "headers", None) or {}), getattr(prom, "auth", None)


def _post(prom, path: str, body: dict, timeout: float, warnings: list[str] | None = None) -> list[dict]:
    """POST an API query; returns data.result and adds the answer's `warnings` to `warnings`. Outages are
    PrometheusUnavailable, rejections PrometheusQueryError. `timeout` bounds the client and is sent to Prometheus,
    which then stops evaluating too (a 503 "query timed out")."""
    payload = _call(prom, "POST", path, {**body, "timeout": f"{timeout:g}s"}, timeout, repr(body["query"]))
    if warnings is not None:
        warnings.extend(str(w) for w in payload.get("warnings") or [] if str(w) not in warnings)
    return payload["data"]["result"]


def server_version(prom, timeout: float = 30.0) -> str | None:
    """The server's version from /api/v1/status/buildinfo, or None when it does not serve that endpoint (some
    Prometheus-compatible backends answer 404): the range handling of Prometheus 2.x is then assumed."""
    try:
        payload = _call(prom, "GET", "/api/v1/status/buildinfo", None, timeout, "buildinfo", retries=False)
    except PrometheusQueryError:
        return None
    version = (payload.get("data") or {}).get("version")
    return str(version) if version else None


def server_bin_range(prom, n_bins: int = 1, timeout: float = 30.0) -> str:
    """The range selector of `n_bins` bins on this server (`catalog.bin_range` of its version)."""
    return bin_range(server_version(prom, timeout) or "2", n_bins)


def _timed_out(err: requests.RequestException) -> bool:
    """A read timeout, also when the session's retry adapter retried it (a GET) and requests reports the last one as
    a ConnectionError."""
    from urllib3.exceptions import ReadTimeoutError

    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.Timeout) or isinstance(reason, ReadTimeoutError)


def _call(prom, method: str, path: str, body: dict | None, timeout: float, what: str, retries: bool = True) -> dict:
    """One API request; returns the JSON answer of status "success". Outages are PrometheusUnavailable,
    rejections (4xx, status "error") PrometheusQueryError naming `what`. `retries=False` bypasses the client's retry
    adapter, which retries a GET (the API's queries are POSTs, never retried there): a slow server then costs one
    timeout, not four."""
    url, session, headers, auth = _endpoint(prom)
    if not retries:
        plain = requests.Session()  # requests' own adapters: no retries; the TLS and proxy settings are kept
        plain.verify, plain.cert, plain.proxies = session.verify, session.cert, session.proxies
        session = plain
    try:
        resp = session.request(method, f"{url}{path}", data=body, headers=headers, auth=auth, timeout=timeout)
    except requests.RequestException as err:
        if _timed_out(err):
            raise PrometheusUnavailable(f"Prometheus at {url} did not answer within {timeout:g} s", "timeout") from err
        raise PrometheusUnavailable(f"Prometheus at {url} unreachable: {err}") from err
    if resp.status_code >= 500:
        kind = "timeout" if "timed out" in resp.text or "timeout" in resp.text else "server_error"
        raise PrometheusUnavailable(f"Prometheus at {url} answered {resp.status_code}: {resp.text[:200]}", kind)
    if resp.status_code >= 400:
        raise PrometheusQueryError(f"Prometheus rejected {what}: {resp.status_code} {resp.text[:200]}")
    try:
        payload = resp.json()
    except ValueError as err:
        raise PrometheusUnavailable(f"Prometheus at {url} answered non-JSON: {resp.text[:200]}", "bad_answer") from err
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else payload
        raise PrometheusQueryError(f"Prometheus query {what} failed: {error}")
    return payload


def query_range(prom, query: str, start_s: float, end_s: float, step_s: float, timeout: float = 30.0,
                warnings: list[str] | None = None) -> list[dict]:
    """POST /api/v1/query_range with float-second times (millisecond precision kept); returns data.result."""
    body = {"query": query, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
    return _post(prom, "/api/v1/query_range", body, timeout, warnings)


_QUERY_POOL = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="prometheus-query")


def query_ranges(prom, queries: Sequence[str], start_s: float, end_s: float, step_s: float, timeout: float = 30.0,
                 warnings: list[str] | None = None) -> list[list[dict]]:
    """`query_range` of each query, QUERY_THREADS at a time (Prometheus evaluates them in parallel); results in the
    order of `queries`, warnings too. The first failure is raised once all have ended."""
    found = [[] for _ in queries]
    jobs = [_QUERY_POOL.submit(query_range, prom, query, start_s, end_s, step_s, timeout, found[i])
            for i, query in enumerate(queries)]
    results = [job.exception() or job.result() for job in jobs]  # waits for every job before raising any
    for result in results:
        if isinstance(result, BaseException):
            raise result
    if warnings is not None:
        for said in found:
            warnings.extend(w for w in said if w not in warnings)
    return results


Grid = list[tuple[dict[str, str], np.ndarray]]  # per series of one query: its labels and values on the window's bins


def _grid(result: list[dict], first_ms: int, n_points: int, step_ms: int) -> Grid:
    """A query_range answer as arrays: sample times are rounded to the nearest point of the grid (Prometheus returns
    float seconds), values parsed from their text (NaN where a series has no sample)."""
    grid = []
    for series in result:
        values = np.full(n_points, np.nan)
        for ts, text in series["values"]:
            k = round((float(ts) * 1000 - first_ms) / step_ms)
            if 0 <= k < n_points:
                values[k] = float(text)
        grid.append((series["metric"], values))
    return grid


@dataclass
class _Settled:
    lo: int  # grid indices [lo, hi) held, every point of them settled
    hi: int
    series: dict[tuple, tuple[dict[str, str], np.ndarray]]  # sorted label pairs -> (labels, values over [lo, hi))

    @property
    def samples(self) -> int:
        return (self.hi - self.lo) * max(1, len(self.series))


class RangeCache:
    """Settled range-query answers, kept across incidents: the hour of reference before each incident's onset is
    mostly the previous incident's, so only the new minutes are asked.

    A point of a range query is settled when it lies SETTLE_SECONDS before now: its inputs (scrapes and recording
    rule evaluations, which lag by at most an interval) are in, and Prometheus never changes it afterwards.
    Answers that came with warnings (partial data) are never kept. Bounded by `max_samples` values in all (8 bytes
    each: 1,000,000 is 8 MiB), least recently used out."""

    SETTLE_SECONDS = 300

    def __init__(self, max_samples: int = 1_000_000, now: Callable[[], float] | None = None) -> None:
        self.now = now or time.time
        self._entries: SizedLRU[tuple[str, int, int], _Settled] = SizedLRU(max_samples, lambda e: e.samples)
        self.asked_points = self.kept_points = 0  # points fetched / served from here (read by the tests)

    def grids(self, prom, queries: Sequence[str], first_s: float, n_points: int, step_s: float,
              timeout: float = 30.0, warnings: list[str] | None = None) -> list[Grid]:
        """Each query's series on the `n_points` grid points from `first_s` every `step_s` (what `query_ranges`
        answers, as arrays), asking Prometheus only for the points not held."""
        step_ms, first_ms = round(step_s * 1000), round(first_s * 1000)
        phase = first_ms % step_ms
        a, b = (first_ms - phase) // step_ms, (first_ms - phase) // step_ms + n_points
        settled_end = (round(self.now() * 1000) - self.SETTLE_SECONDS * 1000 - phase) // step_ms + 1
        held = [self._entries.get((q, step_ms, phase)) for q in queries]
        # from where each query must be asked: past what is held when the held part covers the window's start
        starts = [e.hi if e is not None and e.lo <= a < e.hi else a for e in held]
        fresh: list[Grid | None] = [None] * len(queries)
        keep = [True] * len(queries)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(starts):
            if c < b:
                groups.setdefault(c, []).append(i)
        for c, members in groups.items():
            said: list[str] = []
            answers = query_ranges(prom, [queries[i] for i in members], (c * step_ms + phase) / 1000,
                                   ((b - 1) * step_ms + phase) / 1000, step_s, timeout, said)
            for i, answer in zip(members, answers, strict=True):
                fresh[i] = _grid(answer, c * step_ms + phase, b - c, step_ms)
            if warnings is not None:
                warnings.extend(w for w in said if w not in warnings)
            if said:  # partial data: use it for this window, never keep it
                for i in members:
                    keep[i] = False
        out = []
        for i, query in enumerate(queries):
            entry, c = held[i], starts[i]
            merged: dict[tuple, tuple[dict[str, str], np.ndarray]] = {}
            if entry is not None and entry.lo <= a < entry.hi:  # the window's first points are held
                n_held = min(entry.hi, b) - a
                for key, (labels, values) in entry.series.items():
                    window = np.full(n_points, np.nan)
                    window[:n_held] = values[a - entry.lo:a - entry.lo + n_held]
                    merged[key] = (labels, window)
            for labels, values in fresh[i] or []:
                key = tuple(sorted(labels.items()))
                window = merged.get(key, (labels, np.full(n_points, np.nan)))[1]
                window[n_points - len(values):] = np.where(np.isnan(values), window[n_points - len(values):], values)
                merged[key] = (labels, window)
            # as Prometheus answers: a series without a sample in the window is not there (a held one may be)
            out.append([(labels, values) for labels, values in merged.values() if not np.isnan(values).all()])
            if keep[i]:
                self._keep((query, step_ms, phase), a, min(b, settled_end), merged)
        self.asked_points += sum(max(0, b - c) for c in starts)
        self.kept_points += sum(n_points - max(0, b - c) for c in starts)
        return out

    def _keep(self, key: tuple[str, int, int], lo: int, hi: int, merged: dict) -> None:
        old = self._entries.peek(key)
        if hi <= lo or (old is not None and old.lo <= lo and old.hi >= hi):
            return  # nothing settled, or what this window settled is held already
        self._entries.put(key, _Settled(lo, hi, {k: (labels, values[:hi - lo].copy())
                                                 for k, (labels, values) in merged.items()}))

    def info(self) -> dict[str, int]:
        return {**self._entries.info(), "asked_points": self.asked_points, "kept_points": self.kept_points}


def range_grids(prom, queries: Sequence[str], first_s: float, n_points: int, step_s: float, timeout: float = 30.0,
                warnings: list[str] | None = None, cache: RangeCache | None = None) -> list[Grid]:
    """`RangeCache.grids` through `cache`, or straight from Prometheus without one."""
    if cache is not None:
        return cache.grids(prom, queries, first_s, n_points, step_s, timeout, warnings)
    answers = query_ranges(prom, queries, first_s, first_s + (n_points - 1) * step_s, step_s, timeout, warnings)
    return [_grid(answer, round(first_s * 1000), n_points, round(step_s * 1000)) for answer in answers]


def query_instant(prom, query: str, time_s: float, timeout: float = 30.0,
                  warnings: list[str] | None = None) -> list[dict]:
    """POST /api/v1/query at a float-second time (millisecond precision kept); returns data.result."""
    return _post(prom, "/api/v1/query", {"query": query, "time": f"{time_s:.3f}"}, timeout, warnings)


def fetch_metrics(
    prom,
    namespace: str,
    start: datetime,
    n_bins: int,
    metrics: Sequence[str] = METRIC_NAMES,
    bin_seconds: int = BIN_SECONDS,
    timeout: float = 30.0,
    cache: RangeCache | None = None,
) -> FetchedMetrics:
    """(pods sorted, values (T, P, M) float32 with NaN = missing, metric names in catalog order, Prometheus'
    warnings) for one window.

    `prom` is a `prometheus_api_client.PrometheusConnect` (its session, headers and TLS settings are reused) or a
    base URL. `start` must be aligned to `bin_seconds`. Pods are those with at least one value in any metric.
    `cache` keeps settled points for the next window (`RangeCache`).
    """
    if n_bins <= 0:
        raise ValueError(f"n_bins must be positive, not {n_bins}")
    names = catalog_order(list(metrics))
    start_s = as_utc(start).timestamp()
    if start_s % bin_seconds:
        raise ValueError(f"start {as_utc(start).isoformat()} is not aligned to {bin_seconds} s")
    first = start_s + bin_seconds - 0.001  # end of bin 0 minus 1 ms
    warnings: list[str] = []
    one_bin = server_bin_range(prom, timeout=timeout)
    grids = range_grids(prom, [spec(name).promql(namespace, one_bin) for name in names], first, n_bins, bin_seconds,
                        timeout, warnings, cache)
    pods = tuple(sorted({labels["pod"] for grid in grids for labels, _ in grid if labels.get("pod")}))
    index = {pod: p for p, pod in enumerate(pods)}
    values = np.full((n_bins, len(pods), len(names)), np.nan, dtype=np.float32)
    for m, grid in enumerate(grids):
        for labels, samples in grid:
            if labels.get("pod"):
                column = values[:, index[labels["pod"]], m]
                column[:] = np.where(np.isnan(samples), column, samples)  # a later series of the pod adds to it
    values[~np.isfinite(values)] = np.nan  # a NaN/Inf sample is missing data, the Scenario convention
    return FetchedMetrics(pods, values, names, tuple(warnings))


def metrics_fetcher(prom, metrics: Sequence[str] = METRIC_NAMES, timeout: float = 30.0,
                    cache: RangeCache | None = None) -> Callable[[str, datetime, int], FetchedMetrics]:
    """`fetch_metrics` bound to `prom`, in the shape `pipeline.step` takes: PrometheusUnavailable becomes
    `SourceUnavailable("PrometheusUnavailable", ...)`, so the pipeline retries instead of failing the incident."""
    def fetch(namespace: str, start: datetime, n_bins: int) -> FetchedMetrics:
        try:
            return fetch_metrics(prom, namespace, start, n_bins, metrics, timeout=timeout, cache=cache)
        except PrometheusUnavailable as err:
            raise SourceUnavailable("PrometheusUnavailable", str(err), err.kind) from err

    return fetch


# -- pod owners and labels (kube-state-metrics) ------------------------------------------------------------------------
@dataclass(frozen=True)
class PodInfo:
    """Per pod of one window: `owners` the top controller's name (the Deployment owning the pod's ReplicaSet, else
    the pod's direct controller: StatefulSet, DaemonSet, ReplicaSet, Job), `labels` its Kubernetes labels as
    kube-state-metrics exports them (keys sanitised, `label_` prefix stripped). Pods without series are absent."""

    owners: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)


def fetch_pod_info(prom, namespace: str, start: datetime, n_bins: int, bin_seconds: int = BIN_SECONDS,
                   timeout: float = 30.0) -> PodInfo:
    """Owners and labels of the pods of `namespace` seen anywhere in the window [start, start + n_bins bins).

    Instant queries at the window end minus 1 ms with `max_over_time` over the whole window: the pods of a past
    window may be gone now. Missing kube-state-metrics series give empty dicts, not an error.
    """
    if n_bins <= 0:
        raise ValueError(f"n_bins must be positive, not {n_bins}")
    start_s = as_utc(start).timestamp()
    at = start_s + n_bins * bin_seconds - 0.001
    window = f"[{server_bin_range(prom, n_bins, timeout)}]"  # exactly the window's bins, as each metric's bin range
    ns = f'namespace="{promql_escape(namespace)}"'
    controller = f'{ns},owner_is_controller="true"'
    pod_owner = query_instant(
        prom, f"max by (pod, owner_kind, owner_name) (max_over_time(kube_pod_owner{{{controller}}}{window}))", at,
        timeout)
    rs_owner = query_instant(
        prom, f"max by (replicaset, owner_kind, owner_name) "
              f"(max_over_time(kube_replicaset_owner{{{controller}}}{window}))", at, timeout)
    pod_labels = query_instant(prom, f"max_over_time(kube_pod_labels{{{ns}}}{window})", at, timeout)

    deployments: dict[str, str] = {}
    for s in sorted(rs_owner, key=_series_key):  # sorted: a changed owner resolves the same way every time
        m = s["metric"]
        if m.get("replicaset") and m.get("owner_kind") == "Deployment" and m.get("owner_name"):
            deployments.setdefault(m["replicaset"], m["owner_name"])
    owners: dict[str, str] = {}
    for s in sorted(pod_owner, key=_series_key):
        m = s["metric"]
        pod, kind, name = m.get("pod"), m.get("owner_kind"), m.get("owner_name")
        if not pod or not name or name == "<none>":
            continue
        top = deployments.get(name, name) if kind == "ReplicaSet" else name
        owners.setdefault(pod, top)
    labels: dict[str, dict[str, str]] = {}
    for s in sorted(pod_labels, key=_series_key):
        m = s["metric"]
        if m.get("pod"):
            # a pod relabelled within the window has several series: later (sorted) ones add to the earlier ones
            found = labels.setdefault(m["pod"], {})
            found.update({k.removeprefix("label_"): v for k, v in m.items() if k.startswith("label_")})
    return PodInfo(owners, labels)


def _series_key(series: dict) -> tuple:
    return tuple(sorted(series["metric"].items()))


def pod_info_fetcher(prom, timeout: float = 30.0) -> Callable[[str, datetime, int], PodInfo]:
    """`fetch_pod_info` bound to `prom`; PrometheusUnavailable becomes `SourceUnavailable("PrometheusUnavailable",
    ...)` as in `metrics_fetcher`, so an outage is retried instead of failing the incident."""
    def fetch(namespace: str, start: datetime, n_bins: int) -> PodInfo:
        try:
            return fetch_pod_info(prom, namespace, start, n_bins, timeout=timeout)
        except PrometheusUnavailable as err:
            raise SourceUnavailable("PrometheusUnavailable", str(err), err.kind) from err

    return fetch
