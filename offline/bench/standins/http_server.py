"""The plumbing the webhook relay and the fault proxy share: a ThreadingHTTPServer on 127.0.0.1 (a free port) served
from a daemon thread while a `with` block runs, and an answer that tolerates a client that has already hung up."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class BackgroundHTTPServer:
    """Serves `handler` on 127.0.0.1 from `__enter__` to `__exit__`; `base_url` is known from construction on."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str, poll_interval: float = 0.5) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": poll_interval},
                                        name=name, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def send_answer(handler: BaseHTTPRequestHandler, status: int, content: bytes, content_type: str | None = None) -> None:
    """Status line, headers and body; a client that gave up first (its own timeout) is not an error here."""
    try:
        handler.send_response(status)
        if content_type is not None:
            handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)
    except (BrokenPipeError, ConnectionResetError):
        pass
