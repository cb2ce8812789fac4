"""Bundles per version of the code and data, cached in `.cache/bundles/<hash>/bundle`, for tests and benchmarks.

- `shipped_bundle`: what `python -m offline.export` writes by default (the evidence ranker, its configuration
  chosen on inner validation over every day): the operator's tests and benchmarks rank with it.
- `model_bundle`: `offline.export --ranker model --quick`, with the trained torch weights beside it
  (`torch_state.pt`) for the ONNX parity tests.

A change to `lemzha/`, `offline/` or the params, or to the prepared data, builds a new one.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from lemzha.fsutil import file_lock
from offline.data.store import REPO_ROOT, default_cache_dir

KEEP_SECONDS = 86400  # other versions nobody built for a day are removed


def _root(prepared, kind: str) -> Path:
    digest = hashlib.sha256(f"{kind}\0{prepared.index.get('key')}".encode())
    for path in sorted([*REPO_ROOT.glob("lemzha/**/*.py"), *REPO_ROOT.glob("offline/**/*.py"),
                        *REPO_ROOT.glob("offline/params/*.json")]):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return default_cache_dir() / "bundles" / digest.hexdigest()[:16]


def _build(root: Path, argv: list[str], done: list[Path]) -> None:
    if all(p.exists() for p in done):
        return
    from offline.train.export import main as export

    with file_lock(root.parent / f".{root.name}.lock"):  # parallel test workers: one exports, the others wait
        if all(p.exists() for p in done):
            return
        if export(argv) != 0:
            raise RuntimeError(f"python -m offline.export {' '.join(argv)} failed")
    for old in root.parent.iterdir():
        if old != root and old.stat().st_mtime < time.time() - KEEP_SECONDS:
            shutil.rmtree(old, ignore_errors=True)


def shipped_bundle(prepared) -> Path:
    bundle = _root(prepared, "evidence") / "bundle"
    _build(bundle.parent, ["--out", str(bundle)], [bundle / "bundle.json"])
    return bundle


def model_bundle(prepared) -> Path:
    """The model bundle directory; `<it>.parent / "torch_state.pt"` holds the torch weights it was exported from."""
    root = _root(prepared, "model")
    bundle, state = root / "bundle", root / "torch_state.pt"
    _build(root, ["--ranker", "model", "--quick", "--out", str(bundle), "--torch-state", str(state)],
           [bundle / "bundle.json", state])
    return bundle
