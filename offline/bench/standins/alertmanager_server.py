"""Test and benchmark helper: a real Alertmanager (Debian's /usr/bin/prometheus-alertmanager) whose one receiver is
a webhook, and a relay that records every post Alertmanager makes before passing it on to the operator.

Alertmanager listens on 127.0.0.1 on a free port, with gossip off, a temporary storage dir, and is stopped by its
PID. Tests skip when the binary is absent (CI installs it). The relay stamps each post on arrival (monotonic clock)
and keeps its body, so a test can re-send a captured post (a retry) and the benchmark can time from the post.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import requests

from offline.bench.standins.http_server import BackgroundHTTPServer, send_answer
from offline.bench.standins.prometheus_server import StandinUnavailable, free_port, served_process

ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
SKIP_REASON = "Alertmanager not installed here (apt-get install prometheus-alertmanager; CI installs it)"


def alertmanager_config(webhook_url: str, token_file: Path | None, repeat_interval: str) -> dict:
    """One route, every alert its own group (`...`), sent at once and repeated every `repeat_interval`."""
    webhook: dict = {"url": webhook_url, "send_resolved": True}
    if token_file is not None:
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    return {"route": {"receiver": "lemzha", "group_by": ["..."], "group_wait": "0s", "group_interval": "1s",
                      "repeat_interval": repeat_interval},
            "receivers": [{"name": "lemzha", "webhook_configs": [webhook]}]}


@contextmanager
def alertmanager_server(webhook_url: str, token_file: Path | None = None, repeat_interval: str = "2s",
                        timeout: float = 30.0) -> Iterator[str]:
    """A running Alertmanager posting every alert to `webhook_url`; yields its base URL."""
    if not ALERTMANAGER.is_file():
        raise StandinUnavailable(SKIP_REASON)
    with tempfile.TemporaryDirectory(prefix="lemzha-am-") as tmp:
        root = Path(tmp)
        (root / "alertmanager.yml").write_text(json.dumps(alertmanager_config(webhook_url, token_file,
                                                                              repeat_interval)))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [str(ALERTMANAGER), f"--config.file={root / 'alertmanager.yml'}", f"--storage.path={root / 'data'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
        with served_process(command, root / "alertmanager.log", f"{url}/-/ready", timeout):
            yield url


def push_alerts(alertmanager_url: str, alerts: list[dict]) -> None:
    """Alerts into Alertmanager through its API, as Prometheus sends them (labels, annotations, startsAt)."""
    requests.post(f"{alertmanager_url}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()


@dataclass(frozen=True)
class Post:
    at: float  # time.monotonic() on arrival
    answered: float  # time.monotonic() when the operator's answer came back (its incidents are created by then)
    body: bytes
    authorization: str | None
    status: int  # what the operator answered


class WebhookRelay(BackgroundHTTPServer):
    """An HTTP server on 127.0.0.1 that records each POST and forwards it, headers that matter included, to
    `target`; the sender gets the target's status and body. A context manager; `url` is the address to post to."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization")
                try:
                    answer = requests.post(relay.target, data=body, timeout=30,
                                           headers={"Content-Type": "application/json",
                                                    **({"Authorization": auth} if auth else {})})
                    status, content = answer.status_code, answer.content
                except requests.RequestException as err:
                    status, content = 502, str(err).encode()
                with relay._lock:
                    relay.posts.append(Post(at, time.monotonic(), body, auth, status))
                send_answer(self, status, content)  # Alertmanager may have given up on this post: it retries

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler, name="webhook-relay", poll_interval=0.05)

    @property
    def url(self) -> str:
        return f"{self.base_url}/alerts"

    def received(self) -> list[Post]:
        with self._lock:
            return list(self.posts)
