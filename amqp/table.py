"""Lenient, bounded decoding of content-header properties and field tables.

Whatever a publisher puts in a message's properties reaches every consumer of
its queue, so decoding them must affect that message alone: a field that
cannot be decoded is marked, never raised, and never costs the connection
(RabbitMQ passes most header bytes through; a strict decoder would kill the
connection on them, and a consumer that resubscribes would read the same
message again, forever). The rules, each with the reason it is safe:

- A field name or a long-string value that is not UTF-8 is kept as
  ``bytes``: no caller can mistake it for a name or text it expects.
- A timestamp (``T``) is an aware UTC :class:`datetime.datetime` when it falls
  in the years 1-9999, otherwise the raw integer seconds from the wire (a
  ``datetime`` cannot hold it; the integer loses nothing). The ``timestamp``
  property is always the raw integer (see :class:`~amqp.message.Properties`).
- Tables and arrays nested deeper than :data:`MAX_DEPTH` become an
  :class:`Unusable` value; their byte length lets the decoder skip them and
  decode the rest of the enclosing table, without recursion errors.
- An unknown field type, or a value that overruns its table, makes that
  value :class:`Unusable` and the rest of its table or array unusable (its
  byte length is unknown), but the enclosing table's length still frames it,
  so decoding resumes after it.
- A property list that does not fit its frame keeps the properties decoded
  before the break; everything from the break on is absent.

Every such problem is described in the returned error text (the frame
decoder puts it on :attr:`DeliveredMessage.properties_error
<amqp.message.DeliveredMessage.properties_error>` for the caller to log).
Nothing here raises while the frame boundaries are intact: the frame decoder
hands over exactly one content-header payload.

RabbitMQ (3.10) delivers a stream message's headers sorted by name, with the
``x-stream-offset`` it adds in its sorted place; so that field is recovered
whenever the table can be walked up to it: after names or values that are
not UTF-8, out-of-range timestamps and over-deep nesting alike.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any, Final

from .message import EMPTY_PROPERTIES, FieldTable, Properties

#: Tables and arrays nested deeper than this are not decoded (RabbitMQ's own
#: arguments never go past two or three levels).
MAX_DEPTH: Final = 32
#: Largest ``T`` value a :class:`datetime.datetime` holds (9999-12-31T23:59:59Z).
MAX_DATETIME_SECONDS: Final = 253402300799

_LONG = struct.Struct(">I")
_LONGLONG = struct.Struct(">Q")
_SHORT = struct.Struct(">H")
_unpack_long = _LONG.unpack_from
_unpack_longlong = _LONGLONG.unpack_from
_unpack_short = _SHORT.unpack_from
_DECIMAL = struct.Struct(">BI")

#: Fixed-size numbers: tag -> (unpack, size). ``L`` is what pamqp reads too.
_FIXED: Final = {
    ord("b"): (struct.Struct(">b").unpack_from, 1),
    ord("B"): (struct.Struct(">B").unpack_from, 1),
    ord("s"): (struct.Struct(">h").unpack_from, 2),
    ord("u"): (struct.Struct(">H").unpack_from, 2),
    ord("I"): (struct.Struct(">i").unpack_from, 4),
    ord("i"): (struct.Struct(">I").unpack_from, 4),
    ord("l"): (struct.Struct(">q").unpack_from, 8),
    ord("L"): (struct.Struct(">q").unpack_from, 8),
    ord("f"): (struct.Struct(">f").unpack_from, 4),
    ord("d"): (struct.Struct(">d").unpack_from, 8),
}
_S: Final = ord("S")
_BOOL: Final = ord("t")
_TABLE: Final = ord("F")
_ARRAY: Final = ord("A")
_TIMESTAMP: Final = ord("T")
_DECIMAL_TAG: Final = ord("D")
_BYTES: Final = ord("x")
_VOID: Final = frozenset((ord("V"), 0))
_LENGTH_PREFIXED: Final = frozenset((_S, _BYTES, _TABLE, _ARRAY))


class Unusable:
    """A field value that could not be decoded; callers treat the field as absent."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Unusable: {self.reason}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unusable) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(self.reason)


def timestamp_value(seconds: int) -> datetime.datetime | int:
    """An AMQP timestamp as an aware UTC datetime, or the raw seconds if out of range."""
    if seconds <= MAX_DATETIME_SECONDS:
        try:
            return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
        except (OverflowError, OSError, ValueError):
            pass
    return seconds


def _value(data: bytes, offset: int, end: int, depth: int, problems: list[str]) -> tuple[Any, int]:
    """One tagged value in ``data[offset:end]``: the value and the offset after it.

    When the value's length cannot be known (unknown tag, overrun), it is
    :class:`Unusable` and the offset returned is ``end``: the rest of the
    enclosing table or array is skipped.
    """
    kind = data[offset]
    offset += 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        unpack, size = fixed
        if offset + size > end:
            return _overrun(problems, end)
        return unpack(data, offset)[0], offset + size
    if kind in _LENGTH_PREFIXED:
        if offset + 4 > end:
            return _overrun(problems, end)
        (length,) = _unpack_long(data, offset)
        offset += 4
        value_end = offset + length
        if value_end > end:
            return _overrun(problems, end)
        if kind == _S:
            raw = data[offset:value_end]
            try:
                return raw.decode("utf-8"), value_end
            except UnicodeDecodeError:
                problems.append("a string value is not UTF-8 (kept as bytes)")
                return raw, value_end
        if kind == _BYTES:
            return data[offset:value_end], value_end
        if depth >= MAX_DEPTH:
            problems.append(f"a value is nested deeper than {MAX_DEPTH} (unusable)")
            return Unusable(f"nested deeper than {MAX_DEPTH}"), value_end
        if kind == _TABLE:
            return _table(data, offset, value_end, depth + 1, problems), value_end
        return _array(data, offset, value_end, depth + 1, problems), value_end
    if kind == _BOOL:
        if offset + 1 > end:
            return _overrun(problems, end)
        return data[offset] != 0, offset + 1
    if kind in _VOID:
        return None, offset
    if kind == _TIMESTAMP:
        if offset + 8 > end:
            return _overrun(problems, end)
        value = timestamp_value(_unpack_longlong(data, offset)[0])
        if type(value) is int:
            problems.append("a timestamp is beyond year 9999 (kept as integer seconds)")
        return value, offset + 8
    if kind == _DECIMAL_TAG:
        if offset + 5 > end:
            return _overrun(problems, end)
        places, raw = _DECIMAL.unpack_from(data, offset)
        return decimal.Decimal(raw).scaleb(-places), offset + 5
    problems.append(f"unknown field type {chr(kind)!r} (the rest of its table is unusable)")
    return Unusable(f"unknown field type {chr(kind)!r}"), end


def _overrun(problems: list[str], end: int) -> tuple[Unusable, int]:
    problems.append("a value overruns its table (the rest of the table is unusable)")
    return Unusable("overruns its table"), end


def _table(data: bytes, offset: int, end: int, depth: int, problems: list[str]) -> FieldTable:
    result: FieldTable = {}
    while offset < end:
        name_end = offset + 1 + data[offset]
        if name_end >= end:  # no room for the name and a type tag
            problems.append("a field name overruns its table (the rest is unusable)")
            break
        raw = data[offset + 1 : name_end]
        name: str | bytes
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append("a field name is not UTF-8 (kept as bytes)")
            name = raw
        result[name], offset = _value(data, name_end, end, depth, problems)
    return result


def _array(data: bytes, offset: int, end: int, depth: int, problems: list[str]) -> list[Any]:
    items = []
    while offset < end:
        item, offset = _value(data, offset, end, depth, problems)
        items.append(item)
    return items


def decode_table(
    data: bytes, offset: int, end: int, problems: list[str] | None = None
) -> FieldTable:
    """The field table in ``data[offset:end]`` (without its length prefix); never raises.

    ``end`` must not lie beyond ``data``. Problems met are appended to
    ``problems`` if given.
    """
    return _table(data, offset, end, 0, [] if problems is None else problems)


def _describe(problems: list[str]) -> str | None:
    if not problems:
        return None
    first = list(dict.fromkeys(problems))  # each kind once, in order
    return "; ".join(first[:3]) + (f" (+{len(first) - 3} more)" if len(first) > 3 else "")


class _Overrun(Exception):
    """A property runs past the end of the content header."""


def _shortstr(payload: bytes, offset: int, problems: list[str]) -> tuple[str | None, int]:
    end = offset + 1 + payload[offset]
    if end > len(payload):
        raise _Overrun
    try:
        return payload[offset + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError:
        problems.append("a string property is not UTF-8 (absent)")
        return None, end


#: Flag bits of the consecutive short-string properties correlation_id,
#: reply_to, expiration, message_id; and of type, user_id, app_id, cluster_id.
_ID_BITS: Final = (0x0400, 0x0200, 0x0100, 0x0080)
_ORIGIN_BITS: Final = (0x0020, 0x0010, 0x0008, 0x0004)


def _shortstrs(
    payload: bytes, offset: int, flags: int, bits: tuple[int, ...], problems: list[str]
) -> tuple[list[str | None], int]:
    """A run of short-string properties: each one present if its flag bit is set."""
    values: list[str | None] = []
    for bit in bits:
        value = None
        if flags & bit:
            value, offset = _shortstr(payload, offset, problems)
        values.append(value)
    return values, offset


def decode_properties(payload: bytes) -> tuple[Properties, str | None]:
    """The property flags and list of a content header (``payload``); never raises.

    Returns the properties and a description of what could not be decoded
    (``None`` when everything could). This runs once per delivered message,
    hence straight flag tests (the runs of short strings in one helper) rather
    than a loop over a layout.
    """
    size = len(payload)
    if size < 2:
        return EMPTY_PROPERTIES, "the content header has no property flags"
    (flags,) = _unpack_short(payload, 0)
    offset = 2
    extra = flags
    problems: list[str] = []
    content_type = content_encoding = correlation_id = reply_to = None
    expiration = message_id = type_ = user_id = app_id = None
    headers = None
    delivery_mode = priority = timestamp = None
    try:
        while extra & 1:  # continuation flag words (none are defined in 0-9-1)
            (extra,) = _unpack_short(payload, offset)
            offset += 2
        if not flags & 0xFFFE:
            return EMPTY_PROPERTIES, None
        if flags & 0x8000:
            content_type, offset = _shortstr(payload, offset, problems)
        if flags & 0x4000:
            content_encoding, offset = _shortstr(payload, offset, problems)
        if flags & 0x2000:
            (length,) = _unpack_long(payload, offset)
            offset += 4
            table_end = offset + length
            if table_end > size:
                raise _Overrun
            headers = _table(payload, offset, table_end, 0, problems)
            offset = table_end
        if flags & 0x1000:
            delivery_mode = payload[offset]
            offset += 1
        if flags & 0x0800:
            priority = payload[offset]
            offset += 1
        if flags & 0x0780:
            (correlation_id, reply_to, expiration, message_id), offset = _shortstrs(
                payload, offset, flags, _ID_BITS, problems
            )
        if flags & 0x0040:
            (timestamp,) = _unpack_longlong(payload, offset)
            offset += 8
        if flags & 0x003C:  # the last is cluster-id, deprecated: dropped
            (type_, user_id, app_id, _), offset = _shortstrs(
                payload, offset, flags, _ORIGIN_BITS, problems
            )
        if flags & 0x0002:
            problems.append("an undefined property flag is set (ignored)")
    except (_Overrun, IndexError, struct.error):
        problems.append("the property list overruns the content header (the rest is absent)")
    return Properties(
        content_type,
        content_encoding,
        headers,
        delivery_mode,
        priority,
        correlation_id,
        reply_to,
        expiration,
        message_id,
        timestamp,
        type_,
        user_id,
        app_id,
    ), _describe(problems)
