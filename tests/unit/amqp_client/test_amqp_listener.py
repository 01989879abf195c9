"""A consumer's listener: deliveries offered in the reader's task, in order, and contained.

The live-tail hub takes a steady trickle of events this way without a
wake-up of its own task per event; what it leaves must still come out of
the iterator in order, and a listener that raises must end only its own
consumer.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import amqp

from .test_amqp_flow_control import delivery, served


class Recorder:
    """Takes deliveries while ``taking``; records every offer."""

    def __init__(self) -> None:
        self.taking = True
        self.offered: list[int] = []
        self.offer = trio.Event()

    def __call__(self, message: amqp.DeliveredMessage) -> bool:
        self.offered.append(message.delivery_tag)
        self.offer.set()
        return self.taking

    async def wait_offer(self) -> None:
        with trio.fail_after(5):
            await self.offer.wait()
        self.offer = trio.Event()


async def test_a_listener_takes_what_arrives_with_nothing_buffered_and_leaves_the_rest() -> None:
    async with served() as (connection, fake, _):
        channel = await connection.channel()
        async with channel.basic_consume("q") as consumer:
            listener = consumer.listener = Recorder()
            tag = consumer.consumer_tag
            await fake.stream.send_all(delivery(1, tag, 1, b"one"))
            await listener.wait_offer()
            assert listener.offered == [1]
            assert consumer.buffered == 0  # taken: never buffered

            listener.taking = False
            await fake.stream.send_all(delivery(1, tag, 2, b"two"))
            await listener.wait_offer()
            # Buffered behind 2: 3 and 4 are not offered (order holds).
            await fake.stream.send_all(delivery(1, tag, 3, b"") + delivery(1, tag, 4, b""))
            await fake.stream.send_all(delivery(1, tag, 5, b""))
            await trio.testing.wait_all_tasks_blocked()  # the reader has read them all
            assert consumer.buffered == 4
            listener.taking = True
            with trio.fail_after(5):
                got = [(await consumer.__anext__()).delivery_tag for _ in range(4)]
            assert got == [2, 3, 4, 5]
            assert listener.offered == [1, 2]

            # Nothing buffered again: offered again.
            await fake.stream.send_all(delivery(1, tag, 6, b"six"))
            await listener.wait_offer()
            assert listener.offered == [1, 2, 6]
            assert consumer.buffered == 0


async def test_a_listener_that_raises_ends_its_consumer_alone() -> None:
    class Broken(Exception):
        pass

    def broken(message: amqp.DeliveredMessage) -> bool:
        raise Broken(f"listener bug at {message.delivery_tag}")

    async with served() as (connection, fake, broker):
        failing_channel = await connection.channel()
        other_channel = await connection.channel()
        async with (
            failing_channel.basic_consume("failing") as failing,
            other_channel.basic_consume("other") as other,
        ):
            failing.listener = broken
            await fake.stream.send_all(
                delivery(1, failing.consumer_tag, 1, b"x")
                + delivery(1, failing.consumer_tag, 2, b"y")
                + delivery(2, other.consumer_tag, 1, b"neighbour")
            )
            with trio.fail_after(5):
                neighbour = await other.__anext__()
                await broker.cancelled.wait()
                with pytest.raises(Broken, match="at 1"):
                    await failing.__anext__()
            assert neighbour.body == b"neighbour"
            assert broker.cancels == [(1, failing.consumer_tag)]
            assert failing.buffered == 0  # the later delivery was dropped
            assert not connection.is_closed and not failing_channel.is_closed
