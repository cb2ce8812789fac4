"""Lemzha core: shared by the offline pipeline and the live operator."""

from __future__ import annotations

import os

# No telemetry of any kind: onnxruntime's Linux wheels record a device id and events unless told not to, and the
# Hugging Face hub pings home unless offline. Set before either is imported; a user's explicit setting wins.
for _name, _value in (("ORT_DISABLE_TELEMETRY", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
__all__ = ["OnnxRanker", "__version__"]


def __getattr__(name: str):
    # lazy, so `import lemzha` stays cheap and never pulls in onnxruntime unless the ranker is used
    if name == "OnnxRanker":
        from lemzha.onnx_ranker import OnnxRanker

        return OnnxRanker
    raise AttributeError(f"module 'lemzha' has no attribute {name!r}")
