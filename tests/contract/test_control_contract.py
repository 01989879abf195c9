"""The control port's contract: the memory fake and RabbitMQ behave alike.

Two replicas' endpoints on one bus (one exchange): what one publishes
reaches every open session, its own included, in order; a session cut off
from the broker ends with ``BrokerUnavailable``, and a new one works once
the broker is back.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

import amqp
from actors.adapters.memory_control import MemoryControl, MemoryControlBus
from actors.adapters.rabbitmq_control import RabbitMQControl, control_exchange
from actors.ports.broker import BrokerUnavailable
from actors.ports.control import ControlChannel
from tests.integration.amqp_client.conftest import close_connection_named
from tests.support.aio import take

from .brokers import AMQP_URL, WAIT, make_rabbitmq_broker, running


@dataclass
class ControlHarness:
    """Two endpoints of one bus, and how to cut the first one off."""

    first: ControlChannel
    second: ControlChannel
    #: Cut the first endpoint off the broker; returns once it may reconnect.
    cut_first: Callable[[], Awaitable[None]]


@asynccontextmanager
async def memory_harness() -> AsyncIterator[ControlHarness]:
    bus = MemoryControlBus()
    first, second = bus.endpoint(), bus.endpoint()

    async def cut() -> None:
        assert isinstance(first, MemoryControl)
        first.cut()
        await trio.lowlevel.checkpoint()
        first.restore()

    yield ControlHarness(first, second, cut)


@asynccontextmanager
async def rabbitmq_harness() -> AsyncIterator[ControlHarness]:
    exchange = f"test-ess-control-{uuid.uuid4()}"
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(running(make_rabbitmq_broker(exchange=exchange)))
        two = await stack.enter_async_context(running(make_rabbitmq_broker(exchange=exchange)))

        async def cut() -> None:
            lost = one.connections_lost + one.pool_size
            await close_connection_named(*one.connection_names())
            with trio.fail_after(30):
                while one.connections_lost < lost:
                    await trio.sleep(0.01)  # polling the pool's own count of closes

        yield ControlHarness(
            RabbitMQControl(one.pool, "one"), RabbitMQControl(two.pool, "two"), cut
        )


@pytest.fixture(params=["memory", "rabbitmq"])
async def control(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[ControlHarness]:
    harness = memory_harness() if request.param == "memory" else rabbitmq_harness()
    async with harness as opened:
        yield opened


async def test_every_open_session_gets_every_message_in_order(control: ControlHarness) -> None:
    async with control.first.session() as first, control.second.session() as second:
        for n in range(5):
            await control.first.publish(f"one {n}".encode())
        await control.second.publish(b"two")
        expected = [f"one {n}".encode() for n in range(5)] + [b"two"]
        assert await take(first, 6, WAIT) == expected
        assert await take(second, 6, WAIT) == expected


async def test_a_cut_off_session_ends_and_a_new_one_works(control: ControlHarness) -> None:
    async with control.second.session() as second:
        with pytest.raises(BrokerUnavailable):
            async with control.first.session() as first:
                await control.cut_first()
                with trio.fail_after(WAIT):
                    async for _ in first:
                        pass
        with trio.fail_after(WAIT):
            await control.first.wait_available()
        async with control.first.session() as first:
            await control.second.publish(b"after")
            assert await take(first, 1, WAIT) == [b"after"]
        assert await take(second, 1, WAIT) == [b"after"]


async def test_the_rabbitmq_control_exchange_goes_with_the_last_session(amqp_url: str) -> None:
    async with rabbitmq_harness() as control:
        assert isinstance(control.first, RabbitMQControl)
        name = control.first.exchange
        assert name.endswith(".control")
        async with (
            control.first.session(),
            amqp.connect(AMQP_URL) as conn,
            conn.channel() as ch,
        ):
            await ch.exchange_declare(name, "fanout", passive=True)
    async with amqp.connect(AMQP_URL) as conn:
        with pytest.raises(amqp.NotFound):
            async with conn.channel() as ch:
                await ch.exchange_declare(name, "fanout", passive=True)
    assert control_exchange("x") == "x.control"


async def test_the_rabbitmq_control_connection_goes_alone(amqp_url: str) -> None:
    """A broker error that closes the control's connection (a 541 does) spares the data ones.

    The control session used to live on a pooled connection serving
    websockets; it has its own now, and losing it ends only the session.
    """
    async with rabbitmq_harness() as control:
        first = control.first
        assert isinstance(first, RabbitMQControl)
        pool = first._pool
        data = [pooled.connection for pooled in pool.connections]
        assert first.connection_name not in pool.connection_names()[: pool.pool_size]
        with pytest.raises(BrokerUnavailable):
            async with first.session() as messages:
                await close_connection_named(first.connection_name)
                with trio.fail_after(WAIT):
                    async for _ in messages:
                        pass
        assert [pooled.connection for pooled in pool.connections] == data
        assert pool.connections_lost == 0
        with trio.fail_after(WAIT):
            await first.wait_available()
        async with first.session() as messages:
            await control.second.publish(b"after")
            assert await take(messages, 1, WAIT) == [b"after"]
