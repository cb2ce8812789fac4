"""Kubernetes Events that are posted at most once per incident and reason, even across operator restarts.

kopf's `kopf.info` posts with a generated name, so an attempt that posts and is then killed before its status
write would post again on the retry. Here the Event's name is derived from the incident's uid and the reason:
a second create answers 409 AlreadyExists, which is the "already posted" signal.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lemzha.binning import rfc3339
from lemzha_operator.settings import GROUP, VERSION

COMPONENT = "lemzha-operator"


def event_name(name: str, uid: str, reason: str) -> str:
    """A DNS-subdomain name, stable per (incident, reason); uid keeps a re-created incident's Events apart."""
    return f"{name[:200]}.{uid.replace('-', '')[:12]}.{reason.lower()[:30]}"


def event_body(meta: dict, kind: str, reason: str, message: str, event_type: str = "Normal",
               now: datetime | None = None) -> dict:
    stamp = rfc3339(now or datetime.now(UTC))
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(meta["name"], meta.get("uid", ""), reason), "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post_once(core_api, body: dict) -> bool:
    """Create the Event; False when one with its name exists already (posted by an earlier attempt)."""
    from kubernetes.client.exceptions import ApiException

    try:
        core_api.create_namespaced_event(body["metadata"]["namespace"], body, _preload_content=False)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True
