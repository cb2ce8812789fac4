"""OpenMetrics text for replayed series: labels, timestamps and the samples a replay keeps. Shared by
`offline.replay` (the catalog's series) and `offline.bench.exporter_replay` (raw exporter series)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lemzha.binning import BIN_SECONDS
from lemzha.catalog import MetricSpec

PROMTOOL = "/usr/bin/promtool"
BIN_MS = BIN_SECONDS * 1000
MARGIN_MS = 5 * 60_000  # with --ids: samples written before a window so its first counter bins have a predecessor

# cAdvisor-style selectors exclude container="" and container="POD"; a real app container is named, so write one.
CONTAINER = (("container", "app"),)


def series_labels(spec: MetricSpec, namespace: str, pod: str) -> tuple[tuple[str, str], ...]:
    labels = [("namespace", namespace), ("pod", pod)]
    if "container" in spec.selector_extra:
        labels += CONTAINER
    return (*labels, *spec.replay.labels)


def fmt_ts(ms: int) -> str:
    # exact decimal milliseconds; Prometheus parses float seconds and truncates *1000, which cannot cross a bin edge
    return f"{ms // 1000}.{ms % 1000:03d}"


def fmt_labels(labels: Iterable[tuple[str, str]]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{k}="{esc(v)}"' for k, v in labels)


def keep_samples(times_ms: np.ndarray, windows: tuple[tuple[int, int], ...] | None) -> np.ndarray:
    """The samples to write: all of them without windows, else those in a window or MARGIN_MS before it."""
    if windows is None:
        return np.ones(len(times_ms), dtype=bool)
    keep = np.zeros(len(times_ms), dtype=bool)
    for lo, hi in windows:
        keep |= (times_ms >= lo - MARGIN_MS) & (times_ms < hi)
    return keep
