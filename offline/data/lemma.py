"""lemzha-k processed data -> our conventions: LEMMA Scenarios and Nezha OnlineBoutique day-level log tables.

lemzha-k is a processed copy of Nezha and LEMMA with known defects; every one is undone here, and each rule is tested:
- metrics repeat each real sample into later 30 s bins (Nezha: a 60 s value fills two bins; LEMMA: reindexed with
  nearest + ffill(2) + bfill(2)): `unrepeat` turns a value equal to the previous bin's into NaN;
- LEMMA services were the FIRST "-" token of the pod name (`carts-db-...` -> `carts`): we re-derive them with the one
  rule, `lemzha.services.service_of_pod`; log columns, which carry the first-token names, are mapped back only when
  exactly one of our services stands behind the column, otherwise dropped (see `lemma_log_mapping_report`);
- LEMMA's ground truth names 1-3 pods; the label is the service those pods derive to, with all of its pods;
- 20240215 is sampled on a grid offset by 8 s (05:56:08, ...): samples are re-binned to aligned 30 s bins;
- 20240215's `cpu_usage_total` is stored in millicores while the other LEMMA days store cores (see `SCALE_FIXES`);
- log cells are `"<template>:x<count>"` joined by `" | "`, and a template may itself contain `" | "` or `":x"`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lemzha.binning import BIN_SECONDS, as_utc, floor_to_bin, last_sample_per_bin
from lemzha.catalog import DROPPED, by_lemzhak_name, catalog_order
from lemzha.logs import clean_many, extract_message
from lemzha.scenario import Label, Scenario
from lemzha.services import service_of_pod
from offline.errors import DataError

METRICS_DIR = "core_metrics_tmp"
LOGS_DIR = "core_logs_tmp"
META_DIR = "core_multimodal_tmp"
LOG_FILE = "logs_service_texts.parquet"

LEMMA_IDS: tuple[str, ...] = ("20231207", "20231221", "20240115", "20240215")
LEMMA_FAULT_TYPES: dict[str, str] = {
    "20231207": "cpu_stress",
    "20231221": "pod_migration",
    "20240115": "malware",
    "20240215": "network",
}
OB_DAYS: tuple[str, ...] = ("2022-08-22", "2022-08-23")

# (scenario id, parquet stem) -> extra factor applied on top of the catalog's. 20240215's cpu_usage_total is in
# millicores, not cores: per-service medians are 860x (median over 40 services shared with 20231207 and 20240115;
# most between 700x and 1300x) those of the other LEMMA days, while its memory and network are on the same scale.
SCALE_FIXES: dict[tuple[str, str], float] = {("20240215", "cpu_usage_total"): 1e-3}

# lemzha-k's pseudo-pod `<workload>-aggregated` (20231221: `ratings-aggregated`, which carries the migrated ratings
# pod's data and the fault) belongs to that workload: it is passed to `service_of_pod` as the owner.
AGGREGATED_SUFFIX = "-aggregated"

LOG_TABLE_COLUMNS = ("bin_time", "service", "template", "count", "level")

_NEZHA_ID = re.compile(r"^(\d{8})_nezha_(\d+)$")
# One cell entry: the shortest text ending in `:x<count>` that is followed by the separator or the end of the cell.
_ENTRY = re.compile(r"(.*?):x(\d+)(?: \| |\Z)", re.DOTALL)
_BIN_NS = BIN_SECONDS * 1_000_000_000


# -- metrics ---------------------------------------------------------------------------------------------------------
def unrepeat(values: np.ndarray) -> np.ndarray:
    """A copy of `values` in which a value exactly equal to the previous bin's value of the same series (axis 0 is
    time) is NaN: it is a repeat written by lemzha-k's resampling, not a sample. The first of a run stays.

    Trade-off: a series that is genuinely constant (an idle pod's memory, a zero rate) keeps only its first sample,
    so "constant" and "not sampled" look alike afterwards. The mask then under-reports real samples, which is the
    safer error: the alternative feeds fabricated samples to every model as if they had been measured.
    """
    array = np.asarray(values)
    out = np.array(array, dtype=array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64, copy=True)
    if out.ndim == 0 or out.shape[0] < 2:
        return out
    repeat = out[1:] == out[:-1]  # NaN == NaN is False: a gap never hides the next real sample
    out[1:][repeat] = np.nan
    return out


def load_metrics(root: Path, scenario_id: str) -> tuple[pd.DatetimeIndex, list[str], tuple[str, ...], np.ndarray]:
    """Bin starts (aligned to 30 s), pods (manifest order), metric names (catalog order) and values (T, P, M)
    float32 in catalog units, unrepeated. Only metrics with at least one real value in this scenario are returned;
    parquets named in `catalog.DROPPED` are skipped and any other stem unknown to the catalog is an error."""
    root = Path(root)
    pods = list(_manifest(root, scenario_id)["pods"])
    if not pods or len(set(pods)) != len(pods):
        raise DataError(f"{scenario_id}: manifest pods are empty or not unique")
    files = sorted((root / METRICS_DIR / scenario_id).glob("pod_*.parquet"))
    if not files:
        raise DataError(f"{scenario_id}: no pod_*.parquet under {root / METRICS_DIR / scenario_id}")
    mapping = by_lemzhak_name()
    series: dict[str, np.ndarray] = {}
    index: pd.DatetimeIndex | None = None
    for path in files:
        stem = path.stem.removeprefix("pod_")
        if stem in DROPPED:
            continue
        if stem not in mapping:
            raise DataError(f"{scenario_id}: {path.name} is not a catalog metric and not in catalog.DROPPED")
        spec, factor = mapping[stem]
        if spec.name in series:
            raise DataError(f"{scenario_id}: two parquets map to metric {spec.name}")
        frame = _read_frame(path)
        if index is None:
            index = frame.index
        elif not frame.index.equals(index):
            raise DataError(f"{scenario_id}: {path.name} has another time index than the other metrics")
        extra = sorted(set(frame.columns) - set(pods))
        if extra:
            raise DataError(f"{scenario_id}: {path.name} has pods that are not in the manifest: {extra[:5]}")
        raw = frame.reindex(columns=pods).to_numpy(dtype=np.float64)
        if np.isinf(raw).any():
            raise DataError(f"{scenario_id}: {path.name} contains inf")
        if np.isnan(raw).all():
            continue
        series[spec.name] = unrepeat(raw) * (factor * SCALE_FIXES.get((scenario_id, stem), 1.0))
    if index is None:
        raise DataError(f"{scenario_id}: every metric parquet is in catalog.DROPPED")
    metrics = catalog_order(list(series))
    start = floor_to_bin(index[0])
    n_bins = int((index[-1].value - pd.Timestamp(start).value) // _BIN_NS) + 1
    n_t, n_p = len(index), len(pods)
    stacked = np.stack([series[m] for m in metrics], axis=2) if metrics else np.empty((n_t, n_p, 0))
    values = last_sample_per_bin(index, stacked.reshape(n_t, -1), start, n_bins).reshape(n_bins, n_p, len(metrics))
    bins = pd.date_range(start, periods=n_bins, freq=f"{BIN_SECONDS}s", tz="UTC").as_unit("ns")
    return bins, pods, metrics, values.astype(np.float32, copy=False)


# -- logs ------------------------------------------------------------------------------------------------------------
def parse_log_cell(cell: str) -> list[tuple[str, int]]:
    """`"<template>:x<count> | <template>:x<count>"` -> [(template, count), ...]. A separator counts only where the
    text before it ends in `:x<digits>`, so templates containing `" | "` or `":x"` survive. "" -> []."""
    if not cell:
        return []
    out: list[tuple[str, int]] = []
    pos = 0
    while pos < len(cell):
        match = _ENTRY.match(cell, pos)
        if match is None:
            raise ValueError(f"malformed log cell at {pos}: {cell[pos : pos + 80]!r}")
        out.append((match.group(1), int(match.group(2))))
        pos = match.end()
    return out


def log_table(root: Path, scenario_id: str, services_map: Callable[[str], str | None] | None = None) -> pd.DataFrame:
    """One scenario's log parquet as rows `bin_time` (bin start, UTC), `service`, `template` (re-cleaned by
    `lemzha.logs.clean`), `count`, `level` (a level word in the stored text, else UNKNOWN), identical
    (bin_time, service, template, level) summed. `services_map` renames a column to a service, None drops it;
    without it the column names are the services."""
    frame = _read_frame(Path(root) / LOGS_DIR / scenario_id / LOG_FILE)
    bin_ns = frame.index.asi8 // _BIN_NS * _BIN_NS
    times: list[int] = []
    services: list[str] = []
    raws: list[str] = []
    counts: list[int] = []
    for column in frame.columns:
        service = column if services_map is None else services_map(column)
        if service is None:
            continue
        for stamp, cell in zip(bin_ns, frame[column].tolist(), strict=True):
            if not isinstance(cell, str) or not cell:
                continue
            for raw, count in parse_log_cell(cell):
                if count > 0:
                    times.append(int(stamp))
                    services.append(service)
                    raws.append(raw)
                    counts.append(count)
    if not raws:
        return _empty_log_table()
    unique = list(dict.fromkeys(raws))
    template_of = dict(zip(unique, clean_many(unique), strict=True))
    level_of = {raw: extract_message(raw)[1] for raw in unique}
    table = pd.DataFrame(
        {
            "bin_time": pd.to_datetime(np.asarray(times, dtype=np.int64), utc=True),
            "service": services,
            "template": [template_of[r] for r in raws],
            "count": np.asarray(counts, dtype=np.int64),
            "level": [level_of[r] for r in raws],
        }
    )
    return _typed(table.groupby(["bin_time", "service", "template", "level"], as_index=False, sort=True)["count"].sum())


def nezha_scenario_ids(root: Path) -> list[str]:
    """The lemzha-k Nezha scenario ids (`YYYYMMDD_nezha_<k>`), by day and then by k as a number."""
    found = []
    for path in (Path(root) / META_DIR).iterdir():
        match = _NEZHA_ID.match(path.name)
        if match and path.is_dir():
            found.append((match.group(1), int(match.group(2)), path.name))
    return [name for _, _, name in sorted(found)]


def ob_day_log_table(root: Path, day: str) -> pd.DataFrame:
    """The log table of a Nezha OnlineBoutique day ("2022-08-22" or "2022-08-23"), pooled from all lemzha-k
    scenarios of that day. Scenario windows overlap, so each (bin_time, service) cell is taken from one scenario only:
    the one with the most log lines there, the first by id on a tie. A plain "first by id" would keep truncated
    cells: lemzha-k's last bin of a window (and some others) is empty or partial where a neighbouring window has the
    full content (2022-08-22: 194 of 860 shared cells differ, 177 of them because one copy is empty)."""
    if day not in OB_DAYS:
        raise ValueError(f"{day!r} is not a Nezha OnlineBoutique day; expected one of {OB_DAYS}")
    compact = day.replace("-", "")
    ids = [sid for sid in nezha_scenario_ids(root) if sid.startswith(f"{compact}_")]
    if not ids:
        raise DataError(f"no lemzha-k Nezha scenarios for {day} under {Path(root) / META_DIR}")
    tables = []
    for order, sid in enumerate(ids):
        table = log_table(root, sid)
        tables.append(table.assign(_order=order))
    pooled = pd.concat(tables, ignore_index=True)
    if pooled.empty:
        return _empty_log_table()
    cells = ["bin_time", "service"]
    totals = pooled.groupby([*cells, "_order"], as_index=False)["count"].sum()
    best = totals.sort_values([*cells, "count", "_order"], ascending=[True, True, False, True], kind="stable")
    best = best.drop_duplicates(subset=cells, keep="first")[[*cells, "_order"]]
    chosen = pooled.merge(best, on=[*cells, "_order"], how="inner").drop(columns="_order")
    return _typed(chosen.sort_values(["bin_time", "service", "template", "level"], kind="stable"))


# -- LEMMA -----------------------------------------------------------------------------------------------------------
def lemma_service_of_pod(pod: str) -> str:
    """`service_of_pod`, with lemzha-k's `<workload>-aggregated` pseudo-pod given its workload as the owner."""
    if pod.endswith(AGGREGATED_SUFFIX) and len(pod) > len(AGGREGATED_SUFFIX):
        return service_of_pod(pod, owner=pod.removesuffix(AGGREGATED_SUFFIX))
    return service_of_pod(pod)


def lemma_log_columns(pods: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """For each first-token name lemzha-k gave a log column, the services (ours) of the pods behind it, sorted."""
    behind: dict[str, set[str]] = {}
    for pod in pods:
        behind.setdefault(pod.split("-", 1)[0], set()).add(lemma_service_of_pod(pod))
    return {column: sorted(services) for column, services in sorted(behind.items())}


def lemma_log_mapping_report(root: Path) -> dict:
    """Per LEMMA scenario: which log columns map to one of our services, which are dropped (and what stood behind
    them), and the log lines kept and lost; plus totals over the four scenarios."""
    root = Path(root)
    report: dict = {}
    totals = Counter()
    for sid in LEMMA_IDS:
        pods = _manifest(root, sid)["pods"]
        behind = lemma_log_columns(pods)
        frame = _read_frame(root / LOGS_DIR / sid / LOG_FILE)
        mapped: dict[str, str] = {}
        dropped: dict[str, list[str]] = {}
        lines = Counter()
        for column in frame.columns:
            candidates = behind.get(column, [])
            n_lines = sum(c for cell in frame[column].tolist() if cell for _, c in parse_log_cell(cell))
            if len(candidates) == 1:
                mapped[column] = candidates[0]
                lines["lines_mapped"] += n_lines
            else:
                dropped[column] = candidates
                lines["lines_dropped"] += n_lines
        entry = {
            "columns": len(frame.columns),
            "n_mapped": len(mapped),
            "n_dropped": len(dropped),
            "lines_mapped": lines["lines_mapped"],
            "lines_dropped": lines["lines_dropped"],
            "mapped": mapped,
            "dropped": dropped,
        }
        report[sid] = entry
        totals.update({k: entry[k] for k in ("columns", "n_mapped", "n_dropped", "lines_mapped", "lines_dropped")})
    report["total"] = dict(totals)
    return report


def lemma_root_cause(gt_pods: list[str], pod_service: dict[str, str]) -> tuple[str, str | None]:
    """The service the ground-truth pods derive to, and a note when they do not all agree (the most common wins,
    ties broken by name)."""
    missing = [p for p in gt_pods if p not in pod_service]
    if not gt_pods or missing:
        raise DataError(f"ground-truth root-cause pods missing from the scenario: {missing or 'none given'}")
    votes = Counter(pod_service[p] for p in gt_pods)
    service = min(votes, key=lambda s: (-votes[s], s))
    note = None if len(votes) == 1 else f"root-cause pods derive to {dict(sorted(votes.items()))}; took {service!r}"
    return service, note


def load_lemma(root: Path) -> list[Scenario]:
    """The four LEMMA incidents as labelled Scenarios (`lemma/<YYYYMMDD>`), services and labels re-derived."""
    root = Path(root)
    return [_load_lemma_scenario(root, sid) for sid in LEMMA_IDS]


def _load_lemma_scenario(root: Path, sid: str) -> Scenario:
    manifest = _manifest(root, sid)
    if manifest.get("dataset") != "lemma":
        raise DataError(f"{sid}: manifest dataset is {manifest.get('dataset')!r}, not 'lemma'")
    truth = _ground_truth(root, sid)
    bins, pods, metrics, values = load_metrics(root, sid)
    start = bins[0].to_pydatetime()
    pod_service = {p: lemma_service_of_pod(p) for p in pods}
    behind = lemma_log_columns(pods)
    table = log_table(root, sid, lambda column: _single(behind.get(column, [])))
    logs = pd.DataFrame(
        {
            "service": table["service"],
            "bin": (table["bin_time"].astype("int64") - bins[0].value) // _BIN_NS,
            "template": table["template"],
            "count": table["count"],
            "level": table["level"],
        }
    )
    service, _ = lemma_root_cause(truth["root_cause_pods"], pod_service)
    injection = as_utc(truth["fault_timestamp_raw"])
    label = Label(
        root_cause_service=service,
        root_cause_pods=tuple(p for p in pods if pod_service[p] == service),
        fault_type=LEMMA_FAULT_TYPES[sid],
        injection_time=injection,
        fault_bin=_bin_of(start, injection),
        other_injections=(),
    )
    return Scenario(
        id=f"lemma/{sid}",
        app="lemma",
        namespace="lemma",
        start=start,
        pods=tuple(pods),
        pod_service=pod_service,
        metrics=metrics,
        values=values,
        logs=logs,
        onset=injection,
        label=label,
        dataset="lemma",
    )


# -- helpers ---------------------------------------------------------------------------------------------------------
def _single(candidates: list[str]) -> str | None:
    return candidates[0] if len(candidates) == 1 else None


def _bin_of(start: datetime, moment: datetime) -> int:
    return int((as_utc(moment) - as_utc(start)).total_seconds() // BIN_SECONDS)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"missing {path}") from None


def _manifest(root: Path, scenario_id: str) -> dict:
    return _read_json(Path(root) / META_DIR / scenario_id / "manifest.json")


def _ground_truth(root: Path, scenario_id: str) -> dict:
    return _read_json(Path(root) / META_DIR / scenario_id / "ground_truth.json")


def _read_frame(path: Path) -> pd.DataFrame:
    """A lemzha-k (T, columns) parquet with its UTC time index, strictly increasing."""
    if not path.is_file():
        raise DataError(f"missing {path}")
    frame = pd.read_parquet(path)
    if "__index_level_0__" in frame.columns:
        frame = frame.set_index("__index_level_0__")
    try:
        index = pd.DatetimeIndex(pd.to_datetime(frame.index, utc=True)).as_unit("ns")
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: index is not a time index ({err})") from None
    if len(index) == 0 or not index.is_monotonic_increasing or not index.is_unique:
        raise DataError(f"{path}: time index is empty or not strictly increasing")
    if frame.columns.duplicated().any():
        raise DataError(f"{path}: duplicate columns")
    frame.index = index
    return frame


def _empty_log_table() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in LOG_TABLE_COLUMNS}))


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    out = table.loc[:, list(LOG_TABLE_COLUMNS)].reset_index(drop=True)
    return out.astype(
        {
            "bin_time": "datetime64[ns, UTC]",
            "service": "string",
            "template": "string",
            "count": "int64",
            "level": "string",
        }
    )
