"""`OnnxRanker`: the trained model from a bundle, run by onnxruntime without torch (the operator's ranker).

Features come from `lemzha.features` and the ranking rule from `lemzha.inference`, exactly as in training; only
the logits function differs. Templates seen in training are read from the bundle's `templates.parquet`; others
are embedded by the bundle's MiniLM export and cached in `cache_dir`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime

from lemzha import inference
from lemzha.bundle import (
    MODEL_FILE,
    TEMPLATES_FILE,
    TEXT_ENCODER_FILE,
    TOKENIZER_FILE,
    Bundle,
    load_bundle,
    model_inputs,
    read_templates,
)
from lemzha.features import Crop, prepare
from lemzha.fusion import fuse, gap_term
from lemzha.inference import LogitsFn
from lemzha.ranking import Ranking
from lemzha.scenario import Scenario
from lemzha.text import OnnxEncoder, TextEmbedder


def session(path: Path, threads: int = 1) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # the graphs are small: one thread avoids spinning and contention
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def crop_feed(c: Crop) -> dict[str, np.ndarray]:
    """One crop as model.onnx inputs: the layout of `offline.train.train.to_tensors` (pods first); the trace inputs when
    the crop has them."""
    feed = {
        "metrics": np.ascontiguousarray(c.metrics.transpose(1, 0, 2), dtype=np.float32),
        "valid": np.ascontiguousarray(c.pod_valid.T, dtype=bool),
        "onset_pos": np.array(c.onset_pos, dtype=np.int64),
        "logs": np.ascontiguousarray(c.logs, dtype=np.float32),
        "names": np.ascontiguousarray(c.names, dtype=np.float32),
        "pod_service": np.ascontiguousarray(c.pod_service, dtype=np.int64),
    }
    if c.traces is not None:
        feed["traces"] = np.ascontiguousarray(c.traces, dtype=np.float32)
        feed["edge_pairs"] = np.ascontiguousarray(c.edge_pairs, dtype=np.int64).reshape(-1, 2)
        feed["edge_traces"] = np.ascontiguousarray(c.edge_traces, dtype=np.float32)
    return feed


def onnx_logits_fn(model: onnxruntime.InferenceSession, use_traces: bool = False) -> LogitsFn:
    names = [i.name for i in model.get_inputs()]
    expected = model_inputs(use_traces)
    # a trace model without the graph part never reads the edges, so the exporter drops those two inputs
    required = set(expected) - {"edge_pairs", "edge_traces"}
    if not required <= set(names) <= set(expected):
        raise ValueError(f"model.onnx has inputs {names}, expected {list(expected)}")

    def logits(crops: Sequence[Crop]) -> list[np.ndarray]:
        out = []
        for c in crops:
            feed = crop_feed(c)
            out.append(model.run(None, {k: feed[k] for k in names})[0])
        return out

    return logits


class OnnxRanker:
    """A bundle behind the common ranker contract. Verifies the bundle on load (`BundleError` if it fails)."""

    name = "model"

    def __init__(self, bundle_dir: Path | str, cache_dir: Path | str | None = None, threads: int = 1,
                 seed_templates: bool = True) -> None:
        self.bundle: Bundle = load_bundle(bundle_dir)
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lemzha-templates-")  # removed with the ranker
            cache_dir = self._tmp.name
        self.model = session(self.bundle.path(MODEL_FILE), threads)
        self.logits_fn = onnx_logits_fn(self.model, self.bundle.use_traces)
        encoder = OnnxEncoder(self.bundle.path(TEXT_ENCODER_FILE), self.bundle.path(TOKENIZER_FILE), threads=threads)
        self.embedder = TextEmbedder(cache_dir, encoder=encoder, sha=self.bundle.encoder_sha)
        if seed_templates:
            self.embedder.seed(*read_templates(self.bundle.path(TEMPLATES_FILE)))

    def fit(self, train: Sequence[Scenario]) -> None:
        raise RuntimeError("bundles are trained offline (python -m offline.export); OnnxRanker only ranks")

    def probabilities(self, scenario: Scenario) -> tuple[tuple[str, ...], np.ndarray]:
        prep = prepare(scenario, self.embedder, traces=self.bundle.use_traces)
        probs = inference.service_probabilities(self.logits_fn, prep, scenario.onset_bin, self.bundle.crop_bins,
                                                self.bundle.use_logs, self.bundle.use_traces)
        return prep.services, probs

    def rank(self, scenario: Scenario) -> Ranking:
        """The model's probabilities, plus the bundle's weight x the call-gap trace term when it has one."""
        services, probs = self.probabilities(scenario)
        ranking = Ranking.from_scores(dict(zip(services, probs.tolist(), strict=True)))
        weight = self.bundle.gap_weight
        return fuse(ranking, gap_term(scenario), weight) if weight else ranking
