"""Kubernetes LabelSelector semantics evaluated in Python on the pod labels kube-state-metrics exports.

The selector is never spliced into PromQL: the labels are fetched once (`prometheus.fetch_pod_info`) and filtered
here, so a selector cannot inject anything into a query. kube-state-metrics sanitises label names (every character
outside [a-zA-Z0-9_] becomes "_"), so keys are compared after the same sanitisation on both sides: the selector key
`app.kubernetes.io/name` matches the exported `label_app_kubernetes_io_name` (stripped to `app_kubernetes_io_name`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def sanitize_key(key: str) -> str:
    """A label key as kube-state-metrics names it (without its `label_` prefix)."""
    return _INVALID.sub("_", key)


def _requirements(selector: Mapping) -> list[tuple[str, str, frozenset[str]]]:
    """(sanitised key, operator, values): matchLabels are `In` with one value, as in Kubernetes."""
    reqs = [(sanitize_key(k), "In", frozenset({str(v)})) for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or ():
        op = expr.get("operator")
        if op not in OPERATORS:
            raise ValueError(f"unknown label selector operator {op!r}; known: {', '.join(OPERATORS)}")
        reqs.append((sanitize_key(str(expr.get("key", ""))), op, frozenset(str(v) for v in expr.get("values") or ())))
    return reqs


def _holds(labels: Mapping[str, str], key: str, op: str, values: frozenset[str]) -> bool:
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values  # an absent key is "not in", as in Kubernetes
    if op == "Exists":
        return key in labels
    return key not in labels  # DoesNotExist


def matches(labels: Mapping[str, str], selector: Mapping | None) -> bool:
    """Whether `labels` satisfy every requirement of `selector`; an empty or None selector matches everything."""
    if not selector:
        return True
    # sanitising the label side too is idempotent for kube-state-metrics keys and lets raw Kubernetes labels match
    clean = {sanitize_key(k): v for k, v in labels.items()}
    return all(_holds(clean, key, op, values) for key, op, values in _requirements(selector))


def select_pods(pod_labels: Mapping[str, Mapping[str, str]], selector: Mapping | None) -> set[str]:
    """The pods whose labels match `selector`; None or empty keeps every pod of `pod_labels`."""
    if not selector:
        return set(pod_labels)
    reqs = _requirements(selector)  # validated once, so a bad operator fails even with no pods
    out = set()
    for pod, labels in pod_labels.items():
        clean = {sanitize_key(k): v for k, v in labels.items()}
        if all(_holds(clean, key, op, values) for key, op, values in reqs):
            out.add(pod)
    return out
