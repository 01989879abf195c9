"""The RabbitMQ adapter of the broker port, against the real broker."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

import amqp
from actors.adapters.rabbitmq import BrokerConfigurationError, ExchangeTypeMismatch, RabbitMQBroker
from actors.adapters.rabbitmq_queue_type import is_stream_queue
from actors.adapters.rabbitmq_subscription import CANCEL_TIMEOUT, CLOSE_TIMEOUT
from actors.ports.broker import (
    BrokerError,
    BrokerUnavailable,
    FromNext,
    FromOffset,
    FromTimestamp,
    NotAStreamQueue,
    StreamEvent,
    StreamNotFound,
    Subscription,
)

from .amqp_client.conftest import FreezableProxy, close_connection_named

AMQP_URL = os.environ.get("ESS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

Keys = Callable[[], str]


def make_broker(
    url: str = AMQP_URL, exchange: str | None = None, **kwargs: object
) -> RabbitMQBroker:
    return RabbitMQBroker(
        url,
        exchange or f"test-ess-exchange-{uuid.uuid4()}",
        pool_size=2,
        backoff_initial=0.05,
        backoff_max=0.5,
        operation_timeout=5.0,
        connection_name=f"test-broker-{uuid.uuid4()}",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def broker() -> AsyncIterator[RabbitMQBroker]:
    broker = make_broker()
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        assert broker.available
        yield broker
        nursery.cancel_scope.cancel()
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.exchange_delete(broker.exchange)


@pytest.fixture
async def keys() -> AsyncIterator[Keys]:
    """Unique routing keys (with characters a name pattern would refuse); queues deleted after."""
    made: list[str] = []

    def make() -> str:
        key = f"test-ess | 'stream' ключ {uuid.uuid4()}"
        made.append(key)
        return key

    yield make
    async with amqp.connect(AMQP_URL) as conn:
        for key in made:
            async with conn.channel() as ch:
                await ch.queue_delete(key)


async def take(subscription: Subscription, count: int, timeout: float = 5.0) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    with trio.fail_after(timeout):
        async for event in subscription:
            events.append(event)
            if len(events) == count:
                break
    return events


async def close_broker_connections(broker: RabbitMQBroker) -> None:
    """Have RabbitMQ force-close every pooled connection of ``broker``."""
    await close_connection_named(*broker.connection_names())


# --------------------------------------------------------------------------- start-up


async def test_start_declares_a_durable_direct_exchange(broker: RabbitMQBroker) -> None:
    assert broker.connection_attempts == 2  # both pool slots connected first time
    async with amqp.connect(AMQP_URL) as conn:
        async with conn.channel() as ch:
            await ch.exchange_declare(broker.exchange, "direct", durable=True)  # equivalent: ok
        async with conn.channel() as ch:
            with pytest.raises(amqp.PreconditionFailed):
                await ch.exchange_declare(broker.exchange, "direct", durable=False)


async def test_exchange_of_another_type_fails_start_clearly() -> None:
    exchange = f"test-ess-exchange-{uuid.uuid4()}"
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.exchange_declare(exchange, "fanout", durable=True)
    try:
        broker = make_broker(exchange=exchange)
        with trio.fail_after(10), pytest.raises(ExchangeTypeMismatch, match=exchange):
            await broker.run()
        assert not broker.available
    finally:
        async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
            await ch.exchange_delete(exchange)


async def test_bad_credentials_fail_start() -> None:
    broker = make_broker("amqp://guest:wrong@127.0.0.1:5672/")
    with trio.fail_after(10), pytest.raises(BrokerConfigurationError, match="credentials"):
        await broker.run()


async def test_unreachable_broker_starts_not_ready_and_retries_with_backoff() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = make_broker(f"amqp://guest:guest@127.0.0.1:{port}/")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(5):
            await nursery.start(broker.run)
        assert not broker.available
        with pytest.raises(BrokerUnavailable):
            await broker.ensure_stream("anything")
        with pytest.raises(BrokerUnavailable):
            async with broker.subscribe("anything", FromNext(), prefetch=10):
                pass
        with pytest.raises(BrokerUnavailable):
            await broker.publish("anything", b"x")
        with trio.move_on_after(0.05):
            await broker.wait_available()
            pytest.fail("wait_available returned without a broker")
        await trio.sleep(1.0)  # what is measured is the retry rate over time
        # Two slots, backoff 0.05 s doubling to 0.5 s with jitter: a handful, not thousands.
        assert 4 <= broker.connection_attempts <= 30
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- streams


async def test_ensure_stream_creates_binds_and_reports_ownership(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    key = keys()
    assert not await broker.stream_exists(key)
    assert await broker.ensure_stream(key) is True
    assert await broker.stream_exists(key)
    assert await broker.ensure_stream(key) is False  # exists now: used as it is
    # It is a stream with the configured retention: an equivalent redeclare is accepted...
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.queue_declare(
            key,
            durable=True,
            arguments={
                "x-queue-type": "stream",
                "x-max-age": "7D",
                "x-max-length-bytes": 1_000_000_000,
            },
        )
    # ... and the binding routes what is published to the exchange.
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        await broker.publish(key, b'{"via": "exchange"}', timestamp_ms=1_700_000_000_123)
        [event] = await take(subscription, 1)
    assert event == StreamEvent(0, b'{"via": "exchange"}', 1_700_000_000_123)


async def test_existing_queue_with_other_arguments_is_not_redeclared(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    key = keys()
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.queue_declare(
            key, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "1h"}
        )
    assert await broker.ensure_stream(key) is False
    async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
        await broker.publish(key, b"bound")
        [event] = await take(subscription, 1)
    assert event.body == b"bound"


async def test_delete_stream(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    await broker.ensure_stream(key)
    await broker.delete_stream(key)
    assert not await broker.stream_exists(key)
    await broker.delete_stream(key)  # already gone: no error


async def test_subscribe_to_a_missing_stream_raises_stream_not_found(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    with pytest.raises(StreamNotFound):
        async with broker.subscribe(keys(), FromOffset(0), prefetch=10):
            pass
    assert broker.available


async def test_publish_to_queue_bypasses_the_exchange(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:  # an AS-made, unbound stream
        await ch.queue_declare(key, durable=True, arguments={"x-queue-type": "stream"})
    await broker.publish(key, b"lost: not bound")  # to the exchange: routed nowhere
    await broker.publish(key, b"direct", to_queue=True)
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        [event] = await take(subscription, 1)
    assert (event.offset, event.body) == (0, b"direct")


# --------------------------------------------------------------------------- positions


async def test_subscribe_from_offset_and_next(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    await broker.ensure_stream(key)
    for i in range(10):
        await broker.publish(key, b"%d" % i, timestamp_ms=1000 + i)
    async with broker.subscribe(key, FromOffset(6), prefetch=10) as subscription:
        events = await take(subscription, 4)
    assert [(e.offset, e.body, e.timestamp_ms) for e in events] == [
        (i, b"%d" % i, 1000 + i) for i in range(6, 10)
    ]
    async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
        await broker.publish(key, b"next")
        [event] = await take(subscription, 1)
    assert (event.offset, event.body) == (10, b"next")


async def test_subscribe_from_timestamp(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    await broker.ensure_stream(key)
    for i in range(3):
        await broker.publish(key, b"old %d" % i)
    # Chunks are stamped in whole seconds: start the next batch in a new second.
    boundary = int(time.time()) + 1
    await trio.sleep(boundary - time.time() + 0.05)  # waiting for the wall clock itself
    for i in range(3):
        await broker.publish(key, b"new %d" % i)
    async with broker.subscribe(key, FromTimestamp(boundary), prefetch=10) as subscription:
        events = await take(subscription, 3)
    assert [e.body for e in events] == [b"new 0", b"new 1", b"new 2"]
    async with broker.subscribe(key, FromTimestamp(0), prefetch=10) as subscription:
        events = await take(subscription, 1)
    assert events[0].offset == 0


async def test_event_timestamps_in_order_of_preference(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    await broker.ensure_stream(key)
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.confirm_select()
        for properties in [
            amqp.Properties(headers={"timestamp_in_ms": 1_700_000_000_001}, timestamp=5),
            amqp.Properties(headers={"timestamp_in_ms": "1700000000002"}),
            amqp.Properties(timestamp=1_700_000_003),
            None,
            # Unusable headers count as absent: the property, if any, is used.
            amqp.Properties(headers={"timestamp_in_ms": 1.7e12}, timestamp=7),
            amqp.Properties(headers={"timestamp_in_ms": -5}),
            amqp.Properties(headers={"timestamp_in_ms": "soon"}, timestamp=8),
        ]:
            await ch.basic_publish(b"{}", routing_key=key, properties=properties)
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        events = await take(subscription, 7)
    assert [e.timestamp_ms for e in events] == [
        1_700_000_000_001,
        1_700_000_000_002,
        1_700_000_003_000,
        None,
        7000,
        None,
        8000,
    ]


# --------------------------------------------------------------------------- flow control


async def test_without_acks_no_more_than_prefetch_events_arrive(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    key = keys()
    await broker.ensure_stream(key)
    for i in range(30):
        await broker.publish(key, b"%d" % i)
    async with broker.subscribe(key, FromOffset(0), prefetch=5) as subscription:
        first = await take(subscription, 5)
        with trio.move_on_after(0.5):  # give the broker time to overrun the window
            await subscription.__aiter__().__anext__()
            pytest.fail("a sixth event arrived with five unacknowledged")
        await subscription.ack(first[-1].offset)
        more = await take(subscription, 5)
    assert [e.offset for e in first + more] == list(range(10))


async def test_acks_are_batched_yet_prompt(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    await broker.ensure_stream(key)
    for i in range(200):
        await broker.publish(key, b"%d" % i)
    async with broker.subscribe(key, FromOffset(0), prefetch=40) as subscription:
        seen = 0
        with trio.fail_after(10):
            async for event in subscription:
                await subscription.ack(event.offset)
                seen += 1
                if seen == 200:
                    break
        acks = subscription.acks_sent  # type: ignore[attr-defined]
        assert 5 <= acks < 200  # batched: about one per prefetch/4, plus drained buffers
        # A lone event on a quiet stream is acknowledged at once.
        await broker.publish(key, b"lone")
        [event] = await take(subscription, 1)
        await subscription.ack(event.offset)
        assert subscription.acks_sent == acks + 1  # type: ignore[attr-defined]


async def test_subscriptions_spread_over_the_pool(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    await broker.ensure_stream(key)
    async with (
        broker.subscribe(key, FromNext(), prefetch=10),
        broker.subscribe(key, FromNext(), prefetch=10),
        broker.subscribe(key, FromNext(), prefetch=10),
        broker.subscribe(key, FromNext(), prefetch=10),
    ):
        counts = sorted(p.connection.channel_count for p in broker.pool.connections)
        assert counts[1] - counts[0] <= 1


# --------------------------------------------------------------------------- failures


async def test_connection_drop_ends_subscriptions_and_resubscription_resumes(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    key = keys()
    await broker.ensure_stream(key)
    for i in range(5):
        await broker.publish(key, b"%d" % i)
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        events = await take(subscription, 5)
        await subscription.ack(events[-1].offset)
        await close_broker_connections(broker)
        with trio.fail_after(10), pytest.raises(BrokerUnavailable):
            async for _ in subscription:
                pass
    assert broker.connections_lost >= 1
    with trio.fail_after(10):
        await broker.wait_available()
    assert broker.available
    assert broker.reconnects >= 1
    await broker.publish(key, b"5")
    async with broker.subscribe(key, FromOffset(events[-1].offset + 1), prefetch=10) as again:
        [event] = await take(again, 1)
    assert (event.offset, event.body) == (5, b"5")


async def test_stream_deleted_under_a_subscription(broker: RabbitMQBroker, keys: Keys) -> None:
    key = keys()
    await broker.ensure_stream(key)
    async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
        await broker.delete_stream(key)
        with trio.fail_after(5), pytest.raises(StreamNotFound):
            async for _ in subscription:
                pass
    assert broker.available


def channels_in_use(broker: RabbitMQBroker) -> int:
    return sum(pooled.connection.channel_count for pooled in broker.pool.connections)


async def test_leaving_a_subscription_closes_its_channel(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    # (A stream queue reports no consumer count; its channel going away is what
    # cancels the consumer on the broker.)
    key = keys()
    await broker.ensure_stream(key)
    before = channels_in_use(broker)
    async with broker.subscribe(key, FromNext(), prefetch=10):
        assert channels_in_use(broker) == before + 1
    assert channels_in_use(broker) == before
    # Also when the task holding it is cancelled.
    with trio.CancelScope() as scope:
        async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
            scope.cancel()
            async for _ in subscription:
                pass
    assert channels_in_use(broker) == before
    # A subscription whose start is cancelled leaves nothing behind either.
    with trio.CancelScope() as scope:
        scope.cancel()
        async with broker.subscribe(key, FromNext(), prefetch=10):
            pass
    await broker.stream_exists(key)  # a round trip on every channel's connection
    await broker.stream_exists(key)
    assert channels_in_use(broker) == before


async def test_leaving_a_subscription_does_not_wait_for_a_broker_that_does_not_answer(
    keys: Keys,
) -> None:
    key = keys()
    proxy = FreezableProxy()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.run)
        broker = make_broker(f"amqp://guest:guest@127.0.0.1:{port}/")
        await nursery.start(broker.run)
        await broker.ensure_stream(key)
        async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
            proxy.frozen = True  # the cancel and the close go unanswered
            left = trio.current_time()
        elapsed = trio.current_time() - left
        assert subscription._channel.is_closed  # type: ignore[attr-defined]  # close was sent
        # Each bounded on its own: the cancel, then the close.
        assert elapsed < CANCEL_TIMEOUT + CLOSE_TIMEOUT + 1.0
        assert elapsed >= CANCEL_TIMEOUT
        nursery.cancel_scope.cancel()
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.exchange_delete(broker.exchange)


# --------------------------------------------------------------------------- queue types

STREAM = {"x-queue-type": "stream"}
QUEUE_KINDS: list[tuple[str, dict[str, Any], bool]] = [
    # (kind, queue.declare keywords, is a stream queue)
    ("classic", {"durable": True}, False),
    (
        "classic with a length limit",
        {"durable": True, "arguments": {"x-max-length-bytes": 5}},
        False,
    ),
    ("classic, limits before the type", {"durable": True, "arguments": {"x-max-length": 3}}, False),
    ("classic, named classic", {"durable": True, "arguments": {"x-queue-type": "classic"}}, False),
    ("transient classic", {"durable": False}, False),
    ("auto-delete classic", {"durable": True, "auto_delete": True}, False),
    ("quorum", {"durable": True, "arguments": {"x-queue-type": "quorum"}}, False),
    (
        "quorum with a length limit",
        {"durable": True, "arguments": {"x-queue-type": "quorum", "x-max-length-bytes": 5}},
        False,
    ),
    ("stream", {"durable": True, "arguments": STREAM}, True),
    ("stream with max age", {"durable": True, "arguments": {**STREAM, "x-max-age": "1h"}}, True),
    (
        "stream with a 32-bit length",
        {"durable": True, "arguments": {**STREAM, "x-max-length-bytes": 1_000_000}},
        True,
    ),
    (
        "stream with a 64-bit length and age",
        {
            "durable": True,
            "arguments": {**STREAM, "x-max-length-bytes": 10**10, "x-max-age": "7D"},
        },
        True,
    ),
    (
        "stream with a segment size",
        {"durable": True, "arguments": {**STREAM, "x-stream-max-segment-size-bytes": 10**6}},
        True,
    ),
]


@pytest.mark.parametrize(
    ("kind", "declare", "stream"), QUEUE_KINDS, ids=[k[0] for k in QUEUE_KINDS]
)
async def test_the_queue_type_is_told_without_changing_the_queue(
    broker: RabbitMQBroker, keys: Keys, kind: str, declare: dict[str, Any], stream: bool
) -> None:
    key = keys()
    async with amqp.connect(AMQP_URL) as conn:
        async with conn.channel() as ch:
            await ch.queue_declare(key, **declare)
        assert await is_stream_queue(broker.pool.operation, key) is stream
        # Untouched: the original declaration is still equivalent, nothing else broke.
        async with conn.channel() as ch:
            await ch.queue_declare(key, **declare)
    assert broker.available
    assert all(not p.connection.is_closed for p in broker.pool.connections)


@pytest.mark.parametrize("named", [True, False], ids=["named", "server-named"])
async def test_an_exclusive_queue_of_another_connection_is_not_a_stream(
    broker: RabbitMQBroker, keys: Keys, named: bool
) -> None:
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        queue = (await ch.queue_declare(keys() if named else "", exclusive=True)).queue
        assert await is_stream_queue(broker.pool.operation, queue) is False
        with pytest.raises(NotAStreamQueue):
            await broker.ensure_stream(queue)


async def test_a_queue_declared_by_ensure_stream_is_deleted_if_the_bind_fails(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    key = keys()
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.exchange_delete(broker.exchange)  # the bind now fails: 404, no exchange
    with pytest.raises(BrokerError):
        await broker.ensure_stream(key)
    assert not await broker.stream_exists(key)


async def test_a_queue_declared_by_ensure_stream_is_deleted_if_the_caller_is_cancelled(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    key = keys()
    declared = trio.Event()
    real_bind = broker._bind

    async def bind_that_hangs(routing_key: str) -> None:
        declared.set()
        await trio.sleep_forever()

    broker._bind = bind_that_hangs  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.ensure_stream, key)
        await declared.wait()
        assert await broker.stream_exists(key)
        nursery.cancel_scope.cancel()
    broker._bind = real_bind  # type: ignore[method-assign]
    assert not await broker.stream_exists(key)
