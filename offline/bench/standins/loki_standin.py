"""A STAND-IN for Grafana Loki's HTTP API, for tests only. It is not Loki.

No Loki server can be installed on this machine (Debian's `loki` package is an unrelated genetics tool; PyPI and npm
ship only clients), so tests talk to this small in-memory server instead. It speaks the subset of the API the
operator uses, with Loki's semantics where they matter to a client:

- `GET /ready` -> 200 `ready`.
- `GET /loki/api/v1/query_range`: `query` (a LogQL stream selector with `=`, `!=`, `=~`, `!~` matchers, then any
  number of line filters `|=`, `!=`, `|~`, `!~` with a double-quoted or backtick string), `start` and `end`
  (RFC3339, or epoch: <= 10 digits is seconds, more is nanoseconds, a decimal is seconds; default end = now,
  start = end - 1 h), `limit` (default 100, counted across all streams, capped by `max_entries_limit`, default 5000
  like Loki's) and `direction` (`backward` by default, or `forward`). Start is inclusive, end exclusive. Answer:
  `{"status":"success","data":{"resultType":"streams","result":[{"stream":{...},"values":[["<ns>","<line>"],...]}]}}`.
- `POST /loki/api/v1/push` with the JSON body `{"streams":[{"stream":{...},"values":[["<ns>","<line>"],...]}]}`
  -> 204.

Anything else, a query the strict parser does not accept, or bad parameters -> 400 with a plain-text body.
As in Loki, an entry with the same timestamp and line as one already in its stream is dropped, label regexes are
anchored (full match) and line regexes are not, and a missing label reads as "".

Seed data can be loaded from a JSON-lines file (`LokiStandIn.load_jsonl`), one entry per line:

    {"labels": {"namespace": "ts", "pod": "ts-order-service-5b67c48447-mv5hb"}, "ts_ns": 1674981850485646442,
     "line": "<the raw log line>"}

Usage: `with LokiStandIn() as loki: requests.get(loki.url + "/ready")` (port 0 picks a free port).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_MAX_ENTRIES_LIMIT = 5000


class LogQLError(ValueError):
    """The query is not in the accepted LogQL subset."""


# --- LogQL subset -----------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lbrace>\{) | (?P<rbrace>\}) | (?P<comma>,)
      | (?P<op>\|=|\|~|!=|!~|=~|=)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<dq>"(?:[^"\\\n]|\\.)*")
      | (?P<bq>`[^`]*`)
    )""",
    re.VERBOSE,
)
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b",
                   "f": "\f", "v": "\v"}  # fmt: skip
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0-7]{3}|.)", re.DOTALL)


def _unquote(token: str) -> str:
    """Value of a Go-style string literal (LogQL uses Go's strconv.Unquote)."""
    if token.startswith("`"):
        return token[1:-1]

    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[body]
        if body[0] in "xuU":
            return chr(int(body[1:], 16))
        if len(body) == 3 and body.isdigit():
            return chr(int(body, 8))
        raise LogQLError(f"invalid escape sequence \\{body} in {token}")

    return _ESCAPE.sub(one, token[1:-1])


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # = != =~ !~
    value: str

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            try:
                object.__setattr__(self, "_regex", re.compile(self.value, re.DOTALL))
            except re.error as err:
                raise LogQLError(f"invalid regex {self.value!r} for label {self.name}: {err}") from None

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.name, "")  # Prometheus semantics: a missing label is the empty string
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self._regex.fullmatch(value) is not None  # type: ignore[attr-defined]  # label regexes are anchored
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class LineFilter:
    op: str  # |= != |~ !~
    value: str

    def __post_init__(self) -> None:
        if self.op in ("|~", "!~"):
            try:
                object.__setattr__(self, "_regex", re.compile(self.value))
            except re.error as err:
                raise LogQLError(f"invalid line filter regex {self.value!r}: {err}") from None

    def matches(self, line: str) -> bool:
        if self.op == "|=":
            return self.value in line
        if self.op == "!=":
            return self.value not in line
        hit = self._regex.search(line) is not None  # type: ignore[attr-defined]  # line regexes are unanchored
        return hit if self.op == "|~" else not hit


@dataclass(frozen=True)
class Query:
    matchers: tuple[Matcher, ...]
    filters: tuple[LineFilter, ...]

    def selects(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def keeps(self, line: str) -> bool:
        return all(f.matches(line) for f in self.filters)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise LogQLError(f"parse error at position {pos + 1}: unexpected {text[pos:pos + 10]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def parse_query(text: str) -> Query:
    """Parse `{name op "value", ...} [filter "value"]...`; anything else raises LogQLError."""
    tokens = _tokens(text)
    i = 0

    def take(*kinds: str) -> tuple[str, str]:
        nonlocal i
        if i >= len(tokens) or tokens[i][0] not in kinds:
            got = tokens[i][1] if i < len(tokens) else "end of query"
            raise LogQLError(f"parse error: expected {' or '.join(kinds)}, got {got!r}")
        i += 1
        return tokens[i - 1]

    take("lbrace")
    matchers: list[Matcher] = []
    while True:
        name = take("name")[1]
        op = take("op")[1]
        if op not in ("=", "!=", "=~", "!~"):
            raise LogQLError(f"parse error: {op!r} is not a label matcher operator")
        matchers.append(Matcher(name, op, _unquote(take("dq", "bq")[1])))
        if take("comma", "rbrace")[0] == "rbrace":
            break
    filters: list[LineFilter] = []
    while i < len(tokens):
        op = take("op")[1]
        if op not in ("|=", "!=", "|~", "!~"):
            raise LogQLError(f"parse error: {op!r} is not a line filter operator")
        filters.append(LineFilter(op, _unquote(take("dq", "bq")[1])))
    # Loki refuses selectors that could match every stream.
    if not any(m.op in ("=", "=~") and not m.matches({}) for m in matchers):
        raise LogQLError(
            "queries require at least one regexp or equality matcher that does not have an empty-compatible value"
        )
    return Query(tuple(matchers), tuple(filters))


# --- parameters -------------------------------------------------------------------------------------------------
def parse_time(text: str) -> int:
    """Nanoseconds since the epoch for an RFC3339 time or an epoch number (<= 10 digits: seconds, else ns)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text) * 10**9 if len(text) <= 10 else int(text)
    if re.fullmatch(r"\d+\.\d+", text):
        whole, frac = text.split(".")
        return int(whole) * 10**9 + int((frac + "0" * 9)[:9])
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        raise ValueError(f"cannot parse {text!r} as a timestamp")
    zone = "+00:00" if match[3] == "Z" else match[3]
    moment = datetime.fromisoformat(match[1] + zone)
    return int(moment.timestamp()) * 10**9 + int(((match[2] or "") + "0" * 9)[:9])


StreamKey = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


def _kept(query: Query, key: StreamKey, entries: Iterable[tuple[int, int, str]]
          ) -> Iterator[tuple[int, StreamKey, int, str]]:
    return ((ts, key, seq, line) for ts, seq, line in entries if query.keeps(line))


# --- store ------------------------------------------------------------------------------------------------------
class Store:
    """Streams in memory: sorted label pairs -> {(ts_ns, line): push order}; thread-safe. Each stream also keeps a
    time-sorted index (rebuilt after a push), so a query costs its matches, not the whole store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[tuple[tuple[str, str], ...], dict[tuple[int, str], int]] = {}
        self._sorted: dict[tuple[tuple[str, str], ...], list[tuple[int, int, str]]] = {}

    def push(self, labels: dict[str, str], entries: Iterable[tuple[int, str]]) -> None:
        key = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        with self._lock:
            stream = self._streams.setdefault(key, {})
            for ts, line in entries:
                # Loki drops an entry whose timestamp and line equal one already in the stream; entries sharing a
                # timestamp keep their push order
                stream.setdefault((int(ts), str(line)), len(stream))
            self._sorted.pop(key, None)

    def _index(self, key: tuple[tuple[str, str], ...]) -> list[tuple[int, int, str]]:
        index = self._sorted.get(key)
        if index is None:
            index = sorted((ts, seq, line) for (ts, line), seq in self._streams[key].items())
            self._sorted[key] = index
        return index

    def select(self, query: Query, start_ns: int, end_ns: int, limit: int | None = None,
               backward: bool = False) -> list[tuple[int, StreamKey, int, str]]:
        """(ts, stream key, push order, line) of the first `limit` matching entries in [start_ns, end_ns), in time
        order (newest first when `backward`), ties broken by stream key and push order. The streams' sorted slices
        are merged lazily, so a page costs its `limit`, not every entry left in the window (as in Loki, whose
        paging a client drives by time)."""
        with self._lock:
            chosen = []
            for key in self._streams:
                if query.selects(dict(key)):
                    index = self._index(key)
                    chosen.append((key, index[bisect.bisect_left(index, (start_ns,)):
                                              bisect.bisect_left(index, (end_ns,))]))
        streams = [_kept(query, key, reversed(entries) if backward else entries) for key, entries in chosen]
        merged = heapq.merge(*streams, key=lambda h: (h[0], h[1], h[2]), reverse=backward)
        return list(itertools.islice(merged, limit))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._streams.values())


def query_range(store: Store, params: dict[str, str], max_entries_limit: int) -> dict[str, Any]:
    """The query_range answer for `params`; raises ValueError (-> 400) for anything bad."""
    if "query" not in params:
        raise ValueError("query parameter is required")
    query = parse_query(params["query"])
    end_ns = parse_time(params["end"]) if "end" in params else time.time_ns()
    start_ns = parse_time(params["start"]) if "start" in params else end_ns - 3600 * 10**9
    if end_ns < start_ns:
        raise ValueError("end timestamp must not be before or equal to start time")
    try:
        limit = int(params.get("limit", "100"))
    except ValueError:
        raise ValueError(f"invalid limit {params['limit']!r}") from None
    if limit <= 0:
        raise ValueError("limit must be a positive value")
    if limit > max_entries_limit:
        raise ValueError(f"max entries limit per query exceeded, limit > max_entries_limit ({limit} > "
                         f"{max_entries_limit})")
    direction = params.get("direction", "backward").lower()
    if direction not in ("forward", "backward"):
        raise ValueError(f"invalid direction {params['direction']!r}: must be forward or backward")
    # the limit counts across streams: the first `limit` entries in time order, ties broken stably
    hits = store.select(query, start_ns, end_ns, limit, backward=direction == "backward")
    result: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
    for ts, key, _, line in hits:
        result.setdefault(key, []).append([str(ts), line])
    return {
        "status": "success",
        "data": {
            "resultType": "streams",
            "result": [{"stream": dict(key), "values": values} for key, values in result.items()],
            "stats": {},
        },
    }


def parse_push(body: bytes) -> list[tuple[dict[str, str], list[tuple[int, str]]]]:
    try:
        doc = json.loads(body)
        out = []
        for stream in doc["streams"]:
            labels = stream["stream"]
            if not isinstance(labels, dict) or not labels or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
            ):
                raise ValueError("stream labels must be a non-empty object of strings")
            values = []
            for value in stream["values"]:
                ts, line = value[0], value[1]
                if not isinstance(ts, str) or not ts.isdigit() or not isinstance(line, str):
                    raise ValueError(f"bad entry {value!r}: want [\"<ns>\", \"<line>\"]")
                values.append((int(ts), line))
            out.append((labels, values))
        return out
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"bad push body: {err}") from None


# --- server -----------------------------------------------------------------------------------------------------
def _handler(owner: LokiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # silence per-request logging
            pass

        def _send(self, code: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            if code != 204:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if code != 204:
                self.wfile.write(body)

        def do_GET(self) -> None:  # http.server names handlers do_<METHOD>
            parts = urlsplit(self.path)
            owner.requests.append(self.path)
            if parts.path == "/ready":
                return self._send(200, b"ready\n")
            if parts.path != "/loki/api/v1/query_range":
                return self._send(404, b"404 page not found\n")
            if owner.fail_with is not None:
                return self._send(owner.fail_with, b"injected failure\n")
            raw = parse_qs(parts.query, keep_blank_values=True)
            params = {k: v[-1] for k, v in raw.items()}
            try:
                answer = query_range(owner.store, params, owner.max_entries_limit)
            except ValueError as err:  # LogQLError included
                return self._send(400, f"{err}\n".encode())
            self._send(200, json.dumps(answer).encode(), "application/json")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if urlsplit(self.path).path != "/loki/api/v1/push":
                return self._send(404, b"404 page not found\n")
            if "json" not in (self.headers.get("Content-Type") or ""):
                return self._send(415, b"this stand-in accepts only application/json pushes\n")
            try:
                streams = parse_push(body)
            except ValueError as err:
                return self._send(400, f"{err}\n".encode())
            for labels, values in streams:
                owner.store.push(labels, values)
            self._send(204)

    return Handler


class LokiStandIn:
    """The stand-in server; a context manager. `url` is valid between start() and stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_entries_limit: int = DEFAULT_MAX_ENTRIES_LIMIT):
        self.store = Store()
        self.max_entries_limit = max_entries_limit
        self.requests: list[str] = []  # GET paths seen, so tests can count pages
        self.fail_with: int | None = None  # set to e.g. 503 to make query_range fail
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("stand-in not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LokiStandIn:
        self._server = ThreadingHTTPServer(self._address, _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loki-standin", daemon=True)  # fast shutdown
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LokiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, labels: dict[str, str], entries: Iterable[tuple[int, str]]) -> None:
        """Add entries directly (no HTTP), e.g. to seed a large fixture quickly."""
        self.store.push(labels, entries)

    def load_jsonl(self, path: str | Path, on_bad: Callable[[int, str], None] | None = None) -> int:
        """Load `{"labels": {...}, "ts_ns": <int>, "line": "<str>"}` lines; returns how many were read.
        A malformed line raises ValueError unless `on_bad(line_number, text)` is given."""
        grouped: dict[tuple[tuple[str, str], ...], list[tuple[int, str]]] = {}
        count = 0
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                try:
                    doc = json.loads(text)
                    labels, ts, line = doc["labels"], doc["ts_ns"], doc["line"]
                    if not isinstance(labels, dict) or not isinstance(ts, int) or not isinstance(line, str):
                        raise TypeError("want labels object, integer ts_ns, string line")
                except (ValueError, KeyError, TypeError) as err:
                    if on_bad is None:
                        raise ValueError(f"{path}:{number}: {err}") from None
                    on_bad(number, text)
                    continue
                key = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
                grouped.setdefault(key, []).append((ts, line))
                count += 1
        for key, entries in grouped.items():
            self.store.push(dict(key), entries)
        return count
