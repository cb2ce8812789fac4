"""Hyper-parameter files: a JSON object with `model` (ModelConfig) and `train` (TrainParams) sections."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

from offline.data.store import read_json_file
from offline.errors import DataError
from offline.train.model import ModelConfig
from offline.train.train import TrainParams

DEFAULT_PARAMS = Path(__file__).parent.parent / "params" / "default.json"  # the JSON files stay in offline/params/


def _build(cls, section: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise DataError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
    values = {}
    for key, value in section.items():
        expected = type(getattr(cls(), key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise DataError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
        values[key] = value
    return cls(**values)


def load_params(path: Path | None = None) -> tuple[ModelConfig, TrainParams, str]:
    """(model config, training params, sha256 of the canonical content). Bad files get a one-line error."""
    path = Path(path or DEFAULT_PARAMS)
    data = read_json_file(path, "params file")
    if not isinstance(data, dict) or not {"model", "train"} <= set(data):
        raise DataError(f"{path}: expected an object with 'model' and 'train' sections")
    model = _build(ModelConfig, data["model"], f"{path}:model")
    train = _build(TrainParams, data["train"], f"{path}:train")
    if model.d_model % model.n_heads:
        raise DataError(f"{path}: model.d_model ({model.d_model}) must be divisible by n_heads ({model.n_heads})")
    if train.epochs < 1 or train.crop_bins < 4 or train.crop_bins > model.max_bins or train.batch_size < 1:
        raise DataError(f"{path}: need epochs >= 1, batch_size >= 1 and 4 <= crop_bins <= model.max_bins")
    return model, train, params_hash(model, train)


def params_hash(model: ModelConfig, train: TrainParams) -> str:
    """Hash of the canonical content, so two files with the same values (comments aside) hash alike."""
    canonical = json.dumps({"model": model.to_json(), "train": train.to_json()}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
