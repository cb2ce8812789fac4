"""`python -m offline.data audit`: a per-case audit of the shipped ranker's misses (or of every case).

For each case it ranks the case as lodocv does (leave one day out: calibrated on the other days, the configuration
picked on inner validation) and writes what moved on the true root cause and on the service ranked first:
- every signal with its value, calibrated evidence and alert text (metric z per signal group, error lines, vanished
  and new log events, log volume, span P95, call gap);
- the alignment of the data with the injection: which bins have logs and traces, where the root cause's strongest
  metric and its vanished log event first move, and the other injections inside the window.

An audit reads labels: it is an evaluation tool, never a ranker's input. Outputs: audit.json and audit.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lemzha.calibration import fit_calibration
from lemzha.explain import alert_text
from lemzha.rankers import EvidenceConfig, EvidenceRanker, assess_table
from lemzha.scenario import Scenario
from lemzha.signals import SignalTable
from offline.train.evidence_cv import inner_select, tables_of
from offline.train.folds import day_of, split


@dataclass
class AuditCase:
    case: str
    fault_type: str
    root_cause: str
    top: str
    rank: int
    services: dict  # service -> {signal: {value, evidence, alert}}
    alignment: dict

    def to_json(self) -> dict:
        return self.__dict__


def _service_block(service: str, table: SignalTable, evidence: np.ndarray, signals: tuple[str, ...],
                   threshold: float) -> dict:
    i = table.services.index(service)
    block = {}
    for name in table.signals:
        value = float(table.values[i, table.signals.index(name)])
        ev = float(evidence[i, signals.index(name)]) if name in signals else None
        block[name] = {"value": round(value, 3), "evidence": None if ev is None else round(ev, 2),
                       "alert": ev is not None and ev > threshold,
                       "text": alert_text(name, table.detail.get((service, name))) if value > 0 else ""}
    return block


def alignment(case: Scenario, table: SignalTable) -> dict:
    """Where the data sit against the injection (bins relative to the labelled fault bin)."""
    label = case.label
    fault = label.fault_bin
    log_bins = sorted(int(b) - fault for b in np.unique(case.logs["bin"].to_numpy())) if len(case.logs) else []
    edges = case.edges
    trace_bins = (sorted(int(b) - fault for b in np.unique(edges.loc[edges["covered"], "bin"].to_numpy()))
                  if len(edges) else [])
    rc = label.root_cause_service
    out = {"fault_bin": fault, "log_bins_relative": _ranges(log_bins), "trace_bins_relative": _ranges(trace_bins),
           "other_injections": [{"service": i.service, "fault_type": i.fault_type,
                                 "bins_relative": case.bin_of(i.time) - fault} for i in label.other_injections]}
    metric = table.detail.get((rc, "cpu")) or table.detail.get((rc, "memory"))
    if metric is not None:
        p, m = case.pods.index(metric["pod"]), case.metrics.index(metric["metric"])
        series = case.values[:, p, m].astype(np.float64)
        before = series[:fault][~np.isnan(series[:fault])]
        if len(before) > 2:
            scale = max(float(np.median(np.abs(before - np.median(before)))) * 1.4826, 1e-9)
            z = (series[fault:] - np.median(before)) / scale
            moved = np.flatnonzero(np.nan_to_num(z) > 3)
            out["root_cause_metric"] = {"metric": metric["metric"], "pod": metric["pod"],
                                        "first_bin_above_3_sigma": int(moved[0]) if len(moved) else None}
    event = table.detail.get((rc, "log_vanished"))
    if event is not None and len(case.logs):
        from lemzha.logs import event_key

        logs = case.logs.loc[case.logs["service"].astype(str) == rc]
        keys = logs["template"].astype(str).map(event_key)
        per_bin = logs.loc[keys == event["event"]].groupby("bin")["count"].sum()
        covered = np.unique(case.logs["bin"].to_numpy())
        quiet = [int(b) - fault for b in covered if b >= fault and per_bin.get(b, 0) == 0]
        out["root_cause_vanished_event"] = {"event": event["event"], "quiet_bins_relative": _ranges(quiet)}
    return out


def _ranges(values: list[int]) -> str:
    """[-3, -2, -1, 4, 5] -> "-3..-1, 4..5"."""
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}..{prev}" if start != prev else f"{start}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def audit(scenarios: list[Scenario], misses_only: bool = True, progress: bool = True) -> list[AuditCase]:
    tables, _ = tables_of(scenarios, progress=progress)
    nezha = [s for s in scenarios if s.dataset == "nezha"]
    out = []
    for day in sorted({day_of(s) for s in nezha}):
        train, test = split(scenarios, day, "day")
        config = EvidenceConfig.from_json(inner_select(train, tables)["config"])
        ranker = EvidenceRanker(config, fit_calibration([tables[s.id] for s in train]))
        for case in tqdm(test, desc=f"audit {day}", unit="case", disable=not progress):
            table = tables[case.id]
            assessment = assess_table(table, ranker.calibration, config)
            rc = case.label.root_cause_service
            rank = assessment.ranking.rank_of(rc)
            if misses_only and rank == 1:
                continue
            top = assessment.ranking.services[0]
            services = {s: _service_block(s, table, assessment.evidence, config.signals, config.threshold)
                        for s in dict.fromkeys((rc, top))}
            out.append(AuditCase(case.id, case.label.fault_type or "", rc, top, rank, services,
                                 alignment(case, table)))
    return out


def render_markdown(cases: list[AuditCase], n_total: int) -> str:
    lines = ["# Audit of the shipped ranker", "",
             f"{len(cases)} cases listed of {n_total}. Per case: the true root cause (RC) and the service ranked "
             "first (top), each signal's value, calibrated evidence (log10 rarity) and, for alerts, what fired.", ""]
    for c in cases:
        lines += [f"## {c.case} ({c.fault_type}): RC `{c.root_cause}` ranked {c.rank}, top `{c.top}`", ""]
        a = c.alignment
        lines.append(f"- logs in bins {a['log_bins_relative']} and traces in bins {a['trace_bins_relative']} "
                     "(relative to the injection's bin)")
        for other in a["other_injections"]:
            lines.append(f"- another injection in the window: {other['service']} ({other['fault_type']}) at "
                         f"bin {other['bins_relative']:+d}")
        if "root_cause_metric" in a:
            m = a["root_cause_metric"]
            lines.append(f"- RC's {m['metric']} first above 3 sigma at bin {m['first_bin_above_3_sigma']}")
        if "root_cause_vanished_event" in a:
            v = a["root_cause_vanished_event"]
            lines.append(f"- RC's event `{v['event']}` quiet in bins {v['quiet_bins_relative']}")
        lines += ["", "| signal | RC value / evidence | top value / evidence | what fired |", "|---|---|---|---|"]
        rc, top = c.services[c.root_cause], c.services[c.top]
        for name in rc:
            def cell(b: dict) -> str:
                ev = "–" if b["evidence"] is None else f"{b['evidence']:.2f}"
                return f"{b['value']:.2f} / {'**' + ev + '**' if b['alert'] else ev}"
            fired = "; ".join(f"{who}: {b[name]['text']}" for who, b in (("RC", rc), ("top", top))
                              if b[name]["alert"])
            lines.append(f"| {name} | {cell(rc[name])} | {cell(top[name])} | {fired} |")
        lines.append("")
    return "\n".join(lines)


def write_audit(cases: list[AuditCase], n_total: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps([c.to_json() for c in cases], indent=1))
    (out / "audit.md").write_text(render_markdown(cases, n_total))


def run_audit(prepared, args: argparse.Namespace) -> int:
    """`python -m offline.data audit`: audit the prepared cases (`--all`, `--id`) and write the reports to `--out`."""
    scenarios = prepared.load_all()
    if args.ids:
        unknown = sorted(set(args.ids) - set(prepared.ids))
        if unknown:
            raise ValueError(f"unknown case id(s) {unknown}")
    cases = audit(scenarios, misses_only=not args.all)
    if args.ids:
        cases = [c for c in cases if c.case in args.ids]
    n_total = sum(s.dataset == "nezha" for s in scenarios)
    write_audit(cases, n_total, args.out)
    print(f"{len(cases)} of {n_total} cases audited; report: {args.out / 'audit.md'}")
    return 0
