"""The template cache of lemzha.logs: `clean` (masked-line cache in front of the rules) must equal
`clean_uncached` (the rules alone) on every line, real and synthetic."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pandas as pd
import pytest

from lemzha import logs
from lemzha.logs import clean, clean_uncached, extract_message

TT_DAY = "2023-01-29"
TT_SAMPLE_FILES = ("08_43_log.csv", "09_21_log.csv", "09_44_log.csv")


@pytest.fixture
def cold_cache():
    logs.clear_template_cache()
    yield
    logs.clear_template_cache()


def _messages(files: list[Path]) -> list[str]:
    lines = pd.concat([pd.read_csv(f, usecols=["Log"]) for f in files], ignore_index=True)["Log"]
    return list(dict.fromkeys(extract_message(raw)[0] for raw in lines))


def _assert_cached_equals_uncached(messages: list[str]) -> dict[str, int]:
    cached = [clean(m) for m in messages]
    uncached = [clean_uncached(m) for m in messages]
    wrong = [(m, c, u) for m, c, u in zip(messages, cached, uncached, strict=True) if c != u]
    assert not wrong, wrong[:3]
    return logs.template_cache_info()


def test_cached_equals_uncached_on_trainticket_lines(nezha_root: Path, cold_cache) -> None:
    messages = _messages([nezha_root / "rca_data" / TT_DAY / "log" / name for name in TT_SAMPLE_FILES])
    info = _assert_cached_equals_uncached(messages)
    # distinct messages only: every hit is a line the rules did not see, whose template came from another line
    assert info["hits"] > 0.8 * len(messages), info


@pytest.mark.slow
def test_cached_equals_uncached_on_a_whole_trainticket_day(nezha_root: Path, cold_cache) -> None:
    messages = _messages(sorted((nezha_root / "rca_data" / TT_DAY / "log").glob("*.csv")))
    info = _assert_cached_equals_uncached(messages)
    assert info["hits"] > 0.8 * len(messages), info


def test_cached_equals_uncached_on_onlineboutique_lines(nezha_root: Path, cold_cache) -> None:
    files = sorted((nezha_root / "rca_data" / "2022-08-22" / "log").glob("*.csv"))
    _assert_cached_equals_uncached(_messages(files))


# Synthetic lines: contexts that the rules treat specially, each with slots that the masks may cover, filled with
# contents of every kind (digits only, letters only, mixed, upper case, and near misses that no mask may cover).
HEX_FILLS = ("12345678", "abcdefab", "abc", "1a2b3c4", "ABCDEF1", "200", "1a2b3c4d", "ABCDEF12", "0" * 16,
             "f" * 23, "9" * 23, "1a" * 12, "A1" * 16, "0" * 24, "e" * 40, "deadbeef" * 4, "500", "1234567",
             "abcdefg1", "12345678-1234", "eyjhbgcio12345678")
CLOCK_FILLS = ("00:00:00.000", "12:34:56.789", "23:59:59,200", "16:43:30.404", "01:02:03.500", "1:02:03.500",
               "12:34:56.78", "12:34:56")
PREFIXES = ("TraceID: ", "SpanID: ", "trace_id: ", "span-id: ", "spanId: ", "xspanid: ", "SpanID:", "SpanID:  ",
            "trace id: ", "traceid= ")
CONTEXTS = (
    "{p}{h}", "{p}{h} 200 OK", "{p}{h} status 500", "{p}{h}:8080", "{p}{h}/12", "{p}{h}.5", "{p}{h}#12", "{p}{h}-x",
    "a {h} b", "{h}", "status: {h}", "{h} ok", 'http/1.1" {h}', "port: {h}", "code={h}", "10.0.0.1 {h}",
    "2023-01-29 {h}", "v{h}", "/api/{h}/x", "<{h}>", "x{h}", "{h}y", "{h} {h}", "{p}{h} {p}{h}",
    "{c} INFO {p}{h} done", "{c} INFO  o.c.X#42 TraceID: {h} SpanID: {h} [get]", "{c} info 200 OK", "{c} WARN x",
    "{c} ERROR status 404", "{c} DEBUG", "{c} TRACE 500 ok", "{c} OK", "{c}", "{c} INFOS", "2023-01-29 {c} INFO x",
    "{c} INFO\t{h}", "stdout F {c} INFO x", "{c} INFO http/1.1\" 503 {p}{h}",
)


def _fills(context: str) -> list[str]:
    """Every line of a context: each slot kind takes each of its fills (one fill for all slots of a kind)."""
    kinds = [(slot, fills) for slot, fills in (("{p}", PREFIXES), ("{h}", HEX_FILLS), ("{c}", CLOCK_FILLS))
             if slot in context]
    lines = []
    for chosen in itertools.product(*(fills for _, fills in kinds)):
        line = context
        for (slot, _), fill in zip(kinds, chosen, strict=True):
            line = line.replace(slot, fill)
        lines.append(line)
    return lines


def test_cached_equals_uncached_on_synthetic_lines(cold_cache) -> None:
    messages = list(dict.fromkeys(line for context in CONTEXTS for line in _fills(context)))
    _assert_cached_equals_uncached(messages)
    # the same lines in another order: another line of each key fills the cache first
    logs.clear_template_cache()
    random.Random(20).shuffle(messages)
    info = _assert_cached_equals_uncached(messages)
    assert info["hits"] > len(messages) // 3, info  # the cache served many lines


def test_cached_equals_uncached_on_random_glued_pieces(cold_cache) -> None:
    rng = random.Random(21)
    pieces = ("<num>", "<hex>", "status ", 'http/1.1" ', "2023-01-29 ", "eyJ", "10.0.0.1", ":8080", "v1.2", "#",
              "port: ", " ok", "-", "/", ".", " ", "\t", "\u00a0", "é", "İ", "\x1b[0m", "\ue003", "\ue101", "{h}",
              "{p}{h}", "{c} INFO ", "{c}", "200", "5", "a", "Z")
    messages = []
    for _ in range(600):
        context = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        for _ in range(3):  # three fills of the slots, each slot on its own
            line = context
            for slot, fills in (("{p}", PREFIXES), ("{h}", HEX_FILLS), ("{c}", CLOCK_FILLS)):
                while slot in line:
                    line = line.replace(slot, rng.choice(fills), 1)
            messages.append(line)
    _assert_cached_equals_uncached(messages)


def test_keys_mask_only_the_covered_spans() -> None:
    line = "16:43:30.908 INFO  o.c.X#42 TraceID: ff163e3eb4ede9753a1dfb41368c60bf SpanID: cc3e12999b524028 [get]"
    other = "01:02:03.004 INFO  o.c.X#42 TraceID: 0123456789abcdef0123456789abcdef SpanID: 1234567812345678 [get]"
    assert logs._cache_key(line) == logs._cache_key(other)
    assert logs._cache_key(line.replace("#42", "#43")) != logs._cache_key(line)
    assert logs._cache_key(line.replace("[get]", "[put]")) != logs._cache_key(line)
    assert logs._cache_key("\x1b[0m" + line) is None and logs._cache_key("\ue101") is None


def test_the_template_cache_is_bounded() -> None:
    logs.clear_template_cache()
    info = logs.template_cache_info()
    assert info["entries"] == 0 and info["max_entries"] == logs.TEMPLATE_CACHE_ENTRIES
