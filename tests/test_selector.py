"""Kubernetes LabelSelector semantics on kube-state-metrics pod labels."""

from __future__ import annotations

import pytest

from lemzha_operator.selector import matches, sanitize_key, select_pods

LABELS = {"app": "ts-order-service", "tier": "backend", "app_kubernetes_io_name": "order"}


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}, "matchExpressions": []}])
def test_empty_selector_matches_everything(selector):
    assert matches(LABELS, selector) and matches({}, selector)
    assert select_pods({"a": LABELS, "b": {}}, selector) == {"a", "b"}


def test_match_labels_need_every_pair():
    assert matches(LABELS, {"matchLabels": {"app": "ts-order-service", "tier": "backend"}})
    assert not matches(LABELS, {"matchLabels": {"app": "ts-order-service", "tier": "frontend"}})
    assert not matches(LABELS, {"matchLabels": {"zone": "a"}})  # an absent key never equals a value


@pytest.mark.parametrize(("operator", "values", "present", "absent_key"), [
    ("In", ["backend", "db"], True, False),
    ("In", ["db"], False, False),
    ("NotIn", ["db"], True, True),  # NotIn matches when the key is absent
    ("NotIn", ["backend"], False, True),
    ("Exists", None, True, False),
    ("DoesNotExist", None, False, True),
])
def test_each_operator(operator, values, present, absent_key):
    expr = {"key": "tier", "operator": operator} | ({"values": values} if values is not None else {})
    selector = {"matchExpressions": [expr]}
    assert matches(LABELS, selector) is present
    assert matches({"app": "x"}, selector) is absent_key


def test_match_labels_and_expressions_are_anded():
    selector = {"matchLabels": {"app": "ts-order-service"},
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["backend"]}]}
    assert not matches(LABELS, selector)
    assert matches(LABELS | {"tier": "edge"}, selector)


def test_selector_keys_are_sanitised_like_kube_state_metrics():
    assert sanitize_key("app.kubernetes.io/name") == "app_kubernetes_io_name"
    assert matches(LABELS, {"matchLabels": {"app.kubernetes.io/name": "order"}})
    assert not matches(LABELS, {"matchLabels": {"app.kubernetes.io/name": "payment"}})
    assert matches(LABELS, {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "Exists"}]})
    # raw Kubernetes label keys (not yet sanitised) match as well
    assert matches({"app.kubernetes.io/name": "order"}, {"matchLabels": {"app.kubernetes.io/name": "order"}})


def test_values_are_compared_verbatim():
    # only keys are sanitised by kube-state-metrics, never values
    assert not matches({"v": "a_b"}, {"matchLabels": {"v": "a.b"}})


def test_select_pods_filters_by_labels():
    pods = {"order-1": LABELS, "web-1": {"app": "web", "tier": "frontend"}, "bare": {}}
    assert select_pods(pods, {"matchLabels": {"tier": "backend"}}) == {"order-1"}
    assert select_pods(pods, {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}) == {"bare"}
    assert select_pods(pods, {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["frontend"]}]}) \
        == {"order-1", "bare"}


def test_unknown_operator_is_rejected():
    with pytest.raises(ValueError, match="operator"):
        select_pods({}, {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})
