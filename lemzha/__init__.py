"""Lemzha core: shared by the offline pipeline and the live operator."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["OnnxRanker", "__version__"]


def __getattr__(name: str):
    # lazy, so `import lemzha` stays cheap and never pulls in onnxruntime unless the ranker is used
    if name == "OnnxRanker":
        from lemzha.onnx_ranker import OnnxRanker

        return OnnxRanker
    raise AttributeError(f"module 'lemzha' has no attribute {name!r}")
