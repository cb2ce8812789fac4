"""The kopf side of RCAWatch: a loop that evaluates every watch when its `interval` has passed on the watch clock
(`lemzha_operator.clock`), opens incidents and writes the watch's status. The decisions are `watch.py`'s.

Why a plain loop and not `@kopf.timer`: a kopf timer (like a daemon) makes kopf put its finalizer on every
RCAWatch (kopf #1074: timers force `requires_finalizer`), and such a finalizer outlives the operator (kopf #1305):
after `helm uninstall`, or with the operator scaled to zero, a watch could no longer be deleted, nor the namespace
holding it. The TTL janitor of `handlers.py` avoids timers for the same reason; this loop follows it: every
LEMZHA_WATCH_TICK_SECONDS (default 10) it lists the watches of the watched namespaces and evaluates those that are
due; a replica paused by peering stays idle. kopf fixes a timer's interval when it is decorated anyway, so
`spec.interval` would have needed this "tick, then check what is due" shape in a timer too.

Registered by `lemzha_operator.main`, the module `kopf run -m` loads.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import kopf

from lemzha_operator import clock
from lemzha_operator import watch as W
from lemzha_operator.cluster import list_watched, merge_conditions, paused_by_peer
from lemzha_operator.fetchers import SourceUnavailable
from lemzha_operator.settings import Settings

log = logging.getLogger("lemzha.watches")


@kopf.on.startup()
async def start_watch_loop(memo: kopf.Memo, settings: kopf.OperatorSettings, logger, **_) -> None:
    memo.watch_loop = asyncio.get_running_loop().create_task(watch_loop(memo, settings, logger))


@kopf.on.cleanup()
async def stop_watch_loop(memo: kopf.Memo, **_) -> None:
    task = getattr(memo, "watch_loop", None)
    if task is not None:
        task.cancel()


def tick_seconds(memo: kopf.Memo) -> float:
    """LEMZHA_WATCH_TICK_SECONDS from the settings the main startup handler reads (the default until it has)."""
    config = getattr(memo, "config", None)
    return config.watch_tick_seconds if config is not None else Settings.watch_tick_seconds


async def watch_loop(memo: kopf.Memo, settings: kopf.OperatorSettings, logger) -> None:
    while True:
        await asyncio.sleep(tick_seconds(memo))
        if getattr(memo, "objects", None) is None or getattr(memo, "fetch_metrics", None) is None:
            continue  # the main startup handler has not built the clients yet
        try:
            if await asyncio.to_thread(paused_by_peer, memo, settings):
                continue
            await asyncio.to_thread(tick, memo)
        except Exception as err:  # an API hiccup or a bad clock file must not end the loop for good
            logger.warning("RCAWatch evaluation failed, retrying: %s", err)


def tick(memo: kopf.Memo) -> int:
    """Evaluate every due watch once at the watch clock's time; returns how many were evaluated."""
    now = clock.now()
    done = 0
    for obj in list_watches(memo.objects):
        try:
            done += evaluate_one(memo, obj, now)
        except Exception as err:  # one broken watch must not starve the others
            meta = obj.get("metadata", {})
            log.warning("%s/%s: evaluation failed: %s", meta.get("namespace"), meta.get("name"), err)
    return done


def list_watches(objects) -> list[dict]:
    return list_watched(objects, W.WATCH_PLURAL)


def evaluate_one(memo: kopf.Memo, obj: dict, now: datetime) -> int:
    """Evaluate one watch if due and write its status; 1 if evaluated (or found invalid), else 0."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return 0
    generation = int(meta.get("generation", 1))
    try:
        watch = W.WatchSpec.from_object(spec, meta)
    except ValueError as err:  # the schema rejects these; an object from before a CRD change could still have one
        if (status.get("conditions") or [{}])[0].get("reason") != "InvalidSpec":
            _write(memo, meta, status, {"message": str(err)},
                   [W.condition("Ready", False, "InvalidSpec", str(err))], generation, now)
        return 1
    last = W.parse_time(status.get("lastEvaluation"))
    if not W.due(watch, last, now) and int(status.get("observedGeneration", 0)) == generation:
        return 0
    try:
        result = W.evaluate(watch, status, now, memo.fetch_metrics, lambda body: create_incident(memo, body),
                            lambda: list_incidents(memo, watch))
    except SourceUnavailable as err:
        # lastEvaluation stays: the next tick tries again
        _write(memo, meta, status, {"message": str(err)[:1024]},
               [W.condition("Ready", False, err.reason, str(err))], generation, now)
        return 1
    except Exception as err:  # e.g. Prometheus rejecting a query, or the detector's imports missing from an image
        log.warning("%s/%s: evaluation failed: %s", watch.namespace, watch.name, err)
        text = f"{type(err).__name__}: {err}"
        _write(memo, meta, status, {"message": text[:1024]},
               [W.condition("Ready", False, "EvaluationFailed", text)], generation, now)
        return 1
    if result.created:
        log.info("%s/%s: %s", watch.namespace, watch.name, result.conditions[-1]["message"])
    message = result.conditions[-1]["message"] if result.conditions else ""
    _write(memo, meta, status, {**result.status, "message": message[:1024]}, result.conditions, generation, now)
    return 1


def _write(memo: kopf.Memo, meta: dict, previous: dict, fields: dict, conditions: list[dict], generation: int,
           now: datetime) -> None:
    """Patch the watch's status (merge patch through the status subresource). Conditions are stamped with the watch
    clock, as every time in a watch's status."""
    body = {"status": {**fields, "observedGeneration": generation,
                       "conditions": merge_conditions(previous.get("conditions", []), conditions, generation, now)}}
    memo.objects.patch_namespaced_custom_object_status(W.GROUP, W.VERSION, meta["namespace"], W.WATCH_PLURAL,
                                                       meta["name"], body)


def create_incident(memo: kopf.Memo, body: dict) -> bool:
    """Create the incident; False when one of that name exists already (an earlier evaluation of the same onset)."""
    from kubernetes.client.exceptions import ApiException

    try:
        memo.objects.create_namespaced_custom_object(W.GROUP, W.VERSION, body["metadata"]["namespace"],
                                                     W.INCIDENT_PLURAL, body)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


def list_incidents(memo: kopf.Memo, watch: W.WatchSpec) -> list[dict]:
    """The incidents carrying the watch's label (ownership is checked again by uid in `watch.open_incidents`)."""
    return memo.objects.list_namespaced_custom_object(
        W.GROUP, W.VERSION, watch.namespace, W.INCIDENT_PLURAL,
        label_selector=f"{W.WATCH_LABEL}={W.watch_label(watch.name)}").get("items", [])
