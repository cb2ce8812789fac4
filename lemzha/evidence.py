"""The evidence z-score, defined once: BARO's robust z against the pre-onset median and IQR.

The operator reports it as evidence, the BARO baseline ranks with it, and `validate` measures signal with it.
"""

from __future__ import annotations

import warnings

import numpy as np

IQR_FLOOR_FRACTION = 0.05  # IQR floor relative to |median|: a flat reference must not make tiny changes infinite
IQR_FLOOR_ABS = 1e-6


def robust_z(values: np.ndarray, onset_bin: int) -> np.ndarray:
    """|x - median_pre| / max(IQR_pre, floor) for every bin, with bins [0, onset_bin) as the reference.

    values is (T, ...) with NaN for missing; the result has the same shape and is NaN where x is missing or a
    series has no reference sample.
    """
    values = np.asarray(values, dtype=np.float64)
    onset_bin = int(np.clip(onset_bin, 1, values.shape[0]))
    reference = values[:onset_bin]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN reference slices are expected
        median = np.nanmedian(reference, axis=0)
        q75, q25 = np.nanpercentile(reference, [75, 25], axis=0)
    scale = np.maximum(q75 - q25, np.maximum(np.abs(median) * IQR_FLOOR_FRACTION, IQR_FLOOR_ABS))
    return np.abs(values - median) / scale


def max_after(z: np.ndarray, onset_bin: int) -> np.ndarray:
    """Per series, the largest z from onset on (NaN if none)."""
    after = z[max(0, int(onset_bin)):]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(after, axis=0) if len(after) else np.full(z.shape[1:], np.nan)
