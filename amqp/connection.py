"""The connection: handshake, reader, writer, heartbeats, close.

Three background tasks run per connection, in a task group owned by the
:func:`connect` context manager (structured concurrency: nothing outlives
it):

- the **reader** receives up to 64 KiB at a time and hands each buffer to
  the :class:`~amqp.frames.FrameDecoder`, then dispatches every complete
  event it returns without awaiting -- one socket read, one checkpoint, many
  messages. Deliveries go straight to their consumer's buffer; the reader
  never waits for a consumer (a consumer that falls too far behind is given
  up instead, see :mod:`amqp.consumer`), so one slow consumer delays no other
  channel and no request on the connection.
- the **writer** owns the socket's send side. Callers append complete frames
  to an outbox synchronously (:meth:`Connection._send`), so a cancelled
  caller can never leave half a frame on the wire and concurrent senders
  need no lock; the writer sends whatever accumulated in one ``send`` (acks
  and publishes batch themselves under load). A write of nothing but
  acknowledgements waits :data:`ACK_LINGER` (at most :data:`ACK_LINGER_MAX`)
  for company, as long as it keeps little prefetch credit from the broker
  (see there); such an ack does not wake the writer. On a busy connection
  the reader writes the held acks itself, at its first read past their
  linger; the writer's own deadline is the backstop for a connection that
  went quiet.
- the **heartbeat** task sends a heartbeat when nothing was sent for half an
  interval and declares the broker dead when nothing arrived for two
  intervals (:class:`~amqp.errors.HeartbeatTimeout`).

Background tasks never raise into the caller's code: when the connection
ends, the reason is recorded, every waiter (requests, confirms, consumers,
blocked publishers) is woken with it, and :meth:`Connection.closed` returns
it -- which is what a connection manager waits on to reconnect.
"""

from __future__ import annotations

import heapq
import math
import platform
import ssl
from collections.abc import AsyncIterator, Generator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
from pamqp import base, commands

from . import codec
from .channel import Channel
from .errors import (
    AuthenticationError,
    CannotConnect,
    ConnectionClosedByClient,
    ConnectionLost,
    EndState,
    HeartbeatTimeout,
    NoFreeChannels,
    ProtocolError,
    connection_closed,
    fresh,
)
from .frames import FrameDecoder, Heartbeat
from .message import DeliveredMessage
from .transport import READ_SIZE, Transport, transport_for
from .url import ConnectionParameters, parse_url

__all__ = ["Connection", "connect"]

#: Publishers wait while more than this is queued for the socket.
WRITE_HIGH_WATER: Final = 4 * 1024 * 1024
#: How long the writer may try to flush the last frames (close-ok) at the end.
FLUSH_TIMEOUT: Final = 1.0
#: How long the writer may hold back a write that carries only
#: acknowledgements, so that the acks of many slow consumers (a process
#: serving hundreds of quiet live streams) and the per-event acks of a busy
#: live stream share one socket write instead of costing one each.
#: Acknowledgements on a stream queue only return prefetch credit, and a
#: held one never keeps much of it (:data:`ACK_HOLD_SHARE`); any other
#: frame (a publish, a request, a heartbeat, a close) ends the wait at once
#: and goes out with them, in order. Held acks wake nobody: the reader
#: writes them (no wake-up of the writer, whose wake-up at a deadline is a
#: trio cancellation, the costliest step of an idle connection's ack) at
#: the end of its first read past :data:`ACK_LINGER` after the first of
#: them, when the socket takes them at once; else the writer does, woken
#: by the reader, or at :data:`ACK_LINGER_MAX` when nothing was read since.
ACK_LINGER: Final = 0.025
#: The longest an acknowledgement waits: the writer's own deadline, for a
#: connection that read nothing after the linger.
ACK_LINGER_MAX: Final = 2 * ACK_LINGER
#: An acknowledgement may wait only while the deliveries that the channel's
#: held acks cover (its newest held tag minus the newest tag already
#: written) stay below ``prefetch_count // ACK_HOLD_SHARE``: a held ack
#: never keeps more than an eighth of the window from the broker, so it
#: never stalls delivery. A replay's acks (a quarter window each, see
#: ``actors.adapters.rabbitmq_subscription``) go out at once; a live
#: stream's one-event acks wait for company. A channel without a prefetch
#: limit has no credit to run out of; one with a window under eight never
#: holds an ack.
ACK_HOLD_SHARE: Final = 8
#: Held acknowledgements that end the wait (one write of at most ~1.3 KiB).
ACK_LINGER_FRAMES: Final = 64
#: Bound on the connection's close handshake (close, then close-ok).
CLOSE_TIMEOUT: Final = 5.0
DEFAULT_FRAME_MAX: Final = 131072
DEFAULT_CHANNEL_MAX: Final = 2047

_CAPABILITIES: Final = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
    "publisher_confirms": True,
}


def _negotiate(client: int, server: int, default: int) -> int:
    """Tune rule for limits: 0 means "no limit", otherwise the smaller wins."""
    if client and server:
        return min(client, server)
    return client or server or default


class Connection(EndState):
    """An open AMQP connection. Obtain it from :func:`connect`."""

    def __init__(self, stream: anyio.abc.ByteStream, parameters: ConnectionParameters) -> None:
        super().__init__()
        self.parameters = parameters
        #: What the broker announced in ``connection.start`` (product, version, capabilities).
        self.server_properties: dict[str, Any] = {}
        #: Negotiated limits (valid once connected).
        self.frame_max = DEFAULT_FRAME_MAX
        self.channel_max = DEFAULT_CHANNEL_MAX
        self.heartbeat = 0
        self._stream = stream
        self._decoder = FrameDecoder()
        self._channels: dict[int, Channel] = {}
        self._link = _ChannelLink(self)
        self._free_numbers: list[int] = []
        self._next_number = 1
        self._close_ok = anyio.Event()
        self._finished = anyio.Event()
        self._outbox: list[bytes] = []
        self._outbox_size = 0
        #: Whether the outbox holds a frame that must not wait (see ACK_LINGER).
        self._urgent = False
        #: When the first acknowledgement held in the outbox was queued
        #: (infinity while none is held; see ACK_LINGER).
        self._held_since = math.inf
        #: The writer's wait for frames, while it waits: its deadline is
        #: the held acks' backstop (set from :meth:`_send_ack` without waking it).
        self._idle_scope: anyio.CancelScope | None = None
        #: The socket's fast path or the stream (set when the tasks start).
        self._transport: Transport | None = None
        #: Channel number -> the newest delivery tag of its acks already written.
        self._acks_written: dict[int, int] = {}
        #: Channel number -> the newest delivery tag of its acks in the outbox.
        self._acks_queued: dict[int, int] = {}
        self._writer_wake = anyio.Event()
        self._drained = anyio.Event()
        self._send_scope: anyio.CancelScope | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._blocked: str | None = None
        self._unblocked = anyio.Event()
        self._unblocked.set()
        self._last_rx = self._last_tx = anyio.current_time()

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        p = self.parameters
        return f"<Connection {p.host}:{p.port} vhost={p.vhost!r} {state}>"

    # ------------------------------------------------------------------ public state

    @property
    def is_blocked(self) -> bool:
        """Whether the broker has blocked publishing (``connection.blocked``)."""
        return self._blocked is not None

    @property
    def channel_count(self) -> int:
        """Channels currently open (or closing) on this connection."""
        return len(self._channels)

    async def closed(self) -> BaseException:
        """Wait until the connection has ended; return the reason.

        The reason is an :class:`~amqp.errors.AMQPConnectionError`:
        :class:`~amqp.errors.ConnectionClosedByClient` after :meth:`close`,
        otherwise what went wrong (lost, heartbeat timeout, closed by the
        broker). It is returned, not raised: ending is not an error for the
        one who waits for it.
        """
        await self._finished.wait()
        assert self._error is not None
        return self._error

    def _closing_error(self) -> ConnectionClosedByClient:
        return ConnectionClosedByClient("the connection is closing")

    # ------------------------------------------------------------------ channels

    def channel(self) -> _ChannelOpener:
        """Open a channel: ``ch = await conn.channel()`` or ``async with conn.channel() as ch``."""
        return _ChannelOpener(self)

    async def _open_channel(self) -> Channel:
        self._raise_if_over()
        if self._free_numbers:
            number = heapq.heappop(self._free_numbers)
        elif self._next_number <= self.channel_max:
            number = self._next_number
            self._next_number += 1
        else:
            raise NoFreeChannels(f"all {self.channel_max} channels are in use")
        channel = Channel(self._link, number)
        self._channels[number] = channel
        await channel.open()  # on failure it gives its number back itself
        return channel

    def _release_channel(self, number: int) -> None:
        self._acks_written.pop(number, None)
        self._acks_queued.pop(number, None)
        if self._channels.pop(number, None) is not None and self._error is None:
            heapq.heappush(self._free_numbers, number)

    # ------------------------------------------------------------------ writing

    def _send(self, data: bytes) -> None:
        """Queue complete frames for the writer (synchronous: cannot be torn); they go now."""
        if self._error is not None:
            raise fresh(self._error)
        self._outbox.append(data)
        self._outbox_size += len(data)
        self._urgent = True
        self._writer_wake.set()

    def _send_ack(self, number: int, tag: int, frame: bytes) -> None:
        """Queue the ``basic.ack`` ``frame`` of channel ``number`` up to ``tag``; it may wait.

        It waits for company (see :data:`ACK_LINGER`) unless the channel's
        held acks would cover an eighth of its window, the outbox is full of
        held acks, or something else in it goes now anyway.
        """
        if self._error is not None:
            raise fresh(self._error)
        outbox = self._outbox
        outbox.append(frame)
        self._outbox_size += len(frame)
        self._acks_queued[number] = tag
        if not self._urgent and len(outbox) < ACK_LINGER_FRAMES:
            channel = self._channels.get(number)
            window = channel.prefetch_count if channel is not None else 0
            if not window or (tag - self._acks_written.get(number, 0)) * ACK_HOLD_SHARE < window:
                if len(outbox) == 1:  # the first held ack starts the clock
                    self._held_since = anyio.current_time()
                    if self._idle_scope is not None:
                        self._idle_scope.deadline = self._held_since + ACK_LINGER_MAX
                return  # waits for company without waking the writer
        self._urgent = True
        self._writer_wake.set()

    def _must_wait_to_publish(self) -> bool:
        return self._blocked is not None or self._outbox_size > WRITE_HIGH_WATER

    async def _wait_publishable(self) -> None:
        """Wait while the broker blocks us or the write buffer is over its high-water mark."""
        while self._error is None:
            if self._blocked is not None:
                await self._unblocked.wait()
            elif self._outbox_size > WRITE_HIGH_WATER:
                if self._drained.is_set():
                    self._drained = anyio.Event()
                await self._drained.wait()
            else:
                return

    async def _writer(self) -> None:
        assert self._transport is not None
        transport = self._transport
        outbox = self._outbox
        while True:
            if not outbox or not (self._urgent or self._error is not None):
                if not outbox and self._error is not None:
                    break
                await self._wait_for_frames()
                continue  # the outbox may hold more, or urgent frames, now
            data = self._take_outbox()
            with anyio.CancelScope() as scope:
                if self._error is not None:
                    scope.deadline = anyio.current_time() + FLUSH_TIMEOUT
                self._send_scope = scope
                try:
                    await transport.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    self._write_failed(exc)
                    break
                finally:
                    self._send_scope = None
            if scope.cancelled_caught:
                break
            self._wrote(anyio.current_time())
        # Flushed what we could: stop the reader and the heartbeat task.
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    def _take_outbox(self) -> bytes:
        """Everything queued, in order, as one write; the acks in it count as written."""
        outbox = self._outbox
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        self._outbox_size = 0
        self._urgent = False
        self._held_since = math.inf
        if self._acks_queued:
            self._acks_written.update(self._acks_queued)
            self._acks_queued.clear()
        return data

    def _write_held_acks(self, now: float) -> None:
        """In the reader's task, past the linger: write the held acks without the writer.

        Only while the writer waits (so it is not halfway through a write)
        and the outbox holds nothing but held acks. What the socket does not
        take at once goes back to the writer, first in line, and wakes it.
        """
        scope = self._idle_scope
        if scope is None or self._urgent or self._error is not None:
            return  # the writer is awake or about to be: it writes them
        assert self._transport is not None
        data = self._take_outbox()
        try:
            written = self._transport.write_now(data)
        except anyio.BrokenResourceError as exc:
            self._write_failed(exc)
            return
        if written < len(data):
            self._outbox.append(data[written:])
            self._outbox_size = len(data) - written
            self._urgent = True
            self._writer_wake.set()
        else:
            scope.deadline = math.inf
            self._wrote(now)

    def _wrote(self, now: float) -> None:
        """A write went out whole: the heartbeat's clock, and publishers waiting for room."""
        self._last_tx = now
        self._drained.set()

    def _write_failed(self, error: BaseException) -> None:
        self._fail(ConnectionLost(f"cannot write to the broker: {error!r}"))

    async def _wait_for_frames(self) -> None:
        """Wait for :meth:`_send` to wake us, or for the held acks' deadline.

        Past the deadline the outbox is marked urgent: the writer sends it.
        """
        if self._writer_wake.is_set():
            self._writer_wake = anyio.Event()
            return
        # Infinite unless acks are held: _take_outbox resets it with the outbox.
        with anyio.CancelScope(deadline=self._held_since + ACK_LINGER_MAX) as scope:
            self._idle_scope = scope
            try:
                await self._writer_wake.wait()
            finally:
                self._idle_scope = None
        if scope.cancelled_caught and self._outbox:
            self._urgent = True

    # ------------------------------------------------------------------ reading

    async def _reader(self) -> None:
        assert self._transport is not None
        receive = self._transport.receive
        feed = self._decoder.feed
        channels = self._channels
        error: BaseException
        try:
            while self._error is None:
                data = await receive()
                self._last_rx = now = anyio.current_time()
                for number, event in feed(data):
                    if isinstance(event, DeliveredMessage):
                        channel = channels.get(number)
                        if channel is not None:
                            channel.deliver(event)  # never waits: see amqp.consumer
                    elif number == 0:
                        self._on_connection_event(event)
                    else:
                        channel = channels.get(number)
                        if channel is not None:
                            channel.handle(event)
                if now - self._held_since >= ACK_LINGER:
                    self._write_held_acks(now)
            return
        except anyio.EndOfStream:
            error = ConnectionLost("the broker closed the socket")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            error = ConnectionLost(f"cannot read from the broker: {exc!r}")
            error.__cause__ = exc
        except ProtocolError as exc:
            error = exc
            if self._error is None:
                self._outbox.append(codec.connection_close(505, f"UNEXPECTED_FRAME - {exc}"[:255]))
                self._writer_wake.set()
        self._fail(error)

    def _on_connection_event(self, event: object) -> None:
        if isinstance(event, Heartbeat):
            return
        if isinstance(event, commands.Connection.Close):
            if self._error is None:
                self._outbox.append(codec.connection_close_ok())
                self._writer_wake.set()
            self._fail(
                connection_closed(
                    event.reply_code or 0,
                    event.reply_text or "",
                    event.class_id or 0,
                    event.method_id or 0,
                )
            )
        elif isinstance(event, commands.Connection.CloseOk):
            self._close_ok.set()
        elif isinstance(event, commands.Connection.Blocked):
            self._blocked = str(event.reason or "blocked")
            if self._unblocked.is_set():
                self._unblocked = anyio.Event()
        elif isinstance(event, commands.Connection.Unblocked):
            self._blocked = None
            self._unblocked.set()
        else:
            name = getattr(event, "name", repr(event))
            raise ProtocolError(f"unexpected {name} on channel 0")

    # ------------------------------------------------------------------ heartbeats

    async def _heartbeat_loop(self) -> None:
        interval = float(self.heartbeat)
        while self._error is None:
            now = anyio.current_time()
            silent = now - self._last_rx
            if silent >= 2 * interval:
                self._fail(HeartbeatTimeout(f"nothing received from the broker for {silent:.1f} s"))
                return
            if now - self._last_tx >= interval / 2:
                self._send(codec.HEARTBEAT_FRAME)
                self._last_tx = now
            wake = min(self._last_tx + interval / 2, self._last_rx + 2 * interval)
            await anyio.sleep(max(wake - now, 0.01))

    # ------------------------------------------------------------------ ending

    def _fail(self, error: BaseException) -> None:
        """The connection is over: record why and wake everyone waiting on it."""
        if self._error is not None:
            return
        self._error = error
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            channel.fail(error)
        self._close_ok.set()
        self._unblocked.set()
        self._drained.set()
        self._writer_wake.set()
        if self._send_scope is not None:
            self._send_scope.deadline = min(
                self._send_scope.deadline, anyio.current_time() + FLUSH_TIMEOUT
            )

    async def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close the connection (handshake bounded by a timeout); no-op if closed."""
        if self._error is None and not self._closing:
            self._closing = True
            self._send(codec.connection_close(reply_code, reply_text))
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await self._close_ok.wait()
            self._fail(ConnectionClosedByClient("closed by the client"))
        elif self._error is None:
            await self._close_ok.wait()
        await self._finished.wait()

    # ------------------------------------------------------------------ start-up

    async def _handshake(self, client_properties: Mapping[str, Any] | None) -> None:
        """Protocol header, SASL PLAIN, tune, open: before any task runs."""
        p = self.parameters
        pending: list[tuple[int, object]] = []

        async def expect(kind: type[base.Frame]) -> Any:
            while True:
                while pending:
                    number, event = pending.pop(0)
                    if isinstance(event, Heartbeat):
                        continue
                    if isinstance(event, commands.Connection.Close):
                        await self._stream.send(codec.connection_close_ok())
                        raise connection_closed(
                            event.reply_code or 0,
                            event.reply_text or "",
                            event.class_id or 0,
                            event.method_id or 0,
                        )
                    if number != 0 or not isinstance(event, kind):
                        raise ProtocolError(f"expected {kind.name} during the handshake")
                    return event
                try:
                    data = await self._stream.receive(READ_SIZE)
                except anyio.EndOfStream:
                    if kind is commands.Connection.Tune:
                        raise AuthenticationError(
                            403, "the broker closed the socket after authentication"
                        ) from None
                    raise CannotConnect(
                        "the broker closed the socket during the handshake"
                    ) from None
                pending.extend(self._decoder.feed(data))

        await self._stream.send(codec.PROTOCOL_HEADER)
        start: commands.Connection.Start = await expect(commands.Connection.Start)
        self.server_properties = dict(start.server_properties or {})
        mechanisms = str(start.mechanisms or "").split()
        if "PLAIN" not in mechanisms:
            raise CannotConnect(f"the broker does not offer SASL PLAIN (only {mechanisms})")
        properties: dict[str, Any] = {
            "product": "ess-amqp",
            "platform": f"Python {platform.python_version()}",
            "version": "0.1.0",
            "information": "AMQP 0-9-1 client for anyio/Trio",
            "capabilities": dict(_CAPABILITIES),
        }
        if p.connection_name:
            properties["connection_name"] = p.connection_name
        if client_properties:
            properties.update(client_properties)
        await self._stream.send(codec.connection_start_ok(properties, p.username, p.password))

        tune: commands.Connection.Tune = await expect(commands.Connection.Tune)
        self.channel_max = _negotiate(p.channel_max, tune.channel_max, DEFAULT_CHANNEL_MAX)
        self.frame_max = _negotiate(p.frame_max, tune.frame_max, DEFAULT_FRAME_MAX)
        self.heartbeat = tune.heartbeat if p.heartbeat is None else p.heartbeat
        self._decoder.max_frame_size = self.frame_max
        await self._stream.send(
            codec.connection_tune_ok(self.channel_max, self.frame_max, self.heartbeat)
            + codec.connection_open(p.vhost)
        )
        await expect(commands.Connection.OpenOk)
        self._last_rx = self._last_tx = anyio.current_time()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run the reader, writer and heartbeat tasks until the connection ends."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                self._transport = transport_for(self._stream)
                tasks.start_soon(self._reader)
                tasks.start_soon(self._writer)
                if self.heartbeat:
                    tasks.start_soon(self._heartbeat_loop)
                task_status.started()
                # Shielded from here on: an outer cancellation must not kill
                # the writer before the close handshake; they stop when the
                # connection ends (the writer cancels this scope), which
                # close() ensures. Not if the caller gave up while we were
                # being started: trio's start() then ignores started() and
                # waits for this task to end, which a shield would forbid.
                tasks.cancel_scope.shield = anyio.current_effective_deadline() > -math.inf
        finally:
            self._fail(ConnectionClosedByClient("the connection's task group was cancelled"))
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)
            self._finished.set()


class _ChannelLink:
    """The connection as its channels see it (:class:`amqp.contract.ConnectionSide`).

    A separate object, so the frames-level operations channels need stay off
    the public :class:`Connection`.
    """

    __slots__ = ("_connection", "send", "send_ack")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        #: Bound once: acks and publishes call them without an extra hop.
        self.send = connection._send
        self.send_ack = connection._send_ack

    @property
    def frame_max(self) -> int:
        return self._connection.frame_max

    def usable(self) -> bool:
        return not self._connection.is_closed

    def check(self) -> None:
        self._connection._raise_if_over()

    def release_channel(self, number: int) -> None:
        self._connection._release_channel(number)

    def publish_must_wait(self) -> bool:
        return self._connection._must_wait_to_publish()

    async def wait_publishable(self) -> None:
        await self._connection._wait_publishable()


class _ChannelOpener:
    """What :meth:`Connection.channel` returns: await it, or use it with ``async with``."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._channel: Channel | None = None

    def __await__(self) -> Generator[Any, None, Channel]:
        return self._connection._open_channel().__await__()

    async def __aenter__(self) -> Channel:
        self._channel = await self._connection._open_channel()
        return self._channel

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._channel is not None:
            await self._channel.__aexit__(*exc_info)  # the channel's bounded close


async def _open(
    parameters: ConnectionParameters,
    ssl_context: ssl.SSLContext | None,
    client_properties: Mapping[str, Any] | None,
    given_stream: anyio.abc.ByteStream | None,
) -> Connection:
    host, port = parameters.host, parameters.port
    timeout = parameters.connection_timeout or None
    try:
        with anyio.fail_after(timeout):
            stream: anyio.abc.ByteStream
            if given_stream is not None:
                stream = given_stream
            elif parameters.ssl:
                stream = await anyio.connect_tcp(
                    host,
                    port,
                    tls=True,
                    ssl_context=ssl_context or ssl.create_default_context(),
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(host, port)
            connection = Connection(stream, parameters)
            try:
                await connection._handshake(client_properties)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
    except TimeoutError as exc:
        raise CannotConnect(f"connecting to {host}:{port} timed out after {timeout} s") from exc
    except (OSError, anyio.BrokenResourceError) as exc:
        raise CannotConnect(f"cannot connect to {host}:{port}: {exc}") from exc
    return connection


@asynccontextmanager
async def connect(
    url: str | ConnectionParameters,
    *,
    ssl_context: ssl.SSLContext | None = None,
    client_properties: Mapping[str, Any] | None = None,
    stream: anyio.abc.ByteStream | None = None,
) -> AsyncIterator[Connection]:
    """Connect to a broker; the connection lives as long as the ``async with`` block.

    ``url`` is an ``amqp://`` or ``amqps://`` URL (see :func:`amqp.url.parse_url`)
    or ready :class:`~amqp.url.ConnectionParameters`. Raises
    :class:`~amqp.errors.CannotConnect` when the broker cannot be reached,
    :class:`~amqp.errors.AuthenticationError` for bad credentials and
    :class:`~amqp.errors.ConnectionNotAllowed` for a bad vhost.

    The background tasks run in a task group owned by this context manager;
    leaving the block closes the connection (shielded, bounded) and ends
    them. Exceptions from the block propagate unchanged (not wrapped in an
    exception group).

    ``stream`` speaks AMQP over an already open byte stream instead of
    connecting to the URL's host (a proxy, a Unix socket, a test double).
    """
    parameters = parse_url(url) if isinstance(url, str) else url
    connection = await _open(parameters, ssl_context, client_properties, stream)
    body_error: BaseException | None = None
    async with anyio.create_task_group() as group:
        await group.start(connection._run)
        # Cancelled while it started: the connection is already gone (see _run).
        await anyio.lowlevel.checkpoint_if_cancelled()
        try:
            yield connection
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            body_error = exc
        finally:
            with anyio.CancelScope(shield=True):
                await connection.close()
            if connection._tasks is not None:
                connection._tasks.cancel_scope.cancel()
            group.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
