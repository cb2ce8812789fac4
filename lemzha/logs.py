"""The product's one log cleaner: unwrap a raw log line, then reduce its message to a template.

Used offline (Nezha CSVs, lemzha-k texts already cleaned by the old prototype) and live (lines read from Loki), so
`clean` must give the same template for a raw message and for the old cleaner's output of it. It therefore works on
lower-cased text, spells its placeholders as the old cleaner did (`<ts>`, `<uuid>`, `<hex>`, `<host>`, `-<rand>`,
`<num>`, `:id`) and treats them as atoms; it adds `<time>`, `<id>` and `<token>`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from typing import Any

from lemzha.lru import SizedLRU
from lemzha.services import K8S_NAME_ALPHABET

LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL", "UNKNOWN")

_LEVEL_ALIASES = {
    "debug": "DEBUG", "dbug": "DEBUG", "trace": "DEBUG", "trce": "DEBUG", "verbose": "DEBUG",
    "info": "INFO", "information": "INFO", "notice": "INFO",
    "warn": "WARN", "warning": "WARN",
    "error": "ERROR", "err": "ERROR", "fail": "ERROR", "severe": "ERROR",
    "fatal": "FATAL", "critical": "FATAL", "crit": "FATAL", "panic": "FATAL", "alert": "FATAL", "emergency": "FATAL",
}  # fmt: skip
_LEVEL_WORD = re.compile(r"\b(debug|trace|info|warn(?:ing)?|error|severe|fatal|critical)\b", re.IGNORECASE)
_DOTNET_LEVEL = re.compile(r"^(trce|dbug|info|warn|fail|crit): ")  # .NET console logger ("fail: ...")
_MESSAGE_KEYS = ("message", "msg")
_LEVEL_KEYS = ("severity", "level", "levelname")
# containerd/CRI-O file format: "<RFC3339 time> stdout|stderr F|P <line>".
_CRI_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT\S+ (?:stdout|stderr) [FP] ")
_JSON = json.JSONDecoder()


def normalise_level(value: str | None) -> str:
    """One of LEVELS for a level name such as "warning", "Error" or "CRIT"; "UNKNOWN" for anything else."""
    if not isinstance(value, str):
        return "UNKNOWN"
    return _LEVEL_ALIASES.get(value.strip().lower(), "UNKNOWN")


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object at the start of `text`, ignoring trailing bytes (some Nezha envelopes carry garbage)."""
    if not text.startswith("{"):
        return None
    try:
        value, _ = _JSON.raw_decode(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _first_field(obj: dict[str, Any], keys: tuple[str, ...]) -> Any:
    lowered = {str(k).lower(): v for k, v in obj.items()}
    for key in keys:
        if lowered.get(key) is not None:
            return lowered[key]
    return None


def extract_message(raw: str) -> tuple[str, str]:
    """Unwrap one raw log line -> (message, level). Handles a docker JSON envelope {"log":..} (or a plain line),
    then an inner JSON object (message/msg/MESSAGE + severity/level/levelname) or plain text.
    Level comes from the JSON field if present, else from a level word in the text (INFO, WARN/WARNING, ERROR,
    SEVERE->ERROR, FATAL/CRITICAL->FATAL, DEBUG/TRACE->DEBUG, case-insensitive, as a whole word, first occurrence),
    else "UNKNOWN". Never raises on garbage: returns ("", "UNKNOWN") for empty/non-string."""
    if not isinstance(raw, str):
        return "", "UNKNOWN"
    text = _CRI_PREFIX.sub("", raw.strip(), count=1)
    obj = _json_object(text)
    if obj is not None and isinstance(obj.get("log"), str):  # docker json-file envelope
        text = obj["log"].strip()
        obj = _json_object(text)
    level = "UNKNOWN"
    if obj is not None:
        level = normalise_level(_first_field(obj, _LEVEL_KEYS))
        message = _first_field(obj, _MESSAGE_KEYS)
        if message is not None:
            text = message.strip() if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
    if level == "UNKNOWN":
        found = _DOTNET_LEVEL.match(text) or _LEVEL_WORD.search(text)
        if found:
            level = normalise_level(found.group(1))
    return text, level


# --- clean -----------------------------------------------------------------------------------------------------
# Rules, in the order they run, on lower-cased whitespace-collapsed text. The old cleaner's rules come in its order
# (date-time, uuid, long hex, IPv4, pod suffix, URL id, port/HTTP keyword spacing, versions) so that its output and the
# raw text meet; the others mask what it left. Lookarounds count "<" / ">" as word characters: a placeholder glued to
# a run means the run was glued to digits, and seeing it differently on a second pass would break idempotence.

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Protected HTTP codes are spelt with these private-use characters while numbers are masked.
_PROTECT = str.maketrans("0123456789", "".join(chr(0xE000 + d) for d in range(10)))
_UNPROTECT = {v: k for k, v in _PROTECT.items()}
_PRIVATE = re.compile("[\ue000-\ue009]")
_JWT = re.compile(r"(?<![0-9a-z_>])eyj[a-z0-9_-]{10,}(?:\.[a-z0-9_-]+){1,2}")  # JSON web tokens
# A date-time (or the old cleaner's <ts>) with any fraction / zone tail, which the old cleaner may have left behind.
_TIMESTAMP = re.compile(r"(?:<ts>|(?:\d{4}|<num>)-\d\d-\d\d[t ]\d\d:\d\d:\d\d)(?:[.,](?:\d+|<num>)|z|[+-]\d\d:?\d\d)*")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LONG_HEX = re.compile(r"(?<![\w>])[0-9a-f]{24,}(?![\w<])")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?::\d{2,5})?")
# Kubernetes name suffixes use an alphabet without vowels, so words such as "-station-food-" are not pod hashes.
_K8S = K8S_NAME_ALPHABET
_POD_SUFFIX = re.compile(rf"(?<=[a-z0-9])-[{_K8S}]{{6,10}}-[{_K8S}]{{5}}(?![\w<])")
# Span ids and other hex ids: >= 8 hex characters with at least one digit and one letter.
_HEX_ID = re.compile(r"(?<![0-9a-z>])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}(?![0-9a-z<])")
# OnlineBoutique product ids such as 9SIQT8TOJO: 10 letters and digits, at least one of each.
_PRODUCT_ID = re.compile(r"(?<![0-9a-z>])(?=[a-z]*\d)(?=\d*[a-z])[0-9a-z]{10}(?![0-9a-z<])")
_URL_ID = re.compile(r'(?<=/)\d{4,}(?=/|$| |")')
# The old cleaner rewrote "port: 8080" / "listening on :9555" / "status:500" as keyword, space, number.
_PORT_KEYWORD = re.compile(r"(port|listen(?:ing)?(?: on)?|bind(?:ing)?(?: to)?|socket)[: ]+(\d{2,5})")
_HTTP_KEYWORD = re.compile(r"(https?|status|code)[: ]*([1-5]\d\d)\b")
_HTTP_CONTEXTS = (
    re.compile(r"(?:status|code)[\"']?[=:] ?[\"']?([1-5]\d\d)\b"),  # code=503, "status":500
    re.compile(r"http/(?:\d+(?:\.\d+)*|<num>)\"? ([1-5]\d\d)\b"),  # HTTP/1.1" 404
    re.compile(r"<([1-5]\d\d)\b"),  # Spring's ResponseEntity: <200,...>
    re.compile(
        r"\b([1-5]\d\d) (?:ok|created|accepted|no content|moved permanently|found|not modified|bad request"
        r"|unauthorized|forbidden|not found|method not allowed|conflict|gone|too many requests"
        r"|internal server error|not implemented|bad gateway|service unavailable|gateway timeout)\b"
    ),
)
# A Java logger's code location ("p.c.PriceController#46"): the line number names the statement that logged, so it
# is kept; which statements run, and in what mix, is what a code-level fault changes.
_CODE_LOCATION = re.compile(r"[a-z_$\]]#(\d{1,5})(?![\w<])")
_VERSION = re.compile(r"\bv?\d+(?:\.\d+)+\b")  # the old cleaner kept versions and decimals but dropped their "v"
# Any digit run, except a short one glued to letters (log4j, http11, ts-travel2-service, utf8).
_NUMBER = re.compile(r"(?<![a-z0-9])\d+|(?<=[a-z])\d{3,}")
_NUMBER_RUN = re.compile(r"<num>(?:\.<num>)+")
_CLOCK = re.compile(r"<num>:<num>:<num>(?:,<num>)?")
# A fraction that only became "<num>" later on (".v1.2") still belongs to the time stamp.
_TIMESTAMP_TAIL = re.compile(r"<ts>(?:[.,]<num>|z)+")
_TRACE_ID = re.compile(r"\b((?:trace|span)[_-]?id\W{0,3})(?:[0-9a-f]{8,}|<num>)(?![0-9a-z<])")  # all-digit ids too
_HOST_PORT = re.compile(r"<host>(?::<num>)+")
# What the old cleaner left of a CRI prefix (extract_message drops the prefix itself from raw lines).
_CRI_LEFTOVER = re.compile(r"^(?:(?:<ts> )?(?:stdout|stderr) [fp] )+")


def _protect_code(match: re.Match[str]) -> str:
    whole, start, end = match.group(0), match.start(1) - match.start(), match.end(1) - match.start()
    return whole[:start] + whole[start:end].translate(_PROTECT) + whole[end:]


def _canonical_http(match: re.Match[str]) -> str:
    return f"{match.group(1)} {match.group(2).translate(_PROTECT)}"


_HTTP_REASONS = ("ok", "created", "accepted", "content", "moved", "found", "modified", "request", "unauthorized",
                 "forbidden", "allowed", "conflict", "gone", "requests", "error", "implemented", "gateway",
                 "unavailable", "timeout")


def _any(*needles: str):
    return lambda text: any(n in text for n in needles)


# (pattern, replacement, guard): each rule in order. A guard is a cheap substring test that every match needs, so
# skipping the rule when it fails changes nothing (tests/test_logs.py checks this on real lines); it only saves time.
_RULES: tuple = (
    (_JWT, "<token>", _any("eyj")),
    (_TIMESTAMP, "<ts>", _any("<ts>", "-")),
    (_UUID, "<uuid>", lambda text: text.count("-") >= 4),
    (_LONG_HEX, "<hex>", None),
    (_IPV4, "<host>", _any(".")),
    (_POD_SUFFIX, "-<rand>", _any("-")),
    # Whole-token ids before the keyword rules, so that no protected code hangs on a keyword an id swallows.
    (_HEX_ID, "<hex>", None),
    (_PRODUCT_ID, "<id>", None),
    (_URL_ID, ":id", _any("/")),
    (_PORT_KEYWORD, r"\1 \2", _any("port", "listen", "bind", "socket")),
    (_HTTP_KEYWORD, _canonical_http, _any("http", "status", "code")),
    (_HTTP_CONTEXTS[0], _protect_code, _any("status", "code")),
    (_HTTP_CONTEXTS[1], _protect_code, _any("http/")),
    (_HTTP_CONTEXTS[2], _protect_code, _any("<")),
    (_HTTP_CONTEXTS[3], _protect_code, _any(*_HTTP_REASONS)),
    (_CODE_LOCATION, _protect_code, _any("#")),
    (_VERSION, "<num>", None),
    (_NUMBER, "<num>", None),
    (_NUMBER_RUN, "<num>", _any("<num>.")),
    (_CLOCK, "<time>", _any("<num>:")),
    (_TIMESTAMP_TAIL, "<ts>", _any("<ts>")),
    (_TRACE_ID, r"\1<hex>", _any("trace", "span")),
    (_HOST_PORT, "<host>", _any("<host>:")),
    (_CRI_LEFTOVER, "", _any("stdout", "stderr")),
)


def _clean_text(text: str, guards: bool = True) -> str:
    text = _PRIVATE.sub("", _ANSI.sub("", text))
    text = " ".join(text.lower().split())
    for pattern, replacement, guard in _RULES:
        if not guards or guard is None or guard(text):
            text = pattern.sub(replacement, text)
    return text.translate(_UNPROTECT)


# A template is made from a message's first MAX_MESSAGE_CHARS characters and is at most MAX_TEMPLATE_CHARS long.
# The tail of a very long line (a dumped list of 500 tickets) carries no template information that MiniLM could see
# (it reads 256 word pieces), while cleaning it costs time in proportion to its length; 1.5 % of TrainTicket's lines
# are over 2,000 characters and took 44 % of the cleaning time.
MAX_MESSAGE_CHARS = 1024
MAX_TEMPLATE_CHARS = 1024


def _cut(template: str) -> str:
    """At most MAX_TEMPLATE_CHARS, ending at a token boundary (after a space or a placeholder's ">"), so that
    cleaning a cut template again changes nothing."""
    if len(template) <= MAX_TEMPLATE_CHARS:
        return template
    head = template[:MAX_TEMPLATE_CHARS]
    end = max(head.rfind(" "), head.rfind(">") + 1)
    return head[:end].rstrip() if end > 0 else head


# --- the template cache ----------------------------------------------------------------------------------------
# Most lines of a service differ from each other only in trace ids and clocks, which the rules above replace
# whatever their value; cleaning each of them costs ~60 us. So a line's cache key is the line with those parts
# masked by one cheap pass, and the full cleaner runs once per key. Each mask covers ONLY a span that the rules
# provably replace whole, independently of its content and without its content changing how any other part is
# cleaned; two lines with the same key therefore have the same template. Why, mask by mask (text as the rules see
# it: lower-cased, whitespace collapsed; a masked id needs a space before it and ASCII whitespace or the end after
# it, which stay token boundaries there):
#
# - a whitespace-delimited token of >= 24 hex digits: no rule before _LONG_HEX can match in it (no "eyj", no "-",
#   no ":") or across its bounding spaces, and _LONG_HEX then replaces the whole token by "<hex>".
# - a message's leading clock "hh:mm:ss.mmm" (or ",mmm") followed by a level word: no rule before _VERSION can
#   use it (at most 3 digits in a row, no "-", "/", "#" or keyword before it; its "mmm" is followed by a level word,
#   which is no HTTP reason phrase), and _VERSION then _NUMBER turn it into "<num>:<num>:<num>" whatever its digits.
# - a token of 8-23 hex digits after "traceid: " / "span_id: " (the prefix after a space):
#   with a digit and a letter _HEX_ID replaces it by "<hex>"; letters only, nothing touches it until _TRACE_ID
#   ("<hex>"); digits only, _NUMBER makes it "<num>", which _TRACE_ID makes "<hex>". No rule before those can match
#   in it (no "-", "." or "/"; too long for an HTTP code; it follows "id: ", no keyword).
#
# Each mask has its own sentinel character, so that keys do not confuse one mask with another. Messages holding a
# sentinel are cleaned without the cache (their key could equal a masked one); so are, as a precaution, those with
# an ANSI escape or a protected-code character, which the cleaner deletes before its rules see the text that the
# reasoning above is about. tests/test_logs_cache.py checks cached == uncached on every line of a TrainTicket day
# and on synthetic lines built to break the masks (each mask loosened makes it fail).
# One pass masks the ids (a literal space first lets the regex engine skip to spaces), another the leading clock.
_ID_MASK = re.compile(r" (?:((?i:trace|span)[_-]?(?i:id): )[0-9a-fA-F]{8,23}|[0-9a-fA-F]{24,})(?!\S)", re.ASCII)
_CLOCK_MASK = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}[.,][0-9]{3}(?=\s+(?:info|warn|error|debug|trace|fatal)(?:\s|$))",
                         re.ASCII | re.IGNORECASE)
_HEX_SENTINEL, _CLOCK_SENTINEL, _TRACE_ID_SENTINEL = "\ue101", "\ue102", "\ue103"
_UNCACHED = re.compile("[\x1b\ue000-\ue009\ue101-\ue103]")
TEMPLATE_CACHE_ENTRIES = 20_000


def _masked_id(match: re.Match[str]) -> str:
    prefix = match.group(1)
    return f" {_HEX_SENTINEL}" if prefix is None else f" {prefix}{_TRACE_ID_SENTINEL}"


def _cache_key(text: str) -> str | None:
    """`text` with the parts masked that the rules replace whatever their value; None: clean it without the cache."""
    if _UNCACHED.search(text):
        return None
    clock = _CLOCK_MASK.match(text)
    if clock is not None:
        text = _CLOCK_SENTINEL + text[clock.end():]
    return _ID_MASK.sub(_masked_id, text)


# Masked line -> template. Keys and templates are at most MAX_MESSAGE_CHARS characters each, so the bound in memory is
# about entries x 2 kB (a TrainTicket key is ~280 characters: ~12 MB at 20,000 entries); templates are interned,
# since ~300 of them serve a whole day. Thread-safe: the operator cleans the logs of two incidents at once.
_CACHE: SizedLRU[str, str] = SizedLRU(TEMPLATE_CACHE_ENTRIES)


def clear_template_cache() -> None:
    """Empty the template cache (a cold start, for benchmarks and tests)."""
    _CACHE.clear()


def template_cache_info() -> dict[str, int]:
    """The template cache's entries, bound, hits and misses since it was last cleared."""
    info = _CACHE.info()
    return {"entries": info["entries"], "max_entries": info["max_size"], "hits": info["hits"],
            "misses": info["misses"]}


def clean_uncached(message: str) -> str:
    """`clean` without the template cache: the full rules on every call (the reference the cache must equal)."""
    if not isinstance(message, str):
        return ""
    return _cut(_clean_text(message[:MAX_MESSAGE_CHARS]))


def clean(message: str) -> str:
    """The template of one message: ids, numbers, times, hosts masked; lower-cased; whitespace collapsed; from the
    message's first MAX_MESSAGE_CHARS characters. Remembered in the template cache (`_CACHE`)."""
    if not isinstance(message, str):
        return ""
    text = message[:MAX_MESSAGE_CHARS]
    key = _cache_key(text)
    if key is None:
        return _cut(_clean_text(text))
    template = _CACHE.get(key)
    if template is None:
        template = sys.intern(_cut(_clean_text(text)))
        _CACHE.put(key, template)
    return template


def clean_many(messages: Iterable[str]) -> list[str]:
    """`clean` of each message, computing each distinct message once."""
    items = list(messages)
    templates: dict[Any, str] = {}
    for item in items:
        if item not in templates:
            templates[item] = clean(item)
    return [templates[item] for item in items]


def templates_and_levels(raw_lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """(template, level) of each raw line (docker envelope, JSON or plain): the one path from a raw log line to a
    Scenario log row, offline and live. Each distinct line and message is processed once."""
    lines = list(raw_lines)
    unwrapped = {raw: extract_message(raw) for raw in dict.fromkeys(lines)}
    messages = [unwrapped[raw][0] for raw in lines]
    return clean_many(messages), [unwrapped[raw][1] for raw in lines]


# -- events ---------------------------------------------------------------------------------------------------------
# A template up to a Java code location ("<time> info p.c.pricecontroller#46"): the statement that logged, whatever
# the message body says. Without one, the template's first EVENT_TOKENS tokens: log formats put the event first and
# the variable details (ids, lists, payloads) after it.
_EVENT_LOCATION = re.compile(r"^(.*?[a-z_$\]]#\d{1,5})(?=\s|$)")
EVENT_TOKENS = 10
ERROR_KEYWORDS = re.compile(r"error|fail|exception|timeout|refused")
ERROR_LEVELS = ("ERROR", "FATAL")


def event_key(template: str) -> str:
    """The log event a template belongs to: what a statement logs, without its variable tail."""
    found = _EVENT_LOCATION.match(template)
    if found:
        return found.group(1)
    return " ".join(template.split()[:EVENT_TOKENS])


def is_error_line(template: str, level: str) -> bool:
    """An ERROR/FATAL line, or one naming an error (SimpleRCA's keywords: error, fail, exception, timeout,
    refused)."""
    return level in ERROR_LEVELS or bool(ERROR_KEYWORDS.search(template))

