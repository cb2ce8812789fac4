"""A window's log rows from time chunks, each cleaned once and kept while it is settled.

Every incident reads an hour of reference before its onset, so the incidents of one namespace (an alert storm, an
RCAWatch) read mostly the same lines. The window is cut into chunks of CHUNK_SECONDS aligned to the epoch, so
every window cuts the same ones; the chunks are fetched at once (the network waits of one overlap the cleaning of
another), cleaned into counted templates (`loki.templated_entries`) and, once settled (ended SETTLE_SECONDS
before now, so that late lines have arrived in Loki), kept in a bounded cache for the next incident. The rows are
the ones the whole window would give: the cleaner is a pure function of the line and the bins of a chunk are
bins of the window's grid.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from lemzha.binning import BIN_SECONDS, as_utc
from lemzha.lru import SizedLRU
from lemzha_operator.loki import LokiClient, empty_templated, templated_entries

CHUNK_SECONDS = 300  # 10 bins: a window's partial first chunk costs at most 5 min of extra lines
SETTLE_SECONDS = 300  # a chunk that ended less than this before now may still receive lines: never kept
FETCH_THREADS = 4


@dataclass(frozen=True)
class Chunk:
    """One chunk's lines counted per (pod, bin from the chunk's start, template, level), and how many lines."""

    rows: pd.DataFrame
    lines: int
    truncated: bool


def chunk_cache(max_rows: int = 200_000) -> SizedLRU[tuple[str, int], Chunk]:
    """Settled chunks by (selector, chunk start), bounded by `max_rows` counted rows in all (0: keep none). A row
    holds references to a pod name and a template string that the template cache and other rows share, so it costs
    about 100 bytes: 200,000 rows are about 20 MiB."""
    return SizedLRU(max_rows, size_of=lambda chunk: len(chunk.rows))


def chunk_starts(start: datetime, n_bins: int) -> list[datetime]:
    """The aligned chunks that cover [start, start + n_bins bins)."""
    first_s = int(as_utc(start).timestamp()) // CHUNK_SECONDS * CHUNK_SECONDS
    end_s = as_utc(start).timestamp() + n_bins * BIN_SECONDS
    return [datetime.fromtimestamp(s, tz=as_utc(start).tzinfo) for s in range(first_s, int(-(-end_s // 1)),
                                                                              CHUNK_SECONDS)]


def fetch_chunk(client: LokiClient, selector: str, chunk_start: datetime, lo: datetime, hi: datetime,
                pod_label: str) -> Chunk:
    """The lines of [lo, hi), a part of the chunk at `chunk_start` or all of it, counted on the chunk's bins."""
    result = client.fetch(selector, lo, hi)
    rows = templated_entries(result.entries, chunk_start, CHUNK_SECONDS // BIN_SECONDS, pod_label)
    return Chunk(rows, len(result), result.truncated)


class ChunkedLogs:
    """Templated rows of a window (`loki.templated_entries`'s shape, bins from the window's start), from chunks
    fetched in parallel and kept in `cache`; `now` is the clock that tells a settled chunk from a live one."""

    def __init__(self, client: LokiClient, cache: SizedLRU[tuple[str, int], Chunk], pod_label: str = "pod",
                 now: Callable[[], datetime] | None = None, threads: int = FETCH_THREADS) -> None:
        self.client = client
        self.cache = cache
        self.pod_label = pod_label
        self.now = now or (lambda: datetime.now(UTC))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loki-chunk")

    def window(self, selector: str, start: datetime, n_bins: int) -> tuple[pd.DataFrame, bool]:
        """(templated rows of [start, start + n_bins bins), truncated). The window holds at most the client's
        `max_entries` lines: chunks are taken in time order, and from the first one that would pass the cap (or
        that Loki cut itself) on, the window is marked truncated and later chunks are left out."""
        start = as_utc(start)
        end = start + timedelta(seconds=n_bins * BIN_SECONDS)
        settled_before = as_utc(self.now()) - timedelta(seconds=SETTLE_SECONDS)
        starts = chunk_starts(start, n_bins)
        found: dict[int, Chunk] = {}
        jobs = {}
        for k, chunk_start in enumerate(starts):
            chunk_end = chunk_start + timedelta(seconds=CHUNK_SECONDS)
            settled = chunk_end <= settled_before
            cached = self.cache.get((selector, int(chunk_start.timestamp()))) if settled else None
            if cached is not None:
                found[k] = cached
            else:  # a settled chunk is fetched whole, for the next window; a live one only where this one needs
                lo, hi = (chunk_start, chunk_end) if settled else (max(chunk_start, start), min(chunk_end, end))
                jobs[k] = (settled, self._pool.submit(fetch_chunk, self.client, selector, chunk_start, lo, hi,
                                                      self.pod_label))
        for k, (settled, job) in jobs.items():
            found[k] = job.result()  # a Loki error of any chunk is the window's: raised here
            if settled and not found[k].truncated:
                self.cache.put((selector, int(starts[k].timestamp())), found[k])
        frames, lines, truncated = [], 0, False
        for k, chunk_start in enumerate(starts):
            chunk = found[k]
            lines += chunk.lines
            if lines > self.client.max_entries and not chunk.truncated:
                truncated = True  # this chunk would pass the cap: it and the later ones are left out
                break
            offset = round((chunk_start - start).total_seconds()) // BIN_SECONDS
            rows = chunk.rows.assign(bin=chunk.rows["bin"] + offset)
            frames.append(rows.loc[(rows["bin"] >= 0) & (rows["bin"] < n_bins)])
            if chunk.truncated:  # Loki's lines of this chunk alone reached the cap: keep them, stop here
                truncated = True
                break
        frames = [f for f in frames if not f.empty]
        return (pd.concat(frames, ignore_index=True) if frames else empty_templated()), truncated

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
