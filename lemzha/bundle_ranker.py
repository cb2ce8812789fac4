"""The ranker a bundle carries, opened from its directory (both kinds; `lemzha.bundle` reads and verifies)."""

from __future__ import annotations

from pathlib import Path

from lemzha.bundle import EVIDENCE_KIND, load_bundle
from lemzha.rankers import EvidenceRanker


def open_ranker(directory: Path | str, cache_dir: Path | None = None, threads: int = 1):
    """The ranker a verified bundle carries: an `EvidenceRanker` (evidence kind) or an `OnnxRanker` (model kind),
    with `.bundle` set to the verified `Bundle`."""
    bundle = load_bundle(directory)
    if bundle.kind == EVIDENCE_KIND:
        ranker = EvidenceRanker.from_json(bundle.meta["ranker"])
        ranker.bundle = bundle
        return ranker
    from lemzha.onnx_ranker import OnnxRanker  # onnxruntime only for the model kind

    return OnnxRanker(bundle.directory, cache_dir=cache_dir, threads=threads)
