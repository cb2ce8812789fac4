"""The one way the training dataclasses (model configuration, training parameters, input options) become JSON:
params files, bundle metadata and search records all hold their fields as a plain object."""

from __future__ import annotations

from dataclasses import asdict


class JsonFields:
    """Mixin for a dataclass: `to_json()` is its fields as a dict."""

    def to_json(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
