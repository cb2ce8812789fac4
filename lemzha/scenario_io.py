"""The on-disk Scenario format (schema_version 1), written offline and by the operator alike.

A scenario is a directory:
- `scenario.json`: schema_version, id, app, namespace, bin_seconds, start, n_bins, pods, pod_service, services,
  metrics, onset
- `metrics.parquet`: long form `bin, pod, metric, value`, real samples only (absent means NaN)
- `logs.parquet`: `service, bin, template, count, level`
- `label.json` (optional): the ground truth
- `service_metrics.parquet`, `edges.parquet` (optional, from traces): see `lemzha.scenario.Scenario`; written only
  when the scenario has trace rows. Scenarios without them (older ones included) load with empty trace frames.
Writes go to a temporary sibling directory that is renamed into place, so a reader never sees half a scenario.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from lemzha.binning import rfc3339
from lemzha.fsutil import replace_directory
from lemzha.scenario import Label, Scenario, ScenarioError, as_utc

SCHEMA_VERSION = 1


def scenario_to_json(scenario: Scenario) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "id": scenario.id,
        "app": scenario.app,
        "namespace": scenario.namespace,
        "bin_seconds": scenario.bin_seconds,
        "start": rfc3339(scenario.start, fraction=True),
        "n_bins": scenario.n_bins,
        "pods": list(scenario.pods),
        "pod_service": {p: scenario.pod_service[p] for p in scenario.pods},
        "services": list(scenario.services),
        "metrics": list(scenario.metrics),
        "onset": rfc3339(scenario.onset, fraction=True) if scenario.onset else None,
        "dataset": scenario.dataset,
    }


def metrics_long(scenario: Scenario) -> pd.DataFrame:
    t, p, m = np.nonzero(scenario.mask)
    return pd.DataFrame(
        {
            "bin": t.astype(np.int32),
            "pod": pd.Categorical.from_codes(p, categories=list(scenario.pods)),
            "metric": pd.Categorical.from_codes(m, categories=list(scenario.metrics)),
            "value": scenario.values[t, p, m],
        }
    )


def save_scenario(scenario: Scenario, directory: Path | str) -> Path:
    """Write atomically; an existing scenario at `directory` is replaced whole."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (tmp / "scenario.json").write_text(json.dumps(scenario_to_json(scenario), indent=1))
        metrics_long(scenario).to_parquet(tmp / "metrics.parquet", index=False)
        scenario.logs.to_parquet(tmp / "logs.parquet", index=False)
        if len(scenario.service_metrics):
            scenario.service_metrics.to_parquet(tmp / "service_metrics.parquet", index=False)
        if len(scenario.edges):
            scenario.edges.to_parquet(tmp / "edges.parquet", index=False)
        if scenario.label is not None:
            (tmp / "label.json").write_text(json.dumps(scenario.label.to_json(), indent=1))
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_scenario(directory: Path | str, *, with_label: bool = True) -> Scenario:
    path = Path(directory)
    meta_path = path / "scenario.json"
    if not meta_path.is_file():
        raise ScenarioError(f"{path}: not a scenario directory (no scenario.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ScenarioError(f"{meta_path}: invalid JSON: {err}") from None
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ScenarioError(f"{meta_path}: schema_version {version!r}, this code reads {SCHEMA_VERSION}")
    pods, metrics = meta["pods"], meta["metrics"]
    values = np.full((int(meta["n_bins"]), len(pods), len(metrics)), np.nan, dtype=np.float32)
    long = pd.read_parquet(path / "metrics.parquet")
    if len(long):
        pod_idx = pd.Index(pods).get_indexer(long["pod"].astype(str))
        metric_idx = pd.Index(metrics).get_indexer(long["metric"].astype(str))
        bins = long["bin"].to_numpy()
        if (pod_idx < 0).any() or (metric_idx < 0).any() or bins.min() < 0 or bins.max() >= values.shape[0]:
            raise ScenarioError(f"{path}: metrics.parquet names pods, metrics or bins outside scenario.json")
        values[bins, pod_idx, metric_idx] = long["value"].to_numpy(dtype=np.float32)
    logs_path = path / "logs.parquet"
    logs = pd.read_parquet(logs_path) if logs_path.exists() else None
    traces = {name: pd.read_parquet(path / f"{name}.parquet") if (path / f"{name}.parquet").exists() else None
              for name in ("service_metrics", "edges")}
    label = None
    if with_label and (path / "label.json").exists():
        label = Label.from_json(json.loads((path / "label.json").read_text()))
    scenario = Scenario(
        id=meta["id"],
        app=meta["app"],
        namespace=meta["namespace"],
        start=as_utc(meta["start"]),
        pods=tuple(pods),
        pod_service=meta["pod_service"],
        metrics=tuple(metrics),
        values=values,
        logs=logs,
        onset=as_utc(meta["onset"]) if meta.get("onset") else None,
        label=label,
        bin_seconds=int(meta["bin_seconds"]),
        service_metrics=traces["service_metrics"],
        edges=traces["edges"],
        dataset=str(meta.get("dataset", "")),
    )
    if list(scenario.services) != list(meta["services"]):
        raise ScenarioError(f"{meta_path}: services do not match pod_service")
    return scenario
