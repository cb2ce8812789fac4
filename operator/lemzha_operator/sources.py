"""Wire settings to live sources and the ranker, in the shapes `pipeline.step` takes."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from lemzha.baselines import Baro
from lemzha.ranking import Ranker
from lemzha_operator.loki import LokiClient, LokiError, LokiUnavailable, log_rows, selector
from lemzha_operator.pipeline import LogsFetcher, MetricsFetcher, PodInfoFetcher, SourceUnavailable
from lemzha_operator.prometheus import metrics_fetcher, pod_info_fetcher
from lemzha_operator.settings import Settings


def model_status(ranker: Ranker) -> dict:
    """status.model: which bundle ranked (its directory name and the sha256 of its bundle.json)."""
    bundle = getattr(ranker, "bundle", None)
    if bundle is None:
        return {"bundle": "none", "sha": ""}
    return {"bundle": bundle.directory.name, "sha": bundle.sha}


def make_ranker(settings: Settings) -> Ranker:
    """The bundle's model (torch-free); without a bundle, the BARO baseline (status.method says which)."""
    if settings.bundle_dir is None:
        return Baro()
    from lemzha.onnx_ranker import OnnxRanker

    return OnnxRanker(settings.bundle_dir, cache_dir=settings.cache_dir)


def _prometheus(settings: Settings):
    from prometheus_api_client import PrometheusConnect

    headers = {}
    if settings.prometheus_token_file is not None:
        headers["Authorization"] = f"Bearer {settings.prometheus_token_file.read_text().strip()}"
    prom = PrometheusConnect(url=settings.prometheus_url, headers=headers or None, disable_ssl=False)
    if settings.ca_bundle is not None:
        prom._session.verify = str(settings.ca_bundle)  # the client has no CA option; its session does
    return prom


def logs_fetcher(settings: Settings) -> LogsFetcher:
    client = LokiClient(settings.loki_url, token_file=settings.loki_token_file, ca_bundle=settings.ca_bundle)

    def fetch(namespace: str, start: datetime, n_bins: int, pod_service: dict[str, str]) -> pd.DataFrame:
        end = start + timedelta(seconds=30 * n_bins)
        try:
            result = client.fetch(selector(namespace, namespace_label=settings.namespace_label), start, end)
        except LokiUnavailable as err:
            raise SourceUnavailable("LokiUnavailable", str(err)) from err
        except LokiError as err:  # a query Loki refuses will not succeed on retry: rank without logs, say why
            raise SourceUnavailable("LokiQueryError", str(err)) from err
        rows = log_rows(result.entries, start, n_bins, settings.pod_label, pod_service,
                        services=set(pod_service.values()))
        rows.attrs["truncated"] = result.truncated
        return rows

    return fetch


def make_sources(settings: Settings) -> tuple[MetricsFetcher, LogsFetcher | None, PodInfoFetcher]:
    prom = _prometheus(settings)
    return (metrics_fetcher(prom), logs_fetcher(settings) if settings.loki_url else None, pod_info_fetcher(prom))
