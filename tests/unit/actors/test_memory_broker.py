"""The in-memory broker behaves like RabbitMQ stream queues (as far as actors can tell)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.adapters.memory_broker import MemoryBroker
from actors.ports.broker import (
    BrokerUnavailable,
    FromNext,
    FromOffset,
    FromTimestamp,
    StreamEvent,
    StreamNotFound,
    Subscription,
)

from .actor_fakes import WAIT, wall_clock


async def take(subscription: Subscription, count: int, *, ack: bool = True) -> list[StreamEvent]:
    events = []
    with trio.fail_after(WAIT):
        async for event in subscription:
            events.append(event)
            if ack:
                await subscription.ack(event.offset)
            if len(events) == count:
                break
    return events


async def test_ensure_stream_creates_once_and_binds() -> None:
    broker = MemoryBroker()
    assert await broker.ensure_stream("rk") is True
    assert await broker.ensure_stream("rk") is False
    assert await broker.stream_exists("rk")
    assert broker.is_bound("rk")


async def test_exchange_publish_needs_a_binding_and_to_queue_a_queue() -> None:
    broker = MemoryBroker()
    broker.create_stream("as-created")  # the AS declared it; not bound yet
    await broker.publish("as-created", b"dropped")
    await broker.publish("as-created", b"kept", to_queue=True)
    await broker.publish("missing", b"dropped", to_queue=True)
    assert [e.body for e in broker.entries("as-created")] == [b"kept"]
    await broker.ensure_stream("as-created")
    await broker.publish("as-created", b"routed")
    assert [e.body for e in broker.entries("as-created")] == [b"kept", b"routed"]


async def test_start_positions(autojump_clock: trio.testing.MockClock) -> None:
    broker = MemoryBroker(clock=wall_clock)
    await broker.ensure_stream("rk")
    for index in range(3):
        await broker.publish("rk", f"a{index}".encode(), timestamp_ms=index)
    await trio.sleep(10)
    start_second = int(wall_clock())
    for index in range(3):
        await broker.publish("rk", f"b{index}".encode())

    async with broker.subscribe("rk", FromOffset(0), prefetch=10) as sub:
        assert [e.offset for e in await take(sub, 6)] == [0, 1, 2, 3, 4, 5]
    async with broker.subscribe("rk", FromOffset(4), prefetch=10) as sub:
        assert [e.body for e in await take(sub, 2)] == [b"b1", b"b2"]
    async with broker.subscribe("rk", FromTimestamp(start_second), prefetch=10) as sub:
        first = (await take(sub, 1))[0]
        assert (first.body, first.timestamp_ms) == (b"b0", None)
    async with broker.subscribe("rk", FromNext(), prefetch=10) as sub:
        await broker.publish("rk", b"next")
        assert [e.body for e in await take(sub, 1)] == [b"next"]
    async with broker.subscribe("rk", FromOffset(1000), prefetch=10) as sub:
        await broker.publish("rk", b"after the end")
        assert [e.offset for e in await take(sub, 1)] == [7]


async def test_retention_starts_at_the_oldest_retained() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    for index in range(5):
        await broker.publish("rk", str(index).encode())
    broker.truncate_before("rk", 3)
    async with broker.subscribe("rk", FromOffset(0), prefetch=10) as sub:
        assert [e.offset for e in await take(sub, 2)] == [3, 4]


async def test_prefetch_bounds_unacked_events(autojump_clock: trio.testing.MockClock) -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    for index in range(10):
        await broker.publish("rk", str(index).encode())
    async with broker.subscribe("rk", FromOffset(0), prefetch=3) as sub:
        events = await take(sub, 3, ack=False)
        assert sub.in_flight == 3
        with trio.move_on_after(5) as blocked:
            await sub.__aiter__().__anext__()
        assert blocked.cancelled_caught, "a 4th unacked event was delivered"
        await sub.ack(events[1].offset)  # cumulative: acks offsets 0 and 1
        assert sub.in_flight == 1
        more = await take(sub, 2, ack=False)
        assert [e.offset for e in more] == [3, 4]
        assert sub.max_in_flight == 3


async def test_outage_ends_subscriptions_and_subscribe_fails() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    async with broker.subscribe("rk", FromNext(), prefetch=3) as sub:
        assert broker.active_subscriptions == 1
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                with pytest.raises(BrokerUnavailable):
                    await take(sub, 1)

            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            broker.set_available(False)
    assert broker.active_subscriptions == 0
    with pytest.raises(BrokerUnavailable):
        async with broker.subscribe("rk", FromNext(), prefetch=3):
            pass  # pragma: no cover
    with pytest.raises(BrokerUnavailable):
        await broker.publish("rk", b"x")
    broker.append("rk", b"written during the outage")
    broker.set_available(True)
    await broker.wait_available()
    async with broker.subscribe("rk", FromOffset(0), prefetch=3) as sub:
        assert [e.body for e in await take(sub, 1)] == [b"written during the outage"]


async def test_a_subscription_lost_in_an_outage_stays_lost() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    async with broker.subscribe("rk", FromNext(), prefetch=3) as sub:
        broker.set_available(False)
        broker.set_available(True)
        with pytest.raises(BrokerUnavailable):
            await take(sub, 1)


async def test_missing_and_deleted_streams() -> None:
    broker = MemoryBroker()
    with pytest.raises(StreamNotFound):
        async with broker.subscribe("nope", FromNext(), prefetch=1):
            pass  # pragma: no cover
    await broker.ensure_stream("rk")
    async with broker.subscribe("rk", FromNext(), prefetch=1) as sub:
        await broker.delete_stream("rk")
        with pytest.raises(StreamNotFound):
            await take(sub, 1)
    assert not await broker.stream_exists("rk")
    assert not broker.is_bound("rk")
    assert broker.deleted_streams == ["rk"]
    await broker.delete_stream("rk")  # already gone: no error
