"""Is the watch alive? A kopf watch can go silent without an error (kopf #1276): the operator then sees nothing
new and its liveness probe, which only proves the event loop runs, stays green.

`WatchMonitor` compares what a LIST returns with what the watch delivered. A listed object whose
resourceVersion the watch has not delivered is a lag; a lag older than `stale_after` seconds means the watch is
dead. resourceVersions are compared only for equality, never ordered: the API treats them as opaque.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta


class WatchMonitor:
    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self._seen: dict[str, str] = {}  # uid -> last resourceVersion the watch delivered
        self._lagging: dict[tuple[str, str], float] = {}  # (uid, listed rv) -> when a list first showed it
        self._lock = threading.Lock()

    def delivered(self, uid: str, resource_version: str, deleted: bool = False) -> None:
        """Called for every watch event."""
        with self._lock:
            if deleted:
                self._seen.pop(uid, None)
            else:
                self._seen[uid] = resource_version

    def check(self, listed: Iterable[tuple[str, str]], now: float) -> list[str]:
        """uids whose listed version the watch has lagged behind for `stale_after` seconds or more. `listed` is
        (uid, resourceVersion) of every object a LIST of the watched resource returned; `now` monotonic seconds.
        A version the watch delivers later than the list (it moved on) clears the lag."""
        with self._lock:
            current = {(uid, rv) for uid, rv in listed if self._seen.get(uid) != rv}
            self._lagging = {key: self._lagging.get(key, now) for key in current}
            return sorted(uid for (uid, _), since in self._lagging.items() if now - since >= self.stale_after)


def outranked(peers: dict, own_priority: int, now: datetime) -> bool:
    """Is a live peer of higher priority in this kopf peering status (`{identity: {priority, lastseen, lifetime}}`)?
    Then kopf keeps this replica paused: its watch delivers nothing by design, and its janitor must stay idle.
    Priorities are distinct per replica (derived from the pod name), so our own entry never outranks us."""
    for peer in (peers or {}).values():
        if not isinstance(peer, dict) or int(peer.get("priority", 0)) <= own_priority:
            continue
        seen = peer.get("lastseen")
        if not seen:
            continue
        last = datetime.fromisoformat(str(seen).replace("Z", "+00:00"))
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        if now < last + timedelta(seconds=int(peer.get("lifetime", 60))):
            return True
    return False
