"""Bundles: the directory `offline.export` writes and the operator ranks with, torch-free. Two kinds:

**evidence** (`kind: "evidence"`, schema_version 2, the default export): the shipped ranker,
`lemzha.rankers.EvidenceRanker`. `bundle.json` holds its configuration and calibration (a few hundred numbers per
signal), how the configuration was chosen, and the sha256 of `MODEL_CARD.md`; nothing else is needed to rank.

**model** (schema_version 1, `offline.export --ranker model`): the neural model of earlier rounds.
- `model.onnx`: one crop -> per-service logits (inputs metrics, valid, onset_pos, logs, names, pod_service; a
  bundle trained with traces also takes traces, edge_pairs and edge_traces, see `input_options` in bundle.json)
- `text_encoder.onnx` + `tokenizer.json`: MiniLM for templates never seen in training
- `templates.parquet`: `key, text, vector` of every training template and service-name text, to seed the cache
- `MODEL_CARD.md`: data, evaluation, limits
- `bundle.json`: schema and catalog versions, feature sizes, ranking rule, training summary, and the sha256 of
  every other file. A bundle whose files, schema or metric catalog do not match is refused with `BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lemzha.catalog import METRIC_NAMES
from lemzha.features import EDGE_TRACE_FEATURES_N, LOG_FEATURES, METRIC_FEATURES, SERVICE_TRACE_FEATURES_N
from lemzha.fsutil import file_sha256
from lemzha.text import DIM

SCHEMA_VERSION = 1  # the model kind's
EVIDENCE_SCHEMA_VERSION = 2
EVIDENCE_KIND = "evidence"
MANIFEST = "bundle.json"
MODEL_FILE = "model.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
TEMPLATES_FILE = "templates.parquet"
MODEL_CARD_FILE = "MODEL_CARD.md"
REQUIRED_FILES = (MODEL_FILE, TEXT_ENCODER_FILE, TOKENIZER_FILE, TEMPLATES_FILE, MODEL_CARD_FILE)
MODEL_INPUTS = ("metrics", "valid", "onset_pos", "logs", "names", "pod_service")
TRACE_INPUTS = ("traces", "edge_pairs", "edge_traces")  # only in bundles trained with traces


def model_inputs(use_traces: bool) -> tuple[str, ...]:
    return MODEL_INPUTS + (TRACE_INPUTS if use_traces else ())


def trace_features_spec() -> dict[str, int]:
    return {"service_trace_features": SERVICE_TRACE_FEATURES_N, "edge_trace_features": EDGE_TRACE_FEATURES_N}


class BundleError(ValueError):
    """A bundle that cannot be used: missing, corrupt, or built for another schema or metric catalog."""


def catalog_version(metrics: Sequence[str] = METRIC_NAMES) -> str:
    """sha256 of the metric names in order: the model's metric axis means nothing under another catalog."""
    return hashlib.sha256("\n".join(metrics).encode("utf-8")).hexdigest()


def features_spec() -> dict[str, int]:
    return {"metric_features": METRIC_FEATURES, "log_features": LOG_FEATURES, "text_dim": DIM}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory and its manifest."""

    directory: Path
    meta: dict
    sha: str  # sha256 of bundle.json: names this exact bundle in outputs

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "model"))

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def crop_bins(self) -> int:
        return int(self.meta["crop_bins"])

    @property
    def encoder_sha(self) -> str:
        return str(self.meta["encoder_sha"])

    @property
    def use_logs(self) -> bool:
        return bool(self.meta.get("input_options", {}).get("use_logs", True))

    @property
    def use_traces(self) -> bool:
        return bool(self.meta.get("input_options", {}).get("use_traces", False))

    @property
    def gap_weight(self) -> float:
        """Weight of the call-gap trace term added to the model's probabilities (`lemzha.fusion`); 0: none."""
        return float(self.meta.get("gap_fusion", {}).get("weight", 0.0))


def write_manifest(directory: Path, meta: dict) -> dict:
    """Add schema, catalog, features and the sha256 of every other file in `directory`, then write bundle.json."""
    files = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise BundleError(f"{directory}: cannot write a manifest without {missing}")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "catalog_version": catalog_version(),
        "metrics": list(METRIC_NAMES),
        "features": features_spec(),
        **meta,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def write_evidence_bundle(directory: Path, ranker_json: dict, meta: dict, card: str) -> dict:
    """Write an evidence bundle into the (empty or absent) `directory`: MODEL_CARD.md, then bundle.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_CARD_FILE).write_text(card)
    manifest = {"schema_version": EVIDENCE_SCHEMA_VERSION, "kind": EVIDENCE_KIND,
                "catalog_version": catalog_version(), "metrics": list(METRIC_NAMES), **meta,
                "ranker": ranker_json, "files": {MODEL_CARD_FILE: file_sha256(directory / MODEL_CARD_FILE)}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_bundle(directory: Path | str) -> Bundle:
    """Read and verify a bundle: schema version, metric catalog, the kind's own fields and every file's sha256."""
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle not found: {root} is not a directory")
    if not manifest_path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST})")
    raw = manifest_path.read_bytes()
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: invalid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object")
    kind = meta.get("kind", "model")
    version = meta.get("schema_version")
    expected = EVIDENCE_SCHEMA_VERSION if kind == EVIDENCE_KIND else SCHEMA_VERSION
    if kind not in (EVIDENCE_KIND, "model"):
        raise BundleError(f"{manifest_path}: unknown bundle kind {kind!r} (this code reads evidence and model)")
    if version != expected:
        raise BundleError(f"{manifest_path}: schema_version {version!r}, this code reads {expected} for {kind} "
                          "bundles")
    if meta.get("catalog_version") != catalog_version() or meta.get("metrics") != list(METRIC_NAMES):
        raise BundleError(f"{manifest_path}: built for another metric catalog (catalog_version "
                          f"{str(meta.get('catalog_version'))[:12]}…, this code has {catalog_version()[:12]}…)")
    if kind == EVIDENCE_KIND:
        _check_evidence(meta, manifest_path)
        _check_files(root, meta, manifest_path, (MODEL_CARD_FILE,))
        return Bundle(root, meta, hashlib.sha256(raw).hexdigest())
    if meta.get("features") != features_spec():
        raise BundleError(f"{manifest_path}: feature sizes {meta.get('features')} differ from this code's "
                          f"{features_spec()}")
    options = meta.get("input_options", {})
    if isinstance(options, dict) and options.get("use_traces") and meta.get("trace_features") != trace_features_spec():
        raise BundleError(f"{manifest_path}: trace feature sizes {meta.get('trace_features')} differ from this "
                          f"code's {trace_features_spec()}")
    for key in ("crop_bins", "encoder_sha"):
        if key not in meta:
            raise BundleError(f"{manifest_path}: lacks {key!r}")
    gap = meta.get("gap_fusion", {})
    weight = gap.get("weight", 0.0) if isinstance(gap, dict) else None
    if (not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight)
            or weight < 0):
        raise BundleError(f"{manifest_path}: gap_fusion.weight must be a finite number >= 0, got {weight!r}")
    _check_files(root, meta, manifest_path, REQUIRED_FILES)
    return Bundle(root, meta, hashlib.sha256(raw).hexdigest())


def _check_evidence(meta: dict, manifest_path: Path) -> None:
    from lemzha.rankers import EvidenceRanker

    try:
        EvidenceRanker.from_json(meta["ranker"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{manifest_path}: invalid evidence ranker ({err})") from None


def _check_files(root: Path, meta: dict, manifest_path: Path, required: tuple[str, ...]) -> None:
    if "files" not in meta:
        raise BundleError(f"{manifest_path}: lacks 'files'")
    files = meta["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{manifest_path}: 'files' must map file names to sha256")
    for name in required:
        if name not in files:
            raise BundleError(f"{manifest_path}: does not list {name}")
    for name, expected in files.items():
        path = root / name
        if Path(name).name != name or name == MANIFEST:
            raise BundleError(f"{manifest_path}: bad file name {name!r}")
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        if file_sha256(path) != expected:
            raise BundleError(f"{path}: sha256 does not match bundle.json (corrupt or modified {name})")


def write_templates(path: Path, texts: Sequence[str], keys: Sequence[str], vectors: np.ndarray) -> None:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (len(texts), DIM) or len(keys) != len(texts):
        raise ValueError(f"templates: {len(texts)} texts, {len(keys)} keys, vectors {vectors.shape}")
    offsets = pa.array(np.arange(len(texts) + 1, dtype=np.int32) * DIM)
    table = pa.table({
        "key": pa.array(list(keys), pa.string()),
        "text": pa.array(list(texts), pa.string()),
        "vector": pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float32())),
    })
    pq.write_table(table, path)


def read_templates(path: Path) -> tuple[list[str], np.ndarray]:
    """(text keys, (N, DIM) float32 vectors) from templates.parquet."""
    table = pq.read_table(path, columns=["key", "vector"])
    column = table.column("vector").combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and not (lengths == DIM).all():
        raise BundleError(f"{path}: every vector must have {DIM} values")
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, DIM)
    return table.column("key").to_pylist(), vectors
