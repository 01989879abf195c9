"""One stream consumer of the RabbitMQ adapter, on its own channel.

:func:`open_subscription` attaches it and always lets it go again:

- **Attaching** is bounded by the operation timeout; a start that fails or
  is cancelled closes the half-open channel again. A broker that cannot
  serve the consumer now (``BrokerUnavailable``: among others RabbitMQ 3.10's
  406 for a stream without a member on the connection's node) is logged at
  WARNING with its reason; the owner retries with its backoff.
- **Leaving** never depends on the broker answering: the ``basic.cancel``
  is bounded on its own (``CANCEL_TIMEOUT``), then the channel close is
  bounded on its own (``CLOSE_TIMEOUT``), whatever happened to the cancel,
  both shielded so a cancelled owner still lets go. (Cancel before close:
  RabbitMQ 3.10 forgets a stream consumer whose channel just closes only in
  its channel process, and the queue's consumer count then grows with every
  websocket.)

How iteration ends (the port's promises, :mod:`actors.ports.broker`):

- the broker cancelled the consumer (``basic.cancel``): a passive declare on
  a fresh channel (bounded) tells a deleted queue
  (:class:`~actors.ports.broker.StreamNotFound`, clients closed with 1013)
  from one that still exists (:class:`~actors.ports.broker.SubscriptionLost`,
  the owner resubscribes from its cursor + 1 at once);
- the consumer passed its buffer bound (``amqp.ConsumerOverflow``):
  :class:`~actors.ports.broker.SubscriptionLost`, after what it buffered;
- everything else as :func:`~actors.adapters.rabbitmq_errors.broker_errors`
  says (a closed channel or connection: ``BrokerUnavailable``).

Per-message containment: a message is read defensively (the decoder is
lenient, so any header may have any type). One without a usable
``x-stream-offset`` is skipped -- acknowledged with its neighbours, logged
at WARNING once per run of such messages with the offset before it -- and
never ends the subscription. An unusable ``timestamp_in_ms`` or
``timestamp`` counts as absent (:func:`event_timestamp_ms`).

Acknowledgements are batched: ``ack(offset)`` turns into one ``basic.ack``
with ``multiple`` once ``prefetch // 4`` deliveries are pending, or right
away when the consumer's buffer is empty (nothing more to deliver right
now) -- so a slow, steady stream is acknowledged promptly and a fast one
costs one ack frame per quarter window. (The AMQP connection's writer then
lets the acks of quiet channels share one socket write.)

Push (:meth:`RabbitMQSubscription.listen`): the listener is the amqp
consumer's, so it runs in the connection's reader task. A message is
offered only while every event handed out is acknowledged and the consumer
has nothing buffered (so order holds and a taken message can be
acknowledged at once), and only with a usable offset (the iteration skips
the others and logs them).
"""

from __future__ import annotations

import datetime
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import trio

import amqp
from actors.adapters.rabbitmq_errors import broker_errors
from actors.ports.broker import (
    BrokerUnavailable,
    EventListener,
    FromNext,
    FromOffset,
    FromTimestamp,
    StartPosition,
    StreamEvent,
    SubscriptionLost,
)

log = logging.getLogger(__name__)

#: Bound on the ``basic.cancel`` when a subscription is left.
CANCEL_TIMEOUT: Final = 2.0
#: Bound on the channel close when a subscription is left (after the cancel).
CLOSE_TIMEOUT: Final = 2.0
#: The latest time an event may carry: 9999-12-31T23:59:59.999Z, in ms.
MAX_TIMESTAMP_MS: Final = 253_402_300_799_999
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MILLISECOND: Final = datetime.timedelta(milliseconds=1)


def offset_argument(start: StartPosition) -> Any:
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


# --------------------------------------------------------------------------- reading a message


def _in_range(ms: int) -> int | None:
    return ms if 0 <= ms <= MAX_TIMESTAMP_MS else None


def _header_ms(value: object) -> int | None:
    """A ``timestamp_in_ms`` header: an integer, or the ASCII digits of one; else absent."""
    if value is None:  # the usual case, first: this runs for every event
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _in_range(value)
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        text = value.strip()
        if 0 < len(text) <= 20 and text.isascii() and text.isdigit():
            return _in_range(int(text))
    return None


def _property_ms(value: object) -> int | None:
    """The AMQP ``timestamp`` property (seconds, or a datetime) in ms; else absent."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        try:
            return _in_range((value - _EPOCH) // _MILLISECOND)
        except (ArithmeticError, ValueError, TypeError):
            return None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return _in_range(value * 1000)


def _header(message: amqp.DeliveredMessage, name: str) -> object:
    headers = message.properties.headers
    return headers.get(name) if isinstance(headers, dict) else None


def event_timestamp_ms(message: amqp.DeliveredMessage) -> int | None:
    """The event's own time: ``timestamp_in_ms`` header, else AMQP timestamp * 1000.

    Either counts as absent unless it is a time from 1970 to the end of year
    9999 (0 to :data:`MAX_TIMESTAMP_MS`): a header that is huge, negative,
    text that is not an integer, a float, non-ASCII bytes or any other type
    falls back to the property; a property that is not a valid datetime or
    integer in range gives ``None``.
    """
    ms = _header_ms(_header(message, "timestamp_in_ms"))
    return ms if ms is not None else _property_ms(message.properties.timestamp)


def _stream_offset(message: amqp.DeliveredMessage) -> int | None:
    offset = _header(message, "x-stream-offset")
    if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
        return offset
    return None


# --------------------------------------------------------------------------- the subscription


class ConsumerLike(Protocol):
    """What a subscription uses of an ``amqp.Consumer`` (tests drive it without a socket)."""

    @property
    def queue(self) -> str: ...

    @property
    def buffered(self) -> int: ...

    listener: amqp.DeliveryListener | None

    def __anext__(self) -> Awaitable[amqp.DeliveredMessage]: ...


class AckChannel(Protocol):
    """What a subscription uses of its ``amqp.Channel``."""

    def basic_ack_nowait(self, delivery_tag: int, *, multiple: bool = False) -> None: ...


class RabbitMQSubscription:
    """A live stream consumer on its own channel (implements ``PushingSubscription``).

    ``queue_exists`` answers, after a broker-sent cancel, whether the stream
    queue is still there (bounded by the caller).
    """

    def __init__(
        self,
        channel: AckChannel,
        consumer: ConsumerLike,
        prefetch: int,
        queue_exists: Callable[[], Awaitable[bool]],
    ) -> None:
        self._channel = channel
        self._consumer = consumer
        self._queue_exists = queue_exists
        #: (offset, delivery tag) of deliveries handed out and not yet acked.
        self._unacked: deque[tuple[int, int]] = deque()
        self._ack_tag = 0
        self._ack_pending = 0
        self._ack_threshold = max(1, prefetch // 4)
        self._last_offset: int | None = None
        self._skipping = False
        self._listener: EventListener | None = None
        #: Acknowledgement frames sent (observable by tests and metrics).
        self.acks_sent = 0
        #: Messages skipped for want of a usable ``x-stream-offset``.
        self.skipped = 0

    def __aiter__(self) -> RabbitMQSubscription:
        return self

    @property
    def buffered(self) -> int:
        return self._consumer.buffered

    async def __anext__(self) -> StreamEvent:
        while True:
            if self._ack_pending and (
                self._consumer.buffered == 0 or self._ack_pending >= self._ack_threshold
            ):
                self._flush()  # (pending past the threshold: skipped messages)
            message = await self._receive()
            offset = _stream_offset(message)
            if offset is None:
                self._skip(message)
                continue
            self._unacked.append((offset, message.delivery_tag))
            self._last_offset = offset
            self._skipping = False
            return StreamEvent(offset, message.body, event_timestamp_ms(message))

    def listen(self, listener: EventListener | None) -> None:
        """Offer ``listener`` each event as it arrives (see the module docstring)."""
        self._listener = listener
        self._consumer.listener = None if listener is None else self._offer

    def _offer(self, message: amqp.DeliveredMessage) -> bool:
        """The amqp consumer's listener: hand the event over, and acknowledge it if taken."""
        listener = self._listener
        if listener is None or self._unacked:
            return False
        offset = _stream_offset(message)
        if offset is None:
            return False  # the iteration skips it, and logs it
        if not listener(StreamEvent(offset, message.body, event_timestamp_ms(message))):
            return False
        self._last_offset = offset
        self._skipping = False
        self._ack_tag = message.delivery_tag
        self._ack_pending += 1
        self._flush()
        return True

    async def _receive(self) -> amqp.DeliveredMessage:
        """The next delivery; an amqp error becomes the port's error.

        The translation (:func:`broker_errors`) is entered only once the
        consumer raised: a generator context manager and the message it
        formats cost ~3 % of a replay's samples when entered per message.
        """
        try:
            return await self._consumer.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as error:
            queue = self._consumer.queue
            with broker_errors(f"consuming {queue!r}", channel_closed=BrokerUnavailable):
                if isinstance(error, amqp.ConsumerCancelled) and await self._queue_exists():
                    raise SubscriptionLost(
                        f"the broker cancelled the consumer of {queue!r}"
                    ) from error
                raise  # e.g. the queue is gone: StreamNotFound

    def _skip(self, message: amqp.DeliveredMessage) -> None:
        """Drop a message we cannot place, acknowledging it with its neighbours.

        Its delivery tag joins the last event handed out (acked when that
        one is) or, when none is outstanding, is acked on its own: skipped
        messages never fill the prefetch window and stall the flow.
        """
        self.skipped += 1
        tag = message.delivery_tag
        if self._unacked:
            last_offset, _ = self._unacked[-1]
            self._unacked[-1] = (last_offset, tag)
        else:
            self._ack_tag = tag
            self._ack_pending += 1
        level = logging.DEBUG if self._skipping else logging.WARNING
        self._skipping = True
        log.log(
            level,
            "skipped a message of %r without a usable x-stream-offset (after offset %s)",
            self._consumer.queue,
            self._last_offset,
        )

    async def ack(self, offset: int) -> None:
        """Acknowledge up to ``offset``; sent batched (see the module docstring)."""
        unacked = self._unacked
        while unacked and unacked[0][0] <= offset:
            _, self._ack_tag = unacked.popleft()
            self._ack_pending += 1
        if self._ack_pending and (
            self._ack_pending >= self._ack_threshold or self._consumer.buffered == 0
        ):
            self._flush()

    def _flush(self) -> None:
        """Send the pending acknowledgement (queued for the connection's writer: never waits).

        As in :meth:`_receive`, the translation is entered only on failure:
        a live event is acknowledged alone, and the context manager was a
        tenth of the subscription's calls per event.
        """
        tag = self._ack_tag
        self._ack_pending = 0
        try:
            self._channel.basic_ack_nowait(tag, multiple=True)
        except Exception:
            with broker_errors("cannot acknowledge", channel_closed=BrokerUnavailable):
                raise
        self.acks_sent += 1


async def _let_go(consumer: amqp.Consumer | None, channel: amqp.Channel) -> None:
    """Cancel the consumer, then close the channel, each bounded and shielded on its own."""
    if consumer is not None:
        with trio.move_on_after(CANCEL_TIMEOUT, shield=True):
            await consumer.cancel()
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
        await channel.close()


@asynccontextmanager
async def open_subscription(
    connection: amqp.Connection,
    queue: str,
    start: StartPosition,
    *,
    prefetch: int,
    attach_timeout: float,
    queue_exists: Callable[[], Awaitable[bool]],
) -> AsyncIterator[RabbitMQSubscription]:
    """A consumer of ``queue`` on a new channel of ``connection`` (see the module docstring)."""
    if not 1 <= prefetch <= 65535:
        raise ValueError("prefetch must be between 1 and 65535")
    arguments = {"x-stream-offset": offset_argument(start)}
    channel: amqp.Channel | None = None
    consumer: amqp.Consumer | None = None
    try:
        with broker_errors(f"cannot consume {queue!r}"), trio.fail_after(attach_timeout):
            channel = await connection.channel()
            await channel.basic_qos(prefetch)
            consumer = channel.basic_consume(queue, arguments=arguments)
            await consumer.start()
    except BaseException as exc:
        if isinstance(exc, BrokerUnavailable):  # e.g. no member of the stream on this node
            log.warning("cannot consume %r now: %s", queue, exc)
        if channel is not None:
            await _let_go(consumer, channel)
        raise
    try:
        yield RabbitMQSubscription(channel, consumer, prefetch, queue_exists)
    finally:
        await _let_go(consumer, channel)
