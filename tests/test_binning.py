from datetime import UTC, datetime

import numpy as np
import pandas as pd

from lemzha.binning import last_sample_per_bin

START = datetime(2022, 8, 22, 4, 0, 0, tzinfo=UTC)


def test_bin_is_half_open_and_takes_last_real_sample():
    times = pd.to_datetime(
        ["2022-08-22 04:00:00", "2022-08-22 04:00:29.999", "2022-08-22 04:00:30", "2022-08-22 04:01:10",
         "2022-08-22 04:01:20"], utc=True, format="ISO8601",
    )
    values = np.array([[1.0], [2.0], [3.0], [4.0], [np.nan]])
    out = last_sample_per_bin(times, values, START, n_bins=4)
    # bin 0 [04:00:00, 04:00:30) -> last is 2; the sample at exactly 04:00:30 opens bin 1
    # bin 2 holds 4 then NaN: NaN is not a real sample, so 4 stays; bin 3 is empty
    np.testing.assert_array_equal(out[:, 0], np.array([2.0, 3.0, 4.0, np.nan], dtype=np.float32))


def test_sixty_second_data_fills_every_other_bin_and_ignores_order():
    times = pd.date_range("2022-08-22 04:00:19", periods=5, freq="60s", tz="UTC")[::-1]
    values = np.arange(5, dtype=float)[::-1, None]
    out = last_sample_per_bin(times, values, START, n_bins=10)
    assert np.isnan(out[1::2, 0]).all()
    np.testing.assert_array_equal(out[0::2, 0], np.arange(5, dtype=np.float32))


def test_samples_outside_window_are_dropped():
    times = pd.to_datetime(["2022-08-22 03:59:59", "2022-08-22 04:02:00"], utc=True)
    out = last_sample_per_bin(times, np.array([[1.0], [2.0]]), START, n_bins=4)
    assert np.isnan(out).all()
