"""Reference re-implementation of the OLD prototype log cleaner (tests only).

It exists so tests can check that `lemzha.logs.clean` absorbs text that the old
cleaner produced. Do not use it in product code and do not "fix" it: its quirks
(v dropped from versions, ports and decimals kept, span ids and clock times left
alone) are what the old training data contains.
"""

from __future__ import annotations

import math
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?Z?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"\b[a-fA-F0-9]{24,}\b")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?::\d{2,5})?")
POD_SUFFIX = re.compile(r"(?<=[a-zA-Z0-9])-[a-z0-9]{6,12}-[a-z0-9]{4,6}\b")
_URL_ID = re.compile(r'(?<=/)\d{4,}(?=/|$|\s|")')
_PORT_KEYWORD = re.compile(
    r"(port|listen(?:ing)?(?:\s+on)?|bind(?:ing)?(?:\s+to)?|socket)[:\s]+(\d{2,5})", re.IGNORECASE
)
_WELL_KNOWN_PORTS = (
    "80|443|8080|8443|3000|3306|5432|5631|5672|5900|6379|7001|7070|8081|9000|9001|9090|9200|9300|9411|9999"
)
_COLON_PORT = re.compile(rf":({_WELL_KNOWN_PORTS})\b")
_HTTP_CODE = re.compile(r"(https?|status|code)[:\s]*([1-5]\d{2})\b", re.IGNORECASE)
_VERSION = re.compile(r"\bv?(\d+(?:\.\d+){1,3})\b")
_LONG_NUMBER = re.compile(r"\b\d{4,}\b")
_MARKER = re.compile(r"__(?:PRT|HTTP|VER)_([\d.]+)__")
_WHITESPACE = re.compile(r"\s+")


def legacy_clean(text: str) -> str:
    """Clean one message exactly as the old prototype did."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = str(text)
    text = _ANSI.sub("", text)
    text = _DATETIME.sub("<TS>", text)
    text = _UUID.sub("<UUID>", text)
    text = _HEX.sub("<HEX>", text)
    text = _IPV4.sub("<HOST>", text)
    text = POD_SUFFIX.sub("-<RAND>", text)
    text = _URL_ID.sub(":id", text)
    # Markers use "_" (a word character) so the \b-anchored rules below skip them.
    text = _PORT_KEYWORD.sub(lambda m: f"{m.group(1)} __PRT_{m.group(2)}__", text)
    text = _COLON_PORT.sub(lambda m: f":__PRT_{m.group(1)}__", text)
    text = _HTTP_CODE.sub(lambda m: f"{m.group(1)} __HTTP_{m.group(2)}__", text)
    text = _VERSION.sub(lambda m: f"__VER_{m.group(1)}__", text)
    text = _LONG_NUMBER.sub("<NUM>", text)
    text = _MARKER.sub(r"\1", text)
    text = text.lower()
    return _WHITESPACE.sub(" ", text).strip()
