"""Per-message containment against the real RabbitMQ: hand-built content headers.

A raw publisher (:mod:`tests.support.raw_amqp`: its own socket, frames built
by hand, nothing of ``amqp/``) puts property bytes a
strict decoder rejects between ordinary messages on a stream. The consumer's
connection must survive, every message must arrive in order with its
``x-stream-offset`` recovered, and the odd one must carry a
``properties_error`` instead of costing the connection.

Found here (RabbitMQ 3.10): the broker delivers a stream message's headers
sorted by name, ``x-stream-offset`` in its sorted place; it refuses an unknown
field tag itself (541 on the publisher's connection), and it drops a header
nested 40 deep.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import trio

import amqp
from tests.support.raw_amqp import RawPublisher, longstr, shortstr

from .conftest import AMQP_URL

QueueNames = Callable[..., str]


def long_string(raw: bytes) -> bytes:
    return b"S" + longstr(raw)


def table_of(fields: bytes) -> bytes:
    return longstr(fields)


def nested_tables(depth: int) -> bytes:
    value = b"F" + table_of(b"")
    for _ in range(depth):
        value = b"F" + table_of(shortstr(b"n") + value)
    return value


YEAR_10000 = 253402300800 + 86400

#: (description, property payload: flags + list) of the odd messages.
ODD_HEADERS = [
    ("header name not UTF-8", b"\x20\x00" + table_of(shortstr(b"a\xff") + long_string(b"v"))),
    ("string value not UTF-8", b"\x20\x00" + table_of(shortstr(b"k") + long_string(b"\xc3\x28"))),
    (
        "T header beyond year 9999",
        b"\x20\x00" + table_of(shortstr(b"late") + b"T" + struct.pack(">Q", YEAR_10000)),
    ),
    ("timestamp property beyond year 9999", b"\x00\x40" + struct.pack(">Q", YEAR_10000)),
    ("tables nested 40 deep", b"\x20\x00" + table_of(shortstr(b"deep") + nested_tables(40))),
]


async def test_odd_property_bytes_cost_only_their_message(queue_names: QueueNames) -> None:
    queue = queue_names()
    async with amqp.connect(AMQP_URL) as connection:
        async with connection.channel() as channel:
            await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
        with trio.fail_after(30):
            raw = await RawPublisher.connect(AMQP_URL)
            try:
                assert await raw.publish(queue, b"first")
                for description, payload in ODD_HEADERS:
                    assert await raw.publish(queue, description.encode(), payload)
                    assert await raw.publish(queue, b"neighbour")
            finally:
                await raw.aclose()
        expected = 1 + 2 * len(ODD_HEADERS)
        async with connection.channel() as channel:
            await channel.basic_qos(100)
            async with channel.basic_consume(
                queue, arguments={"x-stream-offset": "first"}
            ) as consumer:
                messages = []
                with trio.fail_after(30):
                    async for message in consumer:
                        messages.append(message)
                        if len(messages) == expected:
                            break
        assert [m.headers.get("x-stream-offset") for m in messages] == list(range(expected))
        assert [m.body for m in messages] == [b"first"] + [
            body for description, _ in ODD_HEADERS for body in (description.encode(), b"neighbour")
        ]
        odd = {m.body.decode(): m for m in messages[1::2]}
        assert odd["header name not UTF-8"].headers[b"a\xff"] == "v"
        assert odd["string value not UTF-8"].headers["k"] == b"\xc3\x28"
        assert odd["T header beyond year 9999"].headers["late"] == YEAR_10000
        late_property = odd["timestamp property beyond year 9999"].properties
        assert (late_property.timestamp, late_property.timestamp_datetime) == (YEAR_10000, None)
        flagged = ["header name not UTF-8", "string value not UTF-8", "T header beyond year 9999"]
        assert all(odd[description].properties_error for description in flagged)
        assert all(m.properties_error is None for m in messages[::2])
        assert not connection.is_closed
