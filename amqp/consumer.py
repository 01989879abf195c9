"""Consumers: ``basic.consume`` as an async context manager and async iterator.

::

    async with channel.basic_consume("queue", arguments={"x-stream-offset": "first"}) as consumer:
        async for message in consumer:
            ...
            await channel.basic_ack(message.delivery_tag)

Entering sends ``basic.consume`` and returns once ``consume-ok`` arrived, so
everything the broker routes to the consumer afterwards is delivered.
Leaving cancels the consumer (shielded and time-bounded, so it also works
from a cancelled task).

Deliveries travel from the connection's reader task to the iterating task
through a buffer bounded in *bytes*: each message counts its body length
plus :data:`MESSAGE_OVERHEAD` (what the decoded message object, its
properties and headers cost), so many tiny messages count too. The reader
never waits for a consumer: RabbitMQ delivers a stream queue one whole chunk
at a time, past the prefetch window, so a count sized to the prefetch is no
bound at all, and a reader that waited for one full buffer would stall
every channel and request on the connection. Instead, a delivery that would
take the buffer past ``max_buffer_bytes`` gives the consumer up: the reader
sends ``basic.cancel`` without waiting for ``cancel-ok``, drops this and
every later delivery (unacknowledged, they return to the queue when the
channel closes; with ``no_ack`` they are gone), and iteration yields
everything buffered before the overflow, then raises
:class:`~amqp.errors.ConsumerOverflow`: the caller resumes after the last
message it took, e.g. a stream consumer from that ``x-stream-offset`` + 1. A consumer's
buffer therefore never holds more than ``max_buffer_bytes``, or one message
when a single message is larger (an empty buffer always accepts one).

The iterator takes messages that are already buffered without a
checkpoint: one wake-up of the consuming task serves a whole batch, not one
message.

A consumer may also be given a :data:`DeliveryListener`: a delivery that arrives
while nothing is buffered is offered to it first, in the reader's task, and
one it takes is never buffered. Its owner then handles a steady trickle of
messages without a wake-up of its own task per message. The listener must
not block; its owner decides when it takes a message (say, only while its
task waits in the iterator, so that order holds). If it raises, the consumer
ends with that error and is cancelled, like an overflow: a bug in one
consumer's owner never reaches the reader, the connection or its other
channels.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Unpack

import anyio
from pamqp import commands

from . import codec
from .contract import BoundedExit, ConsumerHost
from .errors import ConsumerOverflow, fresh
from .message import DeliveredMessage

#: Bytes a buffered message counts on top of its body: measured at about
#: 800 bytes for a stream delivery with two headers (the message object, its
#: properties, the headers dict and the strings in it), rounded up.
MESSAGE_OVERHEAD: Final = 1024
#: Default bound of one consumer's buffer. A stream chunk published back to
#: back holds a few thousand small messages (a few MiB counted with the
#: overhead); the buffer only fills that far when the consumer falls behind
#: by a whole chunk, so a consumer that reads normally never reaches it.
DEFAULT_MAX_BUFFER_BYTES: Final = 8 * 1024 * 1024
#: Bound on the cancel handshake when a consumer context is left.
CANCEL_TIMEOUT: Final = 5.0

_NEW, _ACTIVE, _CANCELLING, _ENDED = 0, 1, 2, 3

#: Offered a delivery in the reader's task; ``True`` if it took it (it is
#: then not buffered), ``False`` to leave it to the iterator.
DeliveryListener = Callable[[DeliveredMessage], bool]


class ConsumerOptions(codec.Consume, total=False):
    """The options of a consumer: those of ``basic.consume``, and the consumer's own.

    ``consumer_tag``: chosen here unless given. ``max_buffer_bytes``: the
    bound on what the consumer buffers (default :data:`DEFAULT_MAX_BUFFER_BYTES`).
    """

    consumer_tag: str | None
    max_buffer_bytes: int


_tags = itertools.count(1)


class Consumer(BoundedExit):
    """One ``basic.consume`` on a channel; iterate it to receive deliveries.

    Iteration ends with :class:`StopAsyncIteration` after :meth:`cancel`, and
    raises the reason when the broker cancelled the consumer
    (:class:`~amqp.errors.ConsumerCancelled`), the channel closed
    (:class:`~amqp.errors.ChannelClosed`), the connection ended
    (:class:`~amqp.errors.AMQPConnectionError`) or, after everything buffered
    before it was yielded, the buffer overflowed
    (:class:`~amqp.errors.ConsumerOverflow`).
    """

    exit_timeout = CANCEL_TIMEOUT

    def __init__(
        self, channel: ConsumerHost, queue: str, **options: Unpack[ConsumerOptions]
    ) -> None:
        max_buffer_bytes = options.get("max_buffer_bytes", DEFAULT_MAX_BUFFER_BYTES)
        if max_buffer_bytes < 1:
            raise ValueError("max_buffer_bytes must be at least 1")
        self.channel = channel
        self.queue = queue
        self.consumer_tag = options.get("consumer_tag") or f"ctag-{channel.number}-{next(_tags)}"
        self.no_ack = options.get("no_ack", False)
        self.max_buffer_bytes = max_buffer_bytes
        arguments = options.get("arguments")
        #: What ``basic.consume`` asks for (the arguments copied: the caller keeps its own).
        self._consume = codec.Consume(
            no_local=options.get("no_local", False),
            no_ack=self.no_ack,
            exclusive=options.get("exclusive", False),
            arguments=dict(arguments) if arguments else None,
        )
        self._buffer: deque[DeliveredMessage] = deque()
        self._buffered_bytes = 0
        self._wakeup: anyio.Event | None = None
        self._state = _NEW
        self._abandoned = False
        self._finished = False  # no more deliveries are buffered
        self._ended_event = anyio.Event()
        self._error: BaseException | None = None
        #: Offered each delivery that arrives while nothing is buffered.
        self.listener: DeliveryListener | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    def exit_handshake(self) -> Awaitable[None]:
        """Leaving the context cancels the consumer."""
        return self.cancel()

    async def start(self) -> None:
        """Send ``basic.consume``; return once the broker confirmed it."""
        if self._state != _NEW or self._abandoned:
            raise RuntimeError("a consumer can be started only once")
        channel = self.channel
        channel.check()
        # Register before sending: deliveries may follow consume-ok immediately.
        channel.add_consumer(self)
        frame = codec.basic_consume(channel.number, self.queue, self.consumer_tag, **self._consume)
        try:
            await channel.call(frame, commands.Basic.ConsumeOk, consumer_tag=self.consumer_tag)
        except BaseException:
            # Cancelled while waiting, or the channel closed (e.g. 404: no such
            # queue). If consume-ok arrives later, on_consume_ok() cancels it.
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Nobody will iterate this consumer: stop buffering and cancel it."""
        self._abandoned = True
        self._finish(None)
        self._cancel_nowait()
        if self._state == _NEW and not self.channel.usable():
            self.channel.remove_consumer(self.consumer_tag)
            self.on_end(None)

    def _cancel_nowait(self) -> None:
        """Send ``basic.cancel`` if the broker delivers to us; do not wait for cancel-ok."""
        if self._state != _ACTIVE:
            return
        self._state = _CANCELLING
        channel = self.channel
        if channel.usable():
            channel.call_nowait(
                codec.basic_cancel(channel.number, self.consumer_tag),
                commands.Basic.CancelOk,
                self.consumer_tag,
            )
        else:
            channel.remove_consumer(self.consumer_tag)

    async def cancel(self) -> None:
        """Cancel the consumer (``basic.cancel``); iteration then stops.

        Deliveries still buffered are dropped; like any unacknowledged
        message they return to the queue when the channel closes.
        """
        if self._state == _NEW and not self._abandoned:
            self.on_end(None)  # never started
            return
        self._finish(None)
        self._drop_buffer()
        if self._state != _ACTIVE:
            return
        self._state = _CANCELLING
        channel = self.channel
        try:
            if channel.usable():
                await channel.call(
                    codec.basic_cancel(channel.number, self.consumer_tag),
                    commands.Basic.CancelOk,
                    consumer_tag=self.consumer_tag,
                )
        except Exception:
            pass  # the channel or the connection is gone: so is the consumer
        finally:
            if not channel.usable():
                channel.remove_consumer(self.consumer_tag)

    # ------------------------------------------------------------------ called by the channel
    # (amqp.contract.ConsumerSide)

    def on_consume_ok(self) -> None:
        """consume-ok arrived (possibly after the caller gave up waiting)."""
        if self._state == _NEW:
            self._state = _ACTIVE
            if self._abandoned:
                self._abandon()

    def on_end(self, error: BaseException | None) -> None:
        """The broker no longer delivers to us (cancel-ok, basic.cancel, close)."""
        self._state = _ENDED
        self._finish(error)
        self._ended_event.set()

    async def wait_ended(self) -> None:
        """Wait until the broker no longer delivers to this consumer.

        That is after ``cancel-ok`` (also for a consumer whose start was
        cancelled and undone, or that overflowed), a broker ``basic.cancel``,
        or the end of the channel or connection.
        """
        await self._ended_event.wait()

    def deliver(self, message: DeliveredMessage) -> None:
        """Buffer one delivery (the reader's fast path: never waits, never raises).

        Offered to :attr:`listener` first when nothing is buffered. A
        delivery that would take the buffer past :attr:`max_buffer_bytes`
        (an empty buffer takes any one message) gives the consumer up
        instead: see the module docstring.
        """
        if self._finished:
            return  # cancelled, ended or overflowed: dropped, it stays unacked
        listener = self.listener
        if listener is not None and not self._buffer:
            try:
                if listener(message):
                    return
            except Exception as error:
                self._finish(error)
                self._cancel_nowait()
                return
        total = self._buffered_bytes + len(message.body) + MESSAGE_OVERHEAD
        if total > self.max_buffer_bytes and self._buffer:
            self._overflow()
            return
        self._buffered_bytes = total
        self._buffer.append(message)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def _overflow(self) -> None:
        self._finish(
            ConsumerOverflow(
                f"consumer {self.consumer_tag!r} of {self.queue!r} passed its buffer bound "
                f"of {self.max_buffer_bytes} bytes with {len(self._buffer)} messages buffered"
            ),
            drain=True,
        )
        self._cancel_nowait()

    def _finish(self, error: BaseException | None, *, drain: bool = False) -> None:
        """Buffer nothing more; end iteration with ``error`` if given (the first reason wins).

        ``drain``: iteration first yields what is buffered (an overflow);
        otherwise the buffer is dropped and iteration ends at once.
        """
        if self._finished:
            return
        self._finished = True
        self._error = error
        if not drain:
            self._drop_buffer()
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def _drop_buffer(self) -> None:
        self._buffer.clear()
        self._buffered_bytes = 0

    # ------------------------------------------------------------------ iteration

    @property
    def buffered(self) -> int:
        """Deliveries received and not yet taken by the iterator."""
        return len(self._buffer)

    @property
    def buffered_bytes(self) -> int:
        """What the buffered deliveries count against :attr:`max_buffer_bytes`."""
        return self._buffered_bytes

    @property
    def active(self) -> bool:
        """Whether the broker is delivering to this consumer."""
        return self._state == _ACTIVE

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> DeliveredMessage:
        buffer = self._buffer
        while True:
            if buffer:
                message = buffer.popleft()
                self._buffered_bytes -= len(message.body) + MESSAGE_OVERHEAD
                return message
            if self._finished:
                if self._error is not None:
                    raise fresh(self._error)
                raise StopAsyncIteration
            wakeup = self._wakeup
            if wakeup is None:
                wakeup = self._wakeup = anyio.Event()
            await wakeup.wait()
