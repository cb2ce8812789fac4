"""Init container of the HA deployment: create the kopf peering object(s) if missing.

kopf only keeps alive peering objects that exist; without one every replica would run unpaused. Retries while the
peering CRD (installed by the same release) is not served yet; an existing object is left as it is.
"""

import os
import sys
import time

import kubernetes
from kubernetes.client.rest import ApiException

name = os.environ["PEERING_NAME"]
namespaces = os.environ.get("PEERING_NAMESPACES", "").split()
kubernetes.config.load_incluster_config()
api = kubernetes.client.CustomObjectsApi()


def create(namespace: str | None) -> None:
    kind = "KopfPeering" if namespace else "ClusterKopfPeering"
    body = {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": {"name": name}}
    try:
        if namespace:
            api.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", body)
        else:
            api.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body)
        print(f"created {kind} {name} in {namespace or 'the cluster'}")
    except ApiException as err:
        if err.status != 409:  # 409: it exists already
            raise


for _ in range(30):
    try:
        for ns in namespaces or [None]:
            create(ns)
        sys.exit(0)
    except ApiException as err:  # 404 until the CRD is established
        print(f"peering object not created yet ({err.status} {err.reason}), retrying", flush=True)
        time.sleep(2)
sys.exit("could not create the kopf peering object(s)")
