"""The broker port's contract: the same tests against MemoryBroker and RabbitMQBroker.

What passes here for both is what the actors may rely on; the fake is
proven against the real broker. Adapter-specific behaviour stays in
``tests/unit/actors/test_memory_broker.py`` and
``tests/integration/test_rabbitmq_broker.py``.
"""

from __future__ import annotations

import time

import pytest
import trio

from actors.ports.broker import (
    Broker,
    BrokerUnavailable,
    FromNext,
    FromOffset,
    FromTimestamp,
    NotAStreamQueue,
    PushingSubscription,
    StreamEvent,
    StreamNotFound,
    Subscription,
    SubscriptionLost,
)

from .brokers import WAIT, BrokerHarness, take


async def new_stream(harness: BrokerHarness, events: int = 0) -> tuple[Broker, str]:
    """The broker and a new stream of ``events`` events: ``b"0"`` stamped 1000, ``b"1"``, ..."""
    broker, key = harness.broker, harness.key()
    await broker.ensure_stream(key)
    for index in range(events):
        await broker.publish(key, b"%d" % index, timestamp_ms=1000 + index)
    return broker, key


async def assert_nothing_more(subscription: Subscription, why: str) -> None:
    """No further event arrives, even given the broker time to overrun a window."""
    with trio.move_on_after(0.5):
        await subscription.__aiter__().__anext__()
        pytest.fail(why)


async def assert_routed(harness: BrokerHarness, key: str) -> None:
    """What is published to the exchange with ``key`` arrives in the queue."""
    async with harness.broker.subscribe(key, FromNext(), prefetch=10) as subscription:
        await harness.broker.publish(key, b"routed")
        [event] = await take(subscription, 1)
    assert event.body == b"routed"


# --------------------------------------------------------------------------- ensure_stream


async def test_ensure_stream_creates_once_and_binds(harness: BrokerHarness) -> None:
    broker, key = harness.broker, harness.key()
    assert not await broker.stream_exists(key)
    assert await broker.ensure_stream(key) is True
    assert await broker.stream_exists(key)
    assert await broker.ensure_stream(key) is False  # exists now: used as it is
    await assert_routed(harness, key)


@pytest.mark.parametrize("retention", [{}, {"x-max-age": "1h"}], ids=["plain", "other retention"])
async def test_an_existing_stream_queue_is_used_as_it_is_and_bound(
    harness: BrokerHarness, retention: dict[str, str]
) -> None:
    key = harness.key()
    await harness.create_queue(key, stream=True, **retention)  # as the Account Server does
    await harness.broker.publish(key, b"dropped: not bound yet")
    called = False

    async def on_declare() -> None:
        nonlocal called
        called = True

    assert await harness.broker.ensure_stream(key, on_declare=on_declare) is False
    assert not called  # nothing was declared
    await assert_routed(harness, key)


async def test_a_queue_that_is_not_a_stream_is_refused_and_left_untouched(
    harness: BrokerHarness,
) -> None:
    broker, key = harness.broker, harness.key()
    await harness.create_queue(key, stream=False)
    with pytest.raises(NotAStreamQueue):
        await broker.ensure_stream(key)
    await broker.publish(key, b"to the exchange")  # not bound: routed nowhere
    assert await harness.message_count(key) == 0
    assert await broker.stream_exists(key)  # still there


async def test_on_declare_is_awaited_right_before_the_queue_is_declared(
    harness: BrokerHarness,
) -> None:
    broker, key = harness.broker, harness.key()
    seen: list[bool] = []

    async def on_declare() -> None:
        seen.append(await broker.stream_exists(key))

    assert await broker.ensure_stream(key, on_declare=on_declare) is True
    assert seen == [False]
    assert await broker.stream_exists(key)


async def test_when_on_declare_fails_nothing_is_declared(harness: BrokerHarness) -> None:
    broker, key = harness.broker, harness.key()

    async def on_declare() -> None:
        raise OSError("the registry cannot record the intent")

    with pytest.raises(OSError, match="cannot record"):
        await broker.ensure_stream(key, on_declare=on_declare)
    assert not await broker.stream_exists(key)


async def test_delete_stream_is_idempotent(harness: BrokerHarness) -> None:
    broker, key = await new_stream(harness)
    await broker.delete_stream(key)
    assert not await broker.stream_exists(key)
    await broker.delete_stream(key)  # already gone: no error


# --------------------------------------------------------------------------- publish


async def test_exchange_publish_needs_a_binding_and_to_queue_a_queue(
    harness: BrokerHarness,
) -> None:
    broker, key = harness.broker, harness.key()
    await harness.create_queue(key, stream=True)  # the AS made it; not bound
    await broker.publish(key, b"lost: not bound")
    await broker.publish(key, b"direct", to_queue=True)
    await broker.publish(harness.key(), b"no such queue", to_queue=True)  # dropped, no error
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        [event] = await take(subscription, 1)
        assert (event.offset, event.body) == (0, b"direct")
        await broker.ensure_stream(key)
        await broker.publish(key, b"routed")
        [event] = await take(subscription, 1)
    assert (event.offset, event.body) == (1, b"routed")


async def test_the_event_time_round_trips(harness: BrokerHarness) -> None:
    broker, key = await new_stream(harness)
    await broker.publish(key, b"stamped", timestamp_ms=1_700_000_000_123)
    await broker.publish(key, b"unstamped")
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        events = await take(subscription, 2)
    assert events == [
        StreamEvent(0, b"stamped", 1_700_000_000_123),
        StreamEvent(1, b"unstamped", None),
    ]


# --------------------------------------------------------------------------- positions


async def test_subscribe_from_offset_and_from_next(harness: BrokerHarness) -> None:
    broker, key = await new_stream(harness, 10)
    async with broker.subscribe(key, FromOffset(6), prefetch=10) as subscription:
        events = await take(subscription, 4)
    assert [(e.offset, e.body, e.timestamp_ms) for e in events] == [
        (i, b"%d" % i, 1000 + i) for i in range(6, 10)
    ]
    async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
        await broker.publish(key, b"next")
        [event] = await take(subscription, 1)
    assert (event.offset, event.body) == (10, b"next")


async def test_subscribe_from_timestamp(harness: BrokerHarness) -> None:
    broker, key = await new_stream(harness)
    for i in range(3):
        await broker.publish(key, b"old %d" % i)
    # The broker stamps in whole seconds: start the next batch in a new second.
    boundary = int(time.time()) + 1
    await trio.sleep(boundary - time.time() + 0.05)  # waiting for the wall clock itself
    for i in range(3):
        await broker.publish(key, b"new %d" % i)
    async with broker.subscribe(key, FromTimestamp(boundary), prefetch=10) as subscription:
        events = await take(subscription, 3)
    assert [e.body for e in events] == [b"new 0", b"new 1", b"new 2"]
    async with broker.subscribe(key, FromTimestamp(0), prefetch=10) as subscription:
        [event] = await take(subscription, 1)
    assert event.offset == 0


# --------------------------------------------------------------------------- flow control


async def test_no_more_than_prefetch_unacknowledged_events_arrive(harness: BrokerHarness) -> None:
    broker, key = await new_stream(harness, 30)
    async with broker.subscribe(key, FromOffset(0), prefetch=5) as subscription:
        first = await take(subscription, 5)
        await assert_nothing_more(subscription, "a sixth event arrived with five unacked")
        await subscription.ack(first[1].offset)  # cumulative: acknowledges offsets 0 and 1
        more = await take(subscription, 2)
        await assert_nothing_more(subscription, "an eighth event arrived with five unacked")
    assert [e.offset for e in first + more] == list(range(7))


async def test_buffered_counts_what_iteration_yields_without_waiting(
    harness: BrokerHarness,
) -> None:
    broker, key = await new_stream(harness, 5)
    async with broker.subscribe(key, FromOffset(0), prefetch=3) as subscription:
        await take(subscription, 1)
        with trio.fail_after(WAIT):
            while subscription.buffered < 2:  # the rest of the window is on its way
                await trio.sleep(0.01)
        assert subscription.buffered == 2  # within the prefetch window, never beyond
        with trio.CancelScope() as scope:
            scope.cancel()  # so a wait would show: buffered events need none
            events = [await subscription.__aiter__().__anext__() for _ in range(2)]
        assert [e.offset for e in events] == [1, 2]
        assert subscription.buffered == 0


async def test_acknowledged_subscriptions_read_the_whole_stream(harness: BrokerHarness) -> None:
    broker, key = await new_stream(harness, 50)
    async with broker.subscribe(key, FromOffset(0), prefetch=4) as subscription:
        events = await take(subscription, 50, ack=True)
    assert [e.offset for e in events] == list(range(50))


# --------------------------------------------------------------------------- push


class Taker:
    """A listener that takes events unless told to leave them; records what it took."""

    def __init__(self) -> None:
        self.taking = True
        self.taken: list[StreamEvent] = []
        self._arrived = trio.Event()

    def __call__(self, event: StreamEvent) -> bool:
        if not self.taking:
            return False
        self.taken.append(event)
        self._arrived.set()
        return True

    async def wait_for(self, count: int) -> list[StreamEvent]:
        with trio.fail_after(WAIT):
            while len(self.taken) < count:
                await self._arrived.wait()
                self._arrived = trio.Event()
        return self.taken


async def test_a_pushing_subscription_hands_events_over_in_order_and_acks_what_was_taken(
    harness: BrokerHarness,
) -> None:
    broker, key = await new_stream(harness)
    async with broker.subscribe(key, FromNext(), prefetch=2) as subscription:
        assert isinstance(subscription, PushingSubscription)
        taker = Taker()
        subscription.listen(taker)
        await broker.publish(key, b"0", timestamp_ms=1000)
        assert await taker.wait_for(1) == [StreamEvent(0, b"0", 1000)]

        taker.taking = False  # left: the iteration yields it
        await broker.publish(key, b"1")
        [left] = await take(subscription, 1)
        assert (left.offset, left.body) == (1, b"1")
        await subscription.ack(left.offset)

        # Taken events count as acknowledged: far more than the prefetch window arrive.
        taker.taking = True
        for index in range(2, 8):
            await broker.publish(key, b"%d" % index)
        taken = await taker.wait_for(7)
        assert [(e.offset, e.body) for e in taken[1:]] == [(i, b"%d" % i) for i in range(2, 8)]

        subscription.listen(None)  # no more offers
        await broker.publish(key, b"8")
        [last] = await take(subscription, 1)
        assert (last.offset, last.body) == (8, b"8")
        assert len(taker.taken) == 7


async def test_a_listener_that_raises_ends_the_iteration_with_its_error(
    harness: BrokerHarness,
) -> None:
    class ListenerBug(Exception):
        pass

    def broken(event: StreamEvent) -> bool:
        raise ListenerBug(f"at offset {event.offset}")

    broker, key = await new_stream(harness)
    async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
        assert isinstance(subscription, PushingSubscription)
        subscription.listen(broken)
        await broker.publish(key, b"0")
        with trio.fail_after(WAIT), pytest.raises(ListenerBug, match="at offset 0"):
            await subscription.__aiter__().__anext__()


# --------------------------------------------------------------------------- how it ends


async def test_subscribe_to_a_missing_queue_raises_stream_not_found(
    harness: BrokerHarness,
) -> None:
    with pytest.raises(StreamNotFound):
        async with harness.broker.subscribe(harness.key(), FromOffset(0), prefetch=10):
            pass  # pragma: no cover
    assert harness.broker.available


async def test_a_queue_deleted_under_a_subscription_ends_it_with_stream_not_found(
    harness: BrokerHarness,
) -> None:
    broker, key = await new_stream(harness)
    async with broker.subscribe(key, FromNext(), prefetch=10) as subscription:
        await broker.delete_stream(key)
        with trio.fail_after(WAIT), pytest.raises(StreamNotFound):
            async for _ in subscription:
                pass  # pragma: no cover
    assert broker.available


async def test_a_consumer_cancelled_while_its_queue_exists_loses_the_subscription(
    harness: BrokerHarness,
) -> None:
    if not harness.cancels_consumers:
        # RabbitMQ 3.10 on one node cancels a stream consumer only when its
        # queue is deleted (a leader moving needs a cluster); its mapping of
        # the cancel is proven by tests/unit/test_rabbitmq_subscription.py.
        pytest.skip("a broker-side cancel of a live stream queue needs a RabbitMQ cluster")
    broker, key = await new_stream(harness, 3)
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        events = await take(subscription, 1, ack=True)
        harness.cancel_consumers(key)
        with trio.fail_after(WAIT), pytest.raises(SubscriptionLost):
            async for _ in subscription:
                pass  # pragma: no cover
    # Resubscribing at once from the cursor + 1 loses nothing.
    async with broker.subscribe(key, FromOffset(events[-1].offset + 1), prefetch=10) as again:
        assert [e.offset for e in await take(again, 2)] == [1, 2]


async def test_a_dropped_connection_ends_subscriptions_and_resubscription_resumes(
    harness: BrokerHarness,
) -> None:
    broker, key = await new_stream(harness, 5)
    async with broker.subscribe(key, FromOffset(0), prefetch=10) as subscription:
        events = await take(subscription, 5, ack=True)
        await harness.drop_connection()
        with trio.fail_after(WAIT), pytest.raises(BrokerUnavailable):
            async for _ in subscription:
                pass  # pragma: no cover
    with trio.fail_after(WAIT):
        await broker.wait_available()
    await broker.publish(key, b"5")
    async with broker.subscribe(key, FromOffset(events[-1].offset + 1), prefetch=10) as again:
        [event] = await take(again, 1)
    assert (event.offset, event.body) == (5, b"5")
