"""The window's log rows from cleaned time chunks (operator/lemzha_operator/logchunks.py), against the Loki stand-in
(offline/bench/standins/loki_standin.py: no Loki server is installable here)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from lemzha.binning import BIN_SECONDS
from lemzha_operator.logchunks import CHUNK_SECONDS, SETTLE_SECONDS, Chunk, ChunkedLogs, chunk_cache, chunk_starts
from lemzha_operator.loki import LokiClient, LokiUnavailable, log_rows, selector, service_rows
from offline.bench.standins.loki_standin import LokiStandIn

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # on a chunk boundary
START = T0 + timedelta(seconds=90)  # a window starting inside a chunk
N_BINS = 40  # 20 minutes: five chunks, the first and last partly outside
LATER = T0 + timedelta(days=1)  # a clock for which every chunk has settled
KEY = ["service", "bin", "template", "level"]


@pytest.fixture
def loki() -> Iterator[LokiStandIn]:
    with LokiStandIn() as server:
        for p, pod in enumerate(("cart-7d9f-x1", "cart-7d9f-x2", "checkout-5c4-a")):
            values = []
            for s in range(0, 30 * 60, 7 + p):  # 30 min of lines from T0, some outside the window on each side
                ts = int((T0 + timedelta(seconds=s)).timestamp()) * 10**9 + p
                kind = s % 3
                line = (f"ERROR payment {s} failed for order {s * 31}" if kind == 0 else
                        f"INFO served request id={s:08x} in {s % 97} ms" if kind == 1 else "WARN cache cold")
                values.append((ts, line))
            server.push({"namespace": "shop", "pod": pod}, values)
        yield server


def _whole_window(loki: LokiStandIn) -> pd.DataFrame:
    end = START + timedelta(seconds=N_BINS * BIN_SECONDS)
    entries = LokiClient(loki.url).fetch(selector("shop"), START, end).entries
    return log_rows(entries, START, N_BINS).sort_values(KEY).reset_index(drop=True)


def _chunked(chunked: ChunkedLogs) -> tuple[pd.DataFrame, bool]:
    templated, truncated = chunked.window(selector("shop"), START, N_BINS)
    return service_rows(templated).sort_values(KEY).reset_index(drop=True), truncated


def test_chunks_cover_the_window_on_an_aligned_grid() -> None:
    starts = chunk_starts(START, N_BINS)
    assert starts[0] == T0 and starts[-1] < START + timedelta(seconds=N_BINS * BIN_SECONDS)
    assert all(b - a == timedelta(seconds=CHUNK_SECONDS) for a, b in itertools.pairwise(starts))
    assert len(starts) == 5
    assert chunk_starts(T0, 10) == [T0]


def test_chunked_rows_equal_the_whole_window_and_come_from_the_cache_the_second_time(loki: LokiStandIn) -> None:
    whole = _whole_window(loki)
    assert len(whole) > 50 and whole["bin"].min() == 0 and whole["bin"].max() == N_BINS - 1
    cache = chunk_cache(max_rows=100_000)
    chunked = ChunkedLogs(LokiClient(loki.url), cache, now=lambda: LATER)
    first, truncated = _chunked(chunked)
    pd.testing.assert_frame_equal(first, whole)
    assert not truncated and cache.info()["entries"] == 5
    loki.fail_with = 503  # Loki down: every chunk of the window is settled and kept, so nothing is asked
    again, _ = _chunked(chunked)
    pd.testing.assert_frame_equal(again, whole)
    assert cache.info()["hits"] == 5
    chunked.close()


def test_a_chunk_that_may_still_receive_lines_is_fetched_every_time(loki: LokiStandIn) -> None:
    end = START + timedelta(seconds=N_BINS * BIN_SECONDS)
    cache = chunk_cache()
    # the clock at the window's end: the chunks ending within SETTLE_SECONDS of it are live
    chunked = ChunkedLogs(LokiClient(loki.url), cache, now=lambda: end)
    first, _ = _chunked(chunked)
    pd.testing.assert_frame_equal(first, _whole_window(loki))
    settled = [s for s in chunk_starts(START, N_BINS)
               if s + timedelta(seconds=CHUNK_SECONDS) <= end - timedelta(seconds=SETTLE_SECONDS)]
    assert 0 < cache.info()["entries"] == len(settled) < 5
    asked = len(loki.requests)
    _chunked(chunked)
    assert len(loki.requests) > asked  # the live chunks were asked again
    loki.fail_with = 503
    with pytest.raises(LokiUnavailable):
        _chunked(chunked)


def test_the_chunk_cache_is_bounded_by_rows() -> None:
    def chunk(rows: int) -> Chunk:
        return Chunk(pd.DataFrame({"pod": ["p"] * rows, "bin": range(rows), "template": ["t"] * rows,
                                   "level": ["INFO"] * rows, "count": [1] * rows}), rows, False)

    cache = chunk_cache(max_rows=10)
    for k in range(3):
        cache.put(("s", k), chunk(4))
    assert cache.info()["size"] == 8 and cache.get(("s", 0)) is None  # 12 rows: the oldest chunk went


def test_the_line_cap_cuts_the_window_at_a_chunk_and_says_so(loki: LokiStandIn) -> None:
    full, _ = _chunked(ChunkedLogs(LokiClient(loki.url), chunk_cache(), now=lambda: LATER))
    capped = ChunkedLogs(LokiClient(loki.url, max_entries=250), chunk_cache(), now=lambda: LATER)
    rows, truncated = _chunked(capped)
    assert truncated and 0 < rows["count"].sum() <= 250 < full["count"].sum()
    assert rows["bin"].max() < full["bin"].max()  # the earliest chunks are kept, the later ones left out
