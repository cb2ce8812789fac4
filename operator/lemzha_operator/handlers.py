"""kopf handlers: thin wrappers that run `pipeline.step` and write its outcome into the resource.

Run with `kopf run -m lemzha_operator.handlers --all-namespaces` (or `-n NS`). The process imports no torch.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import kopf

from lemzha_operator.pipeline import Outcome, step
from lemzha_operator.settings import GROUP, PLURAL, VERSION, Settings

FINAL_PHASES = ("Completed", "Failed")
TTL_CHECK_SECONDS = float(os.environ.get("LEMZHA_TTL_CHECK_SECONDS", "30"))


def ttl_due(spec: dict, status: dict, now: datetime) -> bool:
    """A finished incident whose ttlSecondsAfterFinished has passed since status.finishedAt."""
    ttl = spec.get("ttlSecondsAfterFinished")
    finished = status.get("finishedAt")
    if ttl is None or status.get("phase") not in FINAL_PHASES or not finished:
        return False
    done = datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
    return (now - done).total_seconds() >= float(ttl)


def merge_conditions(previous: list[dict], new: list[dict], generation: int, now: datetime) -> list[dict]:
    """Kubernetes-style conditions: one per type; lastTransitionTime moves only when the status value changes."""
    merged = {c["type"]: dict(c) for c in previous or []}
    stamp = now.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    for cond in new:
        old = merged.get(cond["type"])
        changed = old is None or old.get("status") != cond["status"]
        merged[cond["type"]] = {
            **cond,
            "lastTransitionTime": stamp if changed else old.get("lastTransitionTime", stamp),
            "observedGeneration": generation,
        }
    return [merged[t] for t in sorted(merged)]


def status_patch(outcome: Outcome, previous: dict, generation: int, now: datetime) -> dict:
    """The status fields to write for an outcome."""
    return {
        **outcome.status,
        "phase": outcome.phase,
        "observedGeneration": generation,
        "conditions": merge_conditions(previous.get("conditions", []), outcome.conditions, generation, now),
    }


@kopf.on.login()
def login(**kwargs):
    # in-cluster first, then the kubeconfig: explicit, because installing `kubernetes` changes kopf's default
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_) -> None:
    from lemzha_operator.sources import make_ranker, make_sources, model_status

    settings.watching.server_timeout = 300  # watch streams can go silent (kopf #1276): reconnect regularly
    settings.watching.client_timeout = 330
    settings.watching.inactivity_timeout = 600
    config = Settings.from_env()
    settings.execution.max_workers = config.concurrency  # incidents analysed at once
    memo.config = config
    memo.ranker = make_ranker(config)
    memo.model = model_status(memo.ranker)
    memo.fetch_metrics, memo.fetch_logs, memo.fetch_pod_info = make_sources(config)
    memo.objects = _custom_objects_api()
    memo.janitor = asyncio.get_running_loop().create_task(janitor(memo, logger))


def _custom_objects_api():
    """The Kubernetes client for deleting expired incidents: in-cluster config first, then the kubeconfig."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.CustomObjectsApi()


def expired_incidents(items: list[dict], now: datetime) -> list[tuple[str, str]]:
    """(namespace, name) of listed incidents whose ttlSecondsAfterFinished has passed."""
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items
            if not o["metadata"].get("deletionTimestamp") and ttl_due(o.get("spec", {}), o.get("status", {}), now)]


async def janitor(memo: kopf.Memo, logger) -> None:
    """Deletes finished incidents past their TTL. A plain loop, not a kopf timer: timers put a finalizer on every
    incident, and finalizers can outlive their timers (kopf #1305), leaving incidents that never go away."""
    while True:
        await asyncio.sleep(TTL_CHECK_SECONDS)
        try:
            listed = await asyncio.to_thread(memo.objects.list_cluster_custom_object, GROUP, VERSION, PLURAL)
            for namespace, name in expired_incidents(listed.get("items", []), datetime.now(UTC)):
                logger.info("%s/%s: ttlSecondsAfterFinished passed, deleting", namespace, name)
                await asyncio.to_thread(memo.objects.delete_namespaced_custom_object, GROUP, VERSION, namespace,
                                        PLURAL, name)
        except Exception as err:  # an API hiccup must not end cleanup for good
            logger.warning("TTL cleanup failed, retrying: %s", err)


@kopf.on.cleanup()
async def stop_janitor(memo: kopf.Memo, **_) -> None:
    task = getattr(memo, "janitor", None)
    if task is not None:
        task.cancel()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def analyze_incident(body, spec, status, meta, namespace, patch, memo: kopf.Memo, logger, **_) -> None:
    if status.get("phase") in FINAL_PHASES:
        return
    now = datetime.now(UTC)
    created = datetime.fromisoformat(meta.get("creationTimestamp", now.isoformat()).replace("Z", "+00:00"))
    target = spec.get("targetNamespace") or namespace
    outcome = step(f"{namespace}/{meta['name']}", dict(spec), dict(status), target, now, created,
                   memo.fetch_metrics, memo.fetch_logs, memo.ranker, fetch_pod_info=memo.fetch_pod_info,
                   store=memo.config.cache_dir / "incidents" / str(meta.get("uid", meta["name"])))
    patch.status.update(status_patch(outcome, dict(status), int(meta.get("generation", 1)), now))
    if outcome.phase == "Completed":
        patch.status["model"] = memo.model
    if outcome.phase in FINAL_PHASES:
        patch.status["finishedAt"] = now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    if outcome.phase == "Completed":
        top = outcome.status["rootCauses"][0]["service"] if outcome.status.get("rootCauses") else "none"
        kopf.info(body, reason="Completed", message=f"top cause: {top}")
    elif outcome.retry_after is not None:
        logger.info("%s: %s, retrying in %.0f s", meta["name"], outcome.phase, outcome.retry_after)
        raise kopf.TemporaryError(outcome.conditions[-1]["message"], delay=outcome.retry_after)
