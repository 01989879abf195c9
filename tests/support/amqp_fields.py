"""Encoders for AMQP 0-9-1 field tables and basic properties, permissive on purpose.

Names are bytes (need not be UTF-8), tags are any byte (need not exist),
values are whatever the test says, so that a test can build exactly the
content header a hostile publisher could send. See :mod:`tests.support.raw_amqp`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .raw_amqp import longstr, shortstr

#: 9999-12-31T23:59:59Z, the last second ``datetime`` can represent.
LAST_SECOND_OF_9999 = 253402300799


def field(name: bytes, tag: bytes, value: bytes) -> bytes:
    """One table entry: ``name`` (short string), a one-byte ``tag``, the encoded value."""
    assert len(tag) == 1
    return shortstr(name) + tag + value


def table(*fields: bytes) -> bytes:
    """A field table: its byte length, then the entries as given."""
    return longstr(b"".join(fields))


def text(value: bytes) -> bytes:
    return field_value(b"S", longstr(value))


def field_value(tag: bytes, value: bytes) -> bytes:
    """A tagged value, as used inside arrays (``A``)."""
    return tag + value


def int64(value: int) -> bytes:
    return struct.pack(">q", value)


def uint64(value: int) -> bytes:
    return struct.pack(">Q", value)


def double(value: float) -> bytes:
    return struct.pack(">d", value)


def nested_tables(depth: int, leaf: bytes = b"") -> bytes:
    """A table holding a table holding ... ``depth`` levels, ``leaf`` entries innermost."""
    inner = table(leaf) if leaf else table()
    for _ in range(depth - 1):
        inner = table(field(b"n", b"F", inner))
    return inner


# Basic property flags (AMQP 0-9-1, class basic), highest bit first.
CONTENT_TYPE = 1 << 15
HEADERS = 1 << 13
DELIVERY_MODE = 1 << 12
TIMESTAMP = 1 << 6


@dataclass(frozen=True)
class RawProperties:
    """A content header's property list; every present field is raw, pre-encoded bytes.

    ``headers`` is an encoded table (see :func:`table`); ``timestamp`` is the
    64-bit value of the ``timestamp`` property (seconds; any value fits).
    """

    content_type: bytes | None = None
    headers: bytes | None = None
    delivery_mode: int | None = None
    timestamp: int | None = None

    def encode(self) -> bytes:
        flags = 0
        payload = b""
        if self.content_type is not None:
            flags |= CONTENT_TYPE
            payload += shortstr(self.content_type)
        if self.headers is not None:
            flags |= HEADERS
            payload += self.headers
        if self.delivery_mode is not None:
            flags |= DELIVERY_MODE
            payload += bytes([self.delivery_mode])
        if self.timestamp is not None:
            flags |= TIMESTAMP
            payload += uint64(self.timestamp)
        return struct.pack(">H", flags) + payload


def timestamp_in_ms(value_ms: int) -> bytes:
    """The ``timestamp_in_ms`` header as the Account Server sends it (a signed 64-bit long)."""
    return field(b"timestamp_in_ms", b"l", int64(value_ms))
