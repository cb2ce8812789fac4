"""kopf handlers: thin wrappers that run `pipeline.step` and write its outcome into the resource.

Run with `kopf run -m lemzha_operator.main --all-namespaces` (or `-n NS`), plus
`--liveness=http://0.0.0.0:8080/healthz` for the probes. The process imports no torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from datetime import UTC, datetime

import kopf

from lemzha.binning import rfc3339
from lemzha.memory import release_freed_memory
from lemzha_operator import selfmetrics
from lemzha_operator.cluster import list_watched, merge_conditions, paused_by_peer
from lemzha_operator.events import event_body, post_once
from lemzha_operator.health import WatchMonitor
from lemzha_operator.pipeline import Outcome, starting_phase, step
from lemzha_operator.settings import (
    FINAL_PHASES,
    GROUP,
    PLURAL,
    VERSION,
    Settings,
    peering_priority,
)

KIND = "RCAIncident"
log = logging.getLogger("lemzha.operator")


def ttl_due(spec: dict, status: dict, now: datetime) -> bool:
    """A finished incident whose ttlSecondsAfterFinished has passed since status.finishedAt."""
    ttl = spec.get("ttlSecondsAfterFinished")
    finished = status.get("finishedAt")
    if ttl is None or status.get("phase") not in FINAL_PHASES or not finished:
        return False
    done = datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
    return (now - done).total_seconds() >= float(ttl)


def status_patch(outcome: Outcome, previous: dict, generation: int, now: datetime,
                 extra_conditions: list[dict] | None = None) -> dict:
    """The status fields to write for an outcome. The message is cut to the CRD's maxLength: a status the API
    server refuses would leave the incident without one, retried forever."""
    fields = dict(outcome.status)
    if "message" in fields:
        fields["message"] = str(fields["message"])[:1024]
    return {
        **fields,
        "phase": outcome.phase,
        "observedGeneration": generation,
        "conditions": merge_conditions(previous.get("conditions", []), [*outcome.conditions, *(extra_conditions or [])],
                                       generation, now),
    }


class InFlight:
    """Counts attempts running at once (the bound is kopf's executor size = LEMZHA_CONCURRENCY)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __enter__(self) -> int:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            selfmetrics.IN_PROGRESS.set(self.now)
            return self.now

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1
            selfmetrics.IN_PROGRESS.set(self.now)


@kopf.on.login()
def login(**kwargs):
    # in-cluster first, then the kubeconfig: explicit, because installing `kubernetes` changes kopf's default
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_) -> None:
    from lemzha_operator.sources import make_ranker, make_sources, model_status

    # watch streams can go silent (kopf #1276): bounded requests, and reconnect regularly
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = 600
    settings.networking.connect_timeout = 30
    settings.networking.request_timeout = 120
    # Events come from events.post_once (named, so never twice); kopf's own would repeat on every retry
    settings.posting.enabled = False
    if os.environ.get("POD_NAME"):  # several replicas with peering: each needs its own priority (kopf #734)
        settings.peering.priority = peering_priority(os.environ["POD_NAME"])
    try:
        config = Settings.from_env()
    except ValueError as err:  # a permanent error ends `kopf run` (non-zero); any other would be retried forever
        raise kopf.PermanentError(f"bad operator settings: {err}") from err
    settings.execution.max_workers = config.concurrency  # incidents analysed at once
    memo.config = config
    memo.ranker, memo.model_problem = make_ranker(config)
    if memo.model_problem is not None:
        logger.warning("model not loaded (%s): %s", memo.model_problem.reason, memo.model_problem.message)
    memo.model = model_status(memo.ranker)
    memo.fetch_metrics, memo.fetch_logs, memo.fetch_pod_info, memo.fetch_traces = make_sources(config)
    memo.objects, memo.core = _kubernetes_apis(config.concurrency)
    memo.monitor = WatchMonitor(config.watch_stale_seconds)
    memo.in_flight = InFlight()
    from lemzha.detect.onset import onset_estimator

    try:
        memo.onset_estimator = onset_estimator(config.onset_estimator)
    except ValueError as err:  # a bad setting stops startup, named
        raise kopf.PermanentError(f"bad operator settings: LEMZHA_ONSET_ESTIMATOR: {err}") from err
    selfmetrics.watch_templates(lambda: getattr(memo.ranker, "embedder", None))
    selfmetrics.serve(config.metrics_port)
    memo.janitor = asyncio.get_running_loop().create_task(janitor(memo, settings, logger))


def _kubernetes_apis(concurrency: int):
    """(CustomObjectsApi, CoreV1Api) for the TTL janitor, the watch probe and Events: in-cluster config first,
    then the kubeconfig."""
    import kubernetes

    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        # KUBECONFIG read now, not when the client library was imported
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=config)
    config.connection_pool_maxsize = max(4, concurrency + 2)  # one per worker thread, plus janitor and probe
    client = kubernetes.client.ApiClient(config)
    return kubernetes.client.CustomObjectsApi(client), kubernetes.client.CoreV1Api(client)


def expired_incidents(items: list[dict], now: datetime) -> list[tuple[str, str]]:
    """(namespace, name) of listed incidents whose ttlSecondsAfterFinished has passed."""
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items
            if not o["metadata"].get("deletionTimestamp") and ttl_due(o.get("spec", {}), o.get("status", {}), now)]


async def janitor(memo: kopf.Memo, settings: kopf.OperatorSettings, logger) -> None:
    """Deletes finished incidents past their TTL. A plain loop, not a kopf timer: timers put a finalizer on every
    incident, and finalizers can outlive their timers (kopf #1305), leaving incidents that never go away. A replica
    paused by peering stays idle; lists only the watched namespaces (the chart's Roles allow no more)."""
    from kubernetes.client.exceptions import ApiException

    while True:
        await asyncio.sleep(memo.config.ttl_check_seconds)  # LEMZHA_TTL_CHECK_SECONDS
        try:
            if await asyncio.to_thread(paused_by_peer, memo, settings):
                continue
            items = await asyncio.to_thread(_list_incidents, memo)
            for namespace, name in expired_incidents(items, datetime.now(UTC)):
                logger.info("%s/%s: ttlSecondsAfterFinished passed, deleting", namespace, name)
                try:
                    await asyncio.to_thread(memo.objects.delete_namespaced_custom_object, GROUP, VERSION, namespace,
                                            PLURAL, name)
                except ApiException as err:
                    if err.status != 404:  # gone already (deleted by hand): nothing to do
                        raise
        except Exception as err:  # an API hiccup must not end cleanup for good
            logger.warning("TTL cleanup failed, retrying: %s", err)


@kopf.on.cleanup()
async def stop_janitor(memo: kopf.Memo, **_) -> None:
    task = getattr(memo, "janitor", None)
    if task is not None:
        task.cancel()


@kopf.on.event(GROUP, VERSION, PLURAL)
def watched(event: dict, meta, memo: kopf.Memo, **_) -> None:
    """Every watch event: the watch-health probe compares these with a LIST."""
    monitor = getattr(memo, "monitor", None)
    if monitor is not None and meta.get("uid"):
        monitor.delivered(meta["uid"], str(meta.get("resourceVersion", "")), deleted=event.get("type") == "DELETED")


def _list_incidents(memo: kopf.Memo) -> list[dict]:
    return list_watched(memo.objects, PLURAL)


@kopf.on.probe(id="watch")
async def watch_alive(memo: kopf.Memo, settings: kopf.OperatorSettings, **_) -> dict:
    """Fails kopf's /healthz (HTTP 500) when the watch has not delivered a change a LIST shows for
    LEMZHA_WATCH_STALE_SECONDS: a silent, dead watch (kopf #1276). A LIST that fails also fails the probe. A
    replica paused by peering receives nothing by design, so it is not checked (its standby must not be killed)."""
    if await asyncio.to_thread(paused_by_peer, memo, settings):
        return {"paused": True}
    items = await asyncio.to_thread(_list_incidents, memo)
    listed = [(o["metadata"]["uid"], str(o["metadata"].get("resourceVersion", ""))) for o in items]
    stale = memo.monitor.check(listed, time.monotonic())
    selfmetrics.WATCH_STALE.set(len(stale))
    if stale:
        raise kopf.PermanentError(f"the watch has not delivered {len(stale)} listed incident change(s) for "
                                  f"{memo.monitor.stale_after:.0f} s")
    return {"incidents": len(listed), "stale": 0}


def _post(memo: kopf.Memo, meta, reason: str, message: str, event_type: str = "Normal") -> None:
    try:
        post_once(memo.core, event_body(dict(meta), KIND, reason, message, event_type))
    except Exception as err:  # an Event is a courtesy: never fail the analysis over it
        log.warning("%s/%s: could not post Event %s: %s", meta.get("namespace"), meta.get("name"), reason, err)


def live_status(memo: kopf.Memo, meta) -> dict | None:
    """The incident's status as the API server has it now (None when it cannot be read). kopf can hand a handler a
    body older than its own last patch: the phase written below makes an extra event, and under load kopf may
    process it after giving up waiting for its patch, as if the incident had not been handled."""
    try:
        obj = memo.objects.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"])
    except Exception as err:  # the attempt goes on with kopf's body
        log.warning("%s/%s: could not read the live status: %s", meta.get("namespace"), meta.get("name"), err)
        return None
    return dict(obj.get("status") or {})


def show_phase(memo: kopf.Memo, meta, phase: str) -> None:
    """Write the phase an attempt is in before it runs, so `kubectl get rcai` shows Pending or Analyzing while it
    does (kopf writes the handler's own patch only when it returns). Best effort: a failed write is logged."""
    body = {"status": {"phase": phase}}
    try:
        memo.objects.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                                           body)
    except Exception as err:  # the attempt's own status write follows; this one is a courtesy
        log.warning("%s/%s: could not show phase %s: %s", meta.get("namespace"), meta.get("name"), phase, err)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def analyze_incident(spec, status, meta, namespace, patch, memo: kopf.Memo, logger, retry: int = 0, **_) -> None:
    if status.get("phase") in FINAL_PHASES:
        return
    now = datetime.now(UTC)
    created = datetime.fromisoformat(meta.get("creationTimestamp", now.isoformat()).replace("Z", "+00:00"))
    target = spec.get("targetNamespace") or namespace
    config: Settings = memo.config
    status = live_status(memo, meta) or dict(status)
    if status.get("phase") in FINAL_PHASES:  # a stale body: this incident is done already
        log.info("%s/%s: already %s", namespace, meta["name"], status["phase"])
        return
    phase = starting_phase(dict(spec), status, now)
    if phase is not None and phase != status.get("phase"):
        show_phase(memo, meta, phase)
    with memo.in_flight as running:
        log.info("%s/%s: attempt %d started, %d in flight", namespace, meta["name"], retry, running)
        outcome = step(f"{namespace}/{meta['name']}", dict(spec), dict(status), target, now, created,
                       memo.fetch_metrics, memo.fetch_logs, memo.ranker, fetch_pod_info=memo.fetch_pod_info,
                       fetch_traces=memo.fetch_traces,
                       store=config.cache_dir / "incidents" / str(meta.get("uid", meta["name"])),
                       attempt=retry, backoff=config.backoff,
                       log_cap=config.loki_max_lines if memo.fetch_logs is not None else None,
                       onset_estimator=memo.onset_estimator)
    release_freed_memory()  # the attempt's frames are garbage now: keep the RSS near what is in use
    selfmetrics.record_attempt(outcome.timings, outcome.source_errors)
    written = datetime.now(UTC)  # the status below is written now, not when the attempt started
    problem = memo.model_problem
    extra = [problem.condition()] if problem is not None else [
        {"type": "ModelLoaded", "status": "True", "reason": "BundleLoaded", "message": "ranking with the bundle"}]
    patch.status.update(status_patch(outcome, dict(status), int(meta.get("generation", 1)), written, extra))
    if outcome.phase == "Completed":
        patch.status["model"] = memo.model
    if outcome.phase in FINAL_PHASES:
        patch.status["finishedAt"] = rfc3339(written)
        selfmetrics.record_final(outcome.phase, outcome.status.get("method", ""))
    degraded = next((c for c in outcome.conditions if c["type"] == "Degraded" and c["status"] == "True"), None)
    if degraded is not None:
        _post(memo, meta, degraded["reason"], degraded["message"], "Warning")
    if outcome.phase == "Completed":
        top = outcome.status["rootCauses"][0]["service"] if outcome.status.get("rootCauses") else "none"
        _post(memo, meta, "Completed", f"top cause: {top}")
        log.info("%s/%s: Completed, top cause %s", namespace, meta["name"], top)
    elif outcome.phase == "Failed":
        _post(memo, meta, "Failed", outcome.conditions[-1]["message"], "Warning")
        log.info("%s/%s: Failed: %s", namespace, meta["name"], outcome.conditions[-1]["message"])
    elif outcome.retry_after is not None:
        logger.info("%s: %s, retrying in %.0f s", meta["name"], outcome.phase, outcome.retry_after)
        raise kopf.TemporaryError(outcome.conditions[-1]["message"], delay=outcome.retry_after)
