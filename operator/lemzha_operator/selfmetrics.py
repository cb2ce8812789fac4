"""The operator's own metrics, served by prometheus_client on `/metrics` (LEMZHA_METRICS_PORT).

One registry for the process, so tests and the benchmark read exactly what a scrape would. Names follow the
Prometheus conventions: `_total` counters, `_seconds` histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes and friends

INCIDENTS = Counter("lemzha_incidents_total", "Incidents that reached a final phase, by outcome and method",
                    ["outcome", "method"], registry=REGISTRY)
STAGE_SECONDS = Histogram("lemzha_analysis_stage_seconds", "Time per analysis stage and attempt", ["stage"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                          registry=REGISTRY)
SOURCE_ERRORS = Counter("lemzha_source_errors_total", "Failed requests to a data source, by source and reason",
                        ["source", "reason"], registry=REGISTRY)
IN_PROGRESS = Gauge("lemzha_analyses_in_progress", "Incident attempts running now", registry=REGISTRY)
WATCH_STALE = Gauge("lemzha_watch_stale_objects", "Listed incident changes the watch has not delivered in time",
                    registry=REGISTRY)
# the Alertmanager webhook (alerts.py): every alert of an accepted post is received, then opens an incident, finds
# its incident open already, or is skipped for a reason; posts are counted by their HTTP status
ALERTS_RECEIVED = Counter("lemzha_alerts_received_total", "Alerts in accepted webhook posts, by alert status",
                          ["status"], registry=REGISTRY)
ALERT_INCIDENTS = Counter("lemzha_alert_incidents_total", "Firing alerts that opened an incident (opened) or whose "
                          "incident existed already (already_open: a repeat or a retried post)", ["result"],
                          registry=REGISTRY)
ALERTS_SKIPPED = Counter("lemzha_alerts_skipped_total", "Alerts that opened no incident, by reason (resolved, "
                         "no_namespace_label, unwatched_namespace, rate_limited)", ["reason"], registry=REGISTRY)
ALERT_POSTS = Counter("lemzha_alert_posts_total", "Webhook posts by HTTP status code", ["code"], registry=REGISTRY)


class TemplateCacheCollector:
    """lemzha_template_cache_total{result="hit"|"miss"}: read at scrape time from the ranker's text embedder (a
    counter it keeps itself, so the core library needs no prometheus_client)."""

    def __init__(self, embedder_of: Callable[[], object | None]) -> None:
        self.embedder_of = embedder_of

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily("lemzha_template_cache", "Log-template embeddings answered from the cache "
                                     "(hit) or computed (miss)", labels=["result"])
        embedder = self.embedder_of()
        family.add_metric(["hit"], float(getattr(embedder, "hits", 0)))
        family.add_metric(["miss"], float(getattr(embedder, "misses", 0)))
        yield family


_template_collector: TemplateCacheCollector | None = None


def watch_templates(embedder_of: Callable[[], object | None]) -> None:
    """Export the template-cache counters of whichever embedder `embedder_of()` returns (registered once)."""
    global _template_collector
    if _template_collector is None:
        _template_collector = TemplateCacheCollector(embedder_of)
        REGISTRY.register(_template_collector)
    else:
        _template_collector.embedder_of = embedder_of


def record_attempt(timings: dict[str, float], source_errors: Iterable[tuple[str, str]]) -> None:
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(stage).observe(seconds)
    for source, reason in source_errors:
        SOURCE_ERRORS.labels(source, reason).inc()


def record_final(outcome: str, method: str) -> None:
    INCIDENTS.labels(outcome, method or "none").inc()


def serve(port: int) -> None:
    """Start the /metrics server on a daemon thread (port 0: do not serve)."""
    if port:
        start_http_server(port, registry=REGISTRY)
