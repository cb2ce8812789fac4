"""The operator's Loki client: fetch a namespace's log lines for a window and turn them into Scenario log rows.

Torch-free on purpose (the operator image does not carry torch). Rows are built with the same lemzha functions as
the offline Nezha loader (`offline/data/nezha.py` read_day_logs + window_logs), so live and offline rows agree for the
same raw lines; tests/test_loki.py checks that on real TrainTicket lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lemzha.binning import BIN_SECONDS, as_utc, bin_indices
from lemzha.logs import templates_and_levels
from lemzha.services import service_of_pod

try:  # requests when the image has it; the stdlib otherwise
    import requests
except ImportError:  # pragma: no cover - exercised only in images without requests
    requests = None  # type: ignore[assignment]

Entry = tuple[int, dict[str, str], str]  # (ts_ns, stream labels, raw line)
LOG_ROW_COLUMNS = ("service", "bin", "template", "count", "level")


class LokiError(RuntimeError):
    """Base class for Loki client failures."""


class LokiUnavailable(LokiError):
    """Loki cannot be reached, timed out, answered 5xx or 429: retry later."""


class LokiQueryError(LokiError):
    """Loki rejected the request (4xx): retrying the same request will not help."""


@dataclass
class FetchResult:
    """Entries in time order. `truncated` is True when `max_entries` stopped the fetch before the window's end."""

    entries: list[Entry] = field(default_factory=list)
    truncated: bool = False
    pages: int = 0

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def quote(value: str) -> str:
    """A LogQL double-quoted string literal holding exactly `value` (LogQL unquotes with Go's rules)."""
    out = []
    for char in str(value):
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")  # other control characters: never raw in a query
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def selector(namespace: str, extra: dict[str, str] | None = None, namespace_label: str = "namespace") -> str:
    """`{namespace="..."}` plus equality matchers from `extra`. Values are escaped so that user input can never add
    matchers or filters; label names must be valid LogQL identifiers (ValueError otherwise)."""
    if not namespace:
        raise ValueError("namespace must not be empty: Loki refuses selectors that match every stream")
    labels = {namespace_label: namespace, **(extra or {})}
    for name in labels:
        if not (name and (name[0].isascii() and (name[0].isalpha() or name[0] == "_"))
                and all(c.isascii() and (c.isalnum() or c == "_") for c in name)):  # fmt: skip
            raise ValueError(f"invalid Loki label name {name!r}")
    return "{" + ", ".join(f"{name}={quote(value)}" for name, value in labels.items()) + "}"


def _server_page_limit(text: str, asked: int) -> int | None:
    """Loki's own limit from its refusal of a page size, "max entries limit per query exceeded, limit >
    max_entries_limit[_per_query] (asked > N)", when N is below what was asked; None for any other answer."""
    found = re.search(r"max entries limit per query exceeded.*\((\d+) > (\d+)\)", text)
    if found is None or int(found[1]) != asked or not 0 < int(found[2]) < asked:
        return None
    return int(found[2])


def _key(ts: int, labels: dict[str, str], line: str) -> tuple[int, tuple[tuple[str, str], ...], str]:
    return ts, tuple(sorted(labels.items())), line


def _ns(moment: datetime) -> int:
    return pd.Timestamp(as_utc(moment)).as_unit("ns").value


class LokiClient:
    """query_range over a window, paginated forward. `token_file` is re-read on every request (projected service
    account tokens rotate); `ca_bundle` is a CA file for TLS verification.

    `page_limit` starts at Loki's default `max_entries_limit_per_query` (5000): fewer, larger pages. A Loki
    configured lower refuses it with "(5000 > N)"; the client then pages by N from that request on."""

    def __init__(
        self,
        url: str,
        token_file: str | Path | None = None,
        ca_bundle: str | Path | None = None,
        timeout: float = 30,
        page_limit: int = 5000,
        max_entries: int = 200_000,
    ) -> None:
        if page_limit <= 0 or max_entries <= 0:
            raise ValueError("page_limit and max_entries must be positive")
        self.url = url.rstrip("/")
        self.token_file = Path(token_file) if token_file else None
        self.ca_bundle = str(ca_bundle) if ca_bundle else None
        self.timeout = timeout
        self.page_limit = page_limit
        self.max_entries = max_entries
        self._session = requests.Session() if requests is not None else None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as err:
                raise LokiUnavailable(f"cannot read Loki token file {self.token_file}: {err}") from None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _get(self, path: str, params: dict[str, str]) -> tuple[int, str]:
        url = self.url + path
        if self._session is not None:
            try:
                resp = self._session.get(url, params=params, headers=self._headers(), timeout=self.timeout,
                                         verify=self.ca_bundle if self.ca_bundle else True)
            except requests.RequestException as err:
                raise LokiUnavailable(f"Loki at {self.url} unreachable: {err}") from None
            return resp.status_code, resp.text
        return self._get_urllib(url, params)

    def _get_urllib(self, url: str, params: dict[str, str]) -> tuple[int, str]:
        import ssl
        import urllib.error
        import urllib.parse
        import urllib.request

        request = urllib.request.Request(url + "?" + urllib.parse.urlencode(params), headers=self._headers())
        context = ssl.create_default_context(cafile=self.ca_bundle) if url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=context) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as err:
            raise LokiUnavailable(f"Loki at {self.url} unreachable: {err}") from None

    def ready(self) -> bool:
        try:
            code, _ = self._get("/ready", {})
        except LokiUnavailable:
            return False
        return code == 200

    def _page(self, query: str, start_ns: int, end_ns: int) -> list[Entry]:
        params = {"query": query, "start": str(start_ns), "end": str(end_ns), "limit": str(self.page_limit),
                  "direction": "forward"}  # fmt: skip
        code, text = self._get("/loki/api/v1/query_range", params)
        if code == 400 and (lower := _server_page_limit(text, self.page_limit)) is not None:
            self.page_limit = lower
            return self._page(query, start_ns, end_ns)
        if code >= 500 or code == 429:  # 429: rate limited, which passes like an outage
            raise LokiUnavailable(f"Loki answered {code}: {text.strip()[:500]}")
        if code >= 400:
            raise LokiQueryError(f"Loki rejected query {query!r} ({code}): {text.strip()[:500]}")
        if code != 200:
            raise LokiUnavailable(f"Loki answered unexpected status {code}")
        try:
            doc = json.loads(text)
            if doc.get("status") != "success" or doc["data"]["resultType"] != "streams":
                raise ValueError(f"status {doc.get('status')!r}, resultType {doc['data'].get('resultType')!r}")
            entries = [
                (int(ts), labels, line)
                for stream in doc["data"]["result"]
                for labels in (dict(stream["stream"]),)  # one dict per stream, shared by its entries (read only)
                for ts, line in stream["values"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise LokiUnavailable(f"Loki sent an unreadable answer: {err}") from None
        # streams come one after the other: restore one time order (stable, so a stream keeps its own order)
        entries.sort(key=lambda e: e[0])
        return entries

    def fetch(self, selector: str, start: datetime, end: datetime) -> FetchResult:
        """Every entry with start <= ts < end, in time order, up to `max_entries` (then `truncated`).

        Pages go forward in time. A page can end in the middle of entries sharing one timestamp, so the next page
        starts AT the last timestamp (not after it) and skips the entries already taken there; only when one
        timestamp alone fills a whole page does it step past it (start = last_ts + 1), marking the result
        truncated because entries may have been skipped."""
        start_ns, end_ns = _ns(start), _ns(end)
        result = FetchResult()
        seen_at_boundary: set[tuple[int, tuple[tuple[str, str], ...], str]] = set()
        while start_ns < end_ns:
            page = self._page(selector, start_ns, end_ns)
            result.pages += 1
            fresh = []
            for ts, labels, line in page:
                if ts == start_ns and _key(ts, labels, line) in seen_at_boundary:
                    continue
                fresh.append((ts, labels, line))
            room = self.max_entries - len(result.entries)
            if len(fresh) > room:  # at max_entries after a full page, one more page tells whether more exists
                result.entries.extend(fresh[:room])
                result.truncated = True
                break
            result.entries.extend(fresh)
            if len(page) < self.page_limit:
                break  # the window is exhausted
            last_ts = page[-1][0]
            if last_ts == start_ns:
                # one timestamp fills a whole page: start/end cannot page through it, so step past it
                result.truncated = True
                seen_at_boundary, start_ns = set(), last_ts + 1
                continue
            seen_at_boundary = {_key(ts, labels, line) for ts, labels, line in page if ts == last_ts}
            start_ns = last_ts
        return result


def log_rows(
    entries: Iterable[Entry],
    start: datetime,
    n_bins: int,
    pod_label: str = "pod",
    pod_service: dict[str, str] | None = None,
    services: set[str] | None = None,
) -> pd.DataFrame:
    """Scenario log rows (service, bin, template, count, level) from Loki entries: the offline mapping exactly.

    Per entry: (message, level) = extract_message(line); template = clean(message); service = pod_service[pod] or
    service_of_pod(pod); bin = bin_indices(ts, start). Entries without a pod label, with an empty template or
    outside [0, n_bins) are dropped; `services`, when given, keeps only those (offline keeps services that have
    metrics). `start` should be bin-aligned (lemzha.binning.floor_to_bin), as offline windows are: offline bins
    the 30 s epoch grid, so the two agree only on aligned starts."""
    return service_rows(templated_entries(entries, start, n_bins, pod_label), pod_service, services)


def templated_entries(entries: Iterable[Entry], start: datetime, n_bins: int, pod_label: str = "pod") -> pd.DataFrame:
    """The first half of `log_rows`, which needs no pod->service map: the entries of the window counted per pod,
    bin, template and level (the costly part: cleaning every line), so it can run while the metrics are still
    fetched, and be kept per chunk of time (`lemzha_operator.logchunks`). The raw lines never enter a DataFrame:
    a column of 20,000 long strings costs more to build than to clean."""
    kept = [(ts, pod, line) for ts, labels, line in entries if (pod := labels.get(pod_label))]
    if not kept:
        return empty_templated()
    times = pd.to_datetime(np.fromiter((ts for ts, _, _ in kept), dtype=np.int64, count=len(kept)), unit="ns",
                           utc=True)
    bins = bin_indices(times, start, BIN_SECONDS)
    inside = np.flatnonzero((bins >= 0) & (bins < n_bins))
    templates, levels = templates_and_levels(kept[i][2] for i in inside)
    frame = pd.DataFrame({"pod": [kept[i][1] for i in inside], "bin": bins[inside], "template": templates,
                          "level": levels})
    frame = frame.loc[frame["template"] != ""]
    return frame.groupby(list(TEMPLATED_COLUMNS[:-1]), observed=True, sort=False).size().rename("count").reset_index()


TEMPLATED_COLUMNS = ("pod", "bin", "template", "level", "count")


def empty_templated() -> pd.DataFrame:
    return pd.DataFrame({"pod": pd.Series(dtype=object), "bin": pd.Series(dtype="int64"),
                         "template": pd.Series(dtype=object), "level": pd.Series(dtype=object),
                         "count": pd.Series(dtype="int64")})


def service_rows(templated: pd.DataFrame, pod_service: dict[str, str] | None = None,
                 services: set[str] | None = None) -> pd.DataFrame:
    """The second half of `log_rows`: `templated_entries` summed per (service, bin, template, level)."""
    if templated.empty:
        return _empty_rows()
    mapping = pod_service or {}
    frame = templated.assign(service=templated["pod"].map(
        {p: mapping.get(p) or service_of_pod(p) for p in templated["pod"].unique()}))
    if services is not None:
        frame = frame.loc[frame["service"].isin(services)]
    if frame.empty:
        return _empty_rows()
    out = frame.groupby(["service", "bin", "template", "level"], observed=True)["count"].sum().reset_index()
    out = out.loc[:, list(LOG_ROW_COLUMNS)]
    return _typed(out)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    # the dtypes of lemzha.scenario.empty_logs, so the rows drop straight into a Scenario
    return frame.astype({"service": "string", "bin": "int32", "template": "string", "count": "int64",
                         "level": "string"}).reset_index(drop=True)  # fmt: skip


def _empty_rows() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("bin", "count") else object)
                                for c in LOG_ROW_COLUMNS}))  # fmt: skip
