import pytest

from lemzha.services import service_of_pod


@pytest.mark.parametrize(
    ("pod", "service"),
    [
        ("ts-basic-service-5dc8d4f9fd-46997", "ts-basic-service"),
        ("frontend-579b9bff58-t2dbm", "frontend"),
        ("carts-db-644ff6b576-4qc2m", "carts-db"),  # lemzha-k's first-token rule said "carts"
        ("productpage-v1-94d68db49-j7t55", "productpage"),
        ("aws-node-2fjwc", "aws-node"),  # DaemonSet: one suffix
        ("prometheus-k8s-0", "prometheus-k8s"),  # StatefulSet ordinal
        ("standalone", "standalone"),
    ],
)
def test_service_of_pod(pod, service):
    assert service_of_pod(pod) == service


def test_owner_wins_over_name_parsing():
    assert service_of_pod("weird-name-x", owner="reviews-v2-599d4d8c78") == "reviews"


def test_empty_pod_is_an_error():
    with pytest.raises(ValueError):
        service_of_pod("")
