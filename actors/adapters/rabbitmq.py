"""The RabbitMQ adapter of the broker port (:mod:`actors.ports.broker`), on :mod:`amqp`.

Resources do not grow with websockets: a small pool of AMQP connections
(``pool_size``, default 2) carries every subscription as one channel each,
placed on the least loaded connection (RabbitMQ negotiates ``channel_max``
2047 per connection by default).

The connection manager (:meth:`RabbitMQBroker.run`) keeps each pool slot
connected: on every successful connect it declares the exchange (durable,
direct) and opens a publisher channel with confirms; when a connection ends
it is removed from the pool at once -- its subscriptions end with
:class:`~actors.ports.broker.BrokerUnavailable` -- and the slot reconnects with
exponential backoff and full jitter (``backoff_initial`` doubling to
``backoff_max``; never a busy loop). ``available`` is true while at least
one pooled connection is up.

Start-up policy: :meth:`~RabbitMQBroker.run` reports *started* as soon as
the first connection is up -- or as soon as the first attempt found the
broker unreachable, so the service starts and reports not-ready while the
slot keeps retrying. Configuration errors are fatal until the broker has
been reached once: bad credentials, an unknown vhost, or an exchange that
exists with another type make ``run()`` raise
:class:`BrokerConfigurationError` (or its subclass
:class:`ExchangeTypeMismatch`) -- before ``started()`` when the broker was
reachable at start. After the first success the same errors are logged and
retried (a broker restarting briefly refuses vhost access).

Acknowledgements are batched per subscription: ``ack(offset)`` turns into
one ``basic.ack`` with ``multiple`` once ``prefetch // 4`` deliveries are
pending, or right away when the consumer's buffer is empty (nothing more to
deliver right now) -- so a slow, steady stream is acknowledged promptly and
a fast one costs one ack frame per quarter window.
"""

from __future__ import annotations

import datetime
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Final

import trio

import amqp
from actors.ports.broker import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    FromNext,
    FromOffset,
    FromTimestamp,
    StartPosition,
    StreamEvent,
    StreamNotFound,
    Subscription,
)

log = logging.getLogger(__name__)

#: Bound on the shielded close of a subscription's channel.
CLOSE_TIMEOUT: Final = 2.0


class BrokerConfigurationError(BrokerError):
    """The broker refuses us for a reason retrying will not fix (credentials, vhost)."""


class ExchangeTypeMismatch(BrokerConfigurationError):
    """The service's exchange exists with another type (or flags) than durable direct."""


class _Pooled:
    """One pooled connection and its (lazily replaced) publisher channel."""

    def __init__(self, connection: amqp.Connection, slot: int) -> None:
        self.connection = connection
        self.slot = slot
        self._publisher: amqp.Channel | None = None
        self._publisher_lock = trio.Lock()

    async def publisher(self) -> amqp.Channel:
        """The confirm-mode publisher channel, reopened if the broker closed it."""
        async with self._publisher_lock:
            channel = self._publisher
            if channel is None or channel.is_closed:
                channel = await self.connection.channel()
                await channel.confirm_select()
                self._publisher = channel
            return channel


def _offset_argument(start: StartPosition) -> Any:
    """The ``x-stream-offset`` value for a start position."""
    if isinstance(start, FromOffset):
        if start.offset < 0:
            raise ValueError("stream offsets are >= 0")
        return start.offset
    if isinstance(start, FromTimestamp):
        return datetime.datetime.fromtimestamp(max(start.seconds, 0), tz=datetime.UTC)
    if isinstance(start, FromNext):
        return "next"
    raise TypeError(f"unknown start position {start!r}")


def _timestamp_ms(message: amqp.DeliveredMessage) -> int | None:
    """The event's own time: ``timestamp_in_ms`` header, else AMQP timestamp * 1000."""
    properties = message.properties
    headers = properties.headers
    if headers:
        value = headers.get("timestamp_in_ms")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    return int(float(value))
                except (ValueError, OverflowError):
                    pass
        elif isinstance(value, float) and value == value:
            return int(value)
    timestamp = properties.timestamp
    if isinstance(timestamp, datetime.datetime):
        return int(timestamp.timestamp() * 1000)
    if timestamp is not None:
        return int(timestamp) * 1000
    return None


def _queue_home_down(error: amqp.NotFound) -> bool:
    """A 404 that means "not yet", not "no such queue".

    For a moment after the broker starts, RabbitMQ answers for a durable
    queue whose process is not up yet with ``404 NOT_FOUND - home node ... of
    durable queue ... is down or inaccessible``. Taking that for a missing
    queue would close live websockets with 1013 right after an outage.
    """
    return "down or inaccessible" in error.reply_text


class RabbitMQSubscription:
    """A live stream consumer on its own channel (implements ``Subscription``)."""

    def __init__(self, channel: amqp.Channel, consumer: amqp.Consumer, prefetch: int) -> None:
        self._channel = channel
        self._consumer = consumer
        #: (offset, delivery tag) of deliveries handed out and not yet acked.
        self._unacked: deque[tuple[int, int]] = deque()
        self._ack_tag = 0
        self._ack_pending = 0
        self._ack_threshold = max(1, prefetch // 4)
        #: Acknowledgement frames sent (observable by tests and metrics).
        self.acks_sent = 0

    def __aiter__(self) -> RabbitMQSubscription:
        return self

    @property
    def buffered(self) -> int:
        return self._consumer.buffered

    async def __anext__(self) -> StreamEvent:
        consumer = self._consumer
        if self._ack_pending and consumer.buffered == 0:
            await self._flush()
        try:
            message = await consumer.__anext__()
        except amqp.ConsumerCancelled as exc:
            raise StreamNotFound("the stream queue was deleted") from exc
        except amqp.NotFound as exc:
            if _queue_home_down(exc):
                raise BrokerUnavailable(str(exc)) from exc
            raise StreamNotFound(str(exc)) from exc
        except amqp.AMQPConnectionError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        except amqp.ChannelClosed as exc:
            raise BrokerUnavailable(f"subscription channel closed: {exc}") from exc
        offset = message.headers.get("x-stream-offset")
        if not isinstance(offset, int):
            raise BrokerError(f"{message.routing_key!r} is not a stream queue (no x-stream-offset)")
        self._unacked.append((offset, message.delivery_tag))
        return StreamEvent(offset, message.body, _timestamp_ms(message))

    async def ack(self, offset: int) -> None:
        """Acknowledge up to ``offset``; sent batched (see the module docstring)."""
        unacked = self._unacked
        while unacked and unacked[0][0] <= offset:
            _, self._ack_tag = unacked.popleft()
            self._ack_pending += 1
        if self._ack_pending and (
            self._ack_pending >= self._ack_threshold or self._consumer.buffered == 0
        ):
            await self._flush()

    async def _flush(self) -> None:
        tag = self._ack_tag
        self._ack_pending = 0
        try:
            await self._channel.basic_ack(tag, multiple=True)
        except amqp.AMQPError as exc:
            raise BrokerUnavailable(f"cannot acknowledge: {exc}") from exc
        self.acks_sent += 1


class RabbitMQBroker:
    """The :class:`~actors.ports.broker.Broker` port on RabbitMQ stream queues."""

    def __init__(
        self,
        url: str,
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
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff must satisfy 0 < backoff_initial <= backoff_max")
        self._parameters = amqp.parse_url(url)  # ValueError names what is wrong
        self.exchange = exchange
        self.pool_size = pool_size
        self._stream_arguments: dict[str, Any] = {
            "x-queue-type": "stream",
            "x-max-age": max_age,
            "x-max-length-bytes": max_length_bytes,
        }
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._operation_timeout = operation_timeout
        self._connection_name = self._parameters.connection_name or connection_name
        #: Connection attempts made (successful or not), for metrics and tests.
        self.connection_attempts = 0
        #: Successful connections after a pooled connection had been lost.
        self.reconnects = 0
        #: Pooled connections lost (closed by the broker, dropped, timed out).
        self.connections_lost = 0
        self._pool: list[_Pooled] = []
        self._available = trio.Event()
        self._ever_connected = False
        self._fatal: BaseException | None = None
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ availability

    @property
    def available(self) -> bool:
        """Whether at least one pooled connection is up."""
        return bool(self._pool)

    async def wait_available(self) -> None:
        """Return once a pooled connection is up (immediately if one is)."""
        while not self._pool:
            await self._available.wait()

    def connection_names(self) -> list[str]:
        """The ``connection_name`` each pool slot announces to the broker."""
        return [f"{self._connection_name}#{slot}" for slot in range(self.pool_size)]

    def _add(self, pooled: _Pooled) -> None:
        self._pool.append(pooled)
        self._available.set()

    def _remove(self, pooled: _Pooled) -> None:
        if pooled in self._pool:
            self._pool.remove(pooled)
        if not self._pool and self._available.is_set():
            self._available = trio.Event()

    # ------------------------------------------------------------------ connection manager

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool connected until cancelled (see the module docstring)."""
        first_outcome = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._slot, 0, first_outcome)
                await first_outcome.wait()
                if self._fatal is None:
                    task_status.started()
                    for slot in range(1, self.pool_size):
                        nursery.start_soon(self._slot, slot, None)
        finally:
            self._nursery = None
            for pooled in list(self._pool):
                self._remove(pooled)
        if self._fatal is not None:
            raise self._fatal

    async def _slot(self, slot: int, first_outcome: trio.Event | None) -> None:
        parameters = replace(self._parameters, connection_name=f"{self._connection_name}#{slot}")
        failures = 0
        was_connected = False
        while True:
            self.connection_attempts += 1
            pooled: _Pooled | None = None
            try:
                async with amqp.connect(parameters) as connection:
                    # Bounded: a broker still booting may accept a connection
                    # and then leave a channel request unanswered.
                    with trio.fail_after(self._operation_timeout):
                        await self._declare_exchange(connection)
                        pooled = _Pooled(connection, slot)
                        await pooled.publisher()
                    if was_connected:
                        self.reconnects += 1
                    was_connected = self._ever_connected = True
                    failures = 0
                    self._add(pooled)
                    if first_outcome is not None:
                        first_outcome.set()
                    log.info("broker connection %d up (%s)", slot, parameters)
                    try:
                        reason = await connection.closed()
                    finally:
                        self._remove(pooled)
                    self.connections_lost += 1
                    log.warning("broker connection %d lost: %s", slot, reason)
            except (
                amqp.AuthenticationError,
                amqp.ConnectionNotAllowed,
                amqp.AccessRefused,
                BrokerConfigurationError,
            ) as exc:
                error = exc if isinstance(exc, BrokerError) else self._configuration_error(exc)
                if not self._ever_connected:
                    self._fatal = error
                    log.error("broker configuration error: %s", error)
                    if first_outcome is not None:
                        first_outcome.set()
                    if self._nursery is not None:
                        self._nursery.cancel_scope.cancel()
                    return
                log.error("broker refused connection %d: %s (retrying)", slot, error)
            except (amqp.AMQPError, trio.TooSlowError) as exc:
                if pooled is not None:
                    self._remove(pooled)
                log.warning("broker connection %d failed: %s", slot, exc or "setup timed out")
            if first_outcome is not None:
                first_outcome.set()  # unreachable at start: start anyway, keep trying
            failures += 1
            delay = min(self._backoff_max, self._backoff_initial * 2 ** min(failures - 1, 30))
            await trio.sleep(delay * random.uniform(0.5, 1.0))

    def _configuration_error(self, exc: BaseException) -> BrokerConfigurationError:
        p = self._parameters
        where = f"{p.username}@{p.host}:{p.port} vhost {p.vhost!r}"
        if isinstance(exc, amqp.AuthenticationError):
            return BrokerConfigurationError(f"RabbitMQ refused the credentials of {where}")
        if isinstance(exc, amqp.ConnectionNotAllowed):
            return BrokerConfigurationError(f"RabbitMQ refused access to {where}: {exc}")
        return BrokerConfigurationError(f"RabbitMQ refused {where}: {exc}")

    async def _declare_exchange(self, connection: amqp.Connection) -> None:
        async with connection.channel() as channel:
            try:
                await channel.exchange_declare(self.exchange, "direct", durable=True)
            except amqp.PreconditionFailed as exc:
                raise ExchangeTypeMismatch(
                    f"exchange {self.exchange!r} exists with another type or flags than "
                    f"durable direct ({exc.reply_text})"
                ) from exc

    # ------------------------------------------------------------------ helpers

    def _pick(self) -> _Pooled:
        """The least loaded pooled connection with a free channel."""
        best: _Pooled | None = None
        for pooled in self._pool:
            connection = pooled.connection
            if connection.is_closed or connection.channel_count >= connection.channel_max:
                continue
            if best is None or connection.channel_count < best.connection.channel_count:
                best = pooled
        if best is None:
            if self._pool:
                raise BrokerUnavailable("every pooled broker connection is out of channels")
            raise BrokerUnavailable("the broker is not connected")
        return best

    @asynccontextmanager
    async def _operation(self) -> AsyncIterator[amqp.Channel]:
        """A fresh channel for one management operation, bounded in time."""
        pooled = self._pick()
        try:
            with trio.fail_after(self._operation_timeout):
                async with pooled.connection.channel() as channel:
                    yield channel
        except amqp.AMQPConnectionError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        except trio.TooSlowError as exc:
            raise BrokerUnavailable("the broker did not answer in time") from exc
        except amqp.NoFreeChannels as exc:
            raise BrokerUnavailable(str(exc)) from exc

    # ------------------------------------------------------------------ the port

    async def ensure_stream(
        self, routing_key: str, *, on_declare: Callable[[], Awaitable[None]] | None = None
    ) -> bool:
        """See :meth:`actors.ports.broker.Broker.ensure_stream`."""
        owned = False
        try:
            async with self._operation() as channel:
                try:
                    await channel.queue_declare(routing_key, passive=True)
                except amqp.NotFound as exc:
                    if _queue_home_down(exc):
                        raise BrokerUnavailable(str(exc)) from exc
                else:
                    await channel.queue_bind(routing_key, self.exchange, routing_key)
                    return False
            if on_declare is not None:
                await on_declare()
            async with self._operation() as channel:
                try:
                    await channel.queue_declare(
                        routing_key, durable=True, arguments=self._stream_arguments
                    )
                    owned = True
                except amqp.PreconditionFailed:
                    pass  # declared meanwhile by someone else, with other arguments
            async with self._operation() as channel:
                await channel.queue_bind(routing_key, self.exchange, routing_key)
        except amqp.ChannelClosed as exc:
            raise BrokerError(f"cannot set up stream {routing_key!r}: {exc}") from exc
        return owned

    async def stream_exists(self, routing_key: str) -> bool:
        """See :meth:`actors.ports.broker.Broker.stream_exists`."""
        try:
            async with self._operation() as channel:
                await channel.queue_declare(routing_key, passive=True)
        except amqp.NotFound as exc:
            if _queue_home_down(exc):
                raise BrokerUnavailable(str(exc)) from exc
            return False
        except amqp.ChannelClosed as exc:
            raise BrokerError(f"cannot check stream {routing_key!r}: {exc}") from exc
        return True

    async def delete_stream(self, routing_key: str) -> None:
        """See :meth:`actors.ports.broker.Broker.delete_stream`."""
        try:
            async with self._operation() as channel:
                await channel.queue_delete(routing_key)
        except amqp.NotFound as exc:
            if _queue_home_down(exc):
                raise BrokerUnavailable(str(exc)) from exc
        except amqp.ChannelClosed as exc:
            raise BrokerError(f"cannot delete stream {routing_key!r}: {exc}") from exc

    @asynccontextmanager
    async def subscribe(
        self, routing_key: str, start: StartPosition, *, prefetch: int
    ) -> AsyncIterator[Subscription]:
        """See :meth:`actors.ports.broker.Broker.subscribe`."""
        if not 1 <= prefetch <= 65535:
            raise ValueError("prefetch must be between 1 and 65535")
        offset = _offset_argument(start)
        pooled = self._pick()
        channel: amqp.Channel | None = None
        try:
            with trio.fail_after(self._operation_timeout):
                channel = await pooled.connection.channel()
                await channel.basic_qos(prefetch)
                consumer = channel.basic_consume(
                    routing_key, arguments={"x-stream-offset": offset}, buffer_size=prefetch
                )
                await consumer.start()
        except BaseException as exc:
            if channel is not None:
                with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                    scope.shield = True
                    await channel.close()
            if isinstance(exc, amqp.NotFound) and _queue_home_down(exc):
                raise BrokerUnavailable(str(exc)) from exc
            if isinstance(exc, amqp.NotFound):
                raise StreamNotFound(f"no stream queue {routing_key!r}") from exc
            if isinstance(exc, amqp.AMQPConnectionError | amqp.NoFreeChannels):
                raise BrokerUnavailable(str(exc)) from exc
            if isinstance(exc, trio.TooSlowError):
                raise BrokerUnavailable("the broker did not answer in time") from exc
            if isinstance(exc, amqp.ChannelClosed):
                raise BrokerError(f"cannot consume {routing_key!r}: {exc}") from exc
            raise
        try:
            yield RabbitMQSubscription(channel, consumer, prefetch)
        finally:
            # basic.cancel before channel.close: RabbitMQ 3.10 forgets a stream
            # consumer whose channel just closes only in its channel process,
            # and the queue's consumer count then grows with every websocket.
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                scope.shield = True
                await consumer.cancel()
                await channel.close()

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        timestamp_ms: int | None = None,
        to_queue: bool = False,
    ) -> None:
        """See :meth:`actors.ports.broker.Broker.publish`."""
        properties = amqp.Properties(
            delivery_mode=2,
            headers={"timestamp_in_ms": timestamp_ms} if timestamp_ms is not None else None,
        )
        pooled = self._pick()
        try:
            with trio.fail_after(self._operation_timeout):
                channel = await pooled.publisher()
                await channel.basic_publish(
                    body,
                    exchange="" if to_queue else self.exchange,
                    routing_key=routing_key,
                    properties=properties,
                )
        except amqp.AMQPConnectionError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        except trio.TooSlowError as exc:
            raise BrokerUnavailable("the broker did not confirm in time") from exc
        except (amqp.ChannelClosed, amqp.PublishNacked) as exc:
            raise BrokerError(f"publish to {routing_key!r} failed: {exc}") from exc


def _conforms(broker: RabbitMQBroker) -> Broker:
    """Static check (mypy): the adapter implements the port."""
    return broker
