"""Per-consumer flow control: the reader never waits for one consumer.

A consumer's buffer is bounded in bytes (body plus a fixed overhead per
message); a delivery past the bound gives that consumer up (basic.cancel sent
without waiting, later deliveries dropped) while every other channel of the
connection keeps being served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

import amqp
from amqp.consumer import MESSAGE_OVERHEAD

from .test_amqp_fake_broker import FakeBroker, fake_connection


def delivery(channel: int, consumer_tag: str, tag: int, body: bytes) -> bytes:
    frames = [
        pframe.marshal(
            commands.Basic.Deliver(
                consumer_tag=consumer_tag, delivery_tag=tag, exchange="", routing_key="q"
            ),
            channel,
        ),
        pframe.marshal(
            pheader.ContentHeader(0, len(body), commands.Basic.Properties(headers={"n": tag})),
            channel,
        ),
    ]
    if body:
        frames.append(pframe.marshal(pbody.ContentBody(body), channel))
    return b"".join(frames)


class Broker:
    """Answers consume, cancel and declare; records what it received per channel."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.cancels: list[tuple[int, str]] = []
        self.cancelled = trio.Event()

    async def on_frame(self, channel: int, frame: Any) -> None:
        if isinstance(frame, commands.Basic.Consume):
            await self.broker.send(commands.Basic.ConsumeOk(frame.consumer_tag), channel)
        elif isinstance(frame, commands.Basic.Cancel):
            self.cancels.append((channel, frame.consumer_tag))
            self.cancelled.set()
            await self.broker.send(commands.Basic.CancelOk(frame.consumer_tag), channel)
        elif isinstance(frame, commands.Queue.Declare):
            await self.broker.send(commands.Queue.DeclareOk(frame.queue, 0, 0), channel)
        elif isinstance(frame, commands.Channel.Close):
            await self.broker.send(commands.Channel.CloseOk(), channel)


@asynccontextmanager
async def served() -> AsyncIterator[tuple[amqp.Connection, FakeBroker, Broker]]:
    """A connection to the fake broker, which answers until the connection closed."""
    async with fake_connection() as (connection, fake), trio.open_nursery() as nursery:
        broker = Broker(fake)
        nursery.start_soon(fake.serve_until_eof, broker.on_frame)
        yield connection, fake, broker
        await connection.close()  # while the broker still answers close-ok
        nursery.cancel_scope.cancel()


async def test_overflow_gives_the_consumer_up_and_the_connection_goes_on() -> None:
    body = b"x" * 300
    bound = 3 * (len(body) + MESSAGE_OVERHEAD)
    async with served() as (connection, fake, broker):
        slow_channel = await connection.channel()
        other_channel = await connection.channel()
        async with (
            slow_channel.basic_consume("slow", max_buffer_bytes=bound) as slow,
            other_channel.basic_consume("other") as other,
        ):
            # A whole "chunk" for the slow consumer, then one for the other
            # consumer, in one burst: the reader must get past the first.
            burst = b"".join(delivery(1, slow.consumer_tag, n, body) for n in range(1, 101))
            burst += delivery(2, other.consumer_tag, 1, b"neighbour")
            await fake.stream.send_all(burst)
            with trio.fail_after(5):
                neighbour = await other.__anext__()
                declared = await other_channel.queue_declare("rpc")
                await broker.cancelled.wait()
                await slow.wait_ended()
            assert neighbour.body == b"neighbour"
            assert declared.queue == "rpc"
            assert broker.cancels == [(1, slow.consumer_tag)]  # sent once, not waited for
            assert slow.buffered == 3  # every later delivery was dropped
            assert slow.buffered_bytes == bound
            got = []
            with pytest.raises(amqp.ConsumerOverflow):
                async for message in slow:
                    got.append(message.delivery_tag)
            assert got == [1, 2, 3]
            assert (slow.buffered, slow.buffered_bytes) == (0, 0)
            assert not connection.is_closed and not slow_channel.is_closed


async def test_buffered_bytes_count_bodies_plus_overhead_and_an_empty_buffer_takes_any_one() -> (
    None
):
    async with served() as (connection, fake, broker):
        channel = await connection.channel()
        async with channel.basic_consume("q", max_buffer_bytes=100) as consumer:
            # Larger than the bound, but the buffer is empty: accepted.
            await fake.stream.send_all(delivery(1, consumer.consumer_tag, 1, b"b" * 5000))
            with trio.fail_after(5):
                first = await consumer.__anext__()
            assert len(first.body) == 5000
            assert consumer.buffered_bytes == 0
            await fake.stream.send_all(
                delivery(1, consumer.consumer_tag, 2, b"")
                + delivery(1, consumer.consumer_tag, 3, b"")
            )
            with trio.fail_after(5):
                await consumer.wait_ended()
            assert consumer.buffered == 1
            assert consumer.buffered_bytes == MESSAGE_OVERHEAD  # an empty body still counts
            assert [m.delivery_tag async for m in _until_overflow(consumer)] == [2]
            assert broker.cancels == [(1, consumer.consumer_tag)]
            assert not connection.is_closed


async def _until_overflow(consumer: amqp.Consumer) -> Any:
    with pytest.raises(amqp.ConsumerOverflow):
        async for message in consumer:
            yield message


async def test_a_consumer_that_keeps_up_never_overflows() -> None:
    body = b"y" * 200
    bound = 2 * (len(body) + MESSAGE_OVERHEAD)
    async with served() as (connection, fake, broker):
        channel = await connection.channel()
        async with channel.basic_consume("q", max_buffer_bytes=bound) as consumer:
            for n in range(1, 51):
                await fake.stream.send_all(delivery(1, consumer.consumer_tag, n, body))
                with trio.fail_after(5):
                    message = await consumer.__anext__()
                assert message.delivery_tag == n
            assert consumer.active and not broker.cancels


def test_max_buffer_bytes_must_be_positive() -> None:
    class NoChannel:
        number = 1

    with pytest.raises(ValueError, match="max_buffer_bytes"):
        amqp.Consumer(NoChannel(), "q", max_buffer_bytes=0)  # type: ignore[arg-type]
