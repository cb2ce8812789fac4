"""Build, cache and load every Scenario: 101 Nezha faults and 4 LEMMA incidents.

The cache is keyed by the source archives, the window and the code that shapes the data, so a change to any of
them rebuilds, and an unchanged second run only reads the index. A build is written to a temporary directory
and renamed into place whole.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from lemzha.fsutil import file_lock
from lemzha.scenario import Scenario
from lemzha.scenario_io import load_scenario, save_scenario
from lemzha.services import service_of_pod
from offline.data import lemma, nezha, traces
from offline.data.store import (
    ARCHIVES,
    REPO_ROOT,
    DataError,
    Sources,
    default_cache_dir,
    default_datasets_dir,
    ensure_extracted,
    resolve_sources,
)

# Files whose code decides what a cached scenario contains.
_SHAPING_CODE = (
    "lemzha/binning.py",
    "lemzha/catalog.py",
    "lemzha/logs.py",
    "lemzha/scenario.py",
    "lemzha/scenario_io.py",
    "lemzha/services.py",
    "lemzha/histogram.py",
    "offline/data/nezha.py",
    "offline/data/traces.py",
    "offline/data/lemma.py",
    "offline/data/dataset.py",
)


def _code_digest() -> str:
    digest = hashlib.sha256()
    for rel in _SHAPING_CODE:
        digest.update((REPO_ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


def traces_root(datasets_dir: Path | None, cache_dir: Path | None, nezha_source: Path | None) -> Path | None:
    """The Nezha tree holding `rca_data/<day>/trace/`: the user's --source tree when it has trace folders, else the
    extracted `nezha-traces` archive when the datasets directory has it, else None (scenarios without traces)."""
    if nezha_source is not None and any((Path(nezha_source) / "rca_data").glob("*/trace")):
        return Path(nezha_source)
    if (Path(datasets_dir or default_datasets_dir()) / ARCHIVES["nezha-traces"].filename).is_file():
        return ensure_extracted("nezha-traces", datasets_dir, cache_dir)
    return None


def cache_key(sources: Sources, window: nezha.Window, traces_dir: Path | None = None) -> str:
    blob = json.dumps(
        {
            "sources": sources.provenance(),
            "traces": None if traces_dir is None else [str(traces_dir), ARCHIVES["nezha-traces"].sha256],
            "before_s": window.before.total_seconds(),
            "after_s": window.after.total_seconds(),
            "code": _code_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Prepared:
    directory: Path
    index: dict

    @property
    def ids(self) -> list[str]:
        return [entry["id"] for entry in self.index["scenarios"]]

    def entry(self, scenario_id: str) -> dict:
        for entry in self.index["scenarios"]:
            if entry["id"] == scenario_id:
                return entry
        raise DataError(f"unknown scenario id {scenario_id!r}")

    def ids_of(self, dataset: str, app: str | None = None) -> list[str]:
        """Ids of one data set ("nezha", "lemma") in index order; with `app`, only the Nezha days of that application
        ("onlineboutique", "trainticket")."""
        apps = {d.day: d.app for d in nezha.DAYS}
        return [e["id"] for e in self.index["scenarios"] if e["dataset"] == dataset
                and (app is None or (e["dataset"] == "nezha" and apps.get(e["day"]) == app))]

    def load(self, scenario_id: str) -> Scenario:
        self.entry(scenario_id)
        return load_scenario(self.directory / scenario_id)

    def load_all(self, dataset: str | None = None) -> list[Scenario]:
        return [
            self.load(e["id"]) for e in self.index["scenarios"] if dataset is None or e["dataset"] == dataset
        ]


def prepare(
    datasets_dir: Path | None = None,
    cache_dir: Path | None = None,
    nezha_source: Path | None = None,
    window: nezha.Window | None = None,
    progress: bool = True,
) -> Prepared:
    """Extract, build and cache all scenarios; a second call with the same inputs only reads the index."""
    window = window or nezha.Window()
    cache_dir = Path(cache_dir or default_cache_dir())
    sources = resolve_sources(datasets_dir, cache_dir, nezha_source)
    traces_dir = traces_root(datasets_dir, cache_dir, nezha_source)
    key = cache_key(sources, window, traces_dir)
    target = cache_dir / "scenarios" / key
    index_path = target / "index.json"
    if index_path.is_file():
        return Prepared(target, json.loads(index_path.read_text()))
    with file_lock(cache_dir / "scenarios" / f".{key}.lock"):  # a concurrent run builds it once
        if not index_path.is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=target.parent))
            try:
                index = _build(sources, window, tmp, progress, traces_dir)
                index["key"] = key
                (tmp / "index.json").write_text(json.dumps(index, indent=1))
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(target, json.loads(index_path.read_text()))


def _build(sources: Sources, window: nezha.Window, out: Path, progress: bool, traces_dir: Path | None = None) -> dict:
    entries: list[dict] = []
    days: dict[str, dict] = {}
    total = sum(len(nezha.list_faults(sources.nezha, d)) for d in nezha.DAYS) + 4
    bar = tqdm(total=total, desc="prepare", unit="scenario", disable=not progress)
    for day in nezha.DAYS:
        faults = nezha.list_faults(sources.nezha, day)
        bar.set_postfix_str(f"{day.day} metrics+logs")
        metrics = nezha.read_day_metrics(sources.nezha, day)
        raw_logs = nezha.read_day_logs(sources.nezha, day)
        fallback = lemma.ob_day_log_table(sources.lemzhak, day.day) if day.app == "onlineboutique" else None
        metric_services = {service_of_pod(p) for p in metrics.pods}
        day_traces = None if traces_dir is None else traces.read_day_traces(traces_dir, day, metric_services)
        days[day.day] = {
            "app": day.app,
            "n_faults": len(faults),
            "metric_files": metrics.quality.files,
            "metric_rows": metrics.quality.rows,
            "metric_rows_malformed": metrics.quality.malformed,
            "log_files": raw_logs.quality.files,
            "log_rows": raw_logs.quality.rows,
            "log_rows_malformed": raw_logs.quality.malformed,
            "log_rows_duplicate": raw_logs.quality.duplicates,
            "traces": None if day_traces is None else {
                **day_traces.quality.to_json(),
                "covered_bins": len(day_traces.covered_bins),
                "traced_services": len(day_traces.traced_services),
                "traced_services_without_metrics": day_traces.quality.unknown_services,
                "edges": len(day_traces.edge_pairs),
            },
        }
        for fault in faults:
            built = nezha.build_scenario(fault, faults, metrics, raw_logs, fallback, window)
            scenario = built.scenario
            trace_cov = None
            if day_traces is not None:
                service_rows, edge_rows = traces.scenario_traces(day_traces, scenario.start, scenario.n_bins,
                                                                 set(scenario.services))
                scenario = replace(scenario, service_metrics=service_rows, edges=edge_rows)
                trace_cov = round(traces.trace_coverage(day_traces, scenario.start, scenario.n_bins), 3)
            save_scenario(scenario, out / scenario.id)
            entries.append(
                {
                    "id": built.scenario.id,
                    "dataset": "nezha",
                    "day": day.day,
                    "log_source": built.log_source,
                    "raw_log_coverage": round(built.raw_log_coverage, 3),
                    "epoch_offset_s": built.epoch_offset_s,
                    "trace_coverage": trace_cov,
                }
            )
            bar.update()
    for scenario in lemma.load_lemma(sources.lemzhak):
        save_scenario(scenario, out / scenario.id)
        entries.append(
            {"id": scenario.id, "dataset": "lemma", "day": scenario.label.injection_time.date().isoformat(),
             "log_source": "lemzha-k", "raw_log_coverage": 0.0, "epoch_offset_s": 0.0, "trace_coverage": None}
        )
        bar.update()
    bar.close()
    return {"schema_version": 1, "scenarios": entries, "days": days,
            "sources": {**sources.provenance(), "traces": None if traces_dir is None else str(traces_dir)}}


