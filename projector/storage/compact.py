"""The log's stored forms: a row's logical values in fewer bytes, and back, exactly (pure).

The hash chain, `StoredRow` and everything above the adapters see the logical values: hex
digests, the headers' sorted JSON text, ISO 8601 instants. The adapters store each in a
compact form only when it converts back to exactly the same value, and the value as it is
otherwise, so every row reads back byte for byte whatever it holds.
"""

from __future__ import annotations

import calendar
import functools
import json
import re
import time

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def compact_hex(value: str) -> bytes | str:
    """A lowercase SHA-256 hex digest as its 32 bytes; any other text as it is."""
    return bytes.fromhex(value) if _HEX_DIGEST.fullmatch(value) else value


def hex_of(stored: bytes | memoryview | str) -> str:
    """The logical text of a `compact_hex` value."""
    return stored if isinstance(stored, str) else bytes(stored).hex()


# What `events.format_instant` writes: a second, then `Z` or microseconds (not all 0) and `Z`.
_SECOND = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_MICROS = re.compile(r"\.[0-9]{6}Z")


# Cached: deliveries arriving together, and rows read in seq order, mostly share a second.
@functools.lru_cache(maxsize=1024)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@functools.lru_cache(maxsize=1024)
def _seconds_of(text: str) -> int | None:
    """Seconds since 1970 of a `_SECOND` text that reads back exactly; None otherwise."""
    if _SECOND.fullmatch(text) is None:
        return None
    fields = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19])
    try:
        seconds = calendar.timegm(tuple(map(int, fields)))
        exact = _second_text(seconds) == text  # a 31st of June or a leap second is not
    except (OverflowError, OSError, ValueError):
        return None
    return seconds if exact else None


def instant_of(stored: int | str) -> str:
    """The logical text of a `compact_instant` value, as `events.format_instant` writes it."""
    if isinstance(stored, str):
        return stored
    seconds, micros = divmod(stored, 1_000_000)
    try:
        text = _second_text(seconds)
    except (OverflowError, OSError, ValueError):  # never written so: an altered row
        return str(stored)
    return f"{text}.{micros:06d}Z" if micros else text + "Z"


def compact_instant(value: str) -> int | str:
    """`format_instant` text as microseconds since 1970; any other text as it is."""
    if len(value) == 20 and value[19] == "Z":
        micros = 0
    elif len(value) == 27 and _MICROS.fullmatch(value, 19) and value[20:26] != "000000":
        micros = int(value[20:26])
    else:
        return value
    seconds = _seconds_of(value[:19])
    return value if seconds is None else seconds * 1_000_000 + micros


# The compact headers (a BLOB): a format byte, then per header (in sorted order) its name,
# then its value. A name: a byte naming one of _NAMES (1 up), or 0 and the name's text. A
# value: 0 and its text, 1 and a hex digest's 32 bytes (the signature), or 2 up naming one
# of _VALUES. Texts are a varint length and UTF-8 (lone surrogates kept, as JSON keeps them).
# _NAMES and _VALUES are part of the format: entries may be added at the end, never changed.
HEADERS_FORMAT = 1
# The format byte of a text kept whole (PostgreSQL's bytea holds every stored form).
HEADERS_TEXT = 0
_NAMES = ("content-type", "user-agent", "x-cobalt-signature")
_VALUES = ("application/json", "application/json; charset=utf-8")
_SORTED_JSON = json.JSONEncoder(sort_keys=True)


def _text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return _varint(len(raw)) + raw


def _varint(number: int) -> bytes:
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_NAME_CODES = {name: bytes((code,)) for code, name in enumerate(_NAMES, 1)}
_VALUE_CODES = {value: bytes((code,)) for code, value in enumerate(_VALUES, 2)}


def _encode(headers: dict[str, str]) -> bytes:
    out = [bytes((HEADERS_FORMAT,))]
    for name in sorted(headers):
        value = headers[name]
        out.append(_NAME_CODES.get(name) or b"\0" + _text(name))
        code = _VALUE_CODES.get(value)
        if code is not None:
            out.append(code)
        elif len(value) == 64 and _HEX_DIGEST.fullmatch(value):
            out.append(b"\1" + bytes.fromhex(value))
        else:
            out.append(b"\0" + _text(value))
    return b"".join(out)


class _Reader:
    def __init__(self, raw: bytes) -> None:
        self.raw, self.at = raw, 1

    def byte(self) -> int:
        self.at += 1
        return self.raw[self.at - 1]

    def take(self, count: int) -> bytes:
        part = self.raw[self.at : self.at + count]
        if len(part) != count:
            raise ValueError("compact headers end early")
        self.at += count
        return part

    def text(self) -> str:
        length, shift = 0, 0
        while (byte := self.byte()) & 0x80:
            length |= (byte & 0x7F) << shift
            shift += 7
        return self.take(length | byte << shift).decode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> dict[str, str]:
    reader, headers = _Reader(raw), {}
    while reader.at < len(raw):
        code = reader.byte()
        name = _NAMES[code - 1] if code else reader.text()
        code = reader.byte()
        if code == 0:
            headers[name] = reader.text()
        elif code == 1:
            headers[name] = reader.take(32).hex()
        else:
            headers[name] = _VALUES[code - 2]
    return headers


def compact_headers_of(headers: dict[str, str]) -> bytes:
    """The compact form of a delivery's kept headers (whose logical text is their sorted JSON).

    Exact for every dict of str to str: its decoding is the same dict, so the same text.
    """
    return _encode(headers)


def compact_headers(text: str) -> bytes | str:
    """Logical headers text in compact form if it decodes back to exactly `text`; else `text`."""
    try:
        headers = json.loads(text)
    except ValueError:
        return text
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return text
    compact = _encode(headers)
    return compact if headers_of(compact) == text else text


def headers_of(stored: bytes | memoryview | str) -> str:
    """The logical headers text of any stored form."""
    if isinstance(stored, str):
        return stored
    raw = bytes(stored)
    try:
        if raw[:1] == bytes((HEADERS_TEXT,)):
            return raw[1:].decode("utf-8", "surrogatepass")
        if raw[:1] == bytes((HEADERS_FORMAT,)):
            return _SORTED_JSON.encode(_decode(raw))
    except (ValueError, IndexError):
        pass
    # Never written so: an altered row. Its text differs from any headers', so its hash breaks.
    return f"undecodable stored headers: {raw.hex()}"


def headers_as_bytes(stored: bytes | str) -> bytes:
    """A stored headers form as bytes (PostgreSQL's bytea): text kept whole gets its own tag."""
    if isinstance(stored, bytes):
        return stored
    return bytes((HEADERS_TEXT,)) + stored.encode("utf-8", "surrogatepass")
