"""The Loki stand-in (offline/bench/standins/loki_standin.py: no Loki server is installable here) and the operator's
Loki client."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests

from lemzha.binning import BIN_SECONDS, floor_to_bin
from lemzha.scenario import empty_logs
from lemzha.services import service_of_pod
from lemzha_operator.loki import (
    FetchResult,
    LokiClient,
    LokiQueryError,
    LokiUnavailable,
    log_rows,
    quote,
    selector,
)
from offline.bench.standins.loki_standin import LokiStandIn, parse_query

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_NS = int(T0.timestamp()) * 10**9
RANGE = "/loki/api/v1/query_range"


@pytest.fixture
def loki() -> Iterator[LokiStandIn]:
    with LokiStandIn() as server:
        yield server


def _push(loki: LokiStandIn, streams: list[tuple[dict[str, str], list[tuple[int, str]]]]) -> requests.Response:
    body = {"streams": [{"stream": labels, "values": [[str(ts), line] for ts, line in values]}
                        for labels, values in streams]}  # fmt: skip
    return requests.post(loki.url + "/loki/api/v1/push", json=body, timeout=10)


def _query(loki: LokiStandIn, **params: str | int) -> requests.Response:
    return requests.get(loki.url + RANGE, params=params, timeout=10)


def _lines(resp: requests.Response) -> list[tuple[int, str, str]]:
    """(ts, pod, line) in answer order, streams one after the other."""
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["status"] == "success" and doc["data"]["resultType"] == "streams"
    return [(int(ts), s["stream"].get("pod", ""), line) for s in doc["data"]["result"] for ts, line in s["values"]]


@pytest.fixture
def seeded(loki: LokiStandIn) -> LokiStandIn:
    """Two namespaces, three pods, one entry per second for 10 s each, pods interleaved in time."""
    streams = [
        ({"namespace": "ts", "pod": "a-1"}, [(T0_NS + i * 10**9, f"a line {i} ERROR" if i % 2 else f"a line {i}")
                                             for i in range(10)]),
        ({"namespace": "ts", "pod": "b-1"}, [(T0_NS + i * 10**9 + 500, f"b line {i}") for i in range(10)]),
        ({"namespace": "other", "pod": "c-1"}, [(T0_NS + i * 10**9, f"c line {i}") for i in range(10)]),
    ]  # fmt: skip
    assert _push(loki, streams).status_code == 204
    return loki


# --- stand-in ---------------------------------------------------------------------------------------------------
def test_ready(loki: LokiStandIn) -> None:
    resp = requests.get(loki.url + "/ready", timeout=10)
    assert resp.status_code == 200 and resp.text.strip() == "ready"


def test_push_then_query_round_trip(seeded: LokiStandIn) -> None:
    resp = _query(seeded, query='{namespace="ts"}', start=T0_NS, end=T0_NS + 60 * 10**9, limit=1000)
    doc = resp.json()
    assert sorted(doc) == ["data", "status"]
    assert sorted(doc["data"]) == ["result", "resultType", "stats"]
    streams = {s["stream"]["pod"]: s for s in doc["data"]["result"]}
    assert set(streams) == {"a-1", "b-1"}
    assert streams["a-1"]["stream"] == {"namespace": "ts", "pod": "a-1"}
    values = streams["b-1"]["values"]
    assert all(isinstance(ts, str) and isinstance(line, str) for ts, line in values)
    assert values[0] == [str(T0_NS + 9 * 10**9 + 500), "b line 9"]  # backward by default


def test_duplicate_push_is_dropped_like_loki(loki: LokiStandIn) -> None:
    for _ in range(2):
        assert _push(loki, [({"namespace": "ts", "pod": "a"}, [(T0_NS, "same")])]).status_code == 204
    assert _push(loki, [({"namespace": "ts", "pod": "b"}, [(T0_NS, "same")])]).status_code == 204
    assert len(_lines(_query(loki, query='{namespace="ts"}', start=T0_NS, end=T0_NS + 1))) == 2


@pytest.mark.parametrize(
    ("query", "pods"),
    [
        ('{namespace="ts"}', {"a-1", "b-1"}),
        ('{namespace="ts", pod!="a-1"}', {"b-1"}),
        ('{namespace=~"t.|oth.*"}', {"a-1", "b-1", "c-1"}),
        ('{namespace=~"t"}', set()),  # label regexes are anchored
        ("{namespace=~`ts|other`, pod!~`(a|c)-.*`}", {"b-1"}),
        ('{pod="a-1", missing=""}', {"a-1"}),  # a missing label reads as ""
        ('{pod="a-1", missing!=""}', set()),
    ],
)
def test_selector_matchers(seeded: LokiStandIn, query: str, pods: set[str]) -> None:
    got = _lines(_query(seeded, query=query, start=T0_NS, end=T0_NS + 60 * 10**9, limit=1000))
    assert {pod for _, pod, _ in got} == pods


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ('{namespace="ts"} |= "ERROR"', 5),
        ('{namespace="ts"} != "ERROR"', 15),
        ('{namespace="ts"} |~ "line [0-2]"', 6),  # line regexes are not anchored
        ('{namespace="ts"} !~ `^a`', 10),
        ('{namespace="ts"} |= "line" != "ERROR" |~ "^a"', 5),
        ('{namespace="ts"} |= "\\"quoted\\""', 0),
    ],
)
def test_line_filters(seeded: LokiStandIn, query: str, count: int) -> None:
    assert len(_lines(_query(seeded, query=query, start=T0_NS, end=T0_NS + 60 * 10**9, limit=1000))) == count


def test_limit_counts_across_streams_and_direction(seeded: LokiStandIn) -> None:
    args = {"query": '{namespace="ts"}', "start": T0_NS, "end": T0_NS + 60 * 10**9, "limit": 5}
    forward = _lines(_query(seeded, **args, direction="forward"))
    assert len(forward) == 5
    assert sorted(ts for ts, _, _ in forward) == [T0_NS, T0_NS + 500, T0_NS + 10**9, T0_NS + 10**9 + 500,
                                                  T0_NS + 2 * 10**9]  # fmt: skip
    for pod in ("a-1", "b-1"):  # within a stream, forward is oldest first
        stamps = [ts for ts, p, _ in forward if p == pod]
        assert stamps == sorted(stamps)
    backward = _lines(_query(seeded, **args))
    assert len(backward) == 5
    assert max(ts for ts, _, _ in backward) == T0_NS + 9 * 10**9 + 500
    assert min(ts for ts, _, _ in backward) == T0_NS + 7 * 10**9 + 500
    for pod in ("a-1", "b-1"):  # newest first
        stamps = [ts for ts, p, _ in backward if p == pod]
        assert stamps == sorted(stamps, reverse=True)
    assert len(_lines(_query(seeded, query='{namespace="ts"}', start=T0_NS, end=T0_NS + 60 * 10**9))) == 20


def test_start_inclusive_end_exclusive(seeded: LokiStandIn) -> None:
    got = _lines(_query(seeded, query='{pod="a-1"}', start=T0_NS + 2 * 10**9, end=T0_NS + 5 * 10**9, limit=100))
    assert sorted(ts for ts, _, _ in got) == [T0_NS + i * 10**9 for i in (2, 3, 4)]


def test_time_formats(seeded: LokiStandIn) -> None:
    seconds = str(int(T0.timestamp()))
    assert len(seconds) == 10
    forms = [
        (seconds, str(int(T0.timestamp()) + 3)),  # epoch seconds
        (str(T0_NS), str(T0_NS + 3 * 10**9)),  # epoch ns
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:03Z"),  # RFC3339
        ("2024-05-01T14:00:00.000000000+02:00", "2024-05-01T12:00:02.5Z"),  # zone offset, fraction
    ]
    got = [_lines(_query(seeded, query='{pod="a-1"}', start=s, end=e)) for s, e in forms]
    assert [len(g) for g in got] == [3, 3, 3, 3]
    assert got[0] == got[1] == got[2]


def test_default_range_is_the_last_hour(loki: LokiStandIn) -> None:
    now = int(datetime.now(UTC).timestamp()) * 10**9
    _push(loki, [({"namespace": "ts", "pod": "a"}, [(now - 10 * 10**9, "recent"), (now - 7200 * 10**9, "old")])])
    assert [line for _, _, line in _lines(_query(loki, query='{namespace="ts"}'))] == ["recent"]


@pytest.mark.parametrize(
    "params",
    [
        {"query": "namespace=ts"},  # no braces
        {"query": "{}"},  # no matcher
        {"query": '{namespace="ts"'},  # unclosed
        {"query": '{namespace="ts",}'},  # trailing comma
        {"query": "{namespace='ts'}"},  # single quotes are not LogQL strings
        {"query": '{namespace=="ts"}'},
        {"query": '{namespace="ts"} |= ERROR'},  # unquoted filter
        {"query": '{namespace="ts"} | json'},  # parsers are outside the subset
        {"query": 'sum(rate({namespace="ts"}[1m]))'},  # metric queries too
        {"query": '{namespace="ts"} |~ "("'},  # bad regex
        {"query": '{namespace=~"("}'},
        {"query": '{namespace=~".*"}'},  # matches every stream
        {"query": '{namespace!="ts"}'},
        {"query": '{namespace="\\q"}'},  # bad escape
        {"query": '{pod|="x"}'},
        {},  # no query
        {"query": '{namespace="ts"}', "start": "yesterday"},
        {"query": '{namespace="ts"}', "start": "2", "end": "1"},
        {"query": '{namespace="ts"}', "limit": "0"},
        {"query": '{namespace="ts"}', "limit": "ten"},
        {"query": '{namespace="ts"}', "limit": "5001"},  # over max_entries_limit
        {"query": '{namespace="ts"}', "direction": "sideways"},
    ],
)
def test_bad_requests_get_400_plain_text(loki: LokiStandIn, params: dict[str, str]) -> None:
    resp = requests.get(loki.url + RANGE, params=params, timeout=10)
    assert resp.status_code == 400, (params, resp.text)
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text.strip()


def test_bad_push_gets_400(loki: LokiStandIn) -> None:
    for body in ({"streams": [{"stream": {"a": "b"}, "values": [[123, "not a string ts"]]}]}, {"nope": []}):
        assert requests.post(loki.url + "/loki/api/v1/push", json=body, timeout=10).status_code == 400


def test_max_entries_limit_is_configurable() -> None:
    with LokiStandIn(max_entries_limit=10) as server:
        assert _query(server, query='{a="b"}', limit=10).status_code == 200
        assert _query(server, query='{a="b"}', limit=11).status_code == 400


def test_load_jsonl(loki: LokiStandIn, tmp_path: Path) -> None:
    path = tmp_path / "seed.jsonl"
    rows = [{"labels": {"namespace": "ts", "pod": f"p{i % 2}"}, "ts_ns": T0_NS + i, "line": f"l{i}"} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert loki.load_jsonl(path) == 6
    got = _lines(_query(loki, query='{namespace="ts"}', start=T0_NS, end=T0_NS + 10, direction="forward"))
    assert sorted((ts, line) for ts, _, line in got) == [(T0_NS + i, f"l{i}") for i in range(6)]
    path.write_text('{"labels": {}, "ts_ns": "1", "line": "x"}\n')
    with pytest.raises(ValueError, match=r"seed\.jsonl:1"):
        loki.load_jsonl(path)


# --- client -----------------------------------------------------------------------------------------------------
def test_pagination_returns_every_entry_once_in_order(loki: LokiStandIn) -> None:
    # Timestamps shared across streams and within a stream, so pages end in the middle of a timestamp.
    entries = {
        "a": [(T0_NS + (i // 3) * 1000, f"a{i}") for i in range(40)],
        "b": [(T0_NS + (i // 2) * 1000, f"b{i}") for i in range(25)],
    }
    for pod, values in entries.items():
        loki.push({"namespace": "ts", "pod": pod}, values)
    client = LokiClient(loki.url, page_limit=7)
    result = client.fetch(selector("ts"), T0, T0 + timedelta(seconds=1))
    assert isinstance(result, FetchResult) and not result.truncated
    assert result.pages > 65 // 7
    got = [(ts, labels["pod"], line) for ts, labels, line in result.entries]
    want = [(ts, pod, line) for pod, values in entries.items() for ts, line in values]
    assert len(got) == len(set(got)) == len(want)
    assert set(got) == set(want)
    assert [ts for ts, _, _ in got] == sorted(ts for ts, _, _ in got)
    assert [line for _, pod, line in got if pod == "a"] == [f"a{i}" for i in range(40)]


def test_a_lower_server_limit_is_learned_from_its_refusal() -> None:
    # Loki's max_entries_limit_per_query below the client's page size: the first page is refused with the limit
    # named, and the client pages by that limit instead of ranking without logs
    with LokiStandIn(max_entries_limit=4) as server:
        server.push({"namespace": "ts", "pod": "a"}, [(T0_NS + i, str(i)) for i in range(10)])
        client = LokiClient(server.url, page_limit=9)
        result = client.fetch(selector("ts"), T0, T0 + timedelta(seconds=1))
    assert client.page_limit == 4 and not result.truncated and result.pages >= 3
    assert [line for _, _, line in result] == [str(i) for i in range(10)]


def test_other_refusals_are_not_mistaken_for_the_page_limit() -> None:
    with LokiStandIn(max_entries_limit=4) as server, pytest.raises(LokiQueryError):
        LokiClient(server.url, page_limit=9).fetch('{namespace=~".*"}', T0, T0 + timedelta(seconds=1))


def test_pagination_respects_window_bounds(loki: LokiStandIn) -> None:
    loki.push({"namespace": "ts", "pod": "a"}, [(T0_NS + i * 10**9, str(i)) for i in range(10)])
    result = LokiClient(loki.url, page_limit=2).fetch(selector("ts"), T0 + timedelta(seconds=2),
                                                      T0 + timedelta(seconds=7))
    assert [line for _, _, line in result] == ["2", "3", "4", "5", "6"]


def test_truncation_at_max_entries(loki: LokiStandIn) -> None:
    loki.push({"namespace": "ts", "pod": "a"}, [(T0_NS + i, str(i)) for i in range(50)])
    result = LokiClient(loki.url, page_limit=8, max_entries=20).fetch(selector("ts"), T0, T0 + timedelta(seconds=1))
    assert result.truncated
    assert [line for _, _, line in result] == [str(i) for i in range(20)]
    exact = LokiClient(loki.url, page_limit=8, max_entries=50).fetch(selector("ts"), T0, T0 + timedelta(seconds=1))
    assert not exact.truncated and len(exact) == 50


def test_one_timestamp_filling_a_page_is_flagged(loki: LokiStandIn) -> None:
    loki.push({"namespace": "ts", "pod": "a"}, [(T0_NS, str(i)) for i in range(5)] + [(T0_NS + 1, "after")])
    result = LokiClient(loki.url, page_limit=3).fetch(selector("ts"), T0, T0 + timedelta(seconds=1))
    assert result.truncated  # entries at T0 beyond the page cannot be reached with start/end
    assert result.entries[-1][2] == "after"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unavailable_when_server_down() -> None:
    client = LokiClient(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    with pytest.raises(LokiUnavailable, match="unreachable"):
        client.fetch(selector("ts"), T0, T0 + timedelta(minutes=1))
    assert not client.ready()


def test_5xx_is_unavailable_and_4xx_is_query_error(loki: LokiStandIn) -> None:
    client = LokiClient(loki.url)
    assert client.ready()
    with pytest.raises(LokiQueryError, match="400"):
        client.fetch('{namespace=~".*"}', T0, T0 + timedelta(minutes=1))
    loki.fail_with = 503
    with pytest.raises(LokiUnavailable, match="503"):
        client.fetch(selector("ts"), T0, T0 + timedelta(minutes=1))


def test_stdlib_transport_when_requests_is_missing(loki: LokiStandIn) -> None:
    """The operator image may lack requests: the urllib path must behave the same."""
    loki.push({"namespace": "ts", "pod": "a"}, [(T0_NS + i, str(i)) for i in range(9)])
    client = LokiClient(loki.url, page_limit=4)
    client._session = None  # what __init__ sets without requests
    assert client.ready()
    assert [line for _, _, line in client.fetch(selector("ts"), T0, T0 + timedelta(seconds=1))] == [
        str(i) for i in range(9)
    ]
    with pytest.raises(LokiQueryError, match="400"):
        client.fetch('{namespace!="ts"}', T0, T0 + timedelta(seconds=1))
    down = LokiClient(f"http://127.0.0.1:{_closed_port()}", timeout=2)
    down._session = None
    with pytest.raises(LokiUnavailable, match="unreachable"):
        down.fetch(selector("ts"), T0, T0 + timedelta(seconds=1))


def test_token_file_is_sent(loki: LokiStandIn, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert LokiClient(loki.url, token_file=token)._headers()["Authorization"] == "Bearer s3cret"


HOSTILE = ['a"} |= "x', 'x", pod=~".*', "back\\slash", 'tail\\', "new\nline", "`raw`", "tab\tand\x01ctl", "ünï"]


@pytest.mark.parametrize("value", HOSTILE)
def test_selector_escaping_prevents_injection(loki: LokiStandIn, value: str) -> None:
    query = selector(value)
    parsed = parse_query(query)
    assert len(parsed.matchers) == 1 and not parsed.filters
    (matcher,) = parsed.matchers
    assert (matcher.name, matcher.op, matcher.value) == ("namespace", "=", value)
    # and end to end: only the stream whose namespace is literally `value` comes back
    loki.push({"namespace": value, "pod": "victim"}, [(T0_NS, "hit")])
    loki.push({"namespace": "x", "pod": "other"}, [(T0_NS, "x")])
    result = LokiClient(loki.url).fetch(query, T0, T0 + timedelta(seconds=1))
    assert [(labels["pod"], line) for _, labels, line in result] == [("victim", "hit")]


def test_selector_extra_labels_and_names() -> None:
    parsed = parse_query(selector("ts", {"app": 'x"}', "pod": "p"}, namespace_label="k8s_namespace"))
    assert [(m.name, m.op, m.value) for m in parsed.matchers] == [("k8s_namespace", "=", "ts"), ("app", "=", 'x"}'),
                                                                  ("pod", "=", "p")]  # fmt: skip
    for bad in ('pod="x"', "", "1abc", "a-b"):
        with pytest.raises(ValueError):
            selector("ts", {bad: "v"})
    with pytest.raises(ValueError):
        selector("")
    assert quote('a"b\\c') == '"a\\"b\\\\c"'


# --- rows -------------------------------------------------------------------------------------------------------
def test_log_rows_mapping() -> None:
    envelope = json.dumps({"log": "12:00:01.000 ERROR Order 12345 not found\n", "stream": "stdout"})
    entries = [
        (T0_NS + 1 * 10**9, {"pod": "ts-order-service-5b67c48447-mv5hb"}, envelope),
        (T0_NS + 2 * 10**9, {"pod": "ts-order-service-5b67c48447-x7k2p"}, envelope.replace("12345", "999")),
        (T0_NS + 31 * 10**9, {"pod": "ts-order-service-5b67c48447-mv5hb"}, "plain WARN line"),
        (T0_NS + 31 * 10**9, {"pod": "custom-pod"}, "INFO hello"),
        (T0_NS + 40 * 10**9, {"pod": "ts-order-service-5b67c48447-mv5hb"}, "   "),  # empty template: dropped
        (T0_NS - 1, {"pod": "ts-order-service-5b67c48447-mv5hb"}, "before"),  # before the window
        (T0_NS + 60 * 10**9, {"pod": "ts-order-service-5b67c48447-mv5hb"}, "after"),  # bin 2 of 2: outside
        (T0_NS + 5, {"app": "no-pod"}, "no pod label"),
    ]
    rows = log_rows(entries, T0, 2, pod_service={"custom-pod": "frontend"})
    assert list(rows.columns) == ["service", "bin", "template", "count", "level"]
    assert dict(rows.dtypes.astype(str)) == dict(empty_logs().dtypes.astype(str))
    got = sorted(map(tuple, rows.to_numpy().tolist()))
    assert got == [
        ("frontend", 1, "info hello", 1, "INFO"),
        ("ts-order-service", 0, "<time> error order <num> not found", 2, "ERROR"),
        ("ts-order-service", 1, "plain warn line", 1, "WARN"),
    ]
    only = log_rows(entries, T0, 2, pod_service={"custom-pod": "frontend"}, services={"frontend"})
    assert only["service"].tolist() == ["frontend"]
    assert log_rows([], T0, 2).empty and list(log_rows([], T0, 2).columns) == list(rows.columns)


def _window_files(log_dir: Path, start: datetime, n_bins: int) -> list[Path]:
    """The minute files that can hold lines of the window (a file holds roughly the minute before its name)."""
    end = start + timedelta(seconds=n_bins * BIN_SECONDS)
    out = []
    for path in sorted(log_dir.glob("*_log.csv")):
        hour, minute = path.name.split("_")[:2]
        stamp = start.replace(hour=int(hour), minute=int(minute), second=0)
        if start <= stamp <= end + timedelta(minutes=2):
            out.append(path)
    return out


def test_live_rows_equal_offline_rows_on_real_trainticket_lines(nezha_root: Path, tmp_path: Path) -> None:
    from offline.data import nezha

    day = next(d for d in nezha.DAYS if d.day == "2023-01-29")
    fault = nezha.list_faults(nezha_root, day)[5]
    start, n_bins = floor_to_bin(fault.time - timedelta(minutes=10)), 20  # a 10-minute window before the fault
    files = _window_files(nezha_root / "rca_data" / day.day / "log", start, n_bins)
    assert len(files) >= 3
    # offline: the real loader on just these files (a temporary day directory of links to them)
    folder = tmp_path / "rca_data" / day.day / "log"
    folder.mkdir(parents=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    table = nezha.read_day_logs(tmp_path, day).table

    # live: the same raw lines, de-duplicated as offline does, pushed with the outer Timestamp as the entry time
    frames = [pd.read_csv(p, usecols=["Timestamp", "TimeUnixNano", "PodName", "Log"], dtype=str, on_bad_lines="skip")
              for p in files]  # fmt: skip
    raw = pd.concat(frames, ignore_index=True).dropna(subset=["Timestamp", "PodName", "Log"])
    raw = raw.drop_duplicates(subset=["TimeUnixNano", "PodName", "Log"])
    raw["ts"] = pd.DatetimeIndex(pd.to_datetime(raw["Timestamp"], utc=True, format="ISO8601")).as_unit("ns").asi8
    services = {service_of_pod(p) for p in raw["PodName"].unique()}
    offline_rows = nezha.window_logs(table, start, n_bins, services)
    assert len(offline_rows) > 100

    with LokiStandIn() as loki:
        for pod, group in raw.groupby("PodName"):
            values = list(zip(group["ts"].astype(str), group["Log"], strict=True))
            for i in range(0, len(values), 2000):
                body = {"streams": [{"stream": {"namespace": day.namespace, "pod": pod}, "values": values[i:i + 2000]}]}
                assert requests.post(loki.url + "/loki/api/v1/push", json=body, timeout=30).status_code == 204
        end = start + timedelta(seconds=n_bins * BIN_SECONDS)
        result = LokiClient(loki.url, page_limit=5000).fetch(selector(day.namespace), start, end)
    assert not result.truncated and result.pages > 1, (len(result), result.pages)
    inside = raw.loc[(raw["ts"] >= int(start.timestamp()) * 10**9) & (raw["ts"] < int(end.timestamp()) * 10**9)]
    assert len(result) == len(inside)  # nothing lost or doubled by paging, nor by Loki-style de-duplication

    live_rows = log_rows(result.entries, start, n_bins, services=services)
    key = ["service", "bin", "template", "level"]
    live = live_rows.sort_values(key).reset_index(drop=True)
    offline = offline_rows.loc[:, list(live.columns)].sort_values(key).reset_index(drop=True)
    offline = offline.astype(dict(live.dtypes))
    pd.testing.assert_frame_equal(live, offline)
