"""Tests of lemzha.logs, the one log cleaner: unit cases, golden TrainTicket error lines, and checks on the raw
Nezha logs (OnlineBoutique and TrainTicket) against the old prototype cleaner re-implemented in legacy_cleaner."""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from lemzha import logs
from lemzha.logs import LEVELS, clean, clean_many, extract_message, normalise_level
from tests.legacy_cleaner import POD_SUFFIX as LEGACY_POD_SUFFIX
from tests.legacy_cleaner import legacy_clean

OB_DAYS = ("2022-08-22", "2022-08-23")
TT_DAY = "2023-01-29"
TT_SAMPLE_FILES = ("08_43_log.csv", "09_21_log.csv", "09_44_log.csv")  # include the day's error bursts
K8S_SAFE = set("bcdfghjklmnpqrstvwxz2456789-")


# --- data -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_nezha(nezha_root: Path) -> Path:
    return nezha_root


@pytest.fixture(scope="module")
def lemzhak_texts(lemzhak_root: Path) -> Path:
    return lemzhak_root


def _read_logs(files: list[Path]) -> pd.DataFrame:
    frame = pd.concat(
        [pd.read_csv(f, usecols=["Timestamp", "TimeUnixNano", "PodName", "Log"]) for f in files], ignore_index=True
    )
    frame = frame.drop_duplicates(subset=["TimeUnixNano", "PodName", "Log"]).reset_index(drop=True)
    frame["service"] = frame["PodName"].str.rsplit("-", n=2).str[0]
    unwrapped = [extract_message(raw) for raw in frame["Log"]]
    frame["message"] = [m for m, _ in unwrapped]
    frame["level"] = [lv for _, lv in unwrapped]
    return frame


@pytest.fixture(scope="module")
def ob_logs(raw_nezha: Path) -> pd.DataFrame:
    files = [f for day in OB_DAYS for f in sorted((raw_nezha / "rca_data" / day / "log").glob("*.csv"))]
    assert len(files) == 3, files
    return _read_logs(files)


@pytest.fixture(scope="module")
def tt_sample(raw_nezha: Path) -> pd.DataFrame:
    return _read_logs([raw_nezha / "rca_data" / TT_DAY / "log" / name for name in TT_SAMPLE_FILES])


# --- the reference: old cleaner ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Loaded v1.2.3 OK", "loaded 1.2.3 ok"),  # versions kept, "v" lost
        ("Listening on :9555", "listening on 9555"),
        ("Port: 8080", "port 8080"),
        ("status:500", "status 500"),
        ("took 12.5 ms, ratio 0.003", "took 12.5 ms, ratio 0.003"),  # decimals kept
        ("16:42:22.382 SpanID: 439bc949a9eeb0cc seat 12", "16:42:22.382 spanid: 439bc949a9eeb0cc seat 12"),
        ("order 12345 of 2023", "order <num> of <num>"),
        ("at 2023-01-29T08:42:22.383Z from 10.0.0.1:8080", "at <ts> from <host>"),
        ("TraceID: ffc8ca7e4c8f06c75142c880d5595d96", "traceid: <hex>"),
        ("id=f3d4d4ef-693b-4456-8eed-59c0d717dd08", "id=<uuid>"),
        ("pod ts-travel-service-64469b5b48-25zj6 up", "pod ts-travel-service-<rand> up"),
        ("for ts-station-food-service", "for ts-<rand>-service"),  # the old suffix rule also hits words
        ('GET /api/orders/123456 "x"', 'get /api/orders/:id "x"'),
        ("call :443 and :1234", "call :443 and :<num>"),
        ("\x1b[31mRED\x1b[0m   text\n", "red text"),
    ],
)
def test_legacy_clean_reproduces_known_effects(raw: str, expected: str) -> None:
    assert legacy_clean(raw) == expected


def test_legacy_clean_of_missing_is_empty() -> None:
    assert legacy_clean(None) == ""
    assert legacy_clean(float("nan")) == ""


def _lemzhak_entries(cell: str) -> list[str]:
    """Templates of one lemzha-k cell `"<template>:x<count> | ..."` (a template may itself contain " | ")."""
    entries, pending = [], []
    for piece in cell.split(" | "):
        pending.append(piece)
        if re.search(r":x\d+$", piece):
            entries.append(re.sub(r":x\d+$", "", " | ".join(pending)))
            pending = []
    assert not pending, cell[-200:]
    return entries


def _lemzhak_templates_inside(root: Path, scenario: str, logs_of_day: pd.DataFrame) -> list[tuple[str, str]]:
    """(service, old template) of a lemzha-k OB scenario, from the 30 s bins the raw files cover entirely."""
    frame = pd.read_parquet(root / "core_logs_tmp" / scenario / "logs_service_texts.parquet")
    stamps = pd.to_datetime(logs_of_day["Timestamp"], utc=True, format="mixed")
    inside = frame[(frame.index >= stamps.min()) & (frame.index + pd.Timedelta(seconds=30) <= stamps.max())]
    return [
        (service, t) for service in inside.columns for cell in inside[service] if cell for t in _lemzhak_entries(cell)
    ]


OB_SCENARIOS = {"20220822_nezha_10": "2022-08-22", "20220823_nezha_10": "2022-08-23"}


def test_legacy_reference_reproduces_lemzhak_texts(ob_logs: pd.DataFrame, lemzhak_texts: Path) -> None:
    """Every old template lemzha-k stored for the minutes the raw OB files cover is legacy_clean of a raw message
    of that service: the re-implementation is the cleaner that produced the old data."""
    legacy_of_raw = set(zip(ob_logs["service"], (legacy_clean(m) for m in ob_logs["message"]), strict=True))
    for scenario, day in OB_SCENARIOS.items():
        of_day = ob_logs[ob_logs["Timestamp"].str.startswith(day)]
        stored = _lemzhak_templates_inside(lemzhak_texts, scenario, of_day)
        assert len(stored) > 100, scenario
        missing = [s for s in stored if s not in legacy_of_raw]
        assert not missing, missing[:5]


# --- extract_message / normalise_level -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("info", "INFO"),
        ("INFO", "INFO"),
        ("Warning", "WARN"),
        ("warn", "WARN"),
        ("error", "ERROR"),
        ("SEVERE", "ERROR"),
        ("critical", "FATAL"),
        ("fatal", "FATAL"),
        ("trace", "DEBUG"),
        ("debug", "DEBUG"),
        (" err ", "ERROR"),
        ("loud", "UNKNOWN"),
        ("", "UNKNOWN"),
        (None, "UNKNOWN"),
    ],
)
def test_normalise_level(value: str | None, expected: str) -> None:
    assert normalise_level(value) == expected
    assert expected in LEVELS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # docker envelope around a TrainTicket plain line
        (
            '{"log":"16:42:22.359 INFO  t.c.TravelController#53 [getRouteByTripId]\\n","stream":"stdout"}',
            ("16:42:22.359 INFO  t.c.TravelController#53 [getRouteByTripId]", "INFO"),
        ),
        # docker envelope around an OnlineBoutique JSON line; the JSON severity wins over words in the text
        (
            '{"log":"{\\"message\\":\\"Query product error-free\\",\\"severity\\":\\"info\\"}\\n","stream":"stdout"}',
            ("Query product error-free", "INFO"),
        ),
        ('{"log":"{\\"msg\\":\\"boom\\",\\"level\\":\\"warning\\"}"}', ("boom", "WARN")),
        ('{"MESSAGE": "db down", "levelname": "CRITICAL"}', ("db down", "FATAL")),
        # JSON without a usable level field: fall back to a level word in the message
        ('{"message": "ERROR connecting", "severity": "loud"}', ("ERROR connecting", "ERROR")),
        ("plain line without level", ("plain line without level", "UNKNOWN")),
        ("informational text", ("informational text", "UNKNOWN")),  # whole words only
        ("Warning: first ERROR second", ("Warning: first ERROR second", "WARN")),  # first occurrence
        ("java.lang.Exception SEVERE", ("java.lang.Exception SEVERE", "ERROR")),
        ("fail: Microsoft.AspNetCore.Server[13]", ("fail: Microsoft.AspNetCore.Server[13]", "ERROR")),
        ("2023-01-29T08:42:22.383Z stderr F panic here", ("panic here", "UNKNOWN")),  # CRI prefix dropped
        # envelope followed by garbage, as two 2023-01-29 rows are
        (
            '{"log":"18:06:03.361 INFO  u.c.UserController#48 x\\n","stream":"stdout"}ulate distance]"',
            ("18:06:03.361 INFO  u.c.UserController#48 x", "INFO"),
        ),
        ("03:52:57.813 info - traceid: <hex> query", ("03:52:57.813 info - traceid: <hex> query", "INFO")),
    ],
)
def test_extract_message(raw: str, expected: tuple[str, str]) -> None:
    assert extract_message(raw) == expected


@pytest.mark.parametrize("raw", [None, float("nan"), 42, b"bytes", "", "   ", "{", '{"log": 5}', "[1, 2]", "\x00"])
def test_extract_message_never_raises(raw: object) -> None:
    message, level = extract_message(raw)  # type: ignore[arg-type]
    assert isinstance(message, str)
    assert level in LEVELS
    if not isinstance(raw, str) or not raw.strip():
        assert (message, level) == ("", "UNKNOWN")


def test_extract_message_levels_on_trainticket(tt_sample: pd.DataFrame) -> None:
    """TrainTicket lines are `<clock> <LEVEL> ...`; the level found must be that token on every line."""
    declared = tt_sample["message"].str.extract(r"^\S+\s+(\w+)", expand=False)
    assert set(declared) == {"INFO", "WARN", "ERROR"}
    assert (tt_sample["level"] == declared).all()


def test_extract_message_on_onlineboutique(ob_logs: pd.DataFrame) -> None:
    assert (ob_logs["message"] != "").all()
    assert not ob_logs["message"].str.startswith("{").any()  # every JSON line unwrapped to its message
    by_service = ob_logs.groupby("service")["level"].agg(set).to_dict()
    assert by_service["cartservice"] == {"UNKNOWN"}  # .NET lines carry no level word
    assert all(levels == {"INFO"} for service, levels in by_service.items() if service != "cartservice")


# --- clean: masking ------------------------------------------------------------------------------------------

MASKING_CASES = [
    ("SpanID: 439bc949a9eeb0cc done", "spanid: <hex> done"),
    ("SpanID: 4391949191234567 done", "spanid: <hex> done"),  # an all-digit span id is still a span id
    ("object 5d2a46c7f", "object <hex>"),
    ("16:42:22.382 INFO x", "<time> info x"),
    ("at 16:42:22 and 16:42:22,5", "at <time> and <time>"),
    ("took 12.5 ms, ratio 0.003, v1.2.3", "took <num> ms, ratio <num>, <num>"),
    ('{"id": "f3d4d4ef-693b-4456-8eed-59c0d717dd08", "n": 7}', '{"id": "<uuid>", "n": <num>}'),
    ("userId=4d2a46c7-71cb-4cf1-b5bb-b68406d9da6f", "userid=<uuid>"),
    ("seat 7 row 12 of 345 (12345)", "seat <num> row <num> of <num> (<num>)"),
    ("date: 2021-07-14, at 2023-01-29 15:38:06", "date: <num>-<num>-<num>, at <ts>"),
    ("time 2023-01-29T09:20:29.295+00:00 end", "time <ts> end"),
    ("connect 10.0.0.12:6379 refused", "connect <host> refused"),
    ("Listening on :9555", "listening on <num>"),
    ("train G1234, ts-travel2-service, log4j, http11", "train g<num>, ts-travel2-service, log4j, http11"),
    ("product_ids=['9SIQT8TOJO', 'L9ECAV7KIM'] {6E92ZMYYFZ Air", "product_ids=['<id>', '<id>'] {<id> air"),
    ("Amount: EUR173.595754089", "amount: eur<num>"),
    ("token: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmZHN.A2kyP8hb-N7 ok", "token: <token> ok"),
    ("pod ts-food-service-f5756978c-k8vqf restarted", "pod ts-food-service-<rand> restarted"),
    ("No instances available for ts-station-food-service", "no instances available for ts-station-food-service"),
    ("GET /api/v1/orders/123456/items", "get /api/v1/orders/:id/items"),
    # a Java logger's code location names the statement: kept (an issue number is not one)
    ("19:19:44.267 INFO  p.c.PriceController#46 x", "<time> info p.c.pricecontroller#46 x"),
    ("ERROR o.a.c.c.C.[.[.[.[dispatcherServlet]#175 boom", "error o.a.c.c.c.[.[.[.[dispatcherservlet]#175 boom"),
    ("see issue #12 and a#123456", "see issue #<num> and a#<num>"),
    # HTTP status codes in context are kept
    ('status 500, status: 503, code=404, "status":502', 'status 500, status 503, code=404, "status":502'),
    ('"GET / HTTP/1.1" 404 13', '"get / http/<num>" 404 <num>'),
    ("500 Internal Server Error", "500 internal server error"),
    ("result is <200,Response(status=1, msg=ok)", "result is <200,response(status=<num>, msg=ok)"),
    ("Request failed with status code 503", "request failed with status code 503"),
    ("status 5000 and code 99", "status <num> and code <num>"),  # not HTTP codes
    ("\x1b[31mRED\x1b[0m \t two\n\nlines ", "red two lines"),
    ("<ts> stdout f getcartasync called", "getcartasync called"),
]


@pytest.mark.parametrize(("raw", "expected"), MASKING_CASES)
def test_clean_masks(raw: str, expected: str) -> None:
    assert clean(raw) == expected


def test_clean_handles_non_strings() -> None:
    assert clean(None) == ""  # type: ignore[arg-type]
    assert clean(float("nan")) == ""  # type: ignore[arg-type]
    assert clean(17) == ""  # type: ignore[arg-type]
    assert clean("") == ""
    assert clean_many(["a 1", None, float("nan"), "a 2"]) == ["a <num>", "", "", "a <num>"]  # type: ignore[list-item]


def _random_strings(count: int) -> list[str]:
    rng = random.Random(7)
    alphabet = "aZf09 .:-_/\"'<>{}[]=,#@\\\n\t\x1b\ue003é中ＴIİ"
    pieces = [
        "<num>",
        "<ts>",
        "<hex>",
        "-<rand>",
        ":id",
        "status ",
        'http/1.1" ',
        "2023-01-29 08:42:22",
        "eyJ",
        "10.0.0.1",
        ":8080",
        "v1.2",
        "deadbeef12",
        "9SIQT8TOJO",
        "stdout f ",
        "port: ",
    ]
    out = []
    for _ in range(count):
        parts = [rng.choice(pieces) if rng.random() < 0.3 else rng.choice(alphabet) for _ in range(rng.randint(0, 60))]
        out.append("".join(parts))
    return out


def test_clean_never_raises_and_is_idempotent_on_random_text() -> None:
    for text in _random_strings(3000):
        template = clean(text)
        assert clean(template) == template, text


@pytest.mark.parametrize(("raw", "expected"), MASKING_CASES)
def test_clean_is_idempotent_and_absorbs_legacy_on_cases(raw: str, expected: str) -> None:
    assert clean(expected) == expected
    if "station-food" not in raw:  # the old pod-suffix rule mangles that word (see test below)
        assert clean(legacy_clean(raw)) == expected


def test_clean_keeps_words_the_old_pod_suffix_rule_broke() -> None:
    """Deliberate deviation: the old rule turned `-station-food`, `-content-type` into `-<rand>`, which hides the
    service named in "No instances available for ...". Only Kubernetes-alphabet suffixes are pod hashes now."""
    line = "No instances available for ts-preserve-other-service; x-content-type-options"
    assert legacy_clean(line) == "no instances available for ts-<rand>-service; x-<rand>-options"
    assert clean(line) == "no instances available for ts-preserve-other-service; x-content-type-options"
    assert clean("ts-preserve-other-service-6c8d7c8b9d-x2z5q") == "ts-preserve-other-service-<rand>"


def test_clean_many_matches_clean_and_cleans_each_distinct_message_once(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = ["GET /a 1", "GET /a 1", "GET /b 22", None, "GET /a 1"]
    expected = [clean(m) for m in messages]  # type: ignore[arg-type]
    calls: list[object] = []

    def counting_clean(message: str) -> str:
        calls.append(message)
        return expected[messages.index(message)]

    monkeypatch.setattr(logs, "clean", counting_clean)
    assert clean_many(iter(messages)) == expected  # type: ignore[arg-type]
    assert sorted(calls, key=str) == sorted(["GET /a 1", "GET /b 22", None], key=str)


# --- golden TrainTicket error lines (verbatim `Log` cells of the 2023-01-29 CSVs) ----------------------------

GOLDEN = [
    (
        "09_44_log.csv",
        r'{"log":"17:43:45.069 ERROR o.a.c.c.C.[.[.[.[dispatcherServlet]#175 TraceID: df795bd67a3861882bc67bc9b4294842'
        r" SpanID: bfb78b1c252edeb2 Servlet.service() for servlet [dispatcherServlet] in context with path [] threw"
        r" exception [Request processing failed; nested exception is java.lang.IllegalStateException: No instances"
        r' available for ts-verification-code-service] with root cause\n","stream":"stdout",'
        r'"time":"2023-01-29T09:43:45.0701539Z"}',
        "ERROR",
        "<time> error o.a.c.c.c.[.[.[.[dispatcherservlet]#175 traceid: <hex> spanid: <hex> servlet.service() for"
        " servlet [dispatcherservlet] in context with path [] threw exception [request processing failed; nested"
        " exception is java.lang.illegalstateexception: no instances available for ts-verification-code-service]"
        " with root cause",
    ),
    (
        "09_21_log.csv",
        r'{"log":"17:20:29.299 ERROR o.a.c.c.C.[.[.[.[dispatcherServlet]#175 TraceID: e8a3352051e85c13136b27945b8cab5b'
        r" SpanID: dea06c5b784cbd1d Servlet.service() for servlet [dispatcherServlet] in context with path [] threw"
        r" exception [Request processing failed; nested exception is"
        r" org.springframework.web.client.HttpServerErrorException$InternalServerError: 500 Internal Server Error:"
        r" [{\"timestamp\":\"2023-01-29T09:20:29.295+00:00\",\"status\":500,\"error\":\"Internal Server Error\","
        r'\"message\":\"\",\"path\":\"/api/v1/basicservice/basic/travels\"}]] with root cause\n","stream":"stdout",'
        r'"time":"2023-01-29T09:20:29.299583319Z"}',
        "ERROR",
        "<time> error o.a.c.c.c.[.[.[.[dispatcherservlet]#175 traceid: <hex> spanid: <hex> servlet.service() for"
        " servlet [dispatcherservlet] in context with path [] threw exception [request processing failed; nested"
        " exception is org.springframework.web.client.httpservererrorexception$internalservererror: 500 internal"
        ' server error: [{"timestamp":"<ts>","status":500,"error":"internal server error","message":"",'
        '"path":"/api/v1/basicservice/basic/travels"}]] with root cause',
    ),
    (
        "08_44_log.csv",
        r'{"log":"16:43:17.039 ERROR e.s.ExecuteServiceImpl#51 TraceID: 0ffc68aebbc0e3ab2675bd0a481d73bd SpanID:'
        r" 326649439d110ba9 [ticketExecute][getOrderByIdFromOrder][ticket execute error: Order Status Wrong]"
        r'[orderId: e4e9bbd8-997a-4b51-b580-8efd4c107e76]\n","stream":"stdout",'
        r'"time":"2023-01-29T08:43:17.040232346Z"}',
        "ERROR",
        "<time> error e.s.executeserviceimpl#51 traceid: <hex> spanid: <hex> [ticketexecute][getorderbyidfromorder]"
        "[ticket execute error: order status wrong][orderid: <uuid>]",
    ),
    (
        "08_43_log.csv",
        r'{"log":"16:42:22.418 ERROR f.s.FoodServiceImpl#302 TraceID: ffc8ca7e4c8f06c75142c880d5595d96 SpanID:'
        r" 37b1a1514d403000 [getAllFood][Get the Get Food Request Failed!][foodStoresListResult is null]"
        r'[date: 2021-07-14, tripId: D1345]\n","stream":"stdout","time":"2023-01-29T08:42:22.419098261Z"}',
        "ERROR",
        "<time> error f.s.foodserviceimpl#302 traceid: <hex> spanid: <hex> [getallfood][get the get food request"
        " failed!][foodstoreslistresult is null][date: <num>-<num>-<num>, tripid: d<num>]",
    ),
    (
        "08_44_log.csv",
        r'{"log":"16:43:17.120 ERROR  c.s.ContactsServiceImpl#37 TraceID: dc7db5cbec8d511cb7e08fd7c7b47c00 SpanID:'
        r' b6ce9b3cd8b064a8 [findContactsById][contactsRepository.findById][No contacts according to contactsId]\n",'
        r'"stream":"stdout","time":"2023-01-29T08:43:17.121704441Z"}',
        "ERROR",
        "<time> error c.s.contactsserviceimpl#37 traceid: <hex> spanid: <hex> [findcontactsbyid]"
        "[contactsrepository.findbyid][no contacts according to contactsid]",
    ),
    (
        "09_44_log.csv",
        r'{"log":"17:43:16.515 ERROR  v.s.i.VerifyCodeServiceImpl#129 TraceID: 46906b8cda337df3e2552d6c6cca583f SpanID:'
        r' 944f27b79a1e1387 [verifyCode][Get image code warn][Code not found]\n","stream":"stdout",'
        r'"time":"2023-01-29T09:43:16.515369499Z"}',
        "ERROR",  # the first level word wins over the later "warn"
        "<time> error v.s.i.verifycodeserviceimpl#129 traceid: <hex> spanid: <hex> [verifycode][get image code warn]"
        "[code not found]",
    ),
    (
        "09_04_log.csv",
        r'{"log":"17:03:34.991 ERROR  f.m.s.BasicServiceImpl#415 TraceID: 58f3ce843e99dbfbdec3a3f84f508439 SpanID:'
        r' d47002e2c42eb70e [getRoutesByRouteIds][Get Route By Ids Failed]\n","stream":"stdout",'
        r'"time":"2023-01-29T09:03:34.992248301Z"}',
        "ERROR",
        "<time> error f.m.s.basicserviceimpl#415 traceid: <hex> spanid: <hex> [getroutesbyrouteids]"
        "[get route by ids failed]",
    ),
    (
        "08_43_log.csv",
        r'{"log":"16:42:10.446 WARN  o.s.OrderServiceImpl#68 TraceID: b017403c40b9f88a3d77f6dd7dc26ea9 SpanID:'
        r" 7c505eb0f6ac4a44 [getSoldTickets][Seat][Left ticket info is empty][seat from date: 2023-01-29 15:38:06,"
        r' train number: G1234]\n","stream":"stdout","time":"2023-01-29T08:42:10.44709175Z"}',
        "WARN",
        "<time> warn o.s.orderserviceimpl#68 traceid: <hex> spanid: <hex> [getsoldtickets][seat]"
        "[left ticket info is empty][seat from date: <ts>, train number: g<num>]",
    ),
]


@pytest.mark.parametrize(("file", "raw", "level", "template"), GOLDEN, ids=[g[3][40:80] for g in GOLDEN])
def test_golden_trainticket_lines(file: str, raw: str, level: str, template: str) -> None:
    message, found_level = extract_message(raw)
    assert found_level == level
    assert clean(message) == template
    assert clean(legacy_clean(message)) == template or "ts-verification-code-service" in template


def test_golden_lines_are_verbatim_rows_of_the_data(raw_nezha: Path) -> None:
    by_file: dict[str, list[str]] = defaultdict(list)
    for file, raw, _, _ in GOLDEN:
        by_file[file].append(raw)
    for file, raws in by_file.items():
        cells = set(pd.read_csv(raw_nezha / "rca_data" / TT_DAY / "log" / file, usecols=["Log"])["Log"])
        assert set(raws) <= cells, file


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (
            "java.lang.NullPointerException: null\n\tat com.foo.Bar.baz(Bar.java:42)",
            "java.lang.nullpointerexception: null at com.foo.bar.baz(bar.java:<num>)",
        ),
        (
            "io.grpc.StatusRuntimeException: UNAVAILABLE: io exception",
            "io.grpc.statusruntimeexception: unavailable: io exception",
        ),
        (
            "could not retrieve ads: rpc error: code = Unavailable desc = connection error: dial tcp 10.96.1.2:9555",
            "could not retrieve ads: rpc error: code = unavailable desc = connection error: dial tcp <host>",
        ),
        ("upstream failed: status code 503 after 3 retries", "upstream failed: status code 503 after <num> retries"),
    ],
)
def test_golden_synthetic_error_lines(raw: str, kept: str) -> None:
    assert clean(raw) == kept
    assert clean(legacy_clean(raw)) == kept


# --- clean on the real logs ------------------------------------------------------------------------------------

_LEFTOVER_IDS = re.compile(r"\d{4,}|\d\.\d|\d\d:\d\d|(?<![0-9a-z])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}")


def _absorption_failures(messages: pd.Series) -> list[tuple[str, str, str]]:
    """Messages whose old-cleaner text does not clean to the same template. Only messages within
    MAX_MESSAGE_CHARS: a longer one and its old-cleaner text are cut at different places of the same content."""
    from lemzha.logs import MAX_MESSAGE_CHARS

    return [(m, clean(m), clean(legacy_clean(m))) for m in messages.unique()
            if len(m) <= MAX_MESSAGE_CHARS and clean(legacy_clean(m)) != clean(m)]


def test_clean_absorbs_legacy_on_onlineboutique(ob_logs: pd.DataFrame) -> None:
    failures = _absorption_failures(ob_logs["message"])
    for failure in failures[:20]:
        print(failure)
    assert not failures, f"{len(failures)} of {ob_logs['message'].nunique()} messages"


def _old_rule_breaks_a_word(message: str) -> bool:
    """Whether the old pod-suffix rule fires on text that is no Kubernetes hash (see the deviation test)."""
    return any(not set(m.group(0)) <= K8S_SAFE for m in LEGACY_POD_SUFFIX.finditer(message))


def test_clean_absorbs_legacy_on_trainticket_sample(tt_sample: pd.DataFrame) -> None:
    messages = pd.Series(tt_sample["message"].unique())
    broken_words = messages.map(_old_rule_breaks_a_word)
    failures = _absorption_failures(messages[~broken_words])
    rate = 1 - (len(failures) + broken_words.sum()) / len(messages)
    print(
        f"TrainTicket sample: {len(messages)} messages, absorbed {rate:.2%}, "
        f"{broken_words.sum()} carry words the old pod-suffix rule breaks"
    )
    for failure in failures[:20]:
        print(failure)
    assert not failures
    assert broken_words.mean() < 0.05


def test_clean_is_idempotent_and_masks_ids_on_real_lines(ob_logs: pd.DataFrame, tt_sample: pd.DataFrame) -> None:
    messages = pd.concat([ob_logs["message"], tt_sample["message"]]).unique()
    templates = clean_many(messages)
    assert [clean(t) for t in templates] == templates
    leftovers = [t for t in templates if _LEFTOVER_IDS.search(t)]
    assert not leftovers, leftovers[:5]


def test_old_lemzhak_templates_land_on_raw_templates(ob_logs: pd.DataFrame, lemzhak_texts: Path) -> None:
    """Old-cleaned lemzha-k texts, re-cleaned, are templates that the raw messages of those minutes produce."""
    raw_templates = set(zip(ob_logs["service"], clean_many(ob_logs["message"]), strict=True))
    for scenario, day in OB_SCENARIOS.items():
        stored = _lemzhak_templates_inside(lemzhak_texts, scenario, ob_logs[ob_logs["Timestamp"].str.startswith(day)])
        missing = [(service, clean(old)) for service, old in stored if (service, clean(old)) not in raw_templates]
        assert not missing, missing[:5]


@pytest.mark.slow
def test_far_fewer_templates_than_legacy_on_a_trainticket_day(raw_nezha: Path) -> None:
    files = sorted((raw_nezha / "rca_data" / TT_DAY / "log").glob("*.csv"))
    assert len(files) > 80
    frame = pd.concat([pd.read_csv(f, usecols=["TimeUnixNano", "PodName", "Log"]) for f in files], ignore_index=True)
    frame = frame.drop_duplicates()
    services = frame["PodName"].str.rsplit("-", n=2).str[0].tolist()
    messages = [extract_message(raw)[0] for raw in frame["Log"]]
    logs.clear_template_cache()  # time a cold cleaner
    started = time.perf_counter()
    new = clean_many(messages)
    seconds = time.perf_counter() - started
    old = [legacy_clean(m) for m in messages]
    old_unique, new_unique = defaultdict(set), defaultdict(set)
    for service, old_template, new_template in zip(services, old, new, strict=True):
        old_unique[service].add(old_template)
        new_unique[service].add(new_template)
    total_old = sum(len(s) for s in old_unique.values())
    total_new = sum(len(s) for s in new_unique.values())
    median = statistics.median(len(old_unique[s]) / len(new_unique[s]) for s in old_unique)
    print(
        f"{TT_DAY}: {len(messages)} lines, {len(old_unique)} services, unique templates old {total_old} -> new "
        f"{total_new} (ratio {total_old / total_new:.1f}, median per service {median:.1f}); clean_many {seconds:.1f}s"
    )
    assert total_old / total_new >= 10


def test_templates_and_levels_is_extract_then_clean_per_line():
    lines = [
        '{"log": "16:42:22.382 ERROR  t.s.X#1 fail id=42\\n", "stream": "stdout"}',
        "plain INFO line 123",
        '{"log": "16:42:22.382 ERROR  t.s.X#1 fail id=42\\n", "stream": "stdout"}',
    ]
    templates, levels = logs.templates_and_levels(lines)
    assert levels == ["ERROR", "INFO", "ERROR"]
    assert templates == [logs.clean(logs.extract_message(line)[0]) for line in lines]
    assert templates[0] == templates[2] != templates[1]


def test_rule_guards_change_nothing(tt_sample: pd.DataFrame, ob_logs: pd.DataFrame) -> None:
    """The cleaner skips a rule when a substring every match needs is absent: on real lines and on adversarial text
    the result must equal running every rule."""
    from lemzha.logs import _clean_text

    messages = [extract_message(raw)[0] for raw in [*tt_sample["Log"].head(20_000), *ob_logs["Log"].head(5_000)]]
    messages += _random_strings(3000)
    assert len(messages) > 10_000
    differ = [m for m in messages if _clean_text(m, guards=True) != _clean_text(m, guards=False)]
    assert differ == []


def test_long_messages_are_cut_and_stay_idempotent() -> None:
    from lemzha.logs import MAX_MESSAGE_CHARS, MAX_TEMPLATE_CHARS

    dump = "[getSoldTickets][info is: " + ", ".join(f"Ticket(seatNo={i * 7919}, start=shanghai)" for i in range(500))
    other = dump[:2000] + dump[2000:].replace("shanghai)", "suzhou)")  # differs only after the first 1024
    assert len(dump) > 10 * MAX_MESSAGE_CHARS
    assert clean(dump) == clean(other) and len(clean(dump)) <= MAX_TEMPLATE_CHARS
    assert clean(clean(dump)) == clean(dump)
    expanding = " ".join(["1"] * 600)  # 1,199 characters that grow when masked
    assert len(clean(expanding)) <= MAX_TEMPLATE_CHARS and clean(clean(expanding)) == clean(expanding)
    rng = random.Random(11)
    for text in _random_strings(400):
        long = (text * (1 + 3000 // max(1, len(text))))[: rng.randint(900, 3000)]
        template = clean(long)
        assert len(template) <= MAX_TEMPLATE_CHARS and clean(template) == template, long[:200]
