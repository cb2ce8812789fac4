"""Per-scenario memo: work that depends on a scenario but not on the onset, done once per scenario object.

An evidence ranker without an onset tries a dozen onsets on one scenario; factorising its log templates and trace
edges each time would cost more than the signals themselves. Entries die with the scenario (weakly keyed): the
memo is bounded by the scenarios alive, which in the operator are the incidents being ranked (LEMZHA_CONCURRENCY).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def memo(scenario: object, name: str, compute: Callable[[], T]) -> T:
    """`compute()`, remembered for this scenario object under `name`."""
    entries = _MEMO.setdefault(scenario, {})
    if name not in entries:
        entries[name] = compute()
    return entries[name]
