"""Test helper: a real Prometheus (Debian's /usr/bin/prometheus) serving a copy of a backfilled data dir.

The server compacts and writes into its data dir, so every start works on a fresh temporary copy. It listens on
127.0.0.1 on a free port and is stopped by its PID. Tests skip when the binary is absent (CI installs it).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
SKIP_REASON = "Prometheus not installed here (apt-get install prometheus; CI installs it)"



class StandinUnavailable(RuntimeError):
    """A binary a stand-in needs is not installed."""

_CONFIG = "global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\nscrape_configs: []\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(rules: str | None, alertmanager: str | None) -> str:
    """No scrapes; with `rules`, a rule file evaluated every second, its alerts sent to `alertmanager` (host:port)."""
    if rules is None:
        return _CONFIG
    config = {"global": {"scrape_interval": "1h", "evaluation_interval": "1s"}, "rule_files": ["rules.yml"],
              "scrape_configs": []}
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return json.dumps(config)  # JSON is YAML


@contextmanager
def prometheus_server(data_dir: Path, timeout: float = 30.0, rules: str | None = None,
                      alertmanager: str | None = None, port: int | None = None) -> Iterator[str]:
    """Serve a temporary copy of `data_dir`; yields the base URL. Retention is 10 years, because it counts back from
    the newest block and the Nezha data is from 2022 and 2023. `rules` (a rule file's text) are evaluated every
    second and their alerts go to `alertmanager` (host:port). `port`: a free one chosen beforehand (default: any)."""
    if not PROMETHEUS.is_file():
        raise StandinUnavailable(SKIP_REASON)
    with tempfile.TemporaryDirectory(prefix="lemzha-prom-") as tmp:
        root = Path(tmp)
        shutil.copytree(data_dir, root / "data")
        (root / "prometheus.yml").write_text(_config(rules, alertmanager))
        if rules is not None:
            (root / "rules.yml").write_text(rules)
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        command = [str(PROMETHEUS), f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                   "--storage.tsdb.retention.time=10y", f"--web.listen-address=127.0.0.1:{port}",
                   # alerts sent before the Alertmanager is discovered (a few seconds) are dropped: resend every 1 s
                   *(["--rules.alert.resend-delay=1s"] if rules is not None else [])]
        with served_process(command, root / "prometheus.log", f"{url}/-/ready", timeout):
            yield url


@contextmanager
def served_process(command: list[str], log_path: Path, ready_url: str, timeout: float) -> Iterator[None]:
    """Run `command` (a server), logging to `log_path`, until `ready_url` answers 200; stop it by its PID after."""
    name = Path(command[0]).name
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    if requests.get(ready_url, timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout} s")
                time.sleep(0.05)
            yield
        finally:
            proc.terminate()  # by PID, only the process this helper started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
