"""The one pod -> service rule, used for Nezha, LEMMA and live clusters alike."""

from __future__ import annotations

import re

# Kubernetes generates name suffixes from this alphabet (no vowels, no 0/1/3), which is what lets us tell a
# generated hash from a word of the workload's name.
K8S_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SAFE = K8S_NAME_ALPHABET
_POD_SUFFIX = re.compile(rf"-[{_SAFE}]{{5}}$")
_REPLICASET_HASH = re.compile(rf"-[{_SAFE}]{{6,10}}$")
_ORDINAL = re.compile(r"-\d+$")
_VERSION = re.compile(r"-v\d+$")


def workload_of_pod(pod: str) -> str:
    """The owning workload's name: Deployment (`name-<rs hash>-<5>`), DaemonSet (`name-<5>`), StatefulSet
    (`name-<ordinal>`), or the pod name itself for a bare pod."""
    if not pod:
        raise ValueError("empty pod name")
    if _POD_SUFFIX.search(pod):
        base = _POD_SUFFIX.sub("", pod)
        return _REPLICASET_HASH.sub("", base) or base
    if _ORDINAL.search(pod):
        return _ORDINAL.sub("", pod) or pod
    return pod


def service_of_workload(workload: str) -> str:
    """Versioned workloads (`reviews-v2`) are one service, as the mesh's `app` label has it."""
    return _VERSION.sub("", workload) or workload


def service_of_pod(pod: str, owner: str | None = None) -> str:
    """Service of a pod. `owner` is the controller's name when known (a ReplicaSet's hash is stripped), which is
    more reliable than parsing the pod name."""
    if owner:
        return service_of_workload(_REPLICASET_HASH.sub("", owner) or owner)
    return service_of_workload(workload_of_pod(pod))
