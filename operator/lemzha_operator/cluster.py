"""Cluster-side helpers both resources' handlers use: conditions, listing the watched objects, HA pausing."""

from __future__ import annotations

from datetime import UTC, datetime

import kopf

from lemzha.binning import rfc3339
from lemzha_operator.health import outranked
from lemzha_operator.resources import GROUP, VERSION
from lemzha_operator.settings import watched_namespaces


def merge_conditions(previous: list[dict], new: list[dict], generation: int, now: datetime) -> list[dict]:
    """Kubernetes-style conditions: one per type; lastTransitionTime moves only when the status value changes."""
    merged = {c["type"]: dict(c) for c in previous or []}
    stamp = rfc3339(now)
    for cond in new:
        old = merged.get(cond["type"])
        changed = old is None or old.get("status") != cond["status"]
        merged[cond["type"]] = {
            **cond,
            "lastTransitionTime": stamp if changed else old.get("lastTransitionTime", stamp),
            "observedGeneration": generation,
        }
    return [merged[t] for t in sorted(merged)]



def list_watched(objects, plural: str) -> list[dict]:
    """Every object of `plural` in the watched namespaces (LEMZHA_WATCH_NAMESPACES), or cluster-wide when all are
    watched: the chart's Roles allow no more."""
    namespaces = watched_namespaces()
    if not namespaces:
        return objects.list_cluster_custom_object(GROUP, VERSION, plural).get("items", [])
    return [item for ns in namespaces
            for item in objects.list_namespaced_custom_object(GROUP, VERSION, ns, plural).get("items", [])]



def paused_by_peer(memo: kopf.Memo, settings: kopf.OperatorSettings) -> bool:
    """With kopf peering (HA): does a live replica of higher priority keep this one paused? Reads the peering
    object(s) kopf keeps: the ClusterKopfPeering, or the KopfPeering of each watched namespace."""
    from kubernetes.client.exceptions import ApiException

    if settings.peering.standalone or not settings.peering.name:
        return False
    now, own = datetime.now(UTC), settings.peering.priority
    try:
        if settings.peering.clusterwide:
            found = [memo.objects.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                            settings.peering.name)]
        else:
            found = [memo.objects.get_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings",
                                                               settings.peering.name)
                     for ns in watched_namespaces()]
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return any(outranked(obj.get("status", {}), own, now) for obj in found)
