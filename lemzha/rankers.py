"""Rule rankers over the signal table (`lemzha.signals`): the shipped evidence ranker and a faithful SimpleRCA.

`EvidenceRanker` (the product's ranker): each signal of each service is calibrated into evidence (log10 rarity among
ordinary services, `lemzha.calibration`), every signal whose evidence exceeds `threshold` is an alert, and a
service scores the sum of its alerts' evidence above the threshold:

    score(s) = sum_j max(0, evidence_j(s) - threshold)  +  1e-3 sum_j evidence_j(s)

(the small second term orders services that raise no alert). Only the signals in `signals` count. A caller echoes
its callee's failure in its own error lines, so the `log_errors` evidence of a service is halved (`ECHO_FACTOR`)
when a service it calls (in the window's traces) raises an alert of its own. The signal set
is chosen by mechanism (`MECHANISM_SIGNALS`: what a fault does to its own service) and inner validation picks
among `CANDIDATES`; `fit` only calibrates, on the training scenarios, without reading a label.

`SimpleRCA` follows Fang et al. (arXiv 2510.04711, section 3.1.2): per service, one alert per metric above a 3-sigma
band learned from the normal period, one if its span P95 latency exceeds 3x its normal level, one if its error-keyword
log lines spike over normal; the service with the most alerts is the root cause. The normal period is the
scenario's own bins before the onset (with Nezha, up to an hour, including the day's fault-free construct minute
when it falls there). Ties, which the paper does not break, go to the larger sum of the alerts' sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lemzha.baselines import nsigma_z, service_max
from lemzha.calibration import Calibration, fit_calibration
from lemzha.catalog import Scope, spec
from lemzha.detect.onset import resolve_onset_bin
from lemzha.logs import is_error_line
from lemzha.ranking import Ranking
from lemzha.scenario import Scenario
from lemzha.signals import HORIZON_BINS, SignalTable, signal_table

# What a fault does to its own service, by mechanism: it burns CPU or memory, its code logs errors or stops
# logging what it used to, calls into it wait. Victims upstream show the other signals (their client latency,
# their traffic), which is why those are left out.
MECHANISM_SIGNALS = ("cpu", "memory", "log_errors", "log_vanished", "call_gap")
THRESHOLDS = (0.5, 1.0, 1.5)
ECHO_FACTOR = 0.5
ONSET_SCAN_STEP = 3  # bins between the onsets tried when a scenario gives none
ONSET_MARGIN_SHARE = 0.9


def onset_candidates(n_bins: int) -> range:
    """The onsets an evidence ranker tries without a given one: from a sixth of the window (a reference to compare
    with) to two bins before its end (something to compare)."""
    first = max(2, n_bins // 6)
    return range(first, max(first + 1, n_bins - 1), ONSET_SCAN_STEP)


@dataclass(frozen=True)
class EvidenceConfig:
    signals: tuple[str, ...] = MECHANISM_SIGNALS
    threshold: float = 1.0

    def __post_init__(self) -> None:
        if not self.signals:
            raise ValueError("an evidence ranker needs at least one signal")
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"threshold must be finite and >= 0, got {self.threshold!r}")

    @property
    def name(self) -> str:
        return f"{'+'.join(self.signals)}@{self.threshold:g}"

    def to_json(self) -> dict:
        return {"signals": list(self.signals), "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: dict) -> EvidenceConfig:
        return cls(tuple(str(s) for s in data["signals"]), float(data["threshold"]))


# The configurations inner validation chooses among (fixed before any test-day run of this ranker; designed while
# looking at all four Nezha days: docs/ranker.md, "How it was designed, honestly").
CANDIDATES: tuple[EvidenceConfig, ...] = tuple(
    EvidenceConfig(signals, threshold)
    for signals in (MECHANISM_SIGNALS,
                    (*MECHANISM_SIGNALS, "server_latency", "span_p95"),
                    (*MECHANISM_SIGNALS, "log_new"))
    for threshold in THRESHOLDS
)


@dataclass(frozen=True)
class Assessment:
    """What the evidence ranker saw in one scenario: the ranking, each service's evidence and alerts."""

    ranking: Ranking
    table: SignalTable
    signals: tuple[str, ...]
    evidence: np.ndarray  # (S, len(signals))
    threshold: float

    def alerts(self, service: str) -> list[tuple[str, float]]:
        """(signal, evidence) of the service's alerts, strongest first."""
        i = self.table.services.index(service)
        fired = [(name, float(self.evidence[i, j])) for j, name in enumerate(self.signals)
                 if self.evidence[i, j] > self.threshold]
        return sorted(fired, key=lambda item: -item[1])


@dataclass
class EvidenceRanker:
    """The shipped ranker: calibrated signal evidence, summed over alerts (module docstring)."""

    config: EvidenceConfig = field(default_factory=EvidenceConfig)
    calibration: Calibration | None = None
    name: str = "evidence"
    horizon: int = HORIZON_BINS
    bundle: object = None  # the verified `lemzha.bundle.Bundle` it was read from, if any

    def fit(self, train: Sequence[Scenario]) -> None:
        """Calibrate on the training scenarios (their own onsets, never their labels)."""
        self.calibration = fit_calibration(self.tables(train))

    def tables(self, scenarios: Sequence[Scenario]) -> list[SignalTable]:
        return [signal_table(s.without_label(), resolve_onset_bin(s), self.horizon) for s in scenarios]

    def assess(self, scenario: Scenario, table: SignalTable | None = None) -> Assessment:
        """The assessment at the scenario's onset. Without one, at the onset that singles one service out most: among
        the candidate bins (every ONSET_SCAN_STEP from a sixth of the window on), those where the top service's lead
        over the second is within ONSET_MARGIN_SHARE of the largest lead, the latest (an onset a little early still
        holds the whole fault in its after bins, so leads tie over several candidates)."""
        if self.calibration is None:
            raise RuntimeError(f"{self.name}: fit() or a calibration is needed before ranking")
        if table is not None:
            return assess_table(table, self.calibration, self.config)
        if scenario.onset_bin is not None:
            return assess_table(signal_table(scenario, resolve_onset_bin(scenario), self.horizon), self.calibration,
                                self.config)
        candidates = [assess_table(signal_table(scenario, onset, self.horizon), self.calibration, self.config)
                      for onset in onset_candidates(scenario.n_bins)]
        lead = np.array([a.ranking.scores[0] - (a.ranking.scores[1] if len(a.ranking.scores) > 1 else 0.0)
                         for a in candidates])
        return candidates[int(np.flatnonzero(lead >= ONSET_MARGIN_SHARE * lead.max())[-1])]

    def rank(self, scenario: Scenario) -> Ranking:
        return self.assess(scenario).ranking

    def to_json(self) -> dict:
        if self.calibration is None:
            raise RuntimeError("an unfitted evidence ranker has no calibration to save")
        return {"config": self.config.to_json(), "horizon_bins": self.horizon,
                "calibration": self.calibration.to_json()}

    @classmethod
    def from_json(cls, data: dict, name: str = "evidence") -> EvidenceRanker:
        return cls(EvidenceConfig.from_json(data["config"]), Calibration.from_json(data["calibration"]), name,
                   int(data.get("horizon_bins", HORIZON_BINS)))


def assess_table(table: SignalTable, calibration: Calibration, config: EvidenceConfig) -> Assessment:
    """Score a precomputed signal table (lodocv computes each table once and scores it under every candidate)."""
    evidence = calibration.evidence(table, config.signals)
    if "log_errors" in config.signals and table.calls:
        alerting = np.clip(evidence - config.threshold, 0.0, None).sum(axis=1) > 0
        index = {s: i for i, s in enumerate(table.services)}
        echo = {index[a] for a, b in table.calls if a in index and b in index and alerting[index[b]]}
        evidence[sorted(echo), config.signals.index("log_errors")] *= ECHO_FACTOR
    scores = np.clip(evidence - config.threshold, 0.0, None).sum(axis=1) + 1e-3 * evidence.sum(axis=1)
    ranking = Ranking.from_scores(dict(zip(table.services, scores.tolist(), strict=True)))
    return Assessment(ranking, table, config.signals, evidence, config.threshold)


# -- SimpleRCA, faithfully ---------------------------------------------------------------------------------------
SIGMA = 3.0  # the metric band: mean +- 3 std of the normal period
P95_FACTOR = 3.0  # a span P95 above 3x its normal level


def simplerca_alerts(scenario: Scenario, onset_bin: int, horizon: int = HORIZON_BINS) -> dict[str, dict[str, float]]:
    """Per service, its alerts: {"metric:<name>" | "trace_p95" | "log_errors": size}; size is the z (metrics), the
    P95 ratio (traces) or the error-line ratio to normal (logs)."""
    alerts: dict[str, dict[str, float]] = {s: {} for s in scenario.services}
    after = slice(onset_bin, min(scenario.n_bins, onset_bin + horizon))
    z = nsigma_z(scenario.values, onset_bin)[after]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # series without a sample after the onset
        peak = np.nanmax(z, axis=0) if len(z) else np.full(scenario.values.shape[1:], np.nan)  # (P, M)
    for m, metric in enumerate(scenario.metrics):
        if spec(metric).scope is not Scope.POD:
            continue  # a node's value sits on all of its pods: it names no service
        per_service = service_max(scenario, peak[:, m])
        for service, value in per_service.items():
            if value > SIGMA:
                alerts[service][f"metric:{metric}"] = value
    frame = scenario.service_metrics
    if frame is not None and len(frame):
        for service, rows in frame.groupby("service"):
            p95 = rows["trace_latency_p95_ms"].to_numpy(np.float64)
            b = rows["bin"].to_numpy()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # no covered bin on one side
                normal = np.nanmedian(p95[b < onset_bin])
                now = np.nanmax(p95[(b >= after.start) & (b < after.stop)], initial=np.nan)
            if str(service) in alerts and normal > 0 and now > P95_FACTOR * normal:
                alerts[str(service)]["trace_p95"] = now / normal
    logs = scenario.logs
    if len(logs):
        covered = np.unique(logs["bin"].to_numpy())
        ref_bins = covered[covered < onset_bin]
        after_bins = covered[(covered >= after.start) & (covered < after.stop)]
        if len(ref_bins) and len(after_bins):
            errors = logs.loc[[is_error_line(t, lv) for t, lv in zip(logs["template"].astype(str),
                                                                       logs["level"].astype(str), strict=True)]]
            per_bin = errors.groupby(["service", "bin"])["count"].sum()
            for service in scenario.services:
                series = per_bin.get(service)
                counts = (series.reindex(covered, fill_value=0) if series is not None
                          else np.zeros(len(covered)))
                counts = np.asarray(counts, dtype=np.float64)
                ref = counts[np.isin(covered, ref_bins)]
                now = counts[np.isin(covered, after_bins)].max()
                band = ref.mean() + SIGMA * ref.std()
                if now > band and now > 0:
                    alerts[service]["log_errors"] = now / max(ref.mean(), 1.0)
    return alerts


class SimpleRCA:
    """Fang et al.'s SimpleRCA: the service with the most alerts (module docstring); training-free."""

    name = "simplerca"

    def fit(self, train: Sequence[Scenario]) -> None:
        """Training-free."""

    def rank(self, scenario: Scenario) -> Ranking:
        alerts = simplerca_alerts(scenario, resolve_onset_bin(scenario))
        # most alerts first; among equals, the larger total size (log-compressed: z-scores and ratios mix)
        return Ranking.from_scores({s: len(a) + 1e-3 * sum(np.log1p(v) for v in a.values())
                                    for s, a in alerts.items()})
