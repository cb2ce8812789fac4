"""The binning convention, once, for offline loaders and the live operator.

A bin is the half-open interval [t, t + bin_seconds). Its value is the last real (non-NaN) sample inside it;
a bin without one is NaN. Nothing is interpolated or repeated, so 60 s data fills every other 30 s bin.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

BIN_SECONDS = 30


def as_utc(moment: datetime | pd.Timestamp | str) -> datetime:
    """A timezone-aware UTC datetime; naive input is taken as UTC."""
    ts = pd.Timestamp(moment)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def rfc3339(moment: datetime | pd.Timestamp | str, fraction: bool = False) -> str:
    """The one time format: RFC 3339 in UTC with `Z`, `2023-01-29T09:21:39Z`; whole seconds unless `fraction`
    (then microseconds where there are any, for stored times that must read back exactly)."""
    moment = as_utc(moment)
    return (moment if fraction else moment.replace(microsecond=0)).isoformat().replace("+00:00", "Z")


def floor_to_bin(moment: datetime | pd.Timestamp | str, bin_seconds: int = BIN_SECONDS) -> datetime:
    ts = as_utc(moment)
    epoch = ts.timestamp()
    return datetime.fromtimestamp(epoch - epoch % bin_seconds, tz=UTC)


def window_bins(first: datetime, last: datetime, bin_seconds: int = BIN_SECONDS) -> tuple[datetime, int]:
    """The window convention, offline and live: bins from the one holding `first` up to, not including, the one
    holding `last`, i.e. [floor(first), floor(last)). Returns (first bin start, number of bins)."""
    start = floor_to_bin(first, bin_seconds)
    return start, int((floor_to_bin(last, bin_seconds) - start).total_seconds() // bin_seconds)


def epoch_ns(times: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Nanoseconds since the epoch, whatever resolution pandas chose for the input (pandas 3 varies it)."""
    return pd.DatetimeIndex(pd.to_datetime(times, utc=True)).as_unit("ns").asi8


def bin_indices(times: pd.Series | pd.DatetimeIndex, start: datetime, bin_seconds: int = BIN_SECONDS) -> np.ndarray:
    """Bin index of each timestamp relative to `start` (negative or >= n_bins when outside the window)."""
    offset_ns = epoch_ns(times) - pd.Timestamp(as_utc(start)).as_unit("ns").value
    return np.floor_divide(offset_ns, bin_seconds * 1_000_000_000).astype(np.int64)


def last_sample_per_bin(
    times: pd.Series | pd.DatetimeIndex,
    values: np.ndarray,
    start: datetime,
    n_bins: int,
    bin_seconds: int = BIN_SECONDS,
) -> np.ndarray:
    """(n_bins, M) float32: per column, the last non-NaN sample whose time falls in each bin."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    out = np.full((n_bins, values.shape[1]), np.nan, dtype=np.float32)
    if len(values) == 0:
        return out
    bins = bin_indices(times, start, bin_seconds)
    inside = (bins >= 0) & (bins < n_bins)
    if not inside.any():
        return out
    frame = pd.DataFrame(values[inside])
    frame["_t"] = epoch_ns(times)[inside]
    frame["_bin"] = bins[inside]
    # groupby().last() skips NaN per column, which is exactly "the last real sample"
    last = frame.sort_values("_t", kind="stable").drop(columns="_t").groupby("_bin").last()
    out[last.index.to_numpy()] = last.to_numpy(dtype=np.float32)
    return out
