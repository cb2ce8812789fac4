"""The one contract of every source: the fetchers `pipeline.step` takes, and the errors they raise.

The adapters (`prometheus.py`, `loki.py` with `logchunks.py`, `traces.py`) implement these shapes and raise
`SourceUnavailable`; the pipeline consumes them. Neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd

MetricsFetcher = Callable[[str, datetime, int], tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]]
# (namespace, start, n_bins, pod_service) -> log rows. The logs are fetched while the metrics are: `pod_service()`
# blocks until the metrics have named the pods, so a fetcher calls it only once it has fetched and cleaned its lines.
LogsFetcher = Callable[[str, datetime, int, Callable[[], dict[str, str]]], pd.DataFrame]
PodInfoFetcher = Callable[[str, datetime, int], object]  # -> PodInfo(owners: pod->controller, labels: pod->labels)
TracesFetcher = Callable[[str, datetime, int, set[str]], tuple[pd.DataFrame, pd.DataFrame]]  # (service_metrics, edges)


class DataUnavailable(RuntimeError):
    """The sources answered but hold no data for the window."""


class SourceUnavailable(RuntimeError):
    """A source could not be reached; `reason` is the condition reason (PrometheusUnavailable, LokiUnavailable),
    `kind` what went wrong, for the self-metrics (unreachable, timeout, server_error, bad_answer, rejected)."""

    def __init__(self, reason: str, message: str, kind: str = "unreachable") -> None:
        super().__init__(message)
        self.reason = reason
        self.kind = kind

    @property
    def source(self) -> str:
        return self.reason.removesuffix("Unavailable").removesuffix("QueryError").lower()
