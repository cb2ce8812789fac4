"""Wire settings to live sources and the ranker, in the shapes `pipeline.step` takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from lemzha.baselines import Baro
from lemzha.ranking import Ranker, Ranking
from lemzha.scenario import Scenario
from lemzha_operator.fetchers import LogsFetcher, MetricsFetcher, PodInfoFetcher, SourceUnavailable, TracesFetcher
from lemzha_operator.logchunks import ChunkedLogs, chunk_cache
from lemzha_operator.loki import LokiClient, LokiError, LokiUnavailable, selector, service_rows
from lemzha_operator.prometheus import RangeCache, metrics_fetcher, pod_info_fetcher
from lemzha_operator.settings import Settings


def model_status(ranker: Ranker) -> dict:
    """status.model: which bundle ranked (its directory name and the sha256 of its bundle.json)."""
    bundle = getattr(ranker, "bundle", None)
    if bundle is None:
        return {"bundle": "none", "sha": ""}
    return {"bundle": bundle.directory.name, "sha": bundle.sha}


class Fallback:
    """A baseline standing in for the model: ranks like `inner`; status.method reads e.g. "baro (fallback)"."""

    notes = ("fallback",)

    def __init__(self, inner: Ranker) -> None:
        self.inner = inner
        self.name = inner.name

    def rank(self, scenario: Scenario) -> Ranking:
        return self.inner.rank(scenario)


@dataclass(frozen=True)
class ModelProblem:
    """Why the model is not ranking: the reason and message of the ModelLoaded=False condition."""

    reason: str
    message: str

    def condition(self) -> dict:
        return {"type": "ModelLoaded", "status": "False", "reason": self.reason, "message": self.message[:1024]}


def make_ranker(settings: Settings) -> tuple[Ranker, ModelProblem | None]:
    """The bundle's ranker (torch-free: the evidence ranker, or an ONNX model). Without a bundle, or with one that
    fails its checks (missing files, a bad checksum, another metric catalog), the BARO baseline ranks instead: the
    operator must never crash over its bundle, and every incident then says so (status.method, condition
    ModelLoaded=False)."""
    if settings.bundle_dir is None:
        return Fallback(Baro()), ModelProblem("NoBundle", "LEMZHA_BUNDLE is not set: ranking with the BARO baseline")
    if not settings.bundle_dir.is_dir():  # no bundle there at all, as opposed to a bundle that fails its checks
        return Fallback(Baro()), ModelProblem("NoBundle", f"LEMZHA_BUNDLE={settings.bundle_dir}: directory not found; "
                                              "ranking with the BARO baseline")
    from lemzha.bundle import BundleError
    from lemzha.bundle_ranker import open_ranker

    try:
        return open_ranker(settings.bundle_dir, cache_dir=settings.cache_dir), None
    except BundleError as err:
        return Fallback(Baro()), ModelProblem("BundleInvalid", f"{err}; ranking with the BARO baseline")
    except Exception as err:  # e.g. an ONNX file onnxruntime cannot load: same fallback, named
        return Fallback(Baro()), ModelProblem("BundleInvalid", f"bundle {settings.bundle_dir} failed to load "
                                              f"({type(err).__name__}: {err}); ranking with the BARO baseline")


def prometheus_client_for(settings: Settings, retry=None):
    """A PrometheusConnect with the settings' token and CA; `retry` (a urllib3 Retry) replaces the client's own."""
    from prometheus_api_client import PrometheusConnect

    headers = {}
    if settings.prometheus_token_file is not None:
        headers["Authorization"] = f"Bearer {settings.prometheus_token_file.read_text().strip()}"
    prom = PrometheusConnect(url=settings.prometheus_url, headers=headers or None, disable_ssl=False, retry=retry)
    if settings.ca_bundle is not None:
        prom._session.verify = str(settings.ca_bundle)  # the client has no CA option; its session does
    return prom


def logs_fetcher(settings: Settings) -> LogsFetcher:
    """Log rows of a window from Loki, cleaned chunk by chunk (`logchunks`): the settled chunks of one incident
    serve the next one's reference hour."""
    client = LokiClient(settings.loki_url, token_file=settings.loki_token_file, ca_bundle=settings.ca_bundle,
                        timeout=settings.query_timeout, max_entries=settings.loki_max_lines)
    chunked = ChunkedLogs(client, chunk_cache(settings.log_cache_rows), settings.pod_label)

    def fetch(namespace: str, start: datetime, n_bins: int, pod_service: Callable[[], dict[str, str]]) -> pd.DataFrame:
        try:
            # clean the lines first: the pod->service map comes from the metrics, which may still be on their way
            templated, truncated = chunked.window(selector(namespace, namespace_label=settings.namespace_label),
                                                  start, n_bins)
        except LokiUnavailable as err:
            raise SourceUnavailable("LokiUnavailable", str(err), "timeout" if "timed out" in str(err)
                                    else "unreachable") from err
        except LokiError as err:  # a query Loki refuses will not succeed on retry: rank without logs, say why
            raise SourceUnavailable("LokiQueryError", str(err), "rejected") from err
        mapping = pod_service()
        rows = service_rows(templated, mapping, services=set(mapping.values()))
        rows.attrs["truncated"] = truncated
        return rows

    return fetch


def make_sources(settings: Settings) -> tuple[MetricsFetcher, LogsFetcher | None, PodInfoFetcher, TracesFetcher]:
    """(metrics, logs, pod info, traces) fetchers, as `pipeline.step` takes them: logs only with a Loki URL; the
    traces are the catalog's trace series from the same Prometheus (one without trace series gives empty frames)."""
    from lemzha_operator.traces import traces_fetcher

    prom = prometheus_client_for(settings)
    cache = RangeCache(settings.query_cache_samples)  # settled range-query points, shared by metrics and traces
    return (metrics_fetcher(prom, timeout=settings.query_timeout, cache=cache),
            logs_fetcher(settings) if settings.loki_url else None,
            pod_info_fetcher(prom, timeout=settings.query_timeout),
            traces_fetcher(prom, timeout=settings.query_timeout, cache=cache))
