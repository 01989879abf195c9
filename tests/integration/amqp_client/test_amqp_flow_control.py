"""Per-consumer flow control against the real RabbitMQ.

RabbitMQ 3.10 delivers a stream queue one whole chunk at a time, past the
prefetch window. A consumer that does not read must cost only itself: the
connection's reader never waits for it, so the other consumers and requests
on the same connection go on at their normal pace, and the stalled consumer
is given up (cancelled) once its buffer passes its byte bound, after
yielding exactly the in-order prefix it had buffered.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

import amqp

from .conftest import AMQP_URL

QueueNames = Callable[..., str]

#: A neighbour's message and request must come back within this (a slow,
#: shared machine; normally it is milliseconds). A stalled reader never answers.
PROMPT = 5.0


async def fill_stream(queue: str, count: int, size: int) -> None:
    """Publish ``count`` messages back to back, all in flight at once.

    Unconfirmed publishes go out in bursts of megabytes, and osiris writes
    what arrives in one burst as one chunk: the stream ends up in chunks of
    many messages, each delivered past the prefetch. The channel's
    close-ok comes after the broker took every publish before it.
    """
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
        for i in range(count):
            await ch.basic_publish(b"%d" % i + b"." * (size - 6), routing_key=queue)


async def test_a_consumer_that_does_not_read_delays_nobody_on_its_connection(
    queue_names: QueueNames,
) -> None:
    stalled_queue, neighbour_queue = queue_names(), queue_names()
    with trio.fail_after(120):
        await fill_stream(stalled_queue, 20_000, 300)  # ~6 MB
    bound = 8 * 1024  # fewer messages than the prefetch: it must overflow
    async with (
        amqp.connect(AMQP_URL) as connection,
        connection.channel() as neighbour_channel,
        connection.channel() as stalled_channel,
        connection.channel() as rpc_channel,
        amqp.connect(AMQP_URL) as publisher,
        publisher.channel() as publish_channel,
    ):
        await neighbour_channel.queue_declare(neighbour_queue)
        async with neighbour_channel.basic_consume(neighbour_queue, no_ack=True) as neighbour:
            await stalled_channel.basic_qos(10)
            async with stalled_channel.basic_consume(
                stalled_queue, arguments={"x-stream-offset": "first"}, max_buffer_bytes=bound
            ) as stalled:
                # The stalled consumer is never iterated while its chunks arrive.
                for i in range(50):
                    await publish_channel.basic_publish(b"%d" % i, routing_key=neighbour_queue)
                    with trio.fail_after(PROMPT):
                        message = await neighbour.__anext__()
                        declared = await rpc_channel.queue_declare(neighbour_queue, passive=True)
                    assert message.body == b"%d" % i
                    assert declared.queue == neighbour_queue
                with trio.fail_after(30):
                    await stalled.wait_ended()  # overflowed, cancelled, cancel-ok read
                buffered = stalled.buffered
                assert buffered > 0
                assert stalled.buffered_bytes <= bound
                offsets = []
                with pytest.raises(amqp.ConsumerOverflow):
                    async for delivered in stalled:
                        offsets.append(delivered.headers["x-stream-offset"])
                assert offsets == list(range(buffered))
        assert not connection.is_closed
        assert not stalled_channel.is_closed
