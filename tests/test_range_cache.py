"""Settled range-query points kept across windows (operator/lemzha_operator/prometheus.py RangeCache), against a
fake Prometheus that answers every query_range from a formula and records what it was asked."""

from __future__ import annotations

import numpy as np
import pytest

from lemzha_operator import prometheus
from lemzha_operator.prometheus import RangeCache, range_grids

STEP = 30.0
T0 = 1_700_000_000.0 - 0.001  # a grid point: the end of a bin minus 1 ms, as the operator asks
QUERIES = ("up", "rate(x[30s])")
GONE_AFTER = T0 + 40 * STEP  # pod "b" has no sample from here on


class FakePrometheus:
    def __init__(self, warn: bool = False) -> None:
        self.asked: list[tuple[str, float, float]] = []
        self.warn = warn

    def query_ranges(self, prom, queries, start_s, end_s, step_s, timeout=30.0, warnings=None):
        answers = []
        for q, query in enumerate(queries):
            self.asked.append((query, start_s, end_s))
            times = np.arange(start_s, end_s + step_s / 2, step_s)
            series = [{"metric": {"pod": "a"}, "values": [[round(t, 3), str(q + t % 977)] for t in times]}]
            b = [[round(t, 3), str(-t % 13)] for t in times if t < GONE_AFTER]
            if b:
                series.append({"metric": {"pod": "b"}, "values": b})
            answers.append(series)
        if self.warn and warnings is not None:
            warnings.append("partial response")
        return answers

    def points_asked(self) -> int:
        return sum(round((end - start) / STEP) + 1 for _, start, end in self.asked)


@pytest.fixture
def fake(monkeypatch) -> FakePrometheus:
    server = FakePrometheus()
    monkeypatch.setattr(prometheus, "query_ranges", server.query_ranges)
    return server


def _plain(first: float, n: int) -> list[dict]:
    return [{labels["pod"]: values for labels, values in grid}
            for grid in range_grids(None, QUERIES, first, n, STEP)]


def _cached(cache: RangeCache, first: float, n: int) -> list[dict]:
    return [{labels["pod"]: values for labels, values in grid}
            for grid in range_grids(None, QUERIES, first, n, STEP, cache=cache)]


def _equal(got: list[dict], want: list[dict]) -> None:
    assert [sorted(g) for g in got] == [sorted(w) for w in want]
    for g, w in zip(got, want, strict=True):
        for pod in w:
            np.testing.assert_array_equal(g[pod], w[pod])


def test_a_later_window_asks_only_its_new_points_and_equals_a_fresh_answer(fake: FakePrometheus):
    cache = RangeCache(now=lambda: T0 + 10**6)  # every point long settled
    _equal(_cached(cache, T0, 140), _plain(T0, 140))
    fake.asked.clear()
    later = T0 + 10 * STEP
    got = _cached(cache, later, 140)
    assert fake.points_asked() == 10 * len(QUERIES)  # the 10 points past the held ones, per query
    assert all(abs(start - (T0 + 140 * STEP)) < 1e-6 for _, start, _ in fake.asked)
    _equal(got, _plain(later, 140))
    assert cache.info()["kept_points"] >= 130 * len(QUERIES)


def test_a_series_that_ended_before_the_window_is_absent_as_prometheus_would_answer(fake: FakePrometheus):
    cache = RangeCache(now=lambda: T0 + 10**6)
    _cached(cache, T0, 60)
    late = GONE_AFTER + STEP
    got = _cached(cache, late, 20)  # starts after "b" ended, inside what is held
    assert set(got[0]) == {"a"}
    _equal(got, _plain(late, 20))


def test_points_that_may_still_change_are_asked_again(fake: FakePrometheus):
    end = T0 + 139 * STEP
    cache = RangeCache(now=lambda: end)  # the window ends now: its last 5 minutes are not settled
    first = _cached(cache, T0, 140)
    fake.asked.clear()
    again = _cached(cache, T0, 140)
    live = int(RangeCache.SETTLE_SECONDS // STEP)
    assert fake.points_asked() == live * len(QUERIES)
    _equal(again, first)


def test_an_answer_with_warnings_is_used_but_never_kept(fake: FakePrometheus):
    fake.warn = True
    cache = RangeCache(now=lambda: T0 + 10**6)
    warnings: list[str] = []
    range_grids(None, QUERIES, T0, 20, STEP, warnings=warnings, cache=cache)
    assert warnings == ["partial response"] and cache.info()["entries"] == 0
    fake.asked.clear()
    _cached(cache, T0, 20)
    assert fake.points_asked() == 20 * len(QUERIES)


def test_a_window_before_what_is_held_is_asked_whole(fake: FakePrometheus):
    cache = RangeCache(now=lambda: T0 + 10**6)
    _cached(cache, T0 + 50 * STEP, 40)
    fake.asked.clear()
    got = _cached(cache, T0, 60)
    assert fake.points_asked() == 60 * len(QUERIES)
    _equal(got, _plain(T0, 60))


def test_the_bound_evicts_the_least_recently_used_query(fake: FakePrometheus):
    cache = RangeCache(max_samples=2 * 2 * 50, now=lambda: T0 + 10**6)  # room for one query's 2 series x 100 points
    range_grids(None, ("first",), T0, 30, STEP, cache=cache)  # 2 series x 30 points
    range_grids(None, ("second",), T0, 30, STEP, cache=cache)
    assert cache.info()["entries"] == 2 and cache.info()["size"] <= cache.info()["max_size"]
    range_grids(None, ("third",), T0, 100, STEP, cache=cache)  # 200 samples: the two older go
    assert cache.info()["entries"] == 1 and cache.info()["size"] <= cache.info()["max_size"]
    none = RangeCache(max_samples=0, now=lambda: T0 + 10**6)
    range_grids(None, QUERIES, T0, 10, STEP, cache=none)
    assert none.info()["entries"] == 0
