"""Training-free and prior baselines, each a `Ranker`.

- `ServicePrior`: how often each service was the root cause in training.
- `NSigma`: max over bins from onset, metrics and pods of |x - mean_pre| / std_pre.
- `Baro`: the same with BARO's robust z (`lemzha.evidence.robust_z`).
- `NSigmaLogShare`: rank-average of the N-sigma score and the rise in the share of ERROR/FATAL log lines (called
  "SimpleRCA-style" before the faithful SimpleRCA, `lemzha.rankers.SimpleRCA`, was written).
- `NSigmaLogShareTraces`: the same plus the N-sigma score of each service's span P95 latency (uncovered bins are
  missing; a scenario without traces gives every service the same trace rank).
- `TraceP95`: that trace term alone.
- `TraceGap`: the call-gap term of `lemzha.tracegap` alone (the rise of the client - server duration on the edges
  into a service).

The metric baselines need an onset bin: the scenario's own onset when it has one, otherwise
`lemzha.detect.onset.cusum_onset`, which reads only the metric values (never the label). `random_ranking_metrics`
gives the analytic expectation of a uniformly random ranking, the floor every ranker should beat.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lemzha.detect.onset import resolve_onset_bin
from lemzha.evidence import IQR_FLOOR_ABS, IQR_FLOOR_FRACTION, max_after, robust_z
from lemzha.logs import ERROR_LEVELS
from lemzha.ranking import Ranking
from lemzha.scenario import Scenario
from lemzha.tracegap import trace_gap_scores

# The std floor mirrors the IQR floor of robust_z, so that both z-scores treat a flat reference alike.
STD_FLOOR_FRACTION = IQR_FLOOR_FRACTION
STD_FLOOR_ABS = IQR_FLOOR_ABS


# -- shared pieces -------------------------------------------------------------------------------------------------
def nsigma_z(values: np.ndarray, onset_bin: int) -> np.ndarray:
    """|x - mean_pre| / max(std_pre, floor) for every bin, bins [0, onset_bin) as the reference; NaN where missing."""
    values = np.asarray(values, dtype=np.float64)
    onset_bin = int(np.clip(onset_bin, 1, values.shape[0]))
    reference = values[:onset_bin]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN reference slices are expected
        mean = np.nanmean(reference, axis=0)
        std = np.nanstd(reference, axis=0)
    scale = np.maximum(std, np.maximum(np.abs(mean) * STD_FLOOR_FRACTION, STD_FLOOR_ABS))
    return np.abs(values - mean) / scale


def service_max(scenario: Scenario, pod_scores: np.ndarray) -> dict[str, float]:
    """Per service, the max over its pods of `pod_scores` (P,); a service without any finite score gets 0."""
    out = np.full(len(scenario.services), -np.inf)
    # fmax ignores NaN, so a pod without evidence never hides its siblings.
    np.fmax.at(out, scenario.pod_service_index(), np.asarray(pod_scores, dtype=np.float64))
    out[~np.isfinite(out)] = 0.0
    return dict(zip(scenario.services, out.tolist(), strict=True))


def _pod_max(z: np.ndarray, onset_bin: int) -> np.ndarray:
    """(T, P, M) z-scores -> (P,) max over bins from onset and over metrics (NaN if a pod has none)."""
    per_metric = max_after(z, onset_bin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pods with no sample after onset
        return np.nanmax(per_metric, axis=1) if per_metric.shape[1] else np.full(per_metric.shape[0], np.nan)


def nsigma_scores(scenario: Scenario) -> dict[str, float]:
    """Per service, the max N-sigma z from onset over its pods and metrics (0 without data)."""
    onset_bin = resolve_onset_bin(scenario)
    return service_max(scenario, _pod_max(nsigma_z(scenario.values, onset_bin), onset_bin))


def baro_scores(scenario: Scenario) -> dict[str, float]:
    """Per service, the max robust z from onset over its pods and metrics (0 without data)."""
    onset_bin = resolve_onset_bin(scenario)
    return service_max(scenario, _pod_max(robust_z(scenario.values, onset_bin), onset_bin))


def error_share_increase(scenario: Scenario, onset_bin: int) -> dict[str, float]:
    """Per service, share of ERROR+FATAL log lines from onset on minus the share before onset.

    A side with no log lines has share 0; a service without logs gets 0.
    """
    scores = dict.fromkeys(scenario.services, 0.0)
    logs = scenario.logs
    if not len(logs):
        return scores
    frame = pd.DataFrame(
        {
            "service": logs["service"].astype(str).to_numpy(),
            "after": (logs["bin"] >= onset_bin).to_numpy(),
            "total": logs["count"].to_numpy(dtype=np.float64),
            "error": np.where(logs["level"].isin(ERROR_LEVELS).to_numpy(dtype=bool), logs["count"], 0).astype(float),
        }
    )
    sums = frame.groupby(["service", "after"])[["total", "error"]].sum()
    share = (sums["error"] / sums["total"]).unstack("after").reindex(columns=[False, True]).fillna(0.0)
    for service, row in share.iterrows():
        scores[str(service)] = float(row[True] - row[False])
    return scores


def _rank_average(*score_maps: dict[str, float]) -> dict[str, float]:
    """-(mean of per-criterion ranks), rank 1 = highest score, ties share their average rank."""
    frame = pd.DataFrame({i: pd.Series(m, dtype=np.float64) for i, m in enumerate(score_maps)}).fillna(0.0)
    ranks = frame.rank(method="average", ascending=False)
    return {str(s): float(-v) for s, v in ranks.mean(axis=1).items()}


# -- rankers -------------------------------------------------------------------------------------------------------
class ServicePrior:
    """Ranks services by how often each was the root cause in the training scenarios."""

    name = "service_prior"

    def __init__(self) -> None:
        self.frequency: dict[str, float] = {}

    def fit(self, train: Sequence[Scenario]) -> None:
        # fit is the only place a label is read, and only for training scenarios.
        counts = Counter(s.label.root_cause_service for s in train if s.label is not None)
        total = sum(counts.values())
        self.frequency = {svc: n / total for svc, n in counts.items()} if total else {}

    def rank(self, scenario: Scenario) -> Ranking:
        return Ranking.from_scores({s: self.frequency.get(s, 0.0) for s in scenario.services})


class NSigma:
    """Max N-sigma deviation from the pre-onset mean/std over bins from onset, metrics and pods."""

    name = "nsigma"

    def fit(self, train: Sequence[Scenario]) -> None:
        """Training-free."""

    def rank(self, scenario: Scenario) -> Ranking:
        return Ranking.from_scores(nsigma_scores(scenario))


class Baro:
    """BARO: max robust z (pre-onset median/IQR) over bins from onset, metrics and pods."""

    name = "baro"

    def fit(self, train: Sequence[Scenario]) -> None:
        """Training-free."""

    def rank(self, scenario: Scenario) -> Ranking:
        return Ranking.from_scores(baro_scores(scenario))


class NSigmaLogShare:
    """Rank-average of the N-sigma service score and the rise in the service's ERROR/FATAL log share."""

    name = "nsigma_logshare"

    def fit(self, train: Sequence[Scenario]) -> None:
        """Training-free."""

    def rank(self, scenario: Scenario) -> Ranking:
        onset_bin = resolve_onset_bin(scenario)
        metric = service_max(scenario, _pod_max(nsigma_z(scenario.values, onset_bin), onset_bin))
        return Ranking.from_scores(_rank_average(metric, error_share_increase(scenario, onset_bin)))


def trace_p95_scores(scenario: Scenario, onset_bin: int) -> dict[str, float]:
    """Per traced service, the max N-sigma z of its span P95 latency from onset on, the reference being its covered
    bins before the onset; 0 for a service without traces or without a covered bin on either side."""
    scores = dict.fromkeys(scenario.services, 0.0)
    frame = scenario.service_metrics
    if frame is None or not len(frame):
        return scores
    table = frame.pivot(index="bin", columns="service", values="trace_latency_p95_ms")
    table = table.reindex(range(scenario.n_bins))
    z = nsigma_z(table.to_numpy(np.float64), onset_bin)[onset_bin:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # services with no finite z after onset
        peak = np.nanmax(z, axis=0) if len(z) else np.full(z.shape[1], np.nan)
    for service, value in zip(table.columns, peak, strict=True):
        if np.isfinite(value):
            scores[str(service)] = float(value)
    return scores


class NSigmaLogShareTraces:
    """`NSigmaLogShare` with a trace term: rank-average of the N-sigma metric score, the rise in the ERROR/FATAL log
    share and the N-sigma score of the service's span P95 latency."""

    name = "nsigma_logshare_traces"

    def fit(self, train: Sequence[Scenario]) -> None:
        """Training-free."""

    def rank(self, scenario: Scenario) -> Ranking:
        onset_bin = resolve_onset_bin(scenario)
        metric = service_max(scenario, _pod_max(nsigma_z(scenario.values, onset_bin), onset_bin))
        return Ranking.from_scores(_rank_average(metric, error_share_increase(scenario, onset_bin),
                                                 trace_p95_scores(scenario, onset_bin)))


class TraceP95:
    """Traces alone: the N-sigma score of each service's span P95 latency (`NSigmaLogShareTraces`' term), to
    show what the trace modality carries without metrics or logs."""

    name = "trace_p95"

    def fit(self, train: Sequence[Scenario]) -> None:
        """Training-free."""

    def rank(self, scenario: Scenario) -> Ranking:
        return Ranking.from_scores(trace_p95_scores(scenario, resolve_onset_bin(scenario)))


class TraceGap:
    """Traces alone, through the service graph: the rise of the client - server gap on the edges into a service."""

    name = "trace_gap"

    def fit(self, train: Sequence[Scenario]) -> None:
        """Training-free."""

    def rank(self, scenario: Scenario) -> Ranking:
        return Ranking.from_scores(trace_gap_scores(scenario, resolve_onset_bin(scenario)))


BASELINES: tuple[type, ...] = (ServicePrior, NSigma, Baro, NSigmaLogShare, NSigmaLogShareTraces, TraceP95, TraceGap)


# -- random floor --------------------------------------------------------------------------------------------------
def random_ranking_metrics(n_services: int, k_values: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of n services: Acc@k = min(k, n)/n, MRR = H_n/n,
    Avg@5 = mean of Acc@1..Acc@5. Keys: acc{k} for each k, avg5, mrr."""
    n = int(n_services)
    if n < 1:
        raise ValueError(f"n_services must be positive, got {n}")
    out = {f"acc{k}": min(int(k), n) / n for k in k_values}
    out["avg5"] = float(np.mean([min(k, n) / n for k in range(1, 6)]))
    out["mrr"] = float(np.sum(1.0 / np.arange(1, n + 1)) / n)
    return out
