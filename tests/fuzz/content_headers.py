"""Hypothesis strategies for hostile AMQP content headers (basic properties, raw bytes).

What a publisher can put in a message's properties and header table, as
bytes on the wire: header names that are not UTF-8, every field tag
RabbitMQ knows and tags it does not, timestamps up to 2**64 - 1 (year 9999
ends at :data:`~tests.support.amqp_fields.LAST_SECOND_OF_9999`), the
``timestamp_in_ms`` header with any tag and value, tables nested thousands
deep. RabbitMQ itself refuses some of these (it closes the publisher's
connection): the tests count those as "not stored".
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from tests.support.amqp_fields import (
    LAST_SECOND_OF_9999,
    RawProperties,
    field,
    nested_tables,
    table,
    uint64,
)
from tests.support.raw_amqp import longstr, shortstr

#: Field tags RabbitMQ 3.x decodes (AMQP 0-9-1 errata); any other byte is unknown to it.
KNOWN_TAGS = b"tbBsuIilfdDSATFVx"
UNKNOWN_TAGS = bytes(sorted(set(range(256)) - set(KNOWN_TAGS)))
#: Well under the 128 KiB frame a content header must fit in.
MAX_DEPTH = 4000


def _packed(tag: bytes, fmt: str) -> st.SearchStrategy[bytes]:
    size = struct.calcsize(fmt) * 8
    signed = fmt[-1].islower() and fmt[-1] != "B"
    low, high = (-(2 ** (size - 1)), 2 ** (size - 1) - 1) if signed else (0, 2**size - 1)
    return st.integers(low, high).map(lambda v: tag + struct.pack(fmt, v))


names = st.one_of(
    st.binary(max_size=32),
    st.sampled_from([b"timestamp_in_ms", b"x-stream-offset", b"", b"\xff\xfe", b"\xc3("]),
    st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
)

scalars = st.one_of(
    st.binary(max_size=64).map(lambda b: b"S" + longstr(b)),
    _packed(b"l", ">q"),
    _packed(b"I", ">i"),
    _packed(b"i", ">I"),
    _packed(b"s", ">h"),
    _packed(b"u", ">H"),
    _packed(b"b", ">b"),
    _packed(b"B", ">B"),
    st.one_of(st.integers(0, 2**64 - 1), st.integers(LAST_SECOND_OF_9999 - 5, 2**40)).map(
        lambda v: b"T" + uint64(v)
    ),
    st.floats(width=64).map(lambda f: b"d" + struct.pack(">d", f)),
    st.floats(width=32).map(lambda f: b"f" + struct.pack(">f", f)),
    st.booleans().map(lambda v: b"t" + bytes([v])),
    st.just(b"V"),
    st.binary(max_size=64).map(lambda b: b"x" + longstr(b)),
    st.tuples(st.integers(0, 255), st.integers(-(2**31), 2**31 - 1)).map(
        lambda d: b"D" + struct.pack(">Bi", *d)
    ),
    st.tuples(st.sampled_from(list(UNKNOWN_TAGS)), st.binary(max_size=16)).map(
        lambda u: bytes([u[0]]) + u[1]
    ),
)


def _containers(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    entries = st.lists(st.tuples(names, inner), max_size=4)
    return st.one_of(
        entries.map(lambda fs: b"F" + table(*(shortstr(n) + v for n, v in fs))),
        st.lists(inner, max_size=4).map(lambda vs: b"A" + longstr(b"".join(vs))),
    )


#: A tagged field value: a scalar, or tables and arrays of them a few levels deep.
values = st.recursive(scalars, _containers, max_leaves=12)


@st.composite
def header_tables(draw: st.DrawFn) -> bytes:
    entries = [
        shortstr(name) + value
        for name, value in draw(st.lists(st.tuples(names, values), max_size=6))
    ]
    if draw(st.booleans()):  # the header the service reads, with any tag and value
        entries.append(shortstr(b"timestamp_in_ms") + draw(values))
    depth = draw(st.one_of(st.none(), st.integers(2, MAX_DEPTH)))
    if depth is not None:
        entries.append(field(b"deep", b"F", nested_tables(depth)))
    draw(st.randoms()).shuffle(entries)
    return table(*entries)


raw_properties = st.builds(
    RawProperties,
    content_type=st.one_of(st.none(), st.binary(max_size=40)),
    headers=st.one_of(st.none(), header_tables()),
    delivery_mode=st.one_of(st.none(), st.integers(0, 255)),
    timestamp=st.one_of(
        st.none(),
        st.integers(0, 2**64 - 1),
        st.integers(LAST_SECOND_OF_9999 - 2, LAST_SECOND_OF_9999 + 2),
    ),
)
