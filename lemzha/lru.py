"""The one bounded cache: least recently used out, bounded by the summed size of what it holds, thread-safe.

The log cleaner's templates (size 1 each), the operator's cleaned log chunks (their rows) and its settled range-query
points (their samples) are all kept in one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SizedLRU(Generic[K, V]):
    """At most `max_size` in summed `size_of(value)` (1 per value by default; 0 keeps nothing). A value larger than
    the bound alone is not kept. `hits` and `misses` count `get`."""

    def __init__(self, max_size: int, size_of: Callable[[V], int] = lambda _: 1) -> None:
        if max_size < 0:
            raise ValueError(f"a cache bound must not be negative, not {max_size}")
        self.max_size = max_size
        self._size_of = size_of
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None (a miss) when not held."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return item[0]

    def peek(self, key: K) -> V | None:
        """The value without counting or reordering."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def put(self, key: K, value: V) -> None:
        """Hold `value` (replacing the key's old one) as the most recently used, then drop the least recently used
        until the bound holds."""
        size = self._size_of(value)
        if size > self.max_size:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= old[1]
            self._items[key] = (value, size)
            self._size += size
            while self._size > self.max_size:
                _, (_, dropped) = self._items.popitem(last=False)
                self._size -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0
            self.hits = self.misses = 0

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "size": self._size, "max_size": self.max_size, "hits": self.hits,
                    "misses": self.misses}
