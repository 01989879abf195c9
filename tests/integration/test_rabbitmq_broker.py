"""The RabbitMQ adapter of the broker port, against the real broker."""

from __future__ import annotations

import socket
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
    NotAStreamQueue,
)
from tests.contract.brokers import AMQP_URL, make_rabbitmq_broker, routing_keys, running, take
from tests.support.proxy import FreezableProxy

Keys = Callable[[], str]


@pytest.fixture
async def broker() -> AsyncIterator[RabbitMQBroker]:
    async with running(make_rabbitmq_broker()) as broker:
        assert broker.available
        yield broker


@pytest.fixture
async def keys() -> AsyncIterator[Keys]:
    """Unique routing keys (with characters a name pattern would refuse); queues deleted after."""
    async with routing_keys() as make:
        yield make


# --------------------------------------------------------------------------- start-up


async def test_start_declares_a_durable_direct_exchange(broker: RabbitMQBroker) -> None:
    assert broker.connection_attempts == 2  # both pool slots connected first time
    async with amqp.connect(AMQP_URL) as conn:
        async with conn.channel() as ch:
            await ch.exchange_declare(broker.exchange, "direct", durable=True)  # equivalent: ok
        async with conn.channel() as ch:
            with pytest.raises(amqp.PreconditionFailed):
                await ch.exchange_declare(broker.exchange, "direct", durable=False)


async def test_a_node_that_does_not_answer_is_left_for_the_next_url() -> None:
    with socket.socket() as closed:  # a port with nobody listening: connections refused
        closed.bind(("127.0.0.1", 0))
        dead = f"amqp://guest:guest@127.0.0.1:{closed.getsockname()[1]}/"
    async with running(make_rabbitmq_broker([dead, AMQP_URL])) as broker:
        # Slot 0 began with the dead node and moved on; slot 1 began with the live one.
        assert broker.available
        assert broker.connection_attempts == 3


async def test_exchange_of_another_type_fails_start_clearly() -> None:
    exchange = f"test-ess-exchange-{uuid.uuid4()}"
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.exchange_declare(exchange, "fanout", durable=True)
    try:
        broker = make_rabbitmq_broker(exchange=exchange)
        with trio.fail_after(10), pytest.raises(ExchangeTypeMismatch, match=exchange):
            await broker.run()
        assert not broker.available
    finally:
        async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
            await ch.exchange_delete(exchange)


async def test_bad_credentials_fail_start() -> None:
    broker = make_rabbitmq_broker("amqp://guest:wrong@127.0.0.1:5672/")
    with trio.fail_after(10), pytest.raises(BrokerConfigurationError, match="credentials"):
        await broker.run()


async def test_unreachable_broker_starts_not_ready_and_retries_with_backoff() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = make_rabbitmq_broker(f"amqp://guest:guest@127.0.0.1:{port}/")
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


async def test_a_declared_stream_has_the_configured_retention(
    broker: RabbitMQBroker, keys: Keys
) -> None:
    key = keys()
    assert await broker.ensure_stream(key) is True
    # An equivalent redeclare is accepted: a stream queue with exactly these arguments.
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
        broker = make_rabbitmq_broker(f"amqp://guest:guest@127.0.0.1:{port}/")
        await nursery.start(broker.run)
        await broker.ensure_stream(key)
        async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
            proxy.freeze()  # the cancel and the close go unanswered
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
