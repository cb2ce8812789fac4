"""The preflight doctor's errors: each bad input or unusable server is one line on stderr and exit status 2. Its
findings against a real Prometheus are tested with the exporter replay (tests/test_exporter_replay.py)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lemzha_operator import doctor


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = doctor.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class Answering:
    """A local HTTP server giving every request the same answer (not Prometheus)."""

    def __init__(self, status: int, body: bytes, content_type: str = "text/html") -> None:
        answer = (status, body, content_type)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(answer[0])
                self.send_header("Content-Type", answer[2])
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Answering:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("argv", "message"), [
    (["--prometheus", "http://127.0.0.1:1", "--namespace", "ts"], "Prometheus at http://127.0.0.1:1 unreachable"),
    (["--prometheus", "prometheus:9090", "--namespace", "ts"], "'prometheus:9090' is not an http(s) URL"),
    (["--prometheus", "http://127.0.0.1:1", "--namespace", "ts", "--at", "yesterday"],
     "--at 'yesterday' is not a time; give RFC 3339"),
    (["--prometheus", "http://127.0.0.1:1", "--namespace", "ts", "--lookback", "10 minutes"],
     "--lookback '10 minutes' is not a Prometheus duration"),
    (["--prometheus", "http://127.0.0.1:1", "--namespace", " "], "--namespace is empty"),
    (["--prometheus", "http://127.0.0.1:1", "--namespace", "ts", "--token-file", "/nonexistent/token"],
     "--token-file /nonexistent/token is not a file"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_missing_url_names_the_variable(capsys, monkeypatch):
    monkeypatch.delenv("LEMZHA_PROMETHEUS_URL", raising=False)
    code, _, err = run(capsys, "--namespace", "ts")
    assert code == 2 and "--prometheus is required (or set LEMZHA_PROMETHEUS_URL)" in err


def test_a_server_that_is_not_prometheus_or_refuses_is_named(capsys):
    with Answering(200, b"<html>login</html>") as page:
        code, _, err = run(capsys, "--prometheus", page.url, "--namespace", "ts")
    assert code == 2 and f"Prometheus at {page.url} answered non-JSON: <html>login" in err
    with Answering(401, b"Unauthorized", "text/plain") as denied:
        code, _, err = run(capsys, "--prometheus", denied.url, "--namespace", "ts")
    assert code == 2 and ": 401 Unauthorized" in err and "--token-file" in err and err.count("\n") == 1
