"""The internal contract between the connection, its channels and their consumers.

The three objects are one protocol engine split by responsibility: the
connection owns the socket and the channel numbers, a channel owns its
requests and consumers, a consumer owns its buffer. Each sees the one above
and below it only through these small interfaces, so no module reaches into
another's private state and no module imports the one above it (the import
graph is ``connection -> channel -> consumer -> contract``):

- :class:`ConnectionSide`: what the connection offers a channel (send frames,
  give a channel number back, whether it is usable, ``frame_max``, publish
  flow control). The connection hands each channel a small link object.
- :class:`ChannelSide`: what a channel offers the connection: ``deliver()``
  for the fast path (every ``basic.deliver`` goes there, nowhere else),
  ``handle()`` for every other frame of the channel, ``fail()`` when the
  connection ends.
- :class:`ConsumerHost`: what a channel offers its consumers (requests,
  registration by consumer tag). The channel hands each consumer a link.
- :class:`ConsumerSide`: what a consumer offers its channel: ``deliver()``,
  ``on_consume_ok()``, ``on_end()`` and ``cancel()``.

Every method here is called from the connection's reader task or a caller's
task and never blocks, except the ones marked ``async``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from types import TracebackType
from typing import Protocol, TypeVar

import anyio
from pamqp import base

from .frames import ConfirmAck, Heartbeat
from .message import DeliveredMessage, ReturnedMessage

_M = TypeVar("_M", bound=base.Frame)

#: What the reader hands :meth:`ChannelSide.handle`: every event but a delivery.
ChannelEvent = ReturnedMessage | ConfirmAck | Heartbeat | base.Frame


class ConnectionSide(Protocol):
    """What a channel may use of its connection."""

    @property
    def frame_max(self) -> int:
        """The negotiated largest frame, to split published bodies."""
        ...

    def send(self, frames: bytes) -> None:
        """Queue complete frames for the writer (never torn, never waits); they go now."""
        ...

    def send_ack(self, channel: int, delivery_tag: int, frame: bytes) -> None:
        """Queue a ``basic.ack`` frame; it may wait a little for company (never for long)."""
        ...

    def usable(self) -> bool:
        """Whether frames can still be sent (open and not closing)."""
        ...

    def check(self) -> None:
        """Raise why the connection cannot be used, if it cannot."""
        ...

    def release_channel(self, number: int) -> None:
        """The channel is over on both sides: its number may be reused."""
        ...

    def publish_must_wait(self) -> bool:
        """Whether a publish must wait (broker ``connection.blocked``, full write buffer)."""
        ...

    async def wait_publishable(self) -> None:
        """Wait until publishing may go on (or the connection ended)."""
        ...


class ChannelSide(Protocol):
    """What the connection may use of one of its channels."""

    def deliver(self, message: DeliveredMessage) -> None:
        """A ``basic.deliver`` for this channel (the reader's fast path)."""
        ...

    def handle(self, event: ChannelEvent) -> None:
        """Every other frame for this channel (replies, closes, confirms)."""
        ...

    def fail(self, error: BaseException) -> None:
        """The connection ended: fail everything waiting on the channel."""
        ...


class ConsumerSide(Protocol):
    """What a channel may use of one of its consumers."""

    @property
    def consumer_tag(self) -> str: ...

    def deliver(self, message: DeliveredMessage) -> None:
        """Buffer one delivery; never waits (see :mod:`amqp.consumer`)."""
        ...

    def on_consume_ok(self) -> None:
        """``consume-ok`` arrived: the broker delivers from now on."""
        ...

    def on_end(self, error: BaseException | None) -> None:
        """The broker no longer delivers (cancel-ok, broker cancel, close)."""
        ...

    async def cancel(self) -> None:
        """Cancel the consumer (``Channel.basic_cancel`` of its tag does this)."""
        ...


class ConsumerHost(Protocol):
    """What a consumer may use of its channel."""

    @property
    def number(self) -> int:
        """The channel number (frames are addressed with it)."""
        ...

    def usable(self) -> bool:
        """Whether the channel and its connection can still be used."""
        ...

    def check(self) -> None:
        """Raise why the channel cannot be used, if it cannot."""
        ...

    def add_consumer(self, consumer: ConsumerSide) -> None:
        """Route deliveries for ``consumer.consumer_tag`` to it (ValueError if taken)."""
        ...

    def remove_consumer(self, consumer_tag: str) -> None:
        """Stop routing to that tag (no-op if unknown)."""
        ...

    async def call(self, frame: bytes, expect: type[_M], *, consumer_tag: str | None = None) -> _M:
        """Send a synchronous method and wait for its reply (see :mod:`amqp.channel`).

        A reply that comes after the caller stopped waiting still reaches the
        consumer by its tag (:meth:`ConsumerSide.on_consume_ok`, ``on_end``).
        """
        ...

    def call_nowait(
        self, frame: bytes, expect: type[base.Frame], consumer_tag: str | None = None
    ) -> None:
        """Send a synchronous method whose reply nobody waits for."""
        ...


class BoundedExit:
    """An async context manager whose exit runs :meth:`exit_handshake`, shielded and bounded.

    Leaving a channel or consumer context must work from a cancelled task
    (shielded) and must not hang on a broker that does not answer (bounded).
    """

    #: Seconds the exit handshake may take.
    exit_timeout: float = 5.0

    def exit_handshake(self) -> Awaitable[None]:
        """What leaving the context does (close a channel, cancel a consumer)."""
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.move_on_after(self.exit_timeout, shield=True):
            await self.exit_handshake()
