"""Channels: the AMQP methods, synchronous replies, publisher confirms.

A channel keeps a FIFO of the synchronous requests it sent; each reply
completes the oldest request expecting that kind of reply (and, for
``consume-ok``/``cancel-ok``, that consumer tag). Matching by kind rather
than by position matters: RabbitMQ may send ``consume-ok`` after the reply
to a request sent later on the same channel. A caller
that is cancelled while waiting leaves its entry in the FIFO marked
*abandoned*: the late reply is then consumed (and, where it matters, undone
-- a late ``consume-ok`` is cancelled, a late ``open-ok`` closed) instead of
being handed to the next caller. That is what keeps a channel usable after
any of its callers was cancelled.

Frames are handed to the connection's write buffer in one piece and never
awaited individually, so cancellation can never leave half a frame behind.

A ``channel.close`` from the broker (404, 406, ...) fails every pending
request with the typed :class:`~amqp.errors.ChannelClosed` subclass, ends the
channel's consumers with it, and makes every later call raise it; the
connection and its other channels are unaffected.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar, Unpack

import anyio
from pamqp import base, commands

from . import codec
from .consumer import Consumer, ConsumerOptions
from .contract import BoundedExit, ChannelEvent, ConnectionSide, ConsumerSide
from .errors import (
    ChannelClosed,
    ConsumerCancelled,
    EndState,
    ProtocolError,
    PublishNacked,
    channel_closed,
    fresh,
)
from .frames import ConfirmAck, Heartbeat
from .message import DeliveredMessage, Properties, ReturnedMessage

#: Bound on the close handshake when a channel context is left.
CLOSE_TIMEOUT: Final = 5.0

_M = TypeVar("_M", bound=base.Frame)


@dataclass(frozen=True, slots=True)
class QueueDeclareOk:
    """The broker's answer to ``queue.declare``."""

    queue: str
    message_count: int
    consumer_count: int


class _Request:
    """One synchronous request waiting for its reply."""

    __slots__ = (
        "abandoned",
        "consumer_tag",
        "done",
        "error",
        "event",
        "expect",
        "on_abandon",
        "result",
    )

    def __init__(
        self,
        expect: type[base.Frame],
        on_abandon: Callable[[base.Frame], None] | None,
        consumer_tag: str | None = None,
    ) -> None:
        self.expect = expect
        self.consumer_tag = consumer_tag
        self.event = anyio.Event()
        self.result: base.Frame | None = None
        self.error: BaseException | None = None
        self.done = False
        self.abandoned = False
        self.on_abandon = on_abandon


class _Confirmation:
    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: BaseException | None = None


class Channel(BoundedExit, EndState):
    """An open AMQP channel. Get one with ``await connection.channel()``.

    Besides the AMQP methods, a channel implements the internal contract of
    :mod:`amqp.contract`: :class:`~amqp.contract.ChannelSide` for its
    connection (:meth:`open`, :meth:`deliver`, :meth:`handle`, :meth:`fail`)
    and :class:`~amqp.contract.ConsumerHost` for its consumers.
    """

    exit_timeout = CLOSE_TIMEOUT

    def __init__(self, connection: ConnectionSide, number: int) -> None:
        super().__init__()
        self._connection = connection
        self.number = number
        #: The prefetch count set by :meth:`basic_qos` (0: unlimited).
        self.prefetch_count = 0
        self._requests: deque[_Request] = deque()
        self._consumers: dict[str, ConsumerSide] = {}
        self._released = False
        self._confirm_mode = False
        self._publish_tag = 0
        self._unconfirmed: dict[int, _Confirmation] = {}
        self._closed_event = anyio.Event()

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<Channel {self.number} {state}>"

    # ------------------------------------------------------------------ state

    @property
    def consumer_count(self) -> int:
        """Consumers registered on this channel."""
        return len(self._consumers)

    def usable(self) -> bool:
        """Whether the channel and its connection can still be used."""
        return not self.is_closed and self._connection.usable()

    def check(self) -> None:
        """Raise why the channel (or its connection) cannot be used, if it cannot."""
        self._raise_if_over()
        self._connection.check()

    def _closing_error(self) -> ChannelClosed:
        return ChannelClosed(200, "the channel is closing")

    # ------------------------------------------------------------------ consumers (ConsumerHost)

    def add_consumer(self, consumer: ConsumerSide) -> None:
        """Route deliveries for ``consumer.consumer_tag`` to ``consumer``."""
        tag = consumer.consumer_tag
        if tag in self._consumers:
            raise ValueError(f"consumer tag {tag!r} is already in use")
        self._consumers[tag] = consumer

    def remove_consumer(self, consumer_tag: str) -> None:
        """Stop routing deliveries to ``consumer_tag``."""
        self._consumers.pop(consumer_tag, None)

    # ------------------------------------------------------------------ requests

    async def call(
        self,
        frame: bytes,
        expect: type[_M],
        *,
        on_abandon: Callable[[base.Frame], None] | None = None,
        consumer_tag: str | None = None,
    ) -> _M:
        """Send a synchronous method and wait for its reply.

        ``on_abandon`` runs with the reply if the caller stopped waiting
        (cancelled) before it arrived -- or right away if it had arrived.
        """
        self.check()
        request = _Request(expect, on_abandon, consumer_tag)
        self._requests.append(request)
        self._connection.send(frame)
        try:
            await request.event.wait()
        except BaseException:
            if request.done and request.error is None and request.result is not None:
                if on_abandon is not None:
                    on_abandon(request.result)
            else:
                request.abandoned = True
            raise
        if request.error is not None:
            raise fresh(request.error)
        result = request.result
        assert isinstance(result, expect)
        return result

    def call_nowait(
        self, frame: bytes, expect: type[base.Frame], consumer_tag: str | None = None
    ) -> None:
        """Send a synchronous method whose reply nobody waits for."""
        request = _Request(expect, None, consumer_tag)
        request.abandoned = True
        self._requests.append(request)
        self._connection.send(frame)

    # ------------------------------------------------------------------ from the reader

    def deliver(self, message: DeliveredMessage) -> None:
        """A delivery for this channel: straight to its consumer's buffer (never waits).

        A delivery for a consumer tag no longer registered (cancelled, ended)
        is dropped; unacknowledged, it returns to the queue with the channel.
        """
        consumer = self._consumers.get(message.consumer_tag)
        if consumer is not None:
            consumer.deliver(message)

    def handle(self, event: ChannelEvent) -> None:
        """Every other event for this channel (called by the reader, never awaits)."""
        if isinstance(event, ConfirmAck):
            self._on_confirm(event.delivery_tag, event.multiple, None)
        elif isinstance(event, ReturnedMessage):
            pass  # we never publish with mandatory=True nor call basic.get
        elif isinstance(event, Heartbeat):
            raise ProtocolError(f"heartbeat frame on channel {self.number}")
        elif isinstance(event, commands.Channel.Close):
            self._on_server_close(event)
        elif isinstance(event, commands.Basic.Nack):
            self._on_confirm(
                event.delivery_tag,
                event.multiple,
                PublishNacked(f"the broker nacked publish {event.delivery_tag}"),
            )
        elif isinstance(event, commands.Basic.Cancel):
            self._on_server_cancel(event)
        elif isinstance(event, commands.Channel.Flow):
            self._connection.send(codec.channel_flow_ok(self.number, bool(event.active)))
        else:
            self._on_reply(event)

    def _on_reply(self, method: base.Frame) -> None:
        tag = getattr(method, "consumer_tag", None)
        for request in self._requests:
            if isinstance(method, request.expect) and (
                request.consumer_tag is None or request.consumer_tag == tag
            ):
                break
        else:
            raise ProtocolError(f"unexpected {method.name} on channel {self.number}")
        self._requests.remove(request)
        if isinstance(method, commands.Basic.ConsumeOk):
            consumer = self._consumers.get(str(method.consumer_tag))
            if consumer is not None:
                consumer.on_consume_ok()
        elif isinstance(method, commands.Basic.CancelOk):
            consumer = self._consumers.pop(str(method.consumer_tag), None)
            if consumer is not None:
                consumer.on_end(None)
        elif isinstance(method, commands.Channel.CloseOk):
            self.fail(ChannelClosed(200, "closed by the client"))
            self._release()
        request.result = method
        request.done = True
        if request.abandoned:
            if request.on_abandon is not None:
                request.on_abandon(method)
        else:
            request.event.set()

    def _on_server_close(self, method: commands.Channel.Close) -> None:
        self._connection.send(codec.channel_close_ok(self.number))
        error = channel_closed(
            method.reply_code or 0,
            method.reply_text or "",
            method.class_id or 0,
            method.method_id or 0,
        )
        if self._closing:
            # We sent channel.close too: the broker still answers it with
            # close-ok, so keep that one request (and the channel number).
            keep = deque(r for r in self._requests if r.expect is commands.Channel.CloseOk)
            self._requests = deque(r for r in self._requests if r not in keep)
            self.fail(error)
            self._requests = keep
        else:
            self.fail(error)
            self._release()

    def _on_server_cancel(self, method: commands.Basic.Cancel) -> None:
        consumer = self._consumers.pop(str(method.consumer_tag), None)
        if consumer is not None:
            consumer.on_end(
                ConsumerCancelled(f"the broker cancelled consumer {method.consumer_tag!r}")
            )
        if not method.nowait:
            self._connection.send(codec.basic_cancel_ok(self.number, str(method.consumer_tag)))

    def _on_confirm(self, tag: int, multiple: bool, error: BaseException | None) -> None:
        unconfirmed = self._unconfirmed
        if multiple:
            while unconfirmed:
                first = next(iter(unconfirmed))
                if first > tag:
                    break
                waiter = unconfirmed.pop(first)
                waiter.error = error
                waiter.event.set()
        else:
            waiter_or_none = unconfirmed.pop(tag, None)
            if waiter_or_none is not None:
                waiter_or_none.error = error
                waiter_or_none.event.set()

    @staticmethod
    def _settle(request: _Request, error: BaseException) -> None:
        request.error = error
        request.done = True
        request.event.set()

    def fail(self, error: BaseException) -> None:
        """The channel is over: fail everything waiting on it (also when the connection ended)."""
        if self._error is not None:
            return
        self._error = error
        requests, self._requests = self._requests, deque()
        for request in requests:
            self._settle(request, error)
        for waiter in self._unconfirmed.values():
            waiter.error = error
            waiter.event.set()
        self._unconfirmed.clear()
        consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            consumer.on_end(error)
        self._closed_event.set()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._connection.release_channel(self.number)

    # ------------------------------------------------------------------ open / close

    async def open(self) -> None:
        """Send ``channel.open`` and wait for open-ok (the connection does it, once).

        If the caller gives up first, a late open-ok closes the channel again
        (and close-ok releases its number); if the channel failed, its number
        is released at once.
        """
        try:
            await self.call(
                codec.channel_open(self.number),
                commands.Channel.OpenOk,
                on_abandon=self._late_open,
            )
        except BaseException:
            if self._error is not None:
                self._release()
            raise

    def _late_open(self, _method: base.Frame) -> None:
        """open-ok arrived for a caller who gave up: close the channel again."""
        if self.usable():
            self._closing = True
            self.call_nowait(codec.channel_close(self.number), commands.Channel.CloseOk)

    async def close(self) -> None:
        """Close the channel (no-op if already closed). Consumers end with
        :class:`~amqp.errors.ChannelClosed` (code 200)."""
        if self._error is not None:
            return
        if self._closing:
            await self._closed_event.wait()
            return
        self._closing = True
        if not self._connection.usable():
            self.fail(ChannelClosed(200, "closed by the client"))
            return
        request = _Request(commands.Channel.CloseOk, None)
        self._requests.append(request)
        self._connection.send(codec.channel_close(self.number))
        try:
            await request.event.wait()
        except BaseException:
            request.abandoned = True  # close-ok will still release the number
            raise

    async def __aenter__(self) -> Channel:
        return self

    def exit_handshake(self) -> Awaitable[None]:
        """Leaving the context closes the channel."""
        return self.close()

    # ------------------------------------------------------------------ exchanges

    async def exchange_declare(
        self, exchange: str, exchange_type: str = "direct", **options: Unpack[codec.ExchangeDeclare]
    ) -> None:
        """Declare an exchange (406 :class:`~amqp.errors.PreconditionFailed` if it
        exists with another type or flags; 404 with ``passive`` if missing)."""
        frame = codec.exchange_declare(self.number, exchange, exchange_type, **options)
        await self.call(frame, commands.Exchange.DeclareOk)

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        """Delete an exchange."""
        await self.call(
            codec.exchange_delete(self.number, exchange, if_unused=if_unused),
            commands.Exchange.DeleteOk,
        )

    # ------------------------------------------------------------------ queues

    async def queue_declare(
        self, queue: str = "", **options: Unpack[codec.QueueDeclare]
    ) -> QueueDeclareOk:
        """Declare (or with ``passive=True`` check) a queue.

        Any UTF-8 name up to 255 bytes is accepted (no client-side pattern).
        """
        frame = codec.queue_declare(self.number, queue, **options)
        reply = await self.call(frame, commands.Queue.DeclareOk)
        return QueueDeclareOk(
            str(reply.queue), int(reply.message_count or 0), int(reply.consumer_count or 0)
        )

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Bind a queue to an exchange."""
        await self.call(
            codec.queue_bind(self.number, queue, exchange, routing_key, arguments),
            commands.Queue.BindOk,
        )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Remove a binding."""
        await self.call(
            codec.queue_unbind(self.number, queue, exchange, routing_key, arguments),
            commands.Queue.UnbindOk,
        )

    async def queue_purge(self, queue: str) -> int:
        """Remove all ready messages; return how many."""
        reply = await self.call(codec.queue_purge(self.number, queue), commands.Queue.PurgeOk)
        return int(reply.message_count or 0)

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; return the number of messages it held."""
        reply = await self.call(
            codec.queue_delete(self.number, queue, if_unused=if_unused, if_empty=if_empty),
            commands.Queue.DeleteOk,
        )
        return int(reply.message_count or 0)

    # ------------------------------------------------------------------ consuming

    async def basic_qos(
        self, prefetch_count: int = 0, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacknowledged deliveries (per consumer unless ``global_``)."""
        if not 0 <= prefetch_count <= 65535:
            raise ValueError("prefetch_count must be between 0 and 65535")
        await self.call(
            codec.basic_qos(self.number, prefetch_count, prefetch_size, global_),
            commands.Basic.QosOk,
        )
        self.prefetch_count = prefetch_count

    def basic_consume(self, queue: str, **options: Unpack[ConsumerOptions]) -> Consumer:
        """A consumer of ``queue``: use it with ``async with`` and ``async for``.

        ``arguments`` may carry ``x-stream-offset``: ``"first"``, ``"last"``,
        ``"next"``, an ``int`` offset, or a :class:`datetime.datetime` (sent as
        an AMQP timestamp, whole seconds).

        ``max_buffer_bytes`` bounds what the consumer buffers (bodies plus
        :data:`~amqp.consumer.MESSAGE_OVERHEAD` per message); a consumer that
        falls behind past it is cancelled and ends with
        :class:`~amqp.errors.ConsumerOverflow` (see :mod:`amqp.consumer`).
        There is no bound by message count: a count bounds nothing on a
        stream queue, whose chunks pass the prefetch window.
        """
        options["arguments"] = _normalise_arguments(options.get("arguments"))
        return Consumer(self, queue, **options)

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel a consumer by tag (same as ``await consumer.cancel()``)."""
        consumer = self._consumers.get(consumer_tag)
        if consumer is not None:
            await consumer.cancel()
            return
        await self.call(
            codec.basic_cancel(self.number, consumer_tag),
            commands.Basic.CancelOk,
            consumer_tag=consumer_tag,
        )

    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge a delivery (all up to it with ``multiple``). Never blocks."""
        self.basic_ack_nowait(delivery_tag, multiple=multiple)

    def basic_ack_nowait(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """:meth:`basic_ack` without the ``await``: for a consumer's listener."""
        self.check()
        self._connection.send_ack(
            self.number, delivery_tag, codec.basic_ack(self.number, delivery_tag, multiple)
        )

    async def basic_nack(
        self, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Negatively acknowledge deliveries."""
        self.check()
        self._connection.send(codec.basic_nack(self.number, delivery_tag, multiple, requeue))

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> None:
        """Reject one delivery."""
        self.check()
        self._connection.send(codec.basic_reject(self.number, delivery_tag, requeue))

    # ------------------------------------------------------------------ publishing

    async def confirm_select(self) -> None:
        """Turn on publisher confirms: :meth:`basic_publish` then waits for them."""
        await self.call(codec.confirm_select(self.number), commands.Confirm.SelectOk)
        self._confirm_mode = True

    @property
    def publisher_confirms(self) -> bool:
        """Whether :meth:`confirm_select` was done on this channel."""
        return self._confirm_mode

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: Properties | None = None,
    ) -> None:
        """Publish a message.

        Waits while the broker has blocked the connection (``connection.blocked``)
        or the write buffer is full. With confirms on, returns only once the
        broker confirmed the message and raises
        :class:`~amqp.errors.PublishNacked` if it refused it.
        """
        connection = self._connection
        self.check()
        if connection.publish_must_wait():
            await connection.wait_publishable()
            self.check()
        frames = codec.basic_publish(
            self.number, exchange, routing_key, bytes(body), properties, connection.frame_max
        )
        if not self._confirm_mode:
            connection.send(frames)
            return
        self._publish_tag += 1
        tag = self._publish_tag
        waiter = _Confirmation()
        self._unconfirmed[tag] = waiter
        connection.send(frames)
        try:
            await waiter.event.wait()
        except BaseException:
            self._unconfirmed.pop(tag, None)
            raise
        if waiter.error is not None:
            raise fresh(waiter.error)


def _normalise_arguments(arguments: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Make datetimes timezone-aware (naive means UTC) so they encode as AMQP timestamps."""
    if not arguments:
        return None
    result = dict(arguments)
    for key, value in result.items():
        if isinstance(value, datetime.datetime) and value.tzinfo is None:
            result[key] = value.replace(tzinfo=datetime.UTC)
    return result
