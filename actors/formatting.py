"""How one stream event becomes one websocket text frame (SPEC section 4).

Pure functions, no I/O: :func:`format_event` decides what a body becomes,
:class:`EventClock` computes the ``ess_timestamp`` of one connection.

Decisions the SPEC leaves open, made here:

- "Starting with ``{``" means the very first byte is ``{``: a body with
  leading whitespace before ``{`` is *not* a JSON body and is forwarded as
  text with the ``|ordinal: N|timestamp: T`` suffix.
- If a JSON object already has an ``ess_ordinal`` or ``ess_timestamp`` key,
  the service's values replace them (the client can rely on them).
- JSON is re-serialised compactly (``,`` and ``:`` separators), with
  non-ASCII characters kept as they are. ``NaN``, ``Infinity`` and numbers
  too large for a finite float are not JSON (RFC 8259): such a body is
  skipped. A lone surrogate escape (``"\\ud800"``) cannot be sent as UTF-8,
  so such an object is re-serialised with ASCII escapes instead.
- Only the exact body ``POISON`` (no whitespace, no newline) is poison.

A JSON body is read and written by orjson where it gives the values the
standard library gives (3-8 us less per event, a tenth of the service's CPU
for a replayed event; bench/README.md). Its text differs only in how a float
may be written (``0.00006103515625`` for ``6.103515625e-05``: the same
double, each the shortest that reads back exactly). orjson reads integers
beyond 64 bits as floats, and writes those (as every float from 1e16 up)
with an exponent: an output with ``e+`` anywhere in it is made again by the
standard library, as is anything orjson refuses to read or write (it is
stricter, never more lenient: the standard library then decides, by the
rules above).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Final

import orjson

#: The body that closes a connection normally.
POISON_BODY: Final = b"POISON"


@dataclass(frozen=True, slots=True)
class Text:
    """Send this text frame."""

    text: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Do not send anything; log ``reason`` with the ordinal. The cursor still advances."""

    reason: str


@dataclass(frozen=True, slots=True)
class Poison:
    """Close the connection normally (1000)."""


Formatted = Text | Skip | Poison

_POISON: Final = Poison()
_NOT_UTF8: Final = Skip("body is not valid UTF-8")
_NOT_OBJECT: Final = Skip("body starts with '{' but is not a JSON object")
_INVALID_JSON: Final = Skip("body starts with '{' but is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant)
_SEPARATORS: Final = (",", ":")
#: Built once: ``json.dumps`` with any option builds a new encoder per call,
#: and every live event is encoded (same options, same output).
_ENCODE: Final = json.JSONEncoder(ensure_ascii=False, separators=_SEPARATORS).encode
_ENCODE_ASCII: Final = json.JSONEncoder(ensure_ascii=True, separators=_SEPARATORS).encode


@functools.lru_cache(maxsize=16)
def format_event(body: bytes, ordinal: int, timestamp_ms: int) -> Formatted:
    """What to do with one event body at ``ordinal`` stamped ``timestamp_ms``.

    Remembered for the last few calls: every member of a stream's live-tail
    hub formats the same event at the same ordinal and, as a rule, the same
    stamp, so the first pays for the JSON and the others get the very same
    :class:`Text` (whose frame the websocket layer then encodes once too).
    """
    if body == POISON_BODY:
        return _POISON
    if body[:1] == b"{" and (fast := _orjson_text(body, ordinal, timestamp_ms)) is not None:
        return Text(fast)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _NOT_UTF8
    if not text.startswith("{"):
        return Text(f"{text}|ordinal: {ordinal}|timestamp: {timestamp_ms}")
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return _INVALID_JSON
    if not isinstance(value, dict):  # pragma: no cover - a '{' document is an object
        return _NOT_OBJECT
    value["ess_ordinal"] = ordinal
    value["ess_timestamp"] = timestamp_ms
    out = _ENCODE(value)
    if "\\u" in text and not _encodable(out):
        # A "\udXXX" escape decoded to a lone surrogate: keep it escaped.
        out = _ENCODE_ASCII(value)
    return Text(out)


def _orjson_text(body: bytes, ordinal: int, timestamp_ms: int) -> str | None:
    """The object in ``body`` with the two keys, by orjson; ``None``: the standard library
    decides (see the module docstring)."""
    try:
        value = orjson.loads(body)
        if type(value) is not dict:
            return None
        value["ess_ordinal"] = ordinal
        value["ess_timestamp"] = timestamp_ms
        encoded = orjson.dumps(value)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None  # not what orjson reads, or nested deeper than it writes (254 levels)
    if b"e+" in encoded:
        return None  # perhaps an integer beyond 64 bits that orjson read as a float
    return encoded.decode()


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def ess_timestamp(own_ms: int | None, received_ms: int, previous_ms: int | None) -> int:
    """The ``ess_timestamp`` of an event (SPEC section 4).

    The event's own time if it has one, else the time the service received
    it; never lower than the previous one sent on the same connection.
    """
    candidate = own_ms if own_ms is not None else received_ms
    if previous_ms is not None and previous_ms > candidate:
        return previous_ms
    return candidate


class EventClock:
    """The non-decreasing ``ess_timestamp`` sequence of one connection."""

    __slots__ = ("last_ms",)

    def __init__(self) -> None:
        self.last_ms: int | None = None

    def peek(self, own_ms: int | None, received_ms: int) -> int:
        """The timestamp the next event would carry (does not advance)."""
        return ess_timestamp(own_ms, received_ms, self.last_ms)

    def commit(self, sent_ms: int) -> None:
        """Record the timestamp of an event actually sent."""
        if self.last_ms is None or sent_ms > self.last_ms:
            self.last_ms = sent_ms
