"""Test and benchmark helper: the operator as a `kopf run` subprocess, and kubectl against the kube stand-in.

Used by the end-to-end tests, the fault tests and `python -m offline.bench.operator`. Processes are stopped by
their own PID only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from offline.bench.standins.prometheus_server import free_port

REPO = Path(__file__).resolve().parents[3]
KUBECTL = Path("/usr/bin/kubectl")


class Kubectl:
    def __init__(self, kubeconfig: Path, cache: Path, log_of=lambda: "") -> None:
        self.kubeconfig, self.cache, self.log_of = kubeconfig, cache, log_of

    def __call__(self, *args: str, check: bool = True, timeout: float = 60,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}): {out.stderr}\n"
                                 f"operator log tail:\n{self.log_of()}")
        return out

    def get(self, name: str, namespace: str) -> dict:
        return json.loads(self("get", f"rcai/{name}", "-n", namespace, "-o", "json").stdout)

    def incidents(self, namespace: str) -> list[dict]:
        return json.loads(self("get", "rcai", "-n", namespace, "-o", "json").stdout)["items"]

    def events_of(self, name: str, namespace: str) -> list[tuple[str, str]]:
        items = json.loads(self("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        return [(e["reason"], e["message"]) for e in items if e["involvedObject"]["name"] == name]

    def wait_until(self, name: str, namespace: str, check, timeout: float, what: str) -> dict:
        """Poll the incident until `check(obj)` is true; the last object is in the failure message."""
        deadline = time.monotonic() + timeout
        obj: dict = {}
        while time.monotonic() < deadline:
            out = self("get", f"rcai/{name}", "-n", namespace, "-o", "json", check=False)
            if out.returncode == 0:
                obj = json.loads(out.stdout)
                if check(obj):
                    return obj
            time.sleep(0.25)
        raise AssertionError(f"{name}: not {what} after {timeout:.0f} s: {json.dumps(obj.get('status'))[:1500]}\n"
                             f"operator log tail:\n{self.log_of()}")


def condition(obj: dict, kind: str) -> dict:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}.get(kind, {})


class OperatorProcess:
    """`kopf run --standalone --all-namespaces -m lemzha_operator.main` with the given environment, logging to
    `log`; `health_url` is kopf's liveness endpoint, `metrics_url` the operator's /metrics."""

    def __init__(self, env: dict[str, str], log: Path, cwd: Path) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        self.env = {**os.environ, "LEMZHA_METRICS_PORT": str(self.metrics_port), **env,
                    "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO),
                                                   os.environ.get("PYTHONPATH", "")])}
        self.log, self.cwd = log, cwd
        self.proc: subprocess.Popen | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60) -> OperatorProcess:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                 f"--liveness=http://127.0.0.1:{self.health_port}/healthz", "-m", "lemzha_operator.main"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while True:  # ready once /metrics answers: startup (bundle, sources) has run
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(self.metrics_url, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"operator not ready after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else "(no log)"

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
