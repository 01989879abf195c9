"""An in-process :class:`~actors.ports.broker.Broker` that behaves like RabbitMQ stream queues.

For unit tests of the actors (under ``trio.testing.MockClock``). Per routing
key it keeps an append-only log of ``(offset, body, own timestamp, broker
second)``; subscriptions read it from a start position with a bounded
window of unacknowledged events, exactly like ``basic.consume`` with a
prefetch on a stream queue. Outages, retention and queue deletion can be
simulated, and counters let tests assert on consumers and flow control.

Modelled RabbitMQ behaviour:

- ``FromOffset`` below the oldest retained entry starts at the oldest;
  beyond the end it starts at the end (the next offset to be written).
- ``FromTimestamp(s)`` starts at the first entry the broker stamped at a
  second ``>= s`` (or at the end).
- Publishing through the exchange reaches a queue only if it is bound
  (:meth:`MemoryBroker.ensure_stream` binds); publishing ``to_queue`` needs
  the queue to exist. Otherwise the message is silently dropped, as an
  unroutable message is.
- An outage (:meth:`MemoryBroker.set_available` with ``False``) ends every
  live subscription with :class:`~actors.ports.broker.BrokerUnavailable`, even if
  the broker is back before the consumer notices; the log survives.
- Deleting a queue ends its subscriptions with :class:`~actors.ports.broker.StreamNotFound`;
  a consumer cancelled while its queue exists (:meth:`MemoryBroker.cancel_consumers`,
  as RabbitMQ does when a stream's leader moves) ends with
  :class:`~actors.ports.broker.SubscriptionLost`.
- A subscription can push (:meth:`MemorySubscription.listen`): an entry
  appended while the consumer has nothing deliverable is offered to the
  listener in the appending task, as the RabbitMQ adapter offers it in
  its connection's reader task.
- A queue that is not a stream queue (:meth:`MemoryBroker.create_queue` with
  ``stream=False``) makes :meth:`~MemoryBroker.ensure_stream` raise
  :class:`~actors.ports.broker.NotAStreamQueue` and stays unbound.

The contract suite (``tests/contract/test_broker_contract.py``) runs the same
tests against this fake and the real RabbitMQ adapter.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Unpack

import trio

from actors.ports.broker import (
    BrokerUnavailable,
    EventListener,
    FromNext,
    FromOffset,
    FromTimestamp,
    NotAStreamQueue,
    OnDeclare,
    PublishOptions,
    StartPosition,
    StreamEvent,
    StreamNotFound,
    SubscriptionLost,
)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One message in a stream queue."""

    offset: int
    body: bytes
    timestamp_ms: int | None
    #: The broker's (chunk) timestamp, whole seconds since the epoch.
    broker_seconds: int


class _Log:
    __slots__ = ("deleted", "entries", "first_offset", "next_offset", "stream", "subscriptions")

    def __init__(self, *, stream: bool = True) -> None:
        self.stream = stream
        self.entries: deque[LogEntry] = deque()
        self.first_offset = 0
        self.next_offset = 0
        self.deleted = False
        self.subscriptions: set[MemorySubscription] = set()

    def wake(self) -> None:
        for subscription in self.subscriptions:
            subscription.wake()


class MemorySubscription:
    """A consumer of one :class:`MemoryBroker` stream, with a prefetch window."""

    def __init__(
        self, broker: MemoryBroker, routing_key: str, log: _Log, start_offset: int, prefetch: int
    ) -> None:
        self.routing_key = routing_key
        self.prefetch = prefetch
        #: The offset of the next event to deliver.
        self.next_offset = start_offset
        #: Highest offset acknowledged so far (``None``: nothing yet).
        self.acked_offset: int | None = None
        #: Events handed to the consumer so far.
        self.delivered = 0
        #: Largest number of unacknowledged events ever in flight.
        self.max_in_flight = 0
        self._broker = broker
        self._log = log
        self._unacked: deque[int] = deque()
        self._lost = False
        self._cancelled = False
        self._closed = False
        self._wakeup = trio.Event()
        self._listener: EventListener | None = None
        #: What the listener raised: iteration ends with it.
        self._failure: Exception | None = None

    @property
    def in_flight(self) -> int:
        """Delivered events not acknowledged yet."""
        return len(self._unacked)

    @property
    def closed(self) -> bool:
        return self._closed

    def wake(self) -> None:
        self._wakeup.set()

    def lose(self) -> None:
        """The connection carrying this consumer dropped."""
        self._lost = True
        self.wake()

    def cancel(self) -> None:
        """The broker cancelled this consumer although its queue still exists."""
        self._cancelled = True
        self.wake()

    def close(self) -> None:
        self._closed = True
        self._log.subscriptions.discard(self)
        self._broker._subscriptions.discard(self)
        self.wake()

    def listen(self, listener: EventListener | None) -> None:
        """Offer ``listener`` each entry as it is logged (the port's ``PushingSubscription``)."""
        self._listener = listener

    def arrived(self, entry: LogEntry) -> None:
        """An entry was logged: offer it to the listener, in the appender's task, else wake.

        As the RabbitMQ adapter does in its reader's task: only while every
        event handed out is acknowledged and nothing else is deliverable.
        """
        listener = self._listener
        if (
            listener is not None
            and self._failure is None
            and not self._unacked
            and self.next_offset == entry.offset
            and not (self._lost or self._cancelled or self._closed)
            and self._broker.available
        ):
            try:
                taken = listener(StreamEvent(entry.offset, entry.body, entry.timestamp_ms))
            except Exception as error:
                self._failure = error
                taken = False
            if taken:
                self.next_offset = entry.offset + 1
                self.delivered += 1
                self.max_in_flight = max(self.max_in_flight, 1)
                self._broker.delivered += 1
                self.acked_offset = entry.offset
                return
        self.wake()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    @property
    def buffered(self) -> int:
        """Entries deliverable now: logged past our position, within the prefetch window."""
        if self._lost or self._cancelled or self._closed or self._log.deleted:
            return 0
        if not self._broker.available:
            return 0
        log = self._log
        start = max(self.next_offset, log.first_offset)
        logged = log.first_offset + len(log.entries) - start
        return max(0, min(self.prefetch - len(self._unacked), logged))

    async def __anext__(self) -> StreamEvent:
        # Like the RabbitMQ consumer, an event already deliverable is taken
        # without a cancel point (iteration under a cancelled scope still
        # yields what is buffered). Unlike it, this yields to the scheduler
        # once: the actor tests' timing under a MockClock relies on it.
        await trio.lowlevel.cancel_shielded_checkpoint()
        while True:
            if self._failure is not None:
                raise self._failure
            if self._lost or not self._broker.available:
                raise BrokerUnavailable("the broker connection was lost")
            if self._log.deleted:
                raise StreamNotFound(self.routing_key)
            if self._cancelled:
                raise SubscriptionLost(f"the broker cancelled the consumer of {self.routing_key!r}")
            if self._closed:
                raise StopAsyncIteration
            if len(self._unacked) < self.prefetch:
                entry = self._next_entry()
                if entry is not None:
                    self.next_offset = entry.offset + 1
                    self._unacked.append(entry.offset)
                    self.delivered += 1
                    self.max_in_flight = max(self.max_in_flight, len(self._unacked))
                    self._broker.delivered += 1
                    return StreamEvent(entry.offset, entry.body, entry.timestamp_ms)
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def _next_entry(self) -> LogEntry | None:
        log = self._log
        if self.next_offset < log.first_offset:  # retention overtook us
            self.next_offset = log.first_offset
        index = self.next_offset - log.first_offset
        if index < len(log.entries):
            return log.entries[index]
        return None

    async def ack(self, offset: int) -> None:
        await trio.lowlevel.checkpoint()
        if self._lost or not self._broker.available:
            raise BrokerUnavailable("the broker connection was lost")
        while self._unacked and self._unacked[0] <= offset:
            self._unacked.popleft()
        if self.acked_offset is None or offset > self.acked_offset:
            self.acked_offset = offset
        self.wake()


class MemoryBroker:
    """The :class:`~actors.ports.broker.Broker` port over in-process stream logs.

    ``clock`` gives the broker's wall time in seconds (``time.time`` by
    default); tests pass a function of ``trio.current_time()`` so that the
    broker's timestamps follow the MockClock.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        self._logs: dict[str, _Log] = {}
        self._bound: set[str] = set()
        self._available = True
        self._available_event = trio.Event()
        self._available_event.set()
        self._subscriptions: set[MemorySubscription] = set()
        #: Subscriptions ever attached.
        self.subscriptions_opened = 0
        #: Events handed to consumers in total.
        self.delivered = 0
        #: Routing keys of the queues deleted through :meth:`delete_stream`.
        self.deleted_streams: list[str] = []
        self._deleted = trio.Event()

    # -- test controls ----------------------------------------------------

    @property
    def active_subscriptions(self) -> int:
        """Consumers attached right now."""
        return len(self._subscriptions)

    @property
    def subscriptions(self) -> list[MemorySubscription]:
        """The live consumers, oldest first."""
        return sorted(self._subscriptions, key=id)

    def set_available(self, available: bool) -> None:
        """Simulate the broker connection going down (``False``) or coming back."""
        if available == self._available:
            return
        self._available = available
        if available:
            self._available_event.set()
        else:
            self._available_event = trio.Event()
            for subscription in list(self._subscriptions):
                subscription.lose()

    def create_stream(self, routing_key: str) -> None:
        """Declare a stream queue the way the Account Server does (not bound)."""
        self.create_queue(routing_key, stream=True)

    def create_queue(self, routing_key: str, *, stream: bool = False) -> None:
        """Declare a queue someone else made: a classic one, unless ``stream`` (not bound)."""
        self._logs.setdefault(routing_key, _Log(stream=stream))

    def cancel_consumers(self, routing_key: str) -> int:
        """Cancel every consumer of the queue, which stays; returns how many."""
        log = self._logs[routing_key]
        for subscription in log.subscriptions:
            subscription.cancel()
        return len(log.subscriptions)

    def append(self, routing_key: str, body: bytes, *, timestamp_ms: int | None = None) -> int:
        """Write straight into the queue's log, even during an outage; returns the offset."""
        log = self._logs.get(routing_key)
        if log is None:
            raise StreamNotFound(routing_key)
        entry = LogEntry(log.next_offset, body, timestamp_ms, int(self._clock()))
        log.entries.append(entry)
        log.next_offset += 1
        for subscription in list(log.subscriptions):
            subscription.arrived(entry)
        return entry.offset

    def truncate_before(self, routing_key: str, offset: int) -> None:
        """Retention: drop every entry below ``offset``."""
        log = self._logs[routing_key]
        while log.entries and log.entries[0].offset < offset:
            log.entries.popleft()
        log.first_offset = max(log.first_offset, min(offset, log.next_offset))

    def entries(self, routing_key: str) -> list[LogEntry]:
        """The retained log of a queue."""
        return list(self._logs[routing_key].entries)

    def is_bound(self, routing_key: str) -> bool:
        return routing_key in self._bound

    def has_stream(self, routing_key: str) -> bool:
        """Whether the queue exists (readable during an outage, unlike :meth:`stream_exists`)."""
        return routing_key in self._logs

    async def wait_deleted(self, routing_key: str) -> None:
        """Return once the queue of ``routing_key`` does not exist."""
        while routing_key in self._logs:
            await self._deleted.wait()

    # -- the Broker port --------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    async def wait_available(self) -> None:
        await self._available_event.wait()

    def _check_available(self) -> None:
        if not self._available:
            raise BrokerUnavailable("the broker is unavailable")

    async def ensure_stream(self, routing_key: str, *, on_declare: OnDeclare | None = None) -> bool:
        await trio.lowlevel.checkpoint()
        self._check_available()
        created = routing_key not in self._logs
        if created and on_declare is not None:
            await on_declare()
            self._check_available()
            created = routing_key not in self._logs  # declared meanwhile by someone else?
        log = self._logs.setdefault(routing_key, _Log())
        if not log.stream:
            raise NotAStreamQueue(f"queue {routing_key!r} exists and is not a stream queue")
        self._bound.add(routing_key)
        return created

    async def stream_exists(self, routing_key: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._check_available()
        return routing_key in self._logs

    async def delete_stream(self, routing_key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._check_available()
        self._bound.discard(routing_key)
        log = self._logs.pop(routing_key, None)
        if log is not None:
            log.deleted = True
            log.wake()
            self.deleted_streams.append(routing_key)
            self._deleted.set()
            self._deleted = trio.Event()

    @asynccontextmanager
    async def subscribe(
        self, routing_key: str, start: StartPosition, *, prefetch: int
    ) -> AsyncIterator[MemorySubscription]:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        await trio.lowlevel.checkpoint()
        self._check_available()
        log = self._logs.get(routing_key)
        if log is None:
            raise StreamNotFound(routing_key)
        subscription = MemorySubscription(
            self, routing_key, log, self._start_offset(log, start), prefetch
        )
        log.subscriptions.add(subscription)
        self._subscriptions.add(subscription)
        self.subscriptions_opened += 1
        try:
            yield subscription
        finally:
            subscription.close()

    @staticmethod
    def _start_offset(log: _Log, start: StartPosition) -> int:
        match start:
            case FromNext():
                return log.next_offset
            case FromOffset(offset):
                return min(max(offset, log.first_offset), log.next_offset)
            case FromTimestamp(seconds):
                for entry in log.entries:
                    if entry.broker_seconds >= seconds:
                        return entry.offset
                return log.next_offset
        raise TypeError(f"not a start position: {start!r}")  # pragma: no cover

    async def publish(
        self, routing_key: str, body: bytes, **options: Unpack[PublishOptions]
    ) -> None:
        await trio.lowlevel.checkpoint()
        self._check_available()
        to_queue = options.get("to_queue", False)
        routed = routing_key in self._logs and (to_queue or routing_key in self._bound)
        if routed:
            self.append(routing_key, body, timestamp_ms=options.get("timestamp_ms"))
