"""The broker adapters under contract, each behind one small harness.

A harness gives a contract test what the port does not: unique routing
keys (cleaned up afterwards), queues made by "someone else" (the Account
Server's unbound stream, a classic queue), a way to count a queue's
messages, and the faults to provoke (the connection dropping, a consumer
cancelled by the broker while its queue stays). :func:`open_harness` makes
one of each kind; ``tests/contract/conftest.py`` parametrises every
contract test over them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import trio

import amqp
from actors.adapters.memory_broker import MemoryBroker
from actors.adapters.rabbitmq import RabbitMQBroker
from actors.ports.broker import Broker, StreamEvent, Subscription
from tests.integration.amqp_client.conftest import _unique_names, close_connection_named

AMQP_URL: Final = os.environ.get("ESS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
#: Routing keys with characters a name pattern would refuse: they must all work.
KEY_PREFIX: Final = "test-ess | 'stream' ключ"
KINDS: Final = ("memory", "rabbitmq")
#: Bound on waiting for events in a broker test (seconds; MockClock seconds in unit tests).
WAIT: Final = 10.0


class BrokerHarness(Protocol):
    """One adapter and the controls a contract test needs around it."""

    @property
    def broker(self) -> Broker: ...

    def key(self) -> str:
        """A routing key no other test uses; its queue is deleted after the test."""
        ...

    async def create_queue(self, key: str, *, stream: bool, **arguments: Any) -> None:
        """Declare a queue as someone else would (not bound to the service's exchange)."""
        ...

    async def message_count(self, key: str) -> int:
        """Messages in a (classic) queue."""
        ...

    async def drop_connection(self) -> None:
        """The broker connection drops; return once the broker is reachable again."""
        ...

    @property
    def cancels_consumers(self) -> bool:
        """Whether :meth:`cancel_consumers` can be provoked on this broker."""
        ...

    def cancel_consumers(self, key: str) -> None:
        """The broker cancels every consumer of the queue, which stays."""
        ...


async def take(
    subscription: Subscription, count: int, *, ack: bool = False, timeout: float = WAIT
) -> list[StreamEvent]:
    """The next ``count`` events (each acknowledged if ``ack``), within ``timeout``."""
    events: list[StreamEvent] = []
    with trio.fail_after(timeout):
        async for event in subscription:
            events.append(event)
            if ack:
                await subscription.ack(event.offset)
            if len(events) == count:
                break
    return events


def make_rabbitmq_broker(
    url: str | Sequence[str] = AMQP_URL, exchange: str | None = None, **kwargs: Any
) -> RabbitMQBroker:
    """A RabbitMQ adapter with a unique exchange and connection name, quick to retry."""
    return RabbitMQBroker(
        url,
        exchange or f"test-ess-exchange-{uuid.uuid4()}",
        pool_size=2,
        backoff_initial=0.05,
        backoff_max=0.5,
        operation_timeout=5.0,
        connection_name=f"test-broker-{uuid.uuid4()}",
        **kwargs,
    )


@asynccontextmanager
async def running(broker: RabbitMQBroker) -> AsyncIterator[RabbitMQBroker]:
    """The adapter with its whole pool connected; its exchange deleted afterwards.

    (``run`` reports started with the first slot; tests counting channels
    must not see the others connect meanwhile.)
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        with trio.fail_after(WAIT):
            while len(broker.pool.connections) < broker.pool_size:
                await trio.sleep(0.01)
        yield broker
        nursery.cancel_scope.cancel()
    async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
        await ch.exchange_delete(broker.exchange)


@asynccontextmanager
async def routing_keys() -> AsyncIterator[Callable[[], str]]:
    """Make unique routing keys; every queue of one is deleted afterwards."""
    async with _unique_names(KEY_PREFIX, amqp.Channel.queue_delete) as make:
        yield make


class MemoryHarness:
    def __init__(self) -> None:
        self.broker = MemoryBroker()

    def key(self) -> str:
        return f"{KEY_PREFIX}-{uuid.uuid4()}"

    async def create_queue(self, key: str, *, stream: bool, **arguments: Any) -> None:
        self.broker.create_queue(key, stream=stream)  # (retention is not modelled)

    async def message_count(self, key: str) -> int:
        return len(self.broker.entries(key))

    async def drop_connection(self) -> None:
        self.broker.set_available(False)
        self.broker.set_available(True)

    cancels_consumers = True

    def cancel_consumers(self, key: str) -> None:
        assert self.broker.cancel_consumers(key) > 0


class RabbitMQHarness:
    def __init__(self, broker: RabbitMQBroker, key: Callable[[], str]) -> None:
        self.broker = broker
        self.key = key

    async def create_queue(self, key: str, *, stream: bool, **arguments: Any) -> None:
        if stream:
            arguments["x-queue-type"] = "stream"
        async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
            await ch.queue_declare(key, durable=True, arguments=arguments)

    async def message_count(self, key: str) -> int:
        async with amqp.connect(AMQP_URL) as conn, conn.channel() as ch:
            return (await ch.queue_declare(key, passive=True)).message_count

    async def drop_connection(self) -> None:
        lost = self.broker.connections_lost + self.broker.pool_size
        await close_connection_named(*self.broker.connection_names())
        with trio.fail_after(30):
            while self.broker.connections_lost < lost:  # the pool's own count of closes
                await trio.sleep(0.01)
            await self.broker.wait_available()

    cancels_consumers = False

    def cancel_consumers(self, key: str) -> None:
        raise NotImplementedError("a single RabbitMQ node cancels only when the queue goes")


@asynccontextmanager
async def open_harness(kind: str) -> AsyncIterator[BrokerHarness]:
    """A harness of ``kind`` (one of :data:`KINDS`), torn down afterwards."""
    if kind == "memory":
        yield MemoryHarness()
        return
    async with routing_keys() as key, running(make_rabbitmq_broker()) as broker:
        yield RabbitMQHarness(broker, key)
