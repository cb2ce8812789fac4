"""Operator settings from the environment (the Helm chart sets these; flags of `kopf run` stay kopf's own)."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from lemzha_operator.resources import GROUP, VERSION  # noqa: F401  (re-exported for the handlers)
from lemzha_operator.resources import INCIDENT_PLURAL as PLURAL  # noqa: F401

FINAL_PHASES = ("Completed", "Failed")  # an incident in one of these is done
# Chosen on all four Nezha days by `python -m offline.detect --ship-onset` (the rule each LODO fold applies to its
# training days); `cusum` or `<robust_z|bocpd>:<threshold>`.
DEFAULT_ONSET_ESTIMATOR = "cusum"  # all four days: cusum 5.673 bins mean |error|, robust_z 5.683, bocpd 7.901


@dataclass(frozen=True)
class Settings:
    prometheus_url: str
    loki_url: str | None
    bundle_dir: Path | None  # None: rank with the BARO baseline and say so in status.method
    cache_dir: Path
    prometheus_token_file: Path | None = None
    loki_token_file: Path | None = None
    ca_bundle: Path | None = None
    namespace_label: str = "namespace"
    pod_label: str = "pod"
    concurrency: int = 2
    metrics_port: int = 8000  # prometheus_client's /metrics; 0 turns it off
    query_timeout: float = 30.0  # seconds per Prometheus or Loki request (also sent to Prometheus as `timeout`)
    loki_max_lines: int = 200_000  # log pagination stops here; recorded in status.dataCoverage
    log_cache_rows: int = 200_000  # cleaned log chunks kept across incidents (about 20 MiB); 0 keeps none
    query_cache_samples: int = 1_000_000  # settled Prometheus range-query points kept (8 MiB); 0 keeps none
    retry_base: float = 5.0  # first retry delay after a source outage; doubles per attempt
    retry_max: float = 300.0  # the backoff's ceiling
    watch_stale_seconds: float = 120.0  # the health probe fails when the watch lags a listed change this long
    watch_tick_seconds: float = 10.0  # how often the RCAWatch loop lists the watches and evaluates those due
    ttl_check_seconds: float = 30.0  # how often the TTL janitor looks for finished incidents past their TTL
    onset_estimator: str = DEFAULT_ONSET_ESTIMATOR  # places the onset of windows without faultTime

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        if not env.get("LEMZHA_PROMETHEUS_URL"):
            raise ValueError("LEMZHA_PROMETHEUS_URL is not set")
        return cls(
            prometheus_url=env["LEMZHA_PROMETHEUS_URL"],
            loki_url=env.get("LEMZHA_LOKI_URL") or None,
            bundle_dir=path("LEMZHA_BUNDLE"),
            cache_dir=path("LEMZHA_TEMPLATE_CACHE") or Path("/tmp/lemzha-templates"),
            prometheus_token_file=path("LEMZHA_PROMETHEUS_TOKEN_FILE"),
            loki_token_file=path("LEMZHA_LOKI_TOKEN_FILE"),
            ca_bundle=path("LEMZHA_CA_BUNDLE"),
            namespace_label=env.get("LEMZHA_LOKI_NAMESPACE_LABEL", "namespace"),
            pod_label=env.get("LEMZHA_LOKI_POD_LABEL", "pod"),
            concurrency=number_setting(env, "LEMZHA_CONCURRENCY", 2, int, minimum=1),
            metrics_port=number_setting(env, "LEMZHA_METRICS_PORT", 8000, int, minimum=0),
            query_timeout=number_setting(env, "LEMZHA_QUERY_TIMEOUT_SECONDS", 30.0, float, minimum=0.1),
            loki_max_lines=number_setting(env, "LEMZHA_LOKI_MAX_LINES", 200_000, int, minimum=1),
            log_cache_rows=number_setting(env, "LEMZHA_LOG_CACHE_ROWS", 200_000, int, minimum=0),
            query_cache_samples=number_setting(env, "LEMZHA_QUERY_CACHE_SAMPLES", 1_000_000, int, minimum=0),
            retry_base=number_setting(env, "LEMZHA_RETRY_BASE_SECONDS", 5.0, float, minimum=0.1),
            retry_max=number_setting(env, "LEMZHA_RETRY_MAX_SECONDS", 300.0, float, minimum=0.1),
            watch_stale_seconds=number_setting(env, "LEMZHA_WATCH_STALE_SECONDS", 120.0, float, minimum=1),
            watch_tick_seconds=number_setting(env, "LEMZHA_WATCH_TICK_SECONDS", 10.0, float, minimum=0.1),
            ttl_check_seconds=number_setting(env, "LEMZHA_TTL_CHECK_SECONDS", 30.0, float, minimum=0.1),
            onset_estimator=env.get("LEMZHA_ONSET_ESTIMATOR") or DEFAULT_ONSET_ESTIMATOR,
        )

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number `attempt` (0-based) after a source outage: exponential, capped."""
        return min(self.retry_max, self.retry_base * 2.0 ** max(0, min(attempt, 30)))


def number_setting(env: dict[str, str], name: str, default, kind, minimum):
    """A numeric setting; a bad value stops startup with a message naming the variable."""
    text = env.get(name)
    if text in (None, ""):
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(value):  # float() takes "nan" and "inf"; no setting means either
        raise ValueError(f"{name}={text!r} is not a finite number")
    if value < minimum:
        raise ValueError(f"{name}={text!r} must be at least {minimum}")
    return value


def peering_priority(pod_name: str) -> int:
    """A kopf peering priority derived from the pod's name: distinct replicas get distinct priorities, because
    replicas of equal priority all pause (kopf #734). A hash, so the same pod keeps its priority on restart."""
    return 1 + int.from_bytes(hashlib.sha256(pod_name.encode()).digest()[:4], "big") % (2**31 - 2)


def watched_namespaces(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """LEMZHA_WATCH_NAMESPACES (comma-separated; empty = all): the namespaces given to `kopf run -n`, which kopf
    does not expose to handlers; the watch-health probe lists only these."""
    text = (os.environ if env is None else env).get("LEMZHA_WATCH_NAMESPACES", "")
    return tuple(sorted({n.strip() for n in text.split(",") if n.strip()}))
