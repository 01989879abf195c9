"""Per-message containment against the real RabbitMQ: hand-built content headers.

A raw publisher (its own socket, frames built by hand) puts property bytes a
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
from amqp import codec
from amqp.frames import FrameDecoder
from amqp.url import parse_url

from .conftest import AMQP_URL

QueueNames = Callable[..., str]


def name(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def long_string(raw: bytes) -> bytes:
    return b"S" + struct.pack(">I", len(raw)) + raw


def table_of(fields: bytes) -> bytes:
    return struct.pack(">I", len(fields)) + fields


def nested_tables(depth: int) -> bytes:
    value = b"F" + table_of(b"")
    for _ in range(depth):
        value = b"F" + table_of(name(b"n") + value)
    return value


YEAR_10000 = 253402300800 + 86400

#: (description, property payload: flags + list) of the odd messages.
ODD_HEADERS = [
    ("header name not UTF-8", b"\x20\x00" + table_of(name(b"a\xff") + long_string(b"v"))),
    ("string value not UTF-8", b"\x20\x00" + table_of(name(b"k") + long_string(b"\xc3\x28"))),
    (
        "T header beyond year 9999",
        b"\x20\x00" + table_of(name(b"late") + b"T" + struct.pack(">Q", YEAR_10000)),
    ),
    ("timestamp property beyond year 9999", b"\x00\x40" + struct.pack(">Q", YEAR_10000)),
    ("tables nested 40 deep", b"\x20\x00" + table_of(name(b"deep") + nested_tables(40))),
]


class RawPublisher:
    """A minimal AMQP publisher over a plain socket: what a careless client can send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.pending: list[object] = []

    async def expect(self, kind: type) -> object:
        while not self.pending:
            self.pending.extend(
                event for _, event in self.decoder.feed(await self.stream.receive_some())
            )
        event = self.pending.pop(0)
        assert isinstance(event, kind), event
        return event

    async def open(self) -> None:
        from pamqp import commands

        params = parse_url(AMQP_URL)
        await self.stream.send_all(codec.PROTOCOL_HEADER)
        await self.expect(commands.Connection.Start)
        await self.stream.send_all(
            codec.connection_start_ok({"product": "raw"}, params.username, params.password)
        )
        tune = await self.expect(commands.Connection.Tune)
        await self.stream.send_all(
            codec.connection_tune_ok(tune.channel_max, tune.frame_max, 0)  # type: ignore[attr-defined]
            + codec.connection_open(params.vhost)
        )
        await self.expect(commands.Connection.OpenOk)
        await self.stream.send_all(codec.channel_open(1))
        await self.expect(commands.Channel.OpenOk)

    async def publish(self, queue: str, payload: bytes, body: bytes) -> None:
        method = codec.method_frame(
            1,
            60,
            40,
            b"\x00\x00",
            codec.shortstr(""),
            codec.shortstr(queue),
            codec.bits(False, False),
        )
        header = struct.pack(">HHQ", 60, 0, len(body)) + payload
        await self.stream.send_all(
            method
            + struct.pack(">BHI", 2, 1, len(header))
            + header
            + b"\xce"
            + struct.pack(">BHI", 3, 1, len(body))
            + body
            + b"\xce"
        )

    async def close(self) -> None:
        from pamqp import commands

        await self.stream.send_all(codec.connection_close())
        await self.expect(commands.Connection.CloseOk)


async def test_odd_property_bytes_cost_only_their_message(queue_names: QueueNames) -> None:
    queue = queue_names()
    async with amqp.connect(AMQP_URL) as connection:
        async with connection.channel() as channel:
            await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
        params = parse_url(AMQP_URL)
        with trio.fail_after(30):
            raw = RawPublisher(await trio.open_tcp_stream(params.host, params.port))
            async with raw.stream:
                await raw.open()
                await raw.publish(queue, b"\x00\x00", b"first")
                for description, payload in ODD_HEADERS:
                    await raw.publish(queue, payload, description.encode())
                    await raw.publish(queue, b"\x00\x00", b"neighbour")
                await raw.close()
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
