"""The amqp client against the real RabbitMQ: every operation and error mapping."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

import amqp
from tests.support.aio import take
from tests.support.proxy import FreezableProxy

from .conftest import AMQP_URL, WEIRD_NAMES, close_connection_named

QueueNames = Callable[..., str]


def url_with(**options: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{AMQP_URL}?{query}"


async def receive(
    consumer: amqp.Consumer, count: int, timeout: float = 5.0
) -> list[amqp.DeliveredMessage]:
    return await take(consumer, count, timeout)


# --------------------------------------------------------------------------- connecting


async def test_connect_negotiates_tuning_and_heartbeat() -> None:
    async with amqp.connect(url_with(heartbeat=7, frame_max=8192, channel_max=100)) as conn:
        assert conn.heartbeat == 7
        assert conn.frame_max == 8192
        assert conn.channel_max == 100
        assert (
            conn.server_properties["product"] == b"RabbitMQ"
            or conn.server_properties["product"] == "RabbitMQ"
        )
        assert not conn.is_closed
    assert conn.is_closed
    assert isinstance(await conn.closed(), amqp.ConnectionClosedByClient)


async def test_bad_credentials_raise_authentication_error() -> None:
    with pytest.raises(amqp.AuthenticationError) as info:
        async with amqp.connect("amqp://guest:wrong-password@127.0.0.1:5672/"):
            pass
    assert info.value.reply_code == 403


async def test_unknown_vhost_raises_connection_not_allowed() -> None:
    with pytest.raises(amqp.ConnectionNotAllowed) as info:
        async with amqp.connect(f"amqp://guest:guest@127.0.0.1:5672/no-such-{uuid.uuid4()}"):
            pass
    assert info.value.reply_code == 530


async def test_unreachable_broker_raises_cannot_connect() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(amqp.CannotConnect):
        async with amqp.connect(f"amqp://guest:guest@127.0.0.1:{port}/"):
            pass


async def test_connection_timeout_bounds_a_silent_server() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def silent(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()

        nursery.start_soon(trio.serve_listeners, silent, listeners)
        start = trio.current_time()
        with pytest.raises(amqp.CannotConnect, match="timed out"):
            async with amqp.connect(f"amqp://guest:guest@127.0.0.1:{port}/?connection_timeout=0.5"):
                pass
        assert trio.current_time() - start < 3
        nursery.cancel_scope.cancel()


async def test_body_exceptions_propagate_unwrapped() -> None:
    with pytest.raises(ValueError, match="from the body"):
        async with amqp.connect(AMQP_URL):
            raise ValueError("from the body")


async def test_channel_limit_raises_no_free_channels() -> None:
    async with amqp.connect(url_with(channel_max=2)) as conn:
        first = await conn.channel()
        async with conn.channel():
            with pytest.raises(amqp.NoFreeChannels):
                await conn.channel()
        # A closed channel's number is reused.
        async with conn.channel() as again:
            assert again.number == 2
        await first.close()
        assert conn.channel_count == 0


# --------------------------------------------------------------------------- operations


@pytest.mark.parametrize("name", WEIRD_NAMES)
async def test_any_utf8_name_works_for_queues_and_routing_keys(
    channel: amqp.Channel, queue_names: QueueNames, name: str
) -> None:
    queue = queue_names(name)
    declared = await channel.queue_declare(queue)
    assert declared.queue == queue
    await channel.confirm_select()
    await channel.basic_publish(b"payload", routing_key=queue)
    assert (await channel.queue_declare(queue, passive=True)).message_count == 1
    async with channel.basic_consume(queue) as consumer:
        [message] = await receive(consumer, 1)
        assert message.routing_key == queue
        assert message.body == b"payload"
        await channel.basic_ack(message.delivery_tag)


async def test_longest_names_work(channel: amqp.Channel, queue_names: QueueNames) -> None:
    prefix = queue_names("x")
    queue = prefix + "é" * ((255 - len(prefix.encode())) // 2)
    assert len(queue.encode()) >= 254
    try:
        assert (await channel.queue_declare(queue)).queue == queue
    finally:
        await channel.queue_delete(queue)


async def test_exchange_bind_routes_with_any_routing_key(
    channel: amqp.Channel, queue_names: QueueNames, exchange_names: QueueNames
) -> None:
    exchange = exchange_names()
    queue = queue_names()
    routing_key = "quoted 'key' | ключ ; DROP"
    await channel.exchange_declare(exchange, "direct", durable=True)
    await channel.queue_declare(queue)
    await channel.queue_bind(queue, exchange, routing_key)
    await channel.confirm_select()
    await channel.basic_publish(b"unrouted", exchange=exchange, routing_key="other")
    await channel.basic_publish(
        b"routed",
        exchange=exchange,
        routing_key=routing_key,
        properties=amqp.Properties(
            content_type="text/plain", headers={"k": "v", "n": 5}, timestamp=1_700_000_000
        ),
    )
    async with channel.basic_consume(queue) as consumer:
        [message] = await receive(consumer, 1)
        assert (message.exchange, message.routing_key) == (exchange, routing_key)
        assert message.body == b"routed"
        assert message.headers == {"k": "v", "n": 5}
        assert message.properties.timestamp == 1_700_000_000
        assert message.properties.content_type == "text/plain"
        await channel.basic_ack(message.delivery_tag)
    await channel.queue_unbind(queue, exchange, routing_key)
    await channel.basic_publish(b"after unbind", exchange=exchange, routing_key=routing_key)
    assert (await channel.queue_declare(queue, passive=True)).message_count == 0


async def test_queue_declare_reports_counts_and_delete_removes(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await channel.queue_declare(queue)
    await channel.confirm_select()
    for i in range(3):
        await channel.basic_publish(b"%d" % i, routing_key=queue)
    ok = await channel.queue_declare(queue, passive=True)
    assert (ok.queue, ok.message_count, ok.consumer_count) == (queue, 3, 0)
    async with connection.channel() as other:
        await other.basic_qos(1)
        async with other.basic_consume(queue):
            ok = await channel.queue_declare(queue, passive=True)
            assert ok.consumer_count == 1
    assert (await channel.queue_declare(queue, passive=True)).consumer_count == 0
    assert await channel.queue_delete(queue) == 3
    with pytest.raises(amqp.NotFound):
        await channel.queue_declare(queue, passive=True)


# --------------------------------------------------------------------------- error mapping


async def assert_only_the_channel_died(
    connection: amqp.Connection, channel: amqp.Channel, error: type[amqp.ChannelClosed]
) -> None:
    assert channel.is_closed
    assert isinstance(channel.close_reason, error)
    with pytest.raises(error):
        await channel.queue_declare("anything", passive=True)
    assert not connection.is_closed
    async with connection.channel() as fresh:
        await fresh.queue_declare("", exclusive=True)


async def test_404_passive_declare_of_a_missing_queue(
    connection: amqp.Connection, channel: amqp.Channel
) -> None:
    with pytest.raises(amqp.NotFound) as info:
        await channel.queue_declare(f"missing-{uuid.uuid4()}", passive=True)
    assert info.value.reply_code == 404
    assert "NOT_FOUND" in info.value.reply_text
    assert isinstance(info.value, amqp.ChannelClosed)
    await assert_only_the_channel_died(connection, channel, amqp.NotFound)


async def test_406_redeclare_with_other_arguments(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
    with pytest.raises(amqp.PreconditionFailed) as info:
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
    assert info.value.reply_code == 406
    await assert_only_the_channel_died(connection, channel, amqp.PreconditionFailed)


async def test_406_exchange_redeclared_with_another_type(
    connection: amqp.Connection, channel: amqp.Channel, exchange_names: QueueNames
) -> None:
    exchange = exchange_names()
    await channel.exchange_declare(exchange, "fanout")
    with pytest.raises(amqp.PreconditionFailed):
        await channel.exchange_declare(exchange, "direct")
    await assert_only_the_channel_died(connection, channel, amqp.PreconditionFailed)


async def test_403_reserved_amq_queue_name(
    connection: amqp.Connection, channel: amqp.Channel
) -> None:
    with pytest.raises(amqp.AccessRefused) as info:
        await channel.queue_declare(f"amq.test-{uuid.uuid4()}")
    assert info.value.reply_code == 403
    await assert_only_the_channel_died(connection, channel, amqp.AccessRefused)


async def test_405_exclusive_queue_of_another_connection(
    connection: amqp.Connection, channel: amqp.Channel
) -> None:
    queue = f"test-amqp-exclusive-{uuid.uuid4()}"  # exclusive: deleted with its owner
    await channel.queue_declare(queue, exclusive=True)
    async with amqp.connect(AMQP_URL) as other, other.channel() as other_channel:
        with pytest.raises(amqp.ResourceLocked) as info:
            await other_channel.queue_declare(queue, passive=True)
        assert info.value.reply_code == 405
        await assert_only_the_channel_died(other, other_channel, amqp.ResourceLocked)


async def test_404_consume_from_missing_queue(
    connection: amqp.Connection, channel: amqp.Channel
) -> None:
    with pytest.raises(amqp.NotFound):
        async with channel.basic_consume(f"missing-{uuid.uuid4()}"):
            pass
    await assert_only_the_channel_died(connection, channel, amqp.NotFound)


async def test_server_forced_close_is_typed_and_ends_consumers(queue_names: QueueNames) -> None:
    name = f"test-amqp-forced-{uuid.uuid4()}"
    queue = queue_names()
    async with amqp.connect(url_with(name=name)) as conn, conn.channel() as ch:
        await ch.queue_declare(queue)
        async with ch.basic_consume(queue) as consumer:
            await close_connection_named(name, reason="forced by the test")
            with trio.fail_after(10), pytest.raises(amqp.ConnectionForced) as info:
                async for _ in consumer:
                    pass
            assert info.value.reply_code == 320
            assert "forced by the test" in info.value.reply_text
        reason = await conn.closed()
        assert isinstance(reason, amqp.ConnectionForced)
        with pytest.raises(amqp.ConnectionForced):
            await ch.queue_declare(queue, passive=True)
        with pytest.raises(amqp.ConnectionForced):
            await conn.channel()


# --------------------------------------------------------------------------- content


async def test_one_mebibyte_body_over_small_frames(queue_names: QueueNames) -> None:
    queue = queue_names()
    body = os.urandom(1024 * 1024)
    async with amqp.connect(url_with(frame_max=4096)) as conn, conn.channel() as ch:
        assert conn.frame_max == 4096
        await ch.queue_declare(queue)
        await ch.confirm_select()
        await ch.basic_publish(
            body, routing_key=queue, properties=amqp.Properties(headers={"size": len(body)})
        )
        async with ch.basic_consume(queue) as consumer:
            [message] = await receive(consumer, 1, timeout=20)
        assert message.body == body
        assert message.headers == {"size": len(body)}


# --------------------------------------------------------------------------- streams


async def make_stream(channel: amqp.Channel, queue: str, count: int) -> None:
    await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
    await channel.confirm_select()
    for i in range(count):
        await channel.basic_publish(b"%d" % i, routing_key=queue)


@asynccontextmanager
async def stream_consumer(
    connection: amqp.Connection, queue: str, offset: object, *, prefetch: int = 10
) -> AsyncIterator[tuple[amqp.Channel, amqp.Consumer]]:
    """A consumer of the stream ``queue`` from ``offset`` on a channel of its own."""
    async with connection.channel() as ch:
        await ch.basic_qos(prefetch)
        async with ch.basic_consume(queue, arguments={"x-stream-offset": offset}) as consumer:
            yield ch, consumer


async def offsets_from(
    connection: amqp.Connection, queue: str, offset: object, count: int
) -> list[int]:
    async with stream_consumer(connection, queue, offset, prefetch=100) as (ch, consumer):
        messages = await receive(consumer, count)
        await ch.basic_ack(messages[-1].delivery_tag, multiple=True)
    return [m.headers["x-stream-offset"] for m in messages]


async def test_stream_offset_first_numeric_and_last(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await make_stream(channel, queue, 10)
    assert await offsets_from(connection, queue, "first", 10) == list(range(10))
    assert await offsets_from(connection, queue, 7, 3) == [7, 8, 9]
    assert await offsets_from(connection, queue, 0, 2) == [0, 1]
    last = await offsets_from(connection, queue, "last", 1)
    assert 0 <= last[0] <= 9  # the start of the last chunk


async def test_stream_offset_next_only_gets_new_messages(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await make_stream(channel, queue, 5)
    async with stream_consumer(connection, queue, "next") as (_, consumer):
        await channel.basic_publish(b"new", routing_key=queue)
        [message] = await receive(consumer, 1)
    assert (message.body, message.headers["x-stream-offset"]) == (b"new", 5)


async def test_stream_offset_timestamp(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    import datetime

    queue = queue_names()
    await make_stream(channel, queue, 3)
    # A timestamp in the past starts at the beginning (an int misread as an
    # offset this large would start at the end instead).
    past = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)
    assert await offsets_from(connection, queue, past, 3) == [0, 1, 2]
    naive_past = datetime.datetime(2001, 1, 1)
    assert await offsets_from(connection, queue, naive_past, 1) == [0]

    # Chunks are stamped in whole seconds: wait for the next wall-clock second,
    # publish more, and start from that second.
    now = datetime.datetime.now(datetime.UTC)
    boundary = now.replace(microsecond=0) + datetime.timedelta(seconds=1)
    await trio.sleep((boundary - now).total_seconds() + 0.05)
    for i in range(3, 6):
        await channel.basic_publish(b"%d" % i, routing_key=queue)
    assert await offsets_from(connection, queue, boundary, 3) == [3, 4, 5]

    # A timestamp in the future behaves like "next".
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    async with stream_consumer(connection, queue, future) as (_, consumer):
        await channel.basic_publish(b"later", routing_key=queue)
        [message] = await receive(consumer, 1)
    assert message.body == b"later"


async def test_prefetch_bounds_unacked_deliveries(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await make_stream(channel, queue, 20)
    async with stream_consumer(connection, queue, "first", prefetch=5) as (ch, consumer):
        first = await receive(consumer, 5)
        # Nothing more arrives until we ack (give the broker time to misbehave).
        with trio.move_on_after(0.5):
            await consumer.__anext__()
            pytest.fail("a sixth delivery arrived without an ack")
        await ch.basic_ack(first[-1].delivery_tag, multiple=True)
        more = await receive(consumer, 5)
    assert [m.headers["x-stream-offset"] for m in first + more] == list(range(10))


# --------------------------------------------------------------------------- heartbeats


async def test_dead_peer_is_detected_by_heartbeats(queue_names: QueueNames) -> None:
    proxy = FreezableProxy()
    queue = queue_names()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.run)
        url = f"amqp://guest:guest@127.0.0.1:{port}/?heartbeat=1"
        async with amqp.connect(url) as conn, conn.channel() as ch:
            await ch.queue_declare(queue)
            async with ch.basic_consume(queue) as consumer:
                proxy.freeze()
                start = trio.current_time()
                with trio.fail_after(5), pytest.raises(amqp.HeartbeatTimeout):
                    async for _ in consumer:
                        pass
                elapsed = trio.current_time() - start
                assert 1.0 <= elapsed <= 2.6  # two intervals after the last data received
            assert isinstance(await conn.closed(), amqp.HeartbeatTimeout)
            assert conn.is_closed
        nursery.cancel_scope.cancel()


async def test_idle_connection_survives_heartbeat_intervals() -> None:
    async with amqp.connect(url_with(heartbeat=1)) as conn:
        await trio.sleep(3.5)  # the behaviour under test is the passage of time
        assert not conn.is_closed
        async with conn.channel() as ch:
            await ch.queue_declare("", exclusive=True)


# --------------------------------------------------------------------------- cancellation


async def test_leaving_a_consumer_mid_stream_cancels_it(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await make_stream(channel, queue, 50)
    async with connection.channel() as ch:
        await ch.basic_qos(10)
        async with ch.basic_consume(queue, arguments={"x-stream-offset": "first"}) as consumer:
            async for message in consumer:
                if message.headers["x-stream-offset"] == 4:
                    break
        assert not consumer.active
        assert ch.consumer_count == 0
        assert (await ch.queue_declare(queue, passive=True)).consumer_count == 0
        # The same channel consumes again.
        async with ch.basic_consume(queue, arguments={"x-stream-offset": 45}) as consumer:
            again = await receive(consumer, 5)
        assert [m.headers["x-stream-offset"] for m in again] == [45, 46, 47, 48, 49]
        with pytest.raises(StopAsyncIteration):
            await consumer.__anext__()


async def test_cancelling_a_task_blocked_in_iteration(
    connection: amqp.Connection, channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await channel.queue_declare(queue)
    started = trio.Event()
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            async with channel.basic_consume(queue) as consumer:
                started.set()
                async for _ in consumer:
                    pass

        nursery.start_soon(consume)
        await started.wait()
        assert (await channel.queue_declare(queue, passive=True)).consumer_count == 1
        nursery.cancel_scope.cancel()
    # The consumer was cancelled on the way out; the channel is fine.
    assert (await channel.queue_declare(queue, passive=True)).consumer_count == 0
    assert not channel.is_closed


async def test_cancelled_request_leaves_the_channel_in_step(
    channel: amqp.Channel, queue_names: QueueNames
) -> None:
    first, second = queue_names(), queue_names()
    await channel.queue_declare(first)
    await channel.queue_declare(second)
    with trio.CancelScope() as scope:
        scope.cancel()
        await channel.queue_declare(first, passive=True)  # sent, then cancelled
    assert scope.cancelled_caught
    # The late reply for `first` is discarded, not given to the next caller.
    assert (await channel.queue_declare(second, passive=True)).queue == second
    assert (await channel.queue_declare(first, passive=True)).queue == first


async def test_cancelled_consume_is_undone_when_consume_ok_arrives(
    channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await channel.queue_declare(queue)
    consumer = channel.basic_consume(queue)
    with trio.CancelScope() as scope:
        scope.cancel()
        await consumer.start()
    assert scope.cancelled_caught
    assert not consumer.active
    # consume-ok arrives later; the client then cancels the consumer itself.
    with trio.fail_after(5):
        await consumer.wait_ended()
    assert (await channel.queue_declare(queue, passive=True)).consumer_count == 0
    assert channel.consumer_count == 0
    assert not channel.is_closed


async def test_cancelled_channel_open_is_closed_again(connection: amqp.Connection) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await connection.channel()
    assert scope.cancelled_caught
    async with connection.channel() as ch:  # open-ok, close, close-ok all processed in order
        await ch.queue_declare("", exclusive=True)
        await ch.queue_declare("", exclusive=True)
    assert connection.channel_count == 0


async def test_closing_the_connection_ends_consumers(queue_names: QueueNames) -> None:
    queue = queue_names()
    async with amqp.connect(AMQP_URL) as conn:
        ch = await conn.channel()
        await ch.queue_declare(queue)
        outcome: list[BaseException] = []
        async with trio.open_nursery() as nursery:

            async def consume(task_status: trio.TaskStatus[None]) -> None:
                async with ch.basic_consume(queue) as consumer:
                    task_status.started()
                    try:
                        async for _ in consumer:
                            pass
                    except amqp.AMQPError as exc:
                        outcome.append(exc)

            await nursery.start(consume)
            await conn.close()
        assert len(outcome) == 1
        assert isinstance(outcome[0], amqp.ConnectionClosedByClient)


# --------------------------------------------------------------------------- publishing


async def test_confirmed_publish_is_enqueued_when_it_returns(
    channel: amqp.Channel, queue_names: QueueNames
) -> None:
    queue = queue_names()
    await channel.queue_declare(queue)
    await channel.confirm_select()
    assert channel.publisher_confirms
    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(lambda i=i: channel.basic_publish(b"%d" % i, routing_key=queue))
    assert (await channel.queue_declare(queue, passive=True)).message_count == 100


async def test_nacked_publish_raises(channel: amqp.Channel, queue_names: QueueNames) -> None:
    queue = queue_names()
    await channel.queue_declare(
        queue, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await channel.confirm_select()
    with pytest.raises(amqp.PublishNacked):
        await channel.basic_publish(b"refused", routing_key=queue)
    await channel.basic_publish(b"unroutable is confirmed", routing_key=f"none-{uuid.uuid4()}")


async def test_publish_to_a_missing_exchange_is_404(
    connection: amqp.Connection, channel: amqp.Channel
) -> None:
    await channel.confirm_select()
    with pytest.raises(amqp.NotFound):
        await channel.basic_publish(b"x", exchange=f"missing-{uuid.uuid4()}", routing_key="k")
    await assert_only_the_channel_died(connection, channel, amqp.NotFound)
