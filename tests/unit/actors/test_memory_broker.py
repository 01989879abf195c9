"""What only the in-memory broker does: test controls, retention, outages under a MockClock.

Everything the actors may rely on of both adapters is in the contract suite,
``tests/contract/test_broker_contract.py``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.adapters.memory_broker import MemoryBroker
from actors.ports.broker import BrokerUnavailable, FromNext, FromOffset
from tests.contract.brokers import take


async def test_bookkeeping_of_bindings_and_deletions() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    assert broker.is_bound("rk")
    await broker.delete_stream("rk")
    await broker.delete_stream("rk")
    assert not broker.is_bound("rk")
    assert broker.deleted_streams == ["rk"]


async def test_an_offset_beyond_the_end_starts_at_the_end() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    await broker.publish("rk", b"0")
    async with broker.subscribe("rk", FromOffset(1000), prefetch=10) as sub:
        await broker.publish("rk", b"after the end")
        assert [e.offset for e in await take(sub, 1, ack=True)] == [1]


async def test_retention_starts_at_the_oldest_retained() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    for index in range(5):
        await broker.publish("rk", str(index).encode())
    broker.truncate_before("rk", 3)
    async with broker.subscribe("rk", FromOffset(0), prefetch=10) as sub:
        assert [e.offset for e in await take(sub, 2, ack=True)] == [3, 4]


async def test_flow_control_counters(autojump_clock: trio.testing.MockClock) -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    for index in range(10):
        await broker.publish("rk", str(index).encode())
    async with broker.subscribe("rk", FromOffset(0), prefetch=3) as sub:
        events = await take(sub, 3)
        assert sub.in_flight == 3
        await sub.ack(events[1].offset)  # cumulative: acks offsets 0 and 1
        assert sub.in_flight == 1
        await take(sub, 2)
        assert sub.max_in_flight == 3


async def test_during_an_outage_nothing_works_but_the_log_survives() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    async with broker.subscribe("rk", FromNext(), prefetch=3) as sub:
        assert broker.active_subscriptions == 1
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                with pytest.raises(BrokerUnavailable):
                    await take(sub, 1, ack=True)

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
        assert [e.body for e in await take(sub, 1, ack=True)] == [b"written during the outage"]


async def test_a_subscription_lost_in_an_outage_stays_lost() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("rk")
    async with broker.subscribe("rk", FromNext(), prefetch=3) as sub:
        broker.set_available(False)
        broker.set_available(True)
        with pytest.raises(BrokerUnavailable):
            await take(sub, 1, ack=True)
