"""Operator settings from the environment (the Helm chart sets these; flags of `kopf run` stay kopf's own)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GROUP = "lemzha.io"
VERSION = "v1alpha1"
PLURAL = "rcaincidents"


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
            concurrency=int(env.get("LEMZHA_CONCURRENCY", "2")),
        )
