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
through a bounded memory stream. Its size must be at least the channel's
prefetch count: the broker never has more than ``prefetch`` unacknowledged
messages in flight to a channel, so with ``buffer_size >= prefetch`` the
reader never finds the buffer full and never stalls the connection. (Without
any prefetch limit a full buffer makes the reader wait, which pushes back on
the broker through TCP for the whole connection.) The iterator takes
messages that are already buffered without a checkpoint: one wake-up of the
consuming task serves a whole batch, not one message.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
from pamqp import commands

from . import codec
from .errors import fresh
from .message import DeliveredMessage

if TYPE_CHECKING:
    from .channel import Channel

#: Buffer used when the channel has no prefetch limit.
DEFAULT_BUFFER_SIZE: Final = 1024
#: Bound on the cancel handshake when a consumer context is left.
CANCEL_TIMEOUT: Final = 5.0

_NEW, _ACTIVE, _CANCELLING, _ENDED = 0, 1, 2, 3
_tags = itertools.count(1)


class Consumer:
    """One ``basic.consume`` on a channel; iterate it to receive deliveries.

    Iteration ends with :class:`StopAsyncIteration` after :meth:`cancel`, and
    raises the reason when the broker cancelled the consumer
    (:class:`~amqp.errors.ConsumerCancelled`), the channel closed
    (:class:`~amqp.errors.ChannelClosed`) or the connection ended
    (:class:`~amqp.errors.AMQPConnectionError`).
    """

    def __init__(
        self,
        channel: Channel,
        queue: str,
        *,
        consumer_tag: str | None = None,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        buffer_size: int | None = None,
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.consumer_tag = consumer_tag or f"ctag-{channel.number}-{next(_tags)}"
        self.no_ack = no_ack
        self._exclusive = exclusive
        self._arguments = dict(arguments) if arguments else None
        if buffer_size is None:
            buffer_size = max(channel.prefetch_count, DEFAULT_BUFFER_SIZE)
        if buffer_size < 1 and buffer_size != math.inf:
            raise ValueError("buffer_size must be at least 1")
        self.buffer_size = buffer_size
        self._send, self._receive = anyio.create_memory_object_stream[DeliveredMessage](buffer_size)
        self._state = _NEW
        self._abandoned = False
        self._finished = False
        self._ended_event = anyio.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.move_on_after(CANCEL_TIMEOUT, shield=True):
            await self.cancel()

    async def start(self) -> None:
        """Send ``basic.consume``; return once the broker confirmed it."""
        if self._state != _NEW or self._abandoned:
            raise RuntimeError("a consumer can be started only once")
        channel = self.channel
        channel._check()
        if self.consumer_tag in channel._consumers:
            raise ValueError(f"consumer tag {self.consumer_tag!r} is already in use")
        # Register before sending: deliveries may follow consume-ok immediately.
        channel._consumers[self.consumer_tag] = self
        frame = codec.basic_consume(
            channel.number,
            self.queue,
            self.consumer_tag,
            no_ack=self.no_ack,
            exclusive=self._exclusive,
            arguments=self._arguments,
        )
        try:
            await channel._call(
                frame,
                commands.Basic.ConsumeOk,
                on_abandon=_ignore,
                consumer_tag=self.consumer_tag,
            )
        except BaseException:
            # Cancelled while waiting, or the channel closed (e.g. 404: no such
            # queue). If consume-ok arrives later, _activated() cancels it.
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Nobody will iterate this consumer: stop buffering and cancel it."""
        self._abandoned = True
        self._receive.close()  # the reader now drops deliveries instead of blocking
        self._finish(None)
        channel = self.channel
        if self._state == _ACTIVE:
            self._state = _CANCELLING
            if channel._usable():
                channel._call_nowait(
                    codec.basic_cancel(channel.number, self.consumer_tag),
                    commands.Basic.CancelOk,
                    self.consumer_tag,
                )
            else:
                channel._consumers.pop(self.consumer_tag, None)
        elif self._state == _NEW and not channel._usable():
            channel._consumers.pop(self.consumer_tag, None)
            self._ended(None)

    async def cancel(self) -> None:
        """Cancel the consumer (``basic.cancel``); iteration then stops.

        Deliveries still buffered are dropped; like any unacknowledged
        message they return to the queue when the channel closes.
        """
        if self._state == _NEW and not self._abandoned:
            self._ended(None)  # never started
            return
        if self._state != _ACTIVE:
            self._finish(None)
            return
        self._state = _CANCELLING
        self._receive.close()  # never let the reader block on us while cancelling
        channel = self.channel
        try:
            if channel._usable():
                await channel._call(
                    codec.basic_cancel(channel.number, self.consumer_tag),
                    commands.Basic.CancelOk,
                    on_abandon=_ignore,
                    consumer_tag=self.consumer_tag,
                )
        except Exception:
            pass  # the channel or the connection is gone: so is the consumer
        finally:
            if not channel._usable():
                channel._consumers.pop(self.consumer_tag, None)
            self._finish(None)

    # ------------------------------------------------------------------ called by the channel

    def _activated(self) -> None:
        """consume-ok arrived (possibly after the caller gave up waiting)."""
        if self._state == _NEW:
            self._state = _ACTIVE
            if self._abandoned:
                self._abandon()

    def _ended(self, error: BaseException | None) -> None:
        """The broker no longer delivers to us (cancel-ok, basic.cancel, close)."""
        self._state = _ENDED
        self._finish(error)
        self._ended_event.set()

    async def wait_ended(self) -> None:
        """Wait until the broker no longer delivers to this consumer.

        That is after ``cancel-ok`` (also for a consumer whose start was
        cancelled and undone), a broker ``basic.cancel``, or the end of the
        channel or connection.
        """
        await self._ended_event.wait()

    def _push(self, message: DeliveredMessage) -> bool:
        """Buffer a delivery; ``False`` when the buffer is full (caller waits)."""
        try:
            self._send.send_nowait(message)
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # nobody iterates any more: drop it (it stays unacked)
        return True

    async def _push_wait(self, message: DeliveredMessage) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._send.send(message)

    def _finish(self, error: BaseException | None) -> None:
        """End iteration, with ``error`` if given (the first reason wins)."""
        if not self._finished:
            self._finished = True
            self._error = error
            self._send.close()

    # ------------------------------------------------------------------ iteration

    @property
    def buffered(self) -> int:
        """Deliveries received and not yet taken by the iterator."""
        return self._receive.statistics().current_buffer_used

    @property
    def active(self) -> bool:
        """Whether the broker is delivering to this consumer."""
        return self._state == _ACTIVE

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> DeliveredMessage:
        if self._error is not None:
            raise fresh(self._error)
        try:
            return self._receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._stop()
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._stop()
            raise AssertionError("unreachable") from None

    def _stop(self) -> None:
        if self._error is not None:
            raise fresh(self._error)
        raise StopAsyncIteration


def _ignore(_method: object) -> None:
    pass
