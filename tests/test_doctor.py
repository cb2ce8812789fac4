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


def test_each_absent_metric_says_what_is_missing(monkeypatch):
    """With a fake Prometheus: an absent input is named; node-exporter that cannot be joined to a node is told
    apart from a rule that is not loaded; a mesh found without its rule names the value to set."""
    from datetime import UTC, datetime

    from lemzha_operator import prometheus

    def fake(have: set[str], joinable: bool):
        def query(prom, query: str, time_s: float, timeout: float = 30.0):
            if query.startswith("count(count by (pod)"):
                return []  # no lemzha:* series and no cAdvisor either: every metric absent
            if "group_left (node)" in query:
                return [{"value": [time_s, "3"]}] if joinable else []
            return [{"value": [time_s, "1"]}] if any(f"({name}{{" in query or f"({name}[" in query
                                                     for name in have) else []
        return query

    monkeypatch.setattr(prometheus, "server_version", lambda prom, timeout=30.0: "2.42.0")
    monkeypatch.setattr(doctor, "read_version", lambda prom, timeout=30.0: "2.42.0")
    at = datetime(2023, 1, 29, 9, 30, tzinfo=UTC)
    exporters = {"container_cpu_usage_seconds_total", "kube_pod_container_resource_limits", "kube_pod_info",
                 "node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
                 "node_network_receive_bytes_total", "response_latency_ms_bucket"}
    cases = {
        "input": (exporters - {"kube_pod_container_resource_limits"}, True),
        "unjoined": (exporters, False),
        "rules": (exporters, True),
    }
    notes = {}
    for case, (have, joinable) in cases.items():
        monkeypatch.setattr(doctor, "query_instant", fake(have, joinable))
        report = doctor.diagnose("http://unused", "ts", at)
        notes[case] = {f.metric: f.note for f in report.findings}
        assert report.absent == tuple(f.metric for f in report.findings) and report.latency_sources == ("linkerd",)
    assert notes["input"]["cpu_percent"] == (
        'input absent: kube_pod_container_resource_limits{resource="cpu",unit="core"} (kube-state-metrics)')
    assert notes["input"]["node_cpu_percent"].startswith("recording rule not loaded")
    assert notes["unjoined"]["node_cpu_percent"].startswith("node-exporter's series find no node")
    assert notes["rules"]["node_cpu_percent"].startswith("recording rule not loaded, its inputs are there")
    assert notes["rules"]["workload"] == ("recording rule not loaded; linkerd series are there: set "
                                          "recordingRules.latencySource=linkerd")
    assert notes["rules"]["cpu_millicores"] == "no container_cpu_usage_seconds_total series for this namespace"
