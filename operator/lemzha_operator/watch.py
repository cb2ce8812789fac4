"""RCAWatch decisions as plain functions: which window to fetch, did the detector fire, when did it start, which
incident to open. `evaluate()` runs one evaluation with injected fetch/list/create callables; the kopf layer
(`watches.py`) only supplies them and writes the status. Everything here runs without a cluster.

One evaluation at clock time `now`:
1. the window is the `history + scan` bins of 30 s ending at floor(now) (the bin holding `now` is incomplete and not
   fetched); `history` is what the detector's trailing reference needs, `scan` = minDuration + interval + 2 bins;
2. `lemzha_operator.prometheus.fetch_metrics` (the incidents' catalog and binning) gives the (T, P, M) values, the
   detector (`lemzha.detect.make_detector`) a score in (0, 1] per bin;
3. it fires when a run of bins with score >= threshold, at least minDuration long, *starts* in the scan part (a run
   that started before it was already seen by an earlier evaluation, as long as evaluations were not skipped); the
   run's first bin is the estimated onset (the first crossing of the run); several runs in one scan part are taken
   in time order, so the incidents opened do not depend on `interval`;
4. the incident is named `<watch>-<onset yyyymmdd-hhmmss>`, so evaluating the same time again names the same
   incident and creating it again is a no-op (409 AlreadyExists); an onset not after the last firing's onset was
   handled already, and one less than `cooldown` after it is suppressed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from lemzha.binning import BIN_SECONDS, as_utc, floor_to_bin, rfc3339
from lemzha_operator.pipeline import condition
from lemzha_operator.resources import (  # noqa: F401  (re-exported for watches.py)
    GROUP,
    INCIDENT_KIND,
    INCIDENT_PLURAL,
    VERSION,
    WATCH_KIND,
    WATCH_PLURAL,
)
from lemzha_operator.settings import FINAL_PHASES
from lemzha_operator.window import parse_duration

WATCH_LABEL = "lemzha.io/watch"
DETECTORS = ("robust_z", "bocpd")  # the torch-free zero-shot detectors; the bundle carries no fitted trained ones
# bins of context before the scanned part: the detector's trailing reference (robust_z 20 bins, bocpd 60) + 4
HISTORY_BINS = {"robust_z": 24, "bocpd": 64}
SCAN_MARGIN_BINS = 2
MAX_OPEN = 50  # status.openIncidents is bounded like the CRD says
NAME_MAX = 63  # incident names stay DNS labels (Event names and labels derive from them)


def parse_time(text: str | None) -> datetime | None:
    return as_utc(str(text).replace("Z", "+00:00")) if text else None


@dataclass(frozen=True)
class WatchSpec:
    """A watch's spec with the CRD's defaults applied (the schema defaults them too; this covers older objects)."""

    name: str
    namespace: str
    uid: str
    target: str
    detector: str
    threshold: float
    min_duration: timedelta = timedelta(minutes=1)
    cooldown: timedelta = timedelta(minutes=10)
    interval: timedelta = timedelta(minutes=1)
    suspend: bool = False
    pod_selector: dict | None = None

    @classmethod
    def from_object(cls, spec: dict, meta: dict) -> WatchSpec:
        detector = str(spec.get("detector", ""))
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; choose from {', '.join(DETECTORS)}")
        threshold = float(spec.get("threshold", 0))
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold {threshold} is not in (0, 1]")
        return cls(name=meta["name"], namespace=meta.get("namespace") or "default", uid=str(meta.get("uid", "")),
                   target=spec.get("targetNamespace") or meta.get("namespace") or "default", detector=detector,
                   threshold=threshold, min_duration=parse_duration(spec.get("minDuration", "1m"), "minDuration"),
                   cooldown=parse_duration(spec.get("cooldown", "10m"), "cooldown"),
                   interval=parse_duration(spec.get("interval", "1m"), "interval"),
                   suspend=bool(spec.get("suspend", False)),
                   pod_selector=dict(spec["podSelector"]) if spec.get("podSelector") else None)

    @property
    def min_bins(self) -> int:
        return max(1, math.ceil(self.min_duration.total_seconds() / BIN_SECONDS))

    @property
    def interval_bins(self) -> int:
        return max(1, math.ceil(self.interval.total_seconds() / BIN_SECONDS))

    @property
    def scan_bins(self) -> int:
        return self.min_bins + self.interval_bins + SCAN_MARGIN_BINS

    @property
    def history_bins(self) -> int:
        return HISTORY_BINS[self.detector]


def window_for(watch: WatchSpec, now: datetime) -> tuple[datetime, int]:
    """(start, n_bins) of the window to fetch: history + scan bins ending at floor(now), exclusive."""
    n_bins = watch.history_bins + watch.scan_bins
    end = floor_to_bin(now)
    return end - timedelta(seconds=n_bins * BIN_SECONDS), n_bins


def due(watch: WatchSpec, last_evaluation: datetime | None, now: datetime) -> bool:
    """Evaluate now? Yes when never evaluated, when `interval` has passed since the last evaluation, or when the
    clock went back (a replay restarted)."""
    return last_evaluation is None or now >= last_evaluation + watch.interval or now < last_evaluation


def score(detector: str, values: np.ndarray) -> np.ndarray:
    """(T,) scores in (0, 1] of one zero-shot detector (lemzha.detect imports neither torch nor scikit-learn)."""
    from lemzha.detect import make_detector

    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; choose from {', '.join(DETECTORS)}")
    if values.size == 0 or values.shape[1] == 0:
        return np.zeros(values.shape[0])
    return np.asarray(make_detector(detector).score(values), dtype=np.float64)


@dataclass(frozen=True)
class Firing:
    """Where the detector fired: the run's first bin (the onset) and its length in bins (up to the window end)."""

    onset_bin: int
    run_bins: int


def find_firings(scores: np.ndarray, threshold: float, min_bins: int, scan_bins: int) -> list[Firing]:
    """The runs of scores >= threshold at least `min_bins` long that start within the last `scan_bins` bins, in time
    order (a run is followed back before the scan part only to confirm it did not start there: a run that did was
    seen by an earlier evaluation). A run starting at bin 0 is cut by the window and never counts."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    scan_from = max(1, n - scan_bins)
    alarm = scores >= threshold
    found: list[Firing] = []
    b = 0
    while b < n:
        if not alarm[b]:
            b += 1
            continue
        start = b
        while b < n and alarm[b]:
            b += 1
        if start >= scan_from and b - start >= min_bins:
            found.append(Firing(start, b - start))
    return found


def incident_name(watch_name: str, onset: datetime) -> str:
    """`<watch>-<yyyymmdd-hhmmss>`, at most 63 characters: a long watch name is cut and a hash of the whole name
    keeps it unique. Deterministic, so the same onset always names the same incident."""
    suffix = "-" + as_utc(onset).strftime("%Y%m%d-%H%M%S")
    prefix = watch_name
    if len(prefix) + len(suffix) > NAME_MAX:
        digest = hashlib.sha256(watch_name.encode()).hexdigest()[:8]
        prefix = watch_name[: NAME_MAX - len(suffix) - 9].rstrip("-.") + "-" + digest
    return prefix + suffix


def watch_label(watch_name: str) -> str:
    """The `lemzha.io/watch` label value: the watch's name, or (over 63 characters) a cut name plus a hash."""
    if len(watch_name) <= 63:
        return watch_name
    digest = hashlib.sha256(watch_name.encode()).hexdigest()[:8]
    return watch_name[:54].rstrip("-.") + "-" + digest


def incident_body(watch: WatchSpec, onset: datetime, score_value: float | None = None) -> dict:
    """The RCAIncident the watch opens: faultTime = onset, the watch's target and pod selector, owned by the watch
    (controller, not blocking its deletion), labelled with the watch's name."""
    spec: dict = {"targetNamespace": watch.target, "faultTime": rfc3339(onset)}
    if watch.pod_selector:
        spec["podSelector"] = watch.pod_selector
    annotations = {"lemzha.io/detector": watch.detector, "lemzha.io/threshold": f"{watch.threshold:g}"}
    if score_value is not None:
        annotations["lemzha.io/score"] = f"{score_value:.4f}"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": INCIDENT_KIND,
        "metadata": {
            "name": incident_name(watch.name, onset),
            "namespace": watch.namespace,
            "labels": {WATCH_LABEL: watch_label(watch.name)},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": WATCH_KIND, "name": watch.name,
                                 "uid": watch.uid, "controller": True, "blockOwnerDeletion": False}],
        },
        "spec": spec,
    }


@dataclass
class Decision:
    """What one evaluation decided. `opens`: the onsets to open incidents for, in time order (several runs can start
    within one scan part when `interval` is long); `action` sums it up for the status."""

    action: str  # "open" | "seen" (onset already handled) | "cooldown" | "quiet"
    onset: datetime | None = None  # the last run's onset (the last opened one when action is "open")
    firing: Firing | None = None
    last_score: float | None = None
    message: str = ""
    opens: list[tuple[datetime, Firing]] = field(default_factory=list)


def decide(watch: WatchSpec, scores: np.ndarray, start: datetime, last_onset: datetime | None) -> Decision:
    """From one window's scores (bin 0 starting at `start`): the incidents to open, or why none. Each qualifying run
    is taken in time order: an onset not after the last handled one was seen already; one less than `cooldown` after
    the last opened one is suppressed; otherwise it opens and becomes the last one."""
    last_score = float(scores[-1]) if len(scores) else None
    firings = find_firings(scores, watch.threshold, watch.min_bins, watch.scan_bins)
    if not firings:
        return Decision("quiet", last_score=last_score,
                        message=f"{watch.detector} below {watch.threshold:g} for {watch.min_duration} or more")
    opens: list[tuple[datetime, Firing]] = []
    action, message, onset, firing = "quiet", "", None, None
    for firing in firings:
        onset = as_utc(start) + timedelta(seconds=firing.onset_bin * BIN_SECONDS)
        peak = float(np.max(scores[firing.onset_bin: firing.onset_bin + firing.run_bins]))
        if last_onset is not None and onset <= last_onset:
            action, message = "seen", f"onset {rfc3339(onset)} already handled"
        elif last_onset is not None and onset - last_onset < watch.cooldown:
            action = "cooldown"
            message = (f"fired at {rfc3339(onset)} (peak {peak:.3f}), within cooldown {watch.cooldown} of the last "
                       f"onset {rfc3339(last_onset)}: no new incident")
        else:
            opens.append((onset, firing))
            last_onset = onset
            action = "open"
            message = (f"{watch.detector} >= {watch.threshold:g} for {firing.run_bins * BIN_SECONDS} s from "
                       f"{rfc3339(onset)} (peak {peak:.3f})")
    if opens:
        onset, firing = opens[-1]
        if action != "open":
            message = f"opened {len(opens)}; then {message}"
        action = "open"
    return Decision(action, onset, firing, last_score, message, opens)


def open_incidents(items: list[dict], watch_uid: str) -> list[str]:
    """Names of the listed incidents owned by the watch (ownerReference uid) that are not Completed/Failed."""
    names = []
    for item in items:
        meta = item.get("metadata", {})
        owned = any(ref.get("uid") == watch_uid and ref.get("kind") == WATCH_KIND
                    for ref in meta.get("ownerReferences") or [])
        if owned and not meta.get("deletionTimestamp") and item.get("status", {}).get("phase") not in FINAL_PHASES:
            names.append(meta["name"])
    return sorted(names)[:MAX_OPEN]


@dataclass
class Evaluation:
    """One evaluation's result: the status fields to write (conditions unmerged) and the incident created, if any."""

    status: dict = field(default_factory=dict)
    conditions: list[dict] = field(default_factory=list)
    created: str | None = None  # the last incident created
    created_all: list[str] = field(default_factory=list)
    decision: Decision | None = None


Fetch = Callable[[str, datetime, int], object]  # (namespace, start, n_bins) -> FetchedMetrics-like (.values)
Create = Callable[[dict], bool]  # body -> True created, False already existed


def evaluate(watch: WatchSpec, status: dict, now: datetime, fetch: Fetch, create: Create,
             list_owned: Callable[[], list[dict]] | None = None) -> Evaluation:
    """One evaluation at clock time `now`. Exceptions of `fetch` (a Prometheus outage) propagate: the caller
    reports them in a condition and tries again at the next tick."""
    out = Evaluation()
    if watch.suspend:
        out.status = {"lastEvaluation": rfc3339(now)}
        out.conditions = [condition("Ready", False, "Suspended", "spec.suspend is true: not evaluating")]
        return out
    start, n_bins = window_for(watch, now)
    fetched = fetch(watch.target, start, n_bins)
    values = np.asarray(fetched.values)
    pods = values.shape[1] if values.ndim == 3 else 0
    if pods == 0 or not np.isfinite(values).any():
        # nothing to score: say so in the headline fields too (a score of 0 would read as "all quiet")
        message = f"no pod metrics in {watch.target} for the last {n_bins} bins"
        out.status = {"lastEvaluation": rfc3339(now), "lastScore": None,
                      "incidentsOpened": int(status.get("incidentsOpened", 0))}
        out.conditions = [condition("Ready", False, "NoData", message),
                          {**condition("Firing", False, "NoData", message), "status": "Unknown"}]
        if list_owned is not None:
            out.status["openIncidents"] = open_incidents(list_owned(), watch.uid)
        return out
    scores = score(watch.detector, values)
    last = status.get("lastFiring") or {}
    decision = decide(watch, scores, start, parse_time(last.get("onset")))
    out.decision = decision
    out.status = {"lastEvaluation": rfc3339(now),
                  "lastScore": round(decision.last_score, 6) if decision.last_score is not None else None,
                  "incidentsOpened": int(status.get("incidentsOpened", 0))}
    ready = condition("Ready", True, "Evaluated", f"{watch.detector} over {pods} pod(s) of {watch.target}, "
                      f"{n_bins} bins to {rfc3339(start + timedelta(seconds=n_bins * BIN_SECONDS))}")
    if decision.action == "open":
        names, existed = [], []
        for onset, run in decision.opens:
            body = incident_body(watch, onset, float(scores[run.onset_bin]))
            name = body["metadata"]["name"]
            if create(body):
                out.created_all.append(name)
                out.status["incidentsOpened"] += 1
            else:
                existed.append(name)
            names.append(name)
            out.status["lastFiring"] = {"onset": rfc3339(onset), "incident": name, "at": rfc3339(now)}
        out.created = out.created_all[-1] if out.created_all else None
        firing = condition("Firing", True, "IncidentOpened", f"{decision.message}: opened {', '.join(names)}"
                           + (f" ({', '.join(existed)} existed already)" if existed else ""))
    elif decision.action == "cooldown":
        firing = condition("Firing", True, "Cooldown", decision.message)
    elif decision.action == "seen":
        firing = condition("Firing", True, "AlreadyOpened", decision.message)
    else:
        firing = condition("Firing", False, "BelowThreshold", decision.message)
    out.conditions = [ready, firing]
    if list_owned is not None:
        out.status["openIncidents"] = open_incidents(list_owned(), watch.uid)
    return out
