"""The RabbitMQ adapter of the broker port (:mod:`actors.ports.broker`), on :mod:`amqp`.

Four modules beside this one share the work, one job each:

- :mod:`actors.adapters.rabbitmq_pool`: the connections (connect, reconnect
  with backoff, declare the exchange, the publisher channel, the least
  loaded connection) and the start-up policy;
- :mod:`actors.adapters.rabbitmq_subscription`: one consumer, its
  acknowledgements and the reading of each message;
- :mod:`actors.adapters.rabbitmq_errors`: the one translation of amqp errors
  into the port's errors;
- :mod:`actors.adapters.rabbitmq_queue_type`: whether an existing queue is a
  stream queue, asked without changing it.

This module holds the port's operations, each a few broker calls inside
:func:`~actors.adapters.rabbitmq_errors.broker_errors`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Unpack

import trio

import amqp
from actors.adapters.rabbitmq_errors import broker_errors
from actors.adapters.rabbitmq_pool import (
    BrokerConfigurationError,
    ConnectionPool,
    ExchangeTypeMismatch,
)
from actors.adapters.rabbitmq_queue_type import is_stream_queue
from actors.adapters.rabbitmq_subscription import open_subscription
from actors.backoff import BackoffPolicy
from actors.ports.broker import (
    Broker,
    BrokerError,
    NotAStreamQueue,
    OnDeclare,
    PublishOptions,
    StartPosition,
    StreamNotFound,
    Subscription,
)

__all__ = ["BrokerConfigurationError", "ExchangeTypeMismatch", "RabbitMQBroker"]

log = logging.getLogger(__name__)


class RabbitMQBroker:
    """The :class:`~actors.ports.broker.Broker` port on RabbitMQ stream queues."""

    def __init__(
        self,
        url: str | Sequence[str],
        exchange: str,
        *,
        max_age: str = "7D",
        max_length_bytes: int = 1_000_000_000,
        pool_size: int = 2,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        operation_timeout: float = 10.0,
        connection_name: str = "event-stream-service",
    ) -> None:
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff must satisfy 0 < backoff_initial <= backoff_max")
        self.pool = ConnectionPool(
            [amqp.parse_url(one) for one in ([url] if isinstance(url, str) else url)],
            exchange,
            pool_size=pool_size,
            backoff=BackoffPolicy(backoff_initial, backoff_max, jitter=0.5),
            operation_timeout=operation_timeout,
            connection_name=connection_name,
        )
        self.exchange = exchange
        self._stream_arguments: dict[str, Any] = {
            "x-queue-type": "stream",
            "x-max-age": max_age,
            "x-max-length-bytes": max_length_bytes,
        }

    # ------------------------------------------------------------------ the pool

    @property
    def pool_size(self) -> int:
        return self.pool.pool_size

    @property
    def connection_attempts(self) -> int:
        """Connection attempts made (successful or not), for metrics and tests."""
        return self.pool.connection_attempts

    @property
    def reconnects(self) -> int:
        """Successful connections after a pooled connection had been lost."""
        return self.pool.reconnects

    @property
    def connections_lost(self) -> int:
        """Pooled connections lost (closed by the broker, dropped, timed out)."""
        return self.pool.connections_lost

    def connection_names(self) -> list[str]:
        """The ``connection_name`` each pool slot announces to the broker."""
        return self.pool.connection_names()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool connected until cancelled (see :mod:`~actors.adapters.rabbitmq_pool`)."""
        await self.pool.run(task_status=task_status)

    @property
    def available(self) -> bool:
        """Whether at least one pooled connection is up."""
        return self.pool.available

    async def wait_available(self) -> None:
        """Return once a pooled connection is up (immediately if one is)."""
        await self.pool.wait_available()

    # ------------------------------------------------------------------ the port

    async def ensure_stream(self, routing_key: str, *, on_declare: OnDeclare | None = None) -> bool:
        """See :meth:`actors.ports.broker.Broker.ensure_stream`.

        An existing queue's type is told by :func:`~.rabbitmq_queue_type.is_stream_queue`
        (an equivalence probe that changes nothing). Between a passive
        declare saying "missing" and our declare, someone else may declare
        the queue: a 406 then sends us down the existing-queue path.
        """
        with broker_errors(f"cannot set up stream {routing_key!r}"):
            if await self.stream_exists(routing_key):
                await self._use_existing(routing_key)
                return False
            if on_declare is not None:
                await on_declare()
            sent = declared = refused = False
            try:
                try:
                    async with self.pool.operation() as channel:
                        sent = True
                        await channel.queue_declare(
                            routing_key, durable=True, arguments=self._stream_arguments
                        )
                except amqp.PreconditionFailed:
                    refused = True  # declared meanwhile by someone else, otherwise
                else:
                    declared = True
                    await self._bind(routing_key)
            except BaseException as exc:
                # Declared (or maybe declared: interrupted before the answer):
                # never leave a queue behind that nothing records as ours.
                if declared or (sent and not isinstance(exc, amqp.ChannelClosed)):
                    await self._delete_quietly(routing_key)
                raise
            if refused:
                await self._use_existing(routing_key)
        return not refused

    async def _use_existing(self, routing_key: str) -> None:
        """Bind an existing stream queue as it is; refuse any other queue untouched."""
        if not await is_stream_queue(self.pool.operation, routing_key):
            raise NotAStreamQueue(f"queue {routing_key!r} exists and is not a stream queue")
        await self._bind(routing_key)

    async def _bind(self, routing_key: str) -> None:
        async with self.pool.operation() as channel:
            await channel.queue_bind(routing_key, self.exchange, routing_key)

    async def _delete_quietly(self, routing_key: str) -> None:
        """Undo our declare: shielded and bounded, failures logged (then the
        caller's durable record of its intent is what finds the queue again)."""
        with trio.move_on_after(self.pool.operation_timeout, shield=True) as scope:
            try:
                await self.delete_stream(routing_key)
            except BrokerError as exc:
                log.warning("could not delete the queue %r just declared: %s", routing_key, exc)
        if scope.cancelled_caught:
            log.warning("could not delete the queue %r just declared: timed out", routing_key)

    async def stream_exists(self, routing_key: str) -> bool:
        """See :meth:`actors.ports.broker.Broker.stream_exists`."""
        try:
            with broker_errors(f"cannot check stream {routing_key!r}"):
                try:
                    async with self.pool.operation() as channel:
                        await channel.queue_declare(routing_key, passive=True)
                except amqp.ResourceLocked:
                    pass  # exclusive to another connection: it exists
        except StreamNotFound:
            return False
        return True

    async def delete_stream(self, routing_key: str) -> None:
        """See :meth:`actors.ports.broker.Broker.delete_stream`."""
        try:
            with broker_errors(f"cannot delete stream {routing_key!r}"):
                async with self.pool.operation() as channel:
                    await channel.queue_delete(routing_key)
        except StreamNotFound:
            pass  # already gone

    @asynccontextmanager
    async def subscribe(
        self, routing_key: str, start: StartPosition, *, prefetch: int
    ) -> AsyncIterator[Subscription]:
        """See :meth:`actors.ports.broker.Broker.subscribe` and :mod:`~.rabbitmq_subscription`."""
        async with open_subscription(
            self.pool.pick().connection,
            routing_key,
            start,
            prefetch=prefetch,
            attach_timeout=self.pool.operation_timeout,
            queue_exists=lambda: self.stream_exists(routing_key),
        ) as subscription:
            yield subscription

    async def publish(
        self, routing_key: str, body: bytes, **options: Unpack[PublishOptions]
    ) -> None:
        """See :meth:`actors.ports.broker.Broker.publish`."""
        timestamp_ms = options.get("timestamp_ms")
        properties = amqp.Properties(
            delivery_mode=2,
            headers={"timestamp_in_ms": timestamp_ms} if timestamp_ms is not None else None,
        )
        exchange = "" if options.get("to_queue", False) else self.exchange
        with broker_errors(f"publish to {routing_key!r} failed"):
            pooled = self.pool.pick()
            with trio.fail_after(self.pool.operation_timeout):
                channel = await pooled.publisher()
                await channel.basic_publish(
                    body, exchange=exchange, routing_key=routing_key, properties=properties
                )


def _conforms(broker: RabbitMQBroker) -> Broker:
    """Static check (mypy): the adapter implements the port."""
    return broker
