"""The RabbitMQ adapter's connection pool: a few AMQP connections, kept up.

Resources do not grow with websockets: a small pool of AMQP connections
(``pool_size``, default 2) carries every subscription as one channel each,
placed on the least loaded connection (RabbitMQ negotiates ``channel_max``
2047 per connection by default).

:meth:`ConnectionPool.run` keeps each pool slot connected: on every
successful connect it declares the exchange (durable, direct) and opens a
publisher channel with confirms; when a connection ends it is removed from
the pool at once -- its subscriptions end with
:class:`~actors.ports.broker.BrokerUnavailable` -- and the slot reconnects
with the service's one :class:`~actors.backoff.Backoff` (``backoff_initial``
doubling to ``backoff_max``, half jittered; never a busy loop).
``available`` is true while at least one pooled connection is up.

Several broker URLs (``ESS_AMQP_URL`` may list the nodes of a cluster): slot
``i`` starts with URL ``i`` (so the slots spread over the nodes) and moves to
the next URL after every lost connection or failed attempt, so a node that
went away is left at once and the next reconnect tries another.

Start-up policy: :meth:`~ConnectionPool.run` reports *started* as soon as
the first connection is up -- or as soon as the first attempt found the
broker unreachable, so the service starts and reports not-ready while the
slot keeps retrying. Configuration errors are fatal until the broker has
been reached once: bad credentials, an unknown vhost, or an exchange that
exists with another type make ``run()`` raise
:class:`BrokerConfigurationError` (or its subclass
:class:`ExchangeTypeMismatch`) -- before ``started()`` when the broker was
reachable at start. After the first success the same errors are logged and
retried (a broker restarting briefly refuses vhost access).

The port's operations (:mod:`actors.adapters.rabbitmq`) only ask this pool
for a connection (:meth:`ConnectionPool.pick`), a bounded management channel
(:meth:`ConnectionPool.operation`) or the publisher channel.

Dedicated connections (:meth:`ConnectionPool.dedicated`): one more slot,
kept up by the same loop (same URLs, same backoff, same set-up) but never
handed out by :meth:`~ConnectionPool.pick`, for a user whose channel errors
must not touch the connections serving websockets (the replicas' control
session). It announces ``<name>.<purpose>`` (not ``<name>#<slot>``), is
logged by its purpose and is left out of the pool's counters and of
``available``. Its slot number follows the pool's, so with several URLs it
starts on another node than slot 0.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

import amqp
from actors.backoff import Backoff, BackoffPolicy
from actors.ports.broker import BrokerError, BrokerUnavailable

log = logging.getLogger(__name__)


class BrokerConfigurationError(BrokerError):
    """The broker refuses us for a reason retrying will not fix (credentials, vhost)."""


class ExchangeTypeMismatch(BrokerConfigurationError):
    """The service's exchange exists with another type (or flags) than durable direct."""


class PooledConnection:
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


class DedicatedConnection:
    """A connection of the pool's broker kept for one user, outside :meth:`~ConnectionPool.pick`."""

    def __init__(self, purpose: str, name: str) -> None:
        self.purpose = purpose
        #: The ``connection_name`` it announces to the broker.
        self.name = name
        self._pooled: PooledConnection | None = None
        self._up = trio.Event()

    def current(self) -> PooledConnection:
        """The connection now; raises ``BrokerUnavailable`` while it is down."""
        pooled = self._pooled
        if pooled is None or pooled.connection.is_closed:
            raise BrokerUnavailable(f"the broker connection {self.name} is down")
        return pooled

    async def wait_available(self) -> None:
        """Return once the connection is up (immediately if it is)."""
        while self._pooled is None:
            await self._up.wait()

    def slot_hooks(
        self,
    ) -> tuple[Callable[[PooledConnection], None], Callable[[PooledConnection], None]]:
        """What the pool's slot loop calls when the connection comes up and goes."""
        return self._add, self._remove

    def _add(self, pooled: PooledConnection) -> None:
        self._pooled = pooled
        self._up.set()

    def _remove(self, pooled: PooledConnection) -> None:
        if self._pooled is pooled:
            self._pooled = None
            self._up = trio.Event()


class ConnectionPool:
    """``pool_size`` connections to one broker, each slot reconnected on its own."""

    def __init__(
        self,
        endpoints: Sequence[amqp.ConnectionParameters],
        exchange: str,
        *,
        pool_size: int,
        backoff: BackoffPolicy,
        operation_timeout: float,
        connection_name: str,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not endpoints:
            raise ValueError("at least one broker URL is needed")
        self._endpoints = tuple(endpoints)
        self.exchange = exchange
        self.pool_size = pool_size
        self.operation_timeout = operation_timeout
        self._backoff = backoff
        self._connection_name = self._endpoints[0].connection_name or connection_name
        #: Connection attempts made (successful or not), for metrics and tests.
        self.connection_attempts = 0
        #: Successful connections after a pooled connection had been lost.
        self.reconnects = 0
        #: Pooled connections lost (closed by the broker, dropped, timed out).
        self.connections_lost = 0
        #: The connections up right now.
        self.connections: list[PooledConnection] = []
        self._available = trio.Event()
        self._ever_connected = False
        self._fatal: BaseException | None = None
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._dedicated: list[DedicatedConnection] = []

    # ------------------------------------------------------------------ availability

    @property
    def available(self) -> bool:
        """Whether at least one pooled connection is up."""
        return bool(self.connections)

    async def wait_available(self) -> None:
        """Return once a pooled connection is up (immediately if one is)."""
        while not self.connections:
            await self._available.wait()

    def connection_names(self) -> list[str]:
        """The ``connection_name`` each slot announces to the broker (dedicated ones last)."""
        pooled = [f"{self._connection_name}#{slot}" for slot in range(self.pool_size)]
        return pooled + [dedicated.name for dedicated in self._dedicated]

    def dedicated(self, purpose: str) -> DedicatedConnection:
        """One more connection, for ``purpose`` only (see the module docstring).

        May be asked before or while :meth:`run` runs; it connects once the
        pool has started and is closed with the pool.
        """
        dedicated = DedicatedConnection(purpose, f"{self._connection_name}.{purpose}")
        self._dedicated.append(dedicated)
        if self._started and self._nursery is not None:
            self._start_dedicated(len(self._dedicated) - 1)
        return dedicated

    def _start_dedicated(self, index: int) -> None:
        assert self._nursery is not None
        dedicated = self._dedicated[index]
        self._nursery.start_soon(self._slot, self.pool_size + index, None, dedicated)

    def _add(self, pooled: PooledConnection) -> None:
        self.connections.append(pooled)
        self._available.set()

    def _remove(self, pooled: PooledConnection) -> None:
        if pooled in self.connections:
            self.connections.remove(pooled)
        if not self.connections and self._available.is_set():
            self._available = trio.Event()

    # ------------------------------------------------------------------ the manager

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool connected until cancelled (see the module docstring)."""
        first_outcome = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._slot, 0, first_outcome)
                await first_outcome.wait()
                if self._fatal is None:
                    self._started = True
                    task_status.started()
                    for slot in range(1, self.pool_size):
                        nursery.start_soon(self._slot, slot, None)
                    for index in range(len(self._dedicated)):
                        self._start_dedicated(index)
        finally:
            self._nursery = None
            self._started = False
            for pooled in list(self.connections):
                self._remove(pooled)
        if self._fatal is not None:
            raise self._fatal

    async def _slot(
        self,
        slot: int,
        first_outcome: trio.Event | None,
        dedicated: DedicatedConnection | None = None,
    ) -> None:
        """Keep slot ``slot`` connected: a pooled one, or ``dedicated``'s.

        A dedicated connection is logged by its purpose and left out of the
        pool's counters (they describe the connections serving websockets).
        """
        add, remove = (self._add, self._remove) if dedicated is None else dedicated.slot_hooks()
        counted = dedicated is None
        label = str(slot) if dedicated is None else dedicated.purpose
        name = self.connection_names()[slot]
        endpoints = self._endpoints
        backoff = Backoff(self._backoff)
        was_connected = False
        for attempt in itertools.count(slot):
            parameters = replace(endpoints[attempt % len(endpoints)], connection_name=name)
            self.connection_attempts += counted
            try:
                async with amqp.connect(parameters) as connection:
                    pooled = await self._set_up(connection, slot)
                    if was_connected:
                        self.reconnects += counted
                    was_connected = self._ever_connected = True
                    backoff.reset()
                    add(pooled)
                    if first_outcome is not None:
                        first_outcome.set()
                    log.info("broker connection %s up (%s)", label, parameters)
                    try:
                        reason = await connection.closed()
                    finally:
                        remove(pooled)
                    self.connections_lost += counted
                    log.warning("broker connection %s lost: %s", label, reason)
            except (
                amqp.AuthenticationError,
                amqp.ConnectionNotAllowed,
                amqp.AccessRefused,
                BrokerConfigurationError,
            ) as exc:
                error = (
                    exc
                    if isinstance(exc, BrokerError)
                    else self._configuration_error(exc, parameters)
                )
                if not self._ever_connected:
                    self._fatal = error
                    log.error("broker configuration error: %s", error)
                    if first_outcome is not None:
                        first_outcome.set()
                    if self._nursery is not None:
                        self._nursery.cancel_scope.cancel()
                    return
                log.error("broker refused connection %s: %s (retrying)", label, error)
            except (amqp.AMQPError, trio.TooSlowError) as exc:
                log.warning("broker connection %s failed: %s", label, exc or "setup timed out")
            if first_outcome is not None:
                first_outcome.set()  # unreachable at start: start anyway, keep trying
            await backoff.sleep()

    async def _set_up(self, connection: amqp.Connection, slot: int) -> PooledConnection:
        """Declare the exchange and open the publisher channel of a new connection.

        Bounded: a broker still booting may accept a connection and then
        leave a channel request unanswered.
        """
        with trio.fail_after(self.operation_timeout):
            async with connection.channel() as channel:
                try:
                    await channel.exchange_declare(self.exchange, "direct", durable=True)
                except amqp.PreconditionFailed as exc:
                    raise ExchangeTypeMismatch(
                        f"exchange {self.exchange!r} exists with another type or flags than "
                        f"durable direct ({exc.reply_text})"
                    ) from exc
            pooled = PooledConnection(connection, slot)
            await pooled.publisher()
        return pooled

    def _configuration_error(
        self, exc: BaseException, p: amqp.ConnectionParameters
    ) -> BrokerConfigurationError:
        where = f"{p.username}@{p.host}:{p.port} vhost {p.vhost!r}"
        if isinstance(exc, amqp.AuthenticationError):
            return BrokerConfigurationError(f"RabbitMQ refused the credentials of {where}")
        if isinstance(exc, amqp.ConnectionNotAllowed):
            return BrokerConfigurationError(f"RabbitMQ refused access to {where}: {exc}")
        return BrokerConfigurationError(f"RabbitMQ refused {where}: {exc}")

    # ------------------------------------------------------------------ for the port

    def pick(self) -> PooledConnection:
        """The least loaded pooled connection with a free channel."""
        best: PooledConnection | None = None
        for pooled in self.connections:
            connection = pooled.connection
            if connection.is_closed or connection.channel_count >= connection.channel_max:
                continue
            if best is None or connection.channel_count < best.connection.channel_count:
                best = pooled
        if best is None:
            if self.connections:
                raise BrokerUnavailable("every pooled broker connection is out of channels")
            raise BrokerUnavailable("the broker is not connected")
        return best

    @asynccontextmanager
    async def operation(self) -> AsyncIterator[amqp.Channel]:
        """A fresh channel for one management operation, bounded in time.

        amqp errors pass through: the caller translates them, with
        :func:`~actors.adapters.rabbitmq_errors.broker_errors`, around this.
        """
        pooled = self.pick()
        with trio.fail_after(self.operation_timeout):
            async with pooled.connection.channel() as channel:
                yield channel
