"""Every process-wide cache is bounded: the detectors' array memo by count and by bytes."""

from __future__ import annotations

import numpy as np
import pytest

from lemzha.detect import features


def test_the_detector_memo_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "_CACHE", type(features._CACHE)())
    monkeypatch.setattr(features, "_CACHE_BYTES", 3 * 8_000)
    for k in range(6):  # six different 8,000-byte arrays: only the three most recent fit
        values = np.full((10, 100), float(k))
        out = features._cached("test", values, None, lambda v=values: v * 2)
        assert out[0, 0] == 2 * k
    assert sum(a.nbytes for a in features._CACHE.values()) <= 3 * 8_000
    assert len(features._CACHE) == 3
    recent = np.full((10, 100), 5.0)
    assert features._cached("test", recent, None, lambda: pytest.fail("the most recent entry must be kept"))[0, 0] == 10
