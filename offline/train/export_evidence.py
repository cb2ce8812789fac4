"""The evidence bundle: calibrate the shipped ranker on the chosen days and write it with its model card.

The configuration is chosen as lodocv chooses it per fold (`offline.train.evidence_cv.inner_select`), here over every
chosen day (`--config auto`), or named (`--config cpu,memory,log_errors,log_vanished,call_gap@1.5`). Calibration reads
no label; only the choice of configuration does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lemzha.bundle import load_bundle, write_evidence_bundle
from lemzha.calibration import fit_calibration
from lemzha.fsutil import replace_directory
from lemzha.rankers import CANDIDATES, EvidenceConfig, EvidenceRanker
from lemzha.scenario import Scenario
from offline.errors import DataError
from offline.provenance import provenance
from offline.train.evidence_cv import inner_select, tables_of


def parse_config(text: str) -> EvidenceConfig | None:
    """None for "auto"; else `signal,signal,...@threshold`."""
    if text.strip() == "auto":
        return None
    signals, _, threshold = text.partition("@")
    try:
        config = EvidenceConfig(tuple(s.strip() for s in signals.split(",") if s.strip()), float(threshold or 1.0))
    except ValueError as err:
        raise DataError(f"--config {text!r}: {err}") from None
    from lemzha.signals import signal_names

    unknown = sorted(set(config.signals) - set(signal_names()))
    if unknown:
        raise DataError(f"--config {text!r}: unknown signal(s) {unknown}; the signals are {', '.join(signal_names())}")
    return config


def model_card(meta: dict, results: dict | None) -> str:
    selection, ranker = meta["selection"], meta["ranker_summary"]
    lines = ["# Model card: Lemzha evidence ranker", "",
             "**What it does.** Ranks the services of a namespace by how strongly their own signals changed at the "
             "incident's onset: CPU and memory rises, error lines, log events that went quiet, calls into the service "
             "waiting longer. Each signal is calibrated into evidence (how rare the value is among ordinary services "
             "of the training scenarios) and a service scores the evidence of its alerts above a threshold.", "",
             f"**Configuration.** Signals {', '.join(ranker['signals'])}; threshold {ranker['threshold']:g}; chosen "
             f"{selection['how']}.", "",
             f"**Calibration data.** {meta['training']['n_scenarios']} scenarios ({meta['training']['days']} Nezha "
             f"days{', plus 4 LEMMA incidents' if meta['training']['lemma'] else ''}); every service of each counts. "
             "No label is read by calibration.", "",
             "**Reads no service name.** Renaming every service permutes the ranking and changes nothing else.", ""]
    if results is not None:
        day = results.get("protocols", {}).get("day", {}).get("rankers", {}).get(results.get("shipped", ""), {})
        app = results.get("protocols", {}).get("app", {}).get("rankers", {}).get(results.get("shipped", ""), {})
        if day:
            lines += [f"**Evaluation** (`{results['provenance']['command']}`, git "
                      f"{results['provenance']['git_sha'][:12]}): leave-one-day-out Acc@1 "
                      f"{day['pooled']['acc1']['mean']:.3f}, Acc@3 {day['pooled']['acc3']['mean']:.3f}, MRR "
                      f"{day['pooled']['mrr']['mean']:.3f}"
                      + (f"; leave-one-app-out Acc@1 {app['pooled']['acc1']['mean']:.3f}" if app else "") + ".", ""]
    lines += ["**Limits.** Calibrated on two small demo applications (OnlineBoutique, TrainTicket) under injected "
              "faults. A service whose symptoms are only echoes of another's failure is down-weighted only when the "
              "window's traces show the call. Without logs or traces the ranker falls back on CPU and memory "
              "alone.", ""]
    return "\n".join(lines)


def build_evidence_bundle(out: Path, scenarios: Sequence[Scenario], config: EvidenceConfig | None,
                          results: dict | None = None, extra: dict | None = None) -> dict:
    """Calibrate, choose the configuration (when `config` is None), write the bundle into `out` atomically."""
    tables, _ = tables_of(list(scenarios), progress=True)
    if config is None:
        inner = inner_select(list(scenarios), tables)
        config = EvidenceConfig.from_json(inner["config"])
        selection = {"how": f"on inner validation over the days {', '.join(inner['inner_days'])} (each held out in "
                            f"turn) among {len(CANDIDATES)} candidates", "inner_mrr": inner["mrr"]}
    else:
        selection = {"how": "by name on the command line", "inner_mrr": {}}
    ranker = EvidenceRanker(config, fit_calibration(tables.values()))
    days = sorted({s.onset.date().isoformat() for s in scenarios if s.dataset == "nezha" and s.onset})
    meta = {"selection": selection, "ranker_summary": config.to_json(),
            "training": {"n_scenarios": len(scenarios), "days": len(days), "day_list": days,
                         "lemma": any(s.dataset == "lemma" for s in scenarios), **(extra or {})},
            "provenance": provenance(("numpy", "pandas", "scipy"))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = write_evidence_bundle(tmp, ranker.to_json(), meta, model_card(meta, results))
        load_bundle(tmp)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
