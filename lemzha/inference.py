"""Ranking rule shared by every backend (torch in training, onnxruntime in the operator).

With an onset, one crop centred on it. Without one, the onset is slid over the window every 2 bins, each service
keeps its best probability over the crops, and the result is renormalised (max-pooling over sliding crops).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lemzha.features import Crop, Prepared, crop

LogitsFn = Callable[[Sequence[Crop]], Sequence[np.ndarray]]
SLIDE_STEP = 2


def candidate_onsets(n_bins: int, crop_bins: int) -> list[int]:
    """Onset bins tried when none is given: every SLIDE_STEP bins, keeping a quarter crop on each side."""
    low, high = min(crop_bins // 4, n_bins - 1), max(n_bins - crop_bins // 4, crop_bins // 4 + 1)
    return list(range(low, high, SLIDE_STEP)) or [n_bins // 2]


def crops_for(prep: Prepared, onset_bin: int | None, crop_bins: int, use_logs: bool = True,
              use_traces: bool = False) -> list[Crop]:
    onsets = [onset_bin] if onset_bin is not None else candidate_onsets(prep.n_bins, crop_bins)
    return [crop(prep, o - crop_bins // 2, crop_bins, crop_bins // 2, use_logs=use_logs, use_traces=use_traces)
            for o in onsets]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def service_probabilities(
    logits_fn: LogitsFn, prep: Prepared, onset_bin: int | None, crop_bins: int, use_logs: bool = True,
    use_traces: bool = False,
) -> np.ndarray:
    """Probabilities over prep.services; `logits_fn` maps crops to per-service logits."""
    crops = crops_for(prep, onset_bin, crop_bins, use_logs, use_traces)
    best = None
    for logits in logits_fn(crops):
        probs = softmax(np.asarray(logits, dtype=np.float64))
        best = probs if best is None else np.maximum(best, probs)
    return best / best.sum()
