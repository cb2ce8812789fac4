"""Per-scenario data-quality report and the dataset card. Nothing is excluded: problems are reported, not hidden."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict

import numpy as np

from lemzha.evidence import max_after, robust_z
from lemzha.scenario import Scenario
from offline.data.dataset import Prepared


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


def scenario_report(scenario: Scenario, entry: dict) -> dict:
    label = scenario.label
    assert label is not None, "validate reads labelled scenarios"
    values, mask = scenario.values, scenario.mask
    fault_bin = label.fault_bin
    series_alive = mask.any(axis=0)  # (P, M)
    log_bins = np.zeros(scenario.n_bins, dtype=bool)
    if len(scenario.logs):
        log_bins[scenario.logs["bin"].unique()] = True
    z = max_after(robust_z(values, fault_bin), fault_bin)  # (P, M)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pod_z = np.nanmax(np.where(np.isfinite(z), z, np.nan), axis=1)  # (P,)
    rc = np.array([p in label.root_cause_pods for p in scenario.pods])
    rc_z = float(np.nanmax(pod_z[rc])) if np.isfinite(pod_z[rc]).any() else None
    other_z = float(np.nanmax(pod_z[~rc])) if (~rc).any() and np.isfinite(pod_z[~rc]).any() else None
    return {
        "id": scenario.id,
        "dataset": entry["dataset"],
        "app": scenario.app,
        "day": entry["day"],
        "fault_type": label.fault_type,
        "root_cause_service": label.root_cause_service,
        "n_pods": len(scenario.pods),
        "n_services": len(scenario.services),
        "n_bins": scenario.n_bins,
        "fault_bin": fault_bin,
        "metric_coverage": round(_share(series_alive), 4),
        "nan_share": round(_share(~mask), 4),
        "real_sample_share": round(_share(mask[:, series_alive]) if series_alive.any() else 0.0, 4),
        "log_source": entry["log_source"],
        "log_coverage": round(_share(log_bins), 4),
        "log_coverage_before": round(_share(log_bins[:fault_bin]), 4),
        "log_coverage_after": round(_share(log_bins[fault_bin:]), 4),
        "log_templates": int(scenario.logs["template"].nunique()) if len(scenario.logs) else 0,
        "other_injections": [
            {"service": i.service, "fault_type": i.fault_type,
             "offset_s": round((i.time - label.injection_time).total_seconds())}
            for i in label.other_injections
        ],
        "contaminated": label.contaminated,
        "metric_signal_root_cause_z": None if rc_z is None else round(rc_z, 2),
        "metric_signal_other_max_z": None if other_z is None else round(other_z, 2),
        "log_signal_root_cause_error_delta": _error_share_delta(scenario, label.root_cause_service, fault_bin),
        "epoch_offset_s": entry["epoch_offset_s"],
        **_trace_report(scenario, fault_bin),
    }


def _trace_report(scenario: Scenario, fault_bin: int) -> dict:
    """Trace coverage of a window: share of bins the trace files cover, whether the fault's bin is one, and how many
    services and edges carry trace series (None: the scenario has no trace data)."""
    sm = scenario.service_metrics
    if len(sm) == 0:
        return {"trace_coverage": 0.0 if scenario.dataset == "nezha" else None, "trace_fault_bin_covered": False,
                "trace_services": 0, "trace_edges": 0}
    covered = sm.groupby("bin")["covered"].first().reindex(range(scenario.n_bins), fill_value=False).to_numpy()
    edges = scenario.edges
    return {"trace_coverage": round(_share(covered), 4), "trace_fault_bin_covered": bool(covered[fault_bin]),
            "trace_services": int(sm["service"].nunique()),
            "trace_edges": len(edges[["client", "server"]].drop_duplicates()) if len(edges) else 0}


def _error_share_delta(scenario: Scenario, service: str, fault_bin: int) -> float | None:
    logs = scenario.logs
    own = logs.loc[logs["service"] == service]
    if len(own) == 0:
        return None
    is_error = own["level"].isin(["ERROR", "FATAL"])
    before, after = own["bin"] < fault_bin, own["bin"] >= fault_bin

    def share(sel):
        total = own.loc[sel, "count"].sum()
        return float(own.loc[sel & is_error, "count"].sum() / total) if total else 0.0

    return round(share(after) - share(before), 4)


def build_report(prepared: Prepared, ids: list[str] | None = None) -> dict:
    entries = [prepared.entry(i) for i in ids] if ids else prepared.index["scenarios"]
    rows = [scenario_report(prepared.load(e["id"]), e) for e in entries]
    nezha = [r for r in rows if r["dataset"] == "nezha"]
    lemma = [r for r in rows if r["dataset"] == "lemma"]
    per_day = Counter(r["day"] for r in nezha)
    per_app = Counter(r["app"] for r in nezha)
    per_type = Counter(r["fault_type"] for r in nezha)
    confound: dict[str, dict[str, int]] = defaultdict(dict)
    for r in nezha:
        confound[r["day"]][r["fault_type"]] = confound[r["day"]].get(r["fault_type"], 0) + 1
    return {
        "n_faults": len(nezha),
        "per_day": dict(sorted(per_day.items())),
        "per_app": dict(sorted(per_app.items())),
        "per_fault_type": dict(sorted(per_type.items())),
        "lemma": len(lemma),
        "day_fault_types": {d: dict(sorted(v.items())) for d, v in sorted(confound.items())},
        "days": prepared.index["days"],
        "card": dataset_card(rows, prepared.index),
        "scenarios": rows,
    }


def dataset_card(rows: list[dict], index: dict) -> list[str]:
    """Plain-language defects, each computed from the data."""
    nezha = [r for r in rows if r["dataset"] == "nezha"]
    card = []
    dead = [r["id"] for r in nezha if r["metric_coverage"] < 1.0]
    if dead:
        card.append(f"{len(dead)} Nezha windows have pod/metric series with no sample at all (e.g. {dead[0]}).")
    offsets = [r for r in nezha if abs(r["epoch_offset_s"]) >= 30]
    if offsets:
        by_day = Counter(r["day"] for r in offsets)
        card.append(
            "inject_timestamp disagrees with inject_time by >= 30 s for "
            + ", ".join(f"{n} faults on {d}" for d, n in sorted(by_day.items()))
            + "; the string (which matches the metric and log clocks) is used."
        )
    contaminated = [r["id"] for r in nezha if r["contaminated"]]
    card.append(
        f"{len(contaminated)} of {len(nezha)} Nezha windows contain another injection in a different service "
        f"(contaminated; reported as their own slice): {', '.join(contaminated)}."
    )
    sources = Counter(r["log_source"] for r in nezha)
    card.append(f"Log sources per window: {dict(sorted(sources.items()))}. OnlineBoutique raw logs are mostly "
                "missing from this copy; their windows use lemzha-k's processed templates (about ±2 min of the fault).")
    no_logs_after = [r["id"] for r in nezha if r["log_coverage_after"] == 0]
    if no_logs_after:
        card.append(f"{len(no_logs_after)} Nezha windows have no log line after the fault.")
    types_by_day: dict[str, set] = defaultdict(set)
    for r in nezha:
        if r["app"] == "trainticket":
            types_by_day[r["day"]].add(r["fault_type"])
    if len(types_by_day) == 2:
        (d1, t1), (d2, t2) = sorted(types_by_day.items())
        card.append(
            f"TrainTicket day/fault-type confound: {d1} has {sorted(t1)}, {d2} has {sorted(t2)}; "
            f"holding out {d2} tests unseen types {sorted(t2 - t1)}, holding out {d1} tests {sorted(t1 - t2)}."
        )
    card += _trace_card(nezha, index)
    for day, stats in sorted(index["days"].items()):
        if stats["log_rows_malformed"] or stats["metric_rows_malformed"]:
            card.append(f"{day}: skipped {stats['metric_rows_malformed']} malformed metric rows and "
                        f"{stats['log_rows_malformed']} malformed log rows.")
        if stats["log_rows_duplicate"]:
            card.append(f"{day}: {stats['log_rows_duplicate']} duplicate log rows from overlapping minute files "
                        "were removed.")
    return card


def _trace_card(nezha: list[dict], index: dict) -> list[str]:
    days = {d: s.get("traces") for d, s in sorted(index["days"].items())}
    if not any(days.values()):
        return ["No trace data: the nezha-traces archive was not there when the cache was built."]
    lines = []
    for day, stats in days.items():
        if not stats:
            continue
        rows = [r for r in nezha if r["day"] == day]
        cov = [r["trace_coverage"] for r in rows if r.get("trace_coverage") is not None]
        fault = sum(bool(r.get("trace_fault_bin_covered")) for r in rows)
        missing = stats["trace_files_missing"]
        lines.append(
            f"Traces {day} ({rows[0]['app'] if rows else '?'}): {stats['trace_files']} of "
            f"{stats['trace_files_expected']} minute files present"
            + (f" ({len(missing)} missing: {', '.join(missing[:6])}{', …' if len(missing) > 6 else ''})"
               if missing else "")
            + f"; {stats['covered_bins']} covered 30 s bins; windows cover {np.mean(cov) if cov else 0:.1%} of their "
            f"bins on average; the fault's bin is covered in {fault} of {len(rows)} windows; "
            f"{stats['traced_services']} traced services, {stats['edges']} edges; "
            f"{stats['span_rows_duplicate']} duplicate spans from overlapping files removed; "
            f"{stats['orphan_spans']} orphan spans."
        )
    lines.append("Nezha recorded traces only around each fault (3 minute files per fault, about 5 covered bins), so a "
                 "window is covered around its own fault and any neighbouring fault inside it, even where no file is "
                 "missing; uncovered bins are NaN, never 0.")
    return lines


def render_markdown(report: dict) -> str:
    lines = [
        "# Dataset validation",
        "",
        f"Nezha faults: **{report['n_faults']}** (per day {report['per_day']}); "
        f"LEMMA incidents: **{report['lemma']}**.",
        "",
        f"Per app: {report['per_app']}. Per fault type: {report['per_fault_type']}.",
        "",
        "## Dataset card",
        "",
        *[f"- {item}" for item in report["card"]],
        "",
        "## Scenarios",
        "",
        "| id | app | type | root cause | pods | metric cov. | NaN | logs before/after | log src | trace cov. "
        "| others | rc z | other z |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["scenarios"]:
        others = ", ".join(o["service"] for o in r["other_injections"]) or "–"
        lines.append(
            f"| {r['id']} | {r['app']} | {r['fault_type']} | {r['root_cause_service']} | {r['n_pods']} "
            f"| {r['metric_coverage']:.2f} | {r['nan_share']:.2f} | {r['log_coverage_before']:.2f}/"
            f"{r['log_coverage_after']:.2f} | {r['log_source']} | {_fmt_trace(r)} | {others} "
            f"| {r['metric_signal_root_cause_z']} "
            f"| {r['metric_signal_other_max_z']} |"
        )
    return "\n".join(lines) + "\n"


def _fmt_trace(row: dict) -> str:
    if row.get("trace_coverage") is None:
        return "–"
    return f"{row['trace_coverage']:.2f}{'' if row['trace_fault_bin_covered'] else ' (fault bin not)'}"
