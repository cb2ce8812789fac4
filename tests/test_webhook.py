"""The webhook's HTTP side (operator/lemzha_operator/webhook.py) on a real socket: hostile posts are refused with
their status and message before anything is created, a good post opens its incident, an API failure is a 503 that
Alertmanager retries. The same hostile posts go to the real operator process in tests/test_alerts_e2e.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
import requests

from lemzha_operator import selfmetrics
from lemzha_operator.alerts import AlertSettings, Receiver
from lemzha_operator.webhook import PATH, serve
from offline.bench.standins.prometheus_server import free_port
from tests.test_alerts import Creator, alert, post

TOKEN = "s3cret-token"
TEN_MB = 10 * 1024 * 1024
# (what, body, headers, status, message): every one is refused and creates nothing
HOSTILE = [
    ("malformed JSON", b'{"version": "4", "alerts": [', {}, 400, "the body is not JSON"),
    ("unknown version", post(alert(), version="5"), {}, 400, "payload version '5' is not supported"),
    ("a 10 MB body", b"{" + b" " * TEN_MB + b"}", {}, 413, "body over the receiver's cap"),
    ("a wrong token", post(alert()), {"Authorization": "Bearer guess"}, 401, "missing or wrong bearer token"),
    ("no token", post(alert()), {"Authorization": ""}, 401, "missing or wrong bearer token"),
    ("a selector injection in the namespace label", post(alert(namespace='ts",pod=~".+')), {}, 400,
     "label namespace='ts\",pod=~\".+' is not a namespace name"),
]


def send(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(url, data=body, timeout=30, headers={"Content-Type": "application/json",
                                                              "Authorization": f"Bearer {TOKEN}", **headers})


def refuses_each_hostile_post(url: str) -> None:
    """Every HOSTILE post gets its status and message (callers check that nothing was created)."""
    for what, body, headers, status, message in HOSTILE:
        answer = send(url, body, headers)
        assert answer.status_code == status, f"{what}: {answer.status_code} {answer.text[:300]}"
        assert message in answer.json()["error"], f"{what}: {answer.text[:300]}"


class Server:
    """The receiver's aiohttp server on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver, self.loop = receiver, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(serve(self.receiver), self.loop).result(10)
        return f"http://127.0.0.1:{self.receiver.settings.port}{PATH}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, Creator]]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    creator = Creator()
    settings = AlertSettings(port=free_port(), host="127.0.0.1", token_file=token)
    with Server(Receiver(settings, ("ts", "hipster"), creator)) as url:
        yield url, creator


def code_count(code: int) -> float:
    return selfmetrics.REGISTRY.get_sample_value("lemzha_alert_posts_total", {"code": str(code)}) or 0.0


def test_hostile_posts_are_refused_with_status_and_message(served):
    url, creator = served
    counts = {code: code_count(code) for code in (400, 401, 413)}
    refuses_each_hostile_post(url)
    assert creator.calls == 0, "a refused post reached the API"
    assert code_count(400) == counts[400] + 3 and code_count(401) == counts[401] + 2
    assert code_count(413) == counts[413] + 1


def test_a_body_without_content_length_is_capped_too(served):
    url, creator = served
    chunks = (b" " * 65536 for _ in range(40))  # 2.5 MB, sent chunked
    answer = requests.post(url, data=chunks, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 413 and "cap" in answer.json()["error"] and creator.calls == 0


def test_a_good_post_opens_the_incident_and_a_retry_opens_nothing(served):
    url, creator = served
    body = post(alert(), alert(status="resolved", fingerprint="1"))
    first = send(url, body, {})
    assert first.status_code == 200, first.text
    assert first.json() == {"opened": ["alert-0123456789abcdef-20230129-093130"], "alreadyOpen": [],
                            "skipped": {"resolved": 1}}
    assert send(url, body, {}).json()["alreadyOpen"] == first.json()["opened"]
    assert list(creator.store) == first.json()["opened"]


def test_an_api_failure_is_a_503_for_alertmanager_to_retry(served):
    url, creator = served
    creator.fail = RuntimeError("the API server answered 500")
    answer = send(url, post(alert()), {})
    assert answer.status_code == 503 and "the API server answered 500" in answer.json()["error"]
    creator.fail = None
    assert send(url, post(alert()), {}).json()["opened"], "the retry opens the incident"


def test_only_post_on_the_one_path(served):
    url, _ = served
    assert requests.get(url, timeout=10).status_code == 405
    assert requests.post(url.replace(PATH, "/other"), data=b"{}", timeout=10).status_code == 404


def test_an_unreadable_token_file_is_a_503(tmp_path):
    settings = AlertSettings(port=free_port(), host="127.0.0.1", token_file=tmp_path / "absent")
    with Server(Receiver(settings, (), Creator())) as url:
        answer = send(url, post(alert()), {})
    assert answer.status_code == 503 and "token file" in json.loads(answer.text)["error"]
