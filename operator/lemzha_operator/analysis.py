"""Scenario + ranker -> the status an RCAIncident shows: ranked causes with bounded evidence and data coverage.

Plain functions, no Kubernetes: the kopf handlers only move this dict into the resource.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import numpy as np

from lemzha.binning import rfc3339
from lemzha.detect.onset import resolve_onset_bin
from lemzha.evidence import max_after, robust_z
from lemzha.explain import explain
from lemzha.ranking import Ranker
from lemzha.scenario import Scenario
from lemzha.tracegap import edge_gaps

MAX_EVIDENCE = 3  # per cause and kind: status stays small (objects are capped at ~1.5 MiB)
MAX_TEMPLATE_CHARS = 512


def metric_evidence(scenario: Scenario, service: str, onset_bin: int) -> list[dict]:
    """The service's most anomalous (pod, metric) series after the onset, by the evidence z-score."""
    pods = [i for i, p in enumerate(scenario.pods) if scenario.pod_service[p] == service]
    z = max_after(robust_z(scenario.values[:, pods, :], onset_bin), onset_bin)  # (pods, metrics)
    finite = np.argwhere(np.isfinite(z))
    ordered = sorted(finite.tolist(), key=lambda pm: -z[pm[0], pm[1]])[:MAX_EVIDENCE]
    return [{"pod": scenario.pods[pods[p]], "metric": scenario.metrics[m], "z": round(float(z[p, m]), 2)}
            for p, m in ordered]


def log_evidence(scenario: Scenario, service: str, onset_bin: int) -> list[dict]:
    """The service's log templates after the onset, errors first, then by count."""
    logs = scenario.logs
    own = logs.loc[(logs["service"] == service) & (logs["bin"] >= onset_bin)]
    if own.empty:
        return []
    totals = own.groupby(["template", "level"], as_index=False)["count"].sum()
    totals["severe"] = totals["level"].isin(["ERROR", "FATAL"])
    totals = totals.sort_values(["severe", "count", "template"], ascending=[False, False, True]).head(MAX_EVIDENCE)
    return [{"template": str(r.template)[:MAX_TEMPLATE_CHARS], "count": int(r.count), "level": str(r.level)}
            for r in totals.itertuples()]


def trace_evidence(gaps, service: str) -> list[dict]:
    """The edges into the service whose call gap (client - server duration) rose, largest rise first."""
    if not len(gaps):
        return []
    into = gaps.loc[(gaps.index.get_level_values("server") == service) & (gaps["rise"] > 0)].head(MAX_EVIDENCE)
    return [{"client": str(client), "gapBeforeMs": round(float(r.before_ms), 2),
             "gapAfterMs": round(float(r.after_ms), 2)}
            for (client, _), r in zip(into.index, into.itertuples(), strict=True)]


def _alerts(assessment, service: str) -> dict:
    """The evidence ranker's alerts on a service, in words (`lemzha.explain`), strongest first."""
    alerts = explain(assessment, service)[:MAX_EVIDENCE * 2]
    return {"summary": "; ".join(a["text"] for a in alerts) if alerts else "no alert", "alerts": alerts}


def analyze(scenario: Scenario, ranker: Ranker, top_k: int, onset_estimator=None) -> dict:
    """Rank and explain. The scenario must carry no label (live data has none).

    Without a given onset the ranker gets the scenario as it is (the model slides its crops, which ranks better than
    any estimated onset: docs/detection.md), and `onset_estimator` (a `lemzha.detect.OnsetEstimator`;
    None = the CUSUM rule) places the onset for status.onset and the evidence."""
    if scenario.label is not None:
        raise ValueError("analyze() takes live scenarios, which have no label")
    assessment = ranker.assess(scenario) if hasattr(ranker, "assess") else None
    ranking = assessment.ranking if assessment is not None else ranker.rank(scenario)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if scenario.onset is None and onset_estimator is not None:
            onset_bin = int(onset_estimator(scenario.values))
        else:
            onset_bin = resolve_onset_bin(scenario)
    onset_time = scenario.start + timedelta(seconds=onset_bin * scenario.bin_seconds)
    gaps = edge_gaps(scenario, onset_bin)
    onset = {"time": rfc3339(scenario.onset or onset_time),
             "source": "given" if scenario.onset is not None else "estimated"}
    if scenario.onset is None:
        onset["estimator"] = onset_estimator.setting() if onset_estimator is not None else "cusum"
    causes = [
        {
            "rank": rank,
            "service": service,
            "score": round(float(score), 4),
            **(_alerts(assessment, service) if assessment is not None else {}),
            "evidence": {
                "metrics": metric_evidence(scenario, service, onset_bin),
                "logs": log_evidence(scenario, service, onset_bin),
                "traces": trace_evidence(gaps, service),
            },
        }
        for rank, (service, score) in enumerate(zip(ranking.services, ranking.scores, strict=True), start=1)
        if rank <= top_k
    ]
    return {
        "rootCauses": causes,
        "method": ranker.name,
        "onset": onset,
        "dataCoverage": {
            "pods": len(scenario.pods),
            "metrics": int(scenario.mask.any(axis=(0, 1)).sum()),
            "logLines": int(scenario.logs["count"].sum()) if len(scenario.logs) else 0,
            "bins": scenario.n_bins,
        },
    }
