"""The control port on RabbitMQ: a fanout exchange, one exclusive queue per replica.

The exchange ``<ESS_EXCHANGE>.control`` is a durable fanout, so every
replica's queue gets every message. It is also auto-delete: the broker
removes it once the last replica's queue is gone, so test runs and renamed
deployments leave nothing behind (a session declares it again each time;
publishing is only done while a session, hence a binding, exists: a publish
to a missing exchange would close the shared publisher channel). Each session declares its own
queue, named after the replica id plus a session number, exclusive and
auto-delete: the broker deletes it when the session's connection goes (a
``kill -9`` included), so nothing is left behind and nobody reads another's
messages. A new session uses a new name, because the broker may still hold
the exclusive queue of a connection it has not noticed is dead yet.

Messages are transient (delivery mode 1) and consumed without acks: a
control message is only useful to a replica connected now; one that was cut
off re-reads the registry instead.

The control has an AMQP connection of its own
(:meth:`~actors.adapters.rabbitmq_pool.ConnectionPool.dedicated`: the same
URLs, backoff and set-up as the pool's, announced as ``<name>.control``),
never one serving websockets: a broker error on a control channel (a 541, a
404 for an exchange gone) can then close at worst the control connection,
never a data connection and its subscriptions. The session uses one channel
on it; publishing goes through its own confirm-mode publisher channel,
bounded by the pool's operation timeout. Losing the control connection ends
the session with ``BrokerUnavailable`` (the coordinator opens a new one
once the connection is back).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import amqp
from actors.adapters.rabbitmq_errors import broker_errors
from actors.adapters.rabbitmq_pool import ConnectionPool
from actors.ports.broker import BrokerUnavailable
from actors.ports.control import ControlChannel

#: Bound on letting go of a session's consumer and channel.
_RELEASE_TIMEOUT = 2.0


def control_exchange(exchange: str) -> str:
    """The control exchange's name beside the service's exchange ``exchange``."""
    return f"{exchange}.control"


class RabbitMQControl:
    """:class:`~actors.ports.control.ControlChannel` on a connection of its own."""

    def __init__(self, pool: ConnectionPool, replica_id: str) -> None:
        self._pool = pool
        self._connection = pool.dedicated("control")
        self.exchange = control_exchange(pool.exchange)
        self._replica_id = replica_id
        self._sessions = 0

    @property
    def connection_name(self) -> str:
        """The name the control's own connection announces to the broker."""
        return self._connection.name

    async def wait_available(self) -> None:
        await self._connection.wait_available()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncIterator[bytes]]:
        self._sessions += 1
        queue = f"{self.exchange}.{self._replica_id}.{self._sessions}"
        channel: amqp.Channel | None = None
        consumer: amqp.Consumer | None = None
        try:
            with (
                broker_errors("cannot open the control queue", channel_closed=BrokerUnavailable),
                trio.fail_after(self._pool.operation_timeout),
            ):
                await self._connection.wait_available()  # (just started: it comes up)
                channel = await self._connection.current().connection.channel()
                await channel.exchange_declare(
                    self.exchange, "fanout", durable=True, auto_delete=True
                )
                await channel.queue_declare(queue, exclusive=True, auto_delete=True)
                await channel.queue_bind(queue, self.exchange)
                consumer = channel.basic_consume(queue, no_ack=True, exclusive=True)
                await consumer.start()
            yield _bodies(consumer)
        finally:
            if channel is not None:
                await _release(consumer, channel)

    async def publish(self, body: bytes) -> None:
        properties = amqp.Properties(delivery_mode=1, content_type="application/json")
        with broker_errors("cannot publish a control message", channel_closed=BrokerUnavailable):
            pooled = self._connection.current()
            with trio.fail_after(self._pool.operation_timeout):
                channel = await pooled.publisher()
                await channel.basic_publish(
                    body, exchange=self.exchange, routing_key="", properties=properties
                )


async def _bodies(consumer: amqp.Consumer) -> AsyncIterator[bytes]:
    with broker_errors("the control queue was lost", channel_closed=BrokerUnavailable):
        async for message in consumer:
            yield message.body
    raise BrokerUnavailable("the control queue's consumer ended")


async def _release(consumer: amqp.Consumer | None, channel: amqp.Channel) -> None:
    """Cancel the consumer and close the channel, shielded and bounded."""
    with trio.move_on_after(_RELEASE_TIMEOUT, shield=True):
        if consumer is not None and not channel.is_closed:
            await consumer.cancel()
        if not channel.is_closed:
            await channel.close()


def _conforms(control: RabbitMQControl) -> ControlChannel:
    """Static check (mypy): the adapter implements the port."""
    return control
