"""Test helper: an HTTP proxy in front of a real server (Prometheus, or the Loki stand-in) that can break on demand.

Modes (set `proxy.mode`, thread-safe):
- "pass": forward unchanged;
- "refuse": close the connection without an answer (the client sees a connection error, as for a dead server);
- "error": answer 503 with a plain-text body;
- "slow": wait `delay` seconds, then forward (a client with a shorter timeout gives up);
- "warn": forward, and add `warnings` to a JSON answer, as Prometheus does for partial responses.
`fail_after = N` forwards N more requests and then switches to "refuse" (an outage in the middle of an analysis).
`requests` counts what reached the proxy, `queries` keeps the `query` of each forwarded POST.
`version`, when set, is the answer to /api/v1/status/buildinfo in place of the server's own (a Prometheus 3 stand-in
for that one endpoint: the queries still reach the real server).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

import requests

from offline.bench.standins.http_server import BackgroundHTTPServer, send_answer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class FaultProxy(BackgroundHTTPServer):
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "pass"
        self.delay = 0.0
        self.warnings: list[str] = []
        self.fail_after: int | None = None
        self.requests = 0
        self.version: str | None = None
        self.queries: list[str] = []
        self._lock = threading.Lock()
        super().__init__(self._handler(), name="fault-proxy")

    @property
    def url(self) -> str:
        return self.base_url

    def set(self, mode: str = "pass", delay: float = 0.0, warnings: list[str] | None = None,
            fail_after: int | None = None) -> None:
        with self._lock:
            self.mode, self.delay, self.warnings, self.fail_after = mode, delay, list(warnings or []), fail_after

    def _next_mode(self) -> str:
        with self._lock:
            self.requests += 1
            if self.fail_after is not None:
                if self.fail_after <= 0:
                    self.mode, self.fail_after = "refuse", None
                else:
                    self.fail_after -= 1
            return self.mode

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode = proxy._next_mode()
                if mode == "refuse":
                    self.close_connection = True
                    self.connection.shutdown(2)  # no status line: the client's connection breaks
                    return
                if mode == "error":
                    self._answer(503, b"upstream unavailable (fault proxy)", "text/plain")
                    return
                if mode == "slow":
                    time.sleep(proxy.delay)
                if proxy.version is not None and self.path.split("?")[0] == "/api/v1/status/buildinfo":
                    answer = {"status": "success", "data": {"version": proxy.version, "revision": "fault-proxy"}}
                    self._answer(200, json.dumps(answer).encode(), "application/json")
                    return
                if method == "POST":
                    proxy.queries += parse_qs(body.decode()).get("query", [])
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                try:
                    resp = requests.request(method, proxy.upstream + self.path, data=body, headers=headers,
                                            timeout=120)
                except requests.RequestException as err:
                    self._answer(502, str(err).encode(), "text/plain")
                    return
                content = resp.content
                if mode == "warn" and "json" in resp.headers.get("Content-Type", ""):
                    doc = json.loads(content)
                    doc["warnings"] = [*doc.get("warnings", []), *proxy.warnings]
                    content = json.dumps(doc).encode()
                self._answer(resp.status_code, content, resp.headers.get("Content-Type", "application/json"))

            def _answer(self, code: int, content: bytes, content_type: str) -> None:
                send_answer(self, code, content, content_type)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        return Handler
