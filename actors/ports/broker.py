"""The broker port: everything an actor needs from a message broker.

Actors never speak AMQP. They speak this small protocol, which has two
adapters: :mod:`actors.adapters.rabbitmq` (the real broker, through :mod:`amqp`) and
:mod:`actors.adapters.memory_broker` (an in-process stream log for fast unit tests). Keeping
the port narrow is what lets the actor logic be tested under a MockClock.

Positions are *stream offsets* (0-based) here; the public *ordinal* (1-based)
is a websocket concern and is computed at the edge (ordinal = offset + 1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypedDict, Unpack, runtime_checkable


class BrokerError(Exception):
    """Base class of the errors a broker adapter raises."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached now (or the connection was lost).

    Subscriptions end with this when the connection drops; the caller waits
    with :meth:`Broker.wait_available` and resubscribes from its cursor.
    """


class StreamNotFound(BrokerError):
    """The stream queue of the routing key does not exist in the broker."""


class NotAStreamQueue(BrokerError):
    """A queue named after the routing key exists but is not a stream queue.

    The service never uses or changes such a queue (SPEC section 2): the
    internal API answers 409 and records nothing.
    """


class SubscriptionLost(BrokerError):
    """The consumer ended although its stream queue still exists: resubscribe now.

    Raised by a subscription's iteration once it has yielded everything it
    had buffered, when the adapter gave the consumer up on its own (its
    buffer passed its bound while the client was not reading) or the broker
    cancelled it for a reason other than the queue's deletion (a stream
    leader moving). The owner resubscribes from its cursor + 1 at once, with
    no pause: nothing is lost and the broker is not being refused.
    """


@dataclass(frozen=True, slots=True)
class FromOffset:
    """Start at this stream offset (or the oldest retained one, if it is gone)."""

    offset: int


@dataclass(frozen=True, slots=True)
class FromTimestamp:
    """Start at the first chunk the broker stamped at or after this second.

    The broker positions by whole seconds; finer filtering on the events' own
    timestamps is the caller's job.
    """

    seconds: int


@dataclass(frozen=True, slots=True)
class FromNext:
    """Start with the first event published after the subscription is attached."""


StartPosition = FromOffset | FromTimestamp | FromNext


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One message read from a stream queue.

    ``timestamp_ms`` is the event's *own* time if it carries one (the
    ``timestamp_in_ms`` header, else the AMQP ``timestamp`` property times
    1000); ``None`` when it carries none.
    """

    offset: int
    body: bytes
    timestamp_ms: int | None


class PublishOptions(TypedDict, total=False):
    """How :meth:`Broker.publish` sends one event; each key may be left out."""

    #: Sent as the ``timestamp_in_ms`` header (no header when absent or ``None``).
    timestamp_ms: int | None
    #: ``True``: straight into the stream queue of that name (the default
    #: exchange), as the upstream AS versions 2 and 3 do. Default: through
    #: the service's exchange with the routing key.
    to_queue: bool


#: What :meth:`Broker.ensure_stream` awaits right before it declares a queue.
OnDeclare = Callable[[], Awaitable[None]]


class Subscription(Protocol):
    """A live consumer of one stream queue, with its own position.

    Iterating yields events in stream order. Delivery is flow-controlled: the
    broker sends at most ``prefetch`` events that have not been acknowledged,
    so a consumer that stops acknowledging stops the flow (backpressure).
    """

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    @property
    def buffered(self) -> int:
        """Events that iteration can yield right now, without waiting.

        The connection actor writes these to its websocket in one go: one
        socket write for a burst of frames instead of one per frame.
        """
        ...

    async def ack(self, offset: int) -> None:
        """Acknowledge every event up to and including ``offset``.

        Adapters may batch acknowledgements; this never blocks on the
        network for long.
        """
        ...


#: Offered an event the moment it arrives; ``True`` if it took it completely.
EventListener = Callable[[StreamEvent], bool]


@runtime_checkable
class PushingSubscription(Subscription, Protocol):
    """A subscription that can also hand each event over as it arrives.

    A consumer shared by many websockets (the live-tail hub) waits for its
    next event most of the time; taking the event in the task that received
    it from the broker saves a wake-up of its own task per event.
    """

    def listen(self, listener: EventListener | None) -> None:
        """Offer ``listener`` each event that arrives while iteration has nothing buffered.

        It is called synchronously, from whichever task received the event
        (it must not block, and it decides itself whether now is a moment
        it can take one, e.g. only while its task waits in the iteration,
        so that order holds). An event it takes (``True``) is acknowledged
        with it and never yielded by the iteration; one it leaves
        (``False``) is yielded as usual. If it raises, iteration ends with
        that error. ``None`` stops the offers.
        """
        ...


class Broker(Protocol):
    """What the actors need from a broker."""

    @property
    def available(self) -> bool:
        """Whether the broker connection is up right now."""
        ...

    async def wait_available(self) -> None:
        """Return once the broker connection is up (immediately if it is)."""
        ...

    async def ensure_stream(self, routing_key: str, *, on_declare: OnDeclare | None = None) -> bool:
        """Make sure a stream queue named ``routing_key`` exists and is bound.

        An existing stream queue is used as it is (never redeclared with
        other arguments). An existing queue of another type (classic,
        quorum; also a non-durable or exclusive one) raises
        :class:`NotAStreamQueue` and is left untouched: not bound, not
        redeclared. A missing one is declared as a stream queue with the
        configured retention, after awaiting ``on_declare`` (the caller
        records its intent durably there; if it raises, nothing is declared
        and the error propagates). Either way the queue is bound to the
        service's exchange with the routing key. A queue this call declared
        is deleted again if the bind fails, times out or the caller is
        cancelled: ensure_stream never orphans a queue itself.

        Returns ``True`` when this call created the queue (the service then
        owns it). Raises :class:`BrokerUnavailable`.
        """
        ...

    async def stream_exists(self, routing_key: str) -> bool:
        """Whether the stream queue exists. Raises :class:`BrokerUnavailable`."""
        ...

    async def delete_stream(self, routing_key: str) -> None:
        """Delete the stream queue (no error if it is already gone)."""
        ...

    def subscribe(
        self, routing_key: str, start: StartPosition, *, prefetch: int
    ) -> AbstractAsyncContextManager[Subscription]:
        """Attach a consumer; on entry the consumer is attached.

        Everything published after ``__aenter__`` returns is delivered (for
        :class:`FromNext`). Leaving the context cancels the consumer, within
        a bound even if the broker does not answer. Raises
        :class:`StreamNotFound` or :class:`BrokerUnavailable` on entry;
        iteration raises :class:`BrokerUnavailable` if the connection drops,
        :class:`StreamNotFound` if the queue was deleted and
        :class:`SubscriptionLost` if the consumer ended although the queue
        still exists. A message the adapter cannot place in the stream is
        skipped, never an error.
        """
        ...

    async def publish(
        self, routing_key: str, body: bytes, **options: Unpack[PublishOptions]
    ) -> None:
        """Publish one event and wait for the broker's confirm (see :class:`PublishOptions`)."""
        ...
