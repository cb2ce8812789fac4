"""The one bounded cache (lemzha/lru.py): the log cleaner's templates and the operator's log chunks and range
points are kept in it."""

from __future__ import annotations

import threading

import pytest

from lemzha.lru import SizedLRU


def test_least_recently_used_goes_first() -> None:
    cache: SizedLRU[str, str] = SizedLRU(2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # now "b" is the least recently used
    cache.put("c", "C")
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    assert cache.info() == {"entries": 2, "size": 2, "max_size": 2, "hits": 3, "misses": 1}
    assert cache.peek("a") == "A" and cache.info()["hits"] == 3  # peek neither counts nor reorders


def test_the_bound_is_on_the_summed_size() -> None:
    cache: SizedLRU[int, list] = SizedLRU(10, size_of=len)
    cache.put(1, [0] * 4)
    cache.put(2, [0] * 4)
    cache.put(1, [0] * 5)  # replacing a key counts its new size, not both
    assert cache.info()["size"] == 9 and cache.info()["entries"] == 2
    cache.put(3, [0] * 4)  # 13: the least recently used (2) goes
    assert cache.peek(2) is None and cache.info()["size"] == 9
    cache.put(4, [0] * 11)  # larger than the bound alone: not kept, nothing dropped for it
    assert cache.peek(4) is None and cache.info()["entries"] == 2
    cache.clear()
    assert cache.info() == {"entries": 0, "size": 0, "max_size": 10, "hits": 0, "misses": 0}


def test_a_zero_bound_keeps_nothing_and_a_negative_one_is_refused() -> None:
    none: SizedLRU[str, str] = SizedLRU(0)
    none.put("a", "A")
    assert none.peek("a") is None
    with pytest.raises(ValueError, match="negative"):
        SizedLRU(-1)


def test_threads_never_push_it_past_its_bound() -> None:
    cache: SizedLRU[int, int] = SizedLRU(50)

    def fill(offset: int) -> None:
        for k in range(2000):
            cache.put(offset + k, k)
            cache.get(offset + k // 2)

    threads = [threading.Thread(target=fill, args=(i * 10_000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.info()["entries"] == cache.info()["size"] == 50
