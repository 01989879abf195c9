"""The websocket channel port (:mod:`actors.ports.websocket`) on trio-websocket.

trio-websocket 0.12 leaves three traps that these adapters close:

- Its close is not shielded and waits for the peer's close frame for as long
  as the caller lets it. :meth:`TrioWebSocket.close` shields the close
  and bounds it by ``close_timeout``, then drops the TCP stream whatever
  happened, so a close can run in a cancelled ``finally`` and always ends.
- Its ``ping`` waits for the pong forever if the connection dies meanwhile.
  :meth:`TrioWebSocket.ping` also wakes when the connection closes.
- After some failures (an oversized client message) it stops reading but
  leaves the socket open; :meth:`close` always closes the socket at the end.

And it has no way to write without waiting, which the live-tail hub needs
to write to its idle members from its own task (one task hop per event
fewer): :meth:`TrioWebSocket.send_now` writes straight to the socket when
the stream lock is free, and holds what the socket did not take for
:meth:`TrioWebSocket.flush`. A partial write keeps the stream lock until
the rest is written, by whichever task flushes, so the connection's stream
lock is a :class:`trio.Semaphore` (any task may release it) instead of
trio-websocket's task-owned lock.

And one cost: every connection queues the client's messages for someone to
read, so a server that must keep answering pings needs a task per websocket
just to drain them. Clients have nothing to say to this service:
:class:`DiscardingConnection` (built by :mod:`web.websocket`'s server) drops
their messages in its reader loop (trio-websocket's, re-done) and calls back
when the reading ends, so there is no draining task, no inbound queue, and,
once the handshake is answered, no handshake state (the h11 connection, the
request's headers) kept for the connection's life. That loop runs in the
server's task for the connection, which thus does double duty: the handshake
is routed in a child task that ends once the websocket's owner holds it
(:meth:`DiscardingConnection.hand_over`), and an idle websocket costs the
edge that one task.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Final

import trio
from trio_websocket import ConnectionClosed, Endpoint, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from actors.ports.websocket import WebSocketClosed
from web.metrics import ServiceMetrics, close_code_label
from web.reasons import close_reason

log = logging.getLogger(__name__)

#: Raised by trio-websocket/wsproto when the connection is (half) gone.
CONNECTION_GONE = (
    ConnectionClosed,
    LocalProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def format_peer(endpoint: Endpoint | str) -> str:
    """``host:port`` (``[v6]:port`` for IPv6) for logs and the debug tree."""
    if isinstance(endpoint, Endpoint):
        host = str(endpoint.address)
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{endpoint.port}"
    return endpoint


class LeanWSConnection(WSConnection):
    """wsproto's server connection, minus its handshake state once the websocket is open.

    ``WSConnection`` keeps its ``H11Handshake`` (an h11 ``Connection``, the
    request, buffers: about 2.4 KB) for the connection's life, although on
    the server side nothing reads it once the 101 is sent: the websocket
    ``Connection`` is created without the handshake's trailing bytes, and
    the handshake's event queue was drained by the reader before the
    handshake could be answered. So the first send that opens the
    connection drops it (unless events are still queued in it); every
    method that would consult it asks ``connection`` first.
    """

    def __init__(self) -> None:
        super().__init__(ConnectionType.SERVER)

    @property
    def state(self) -> ConnectionState:
        connection = self.connection
        return self.handshake.state if connection is None else connection.state

    def send(self, event: Event) -> bytes:
        connection = self.connection
        if connection is not None:
            return connection.send(event)
        data = super().send(event)
        connection = self.connection
        if connection is not None and not self.handshake._events:
            del self.handshake
            if not connection._events:
                # wsproto queues an event here only for ``receive_data(None)``,
                # which the reader never calls; an empty deque holds ~700 B.
                connection._events = _EventFifo()  # type: ignore[assignment]
        return data

    def receive_data(self, data: bytes | None) -> None:
        connection = self.connection
        if connection is None:
            super().receive_data(data)
        else:
            connection.receive_data(data)

    def events(self) -> Generator[Event, None, None]:
        if "handshake" in self.__dict__:
            yield from self.handshake.events()
        if self.connection is not None:
            yield from self.connection.events()


class _EventFifo(list[Event]):
    """Stands for wsproto ``Connection._events`` (a deque): a list with ``popleft``."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


class _NoQueue:
    """Stands for both ends of trio-websocket's inbound message queue, which stays empty.

    trio-websocket only enters, closes and receives from these (its reader
    holds the send end open; ``aclose``/``get_message`` use the receive
    end); :class:`DiscardingConnection` never queues a message. One shared,
    stateless instance instead of a memory channel per connection.
    """

    async def __aenter__(self) -> _NoQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive(self) -> Any:
        await trio.lowlevel.checkpoint()
        raise trio.EndOfChannel


_NO_QUEUE = _NoQueue()
#: What a plain TCP read asks for when no receive buffer size is set (trio's default).
DEFAULT_RECEIVE_SIZE = 65536
#: Stands for events that nobody waits on for a server connection: trio-websocket
#: only sets them (``_open_handshake`` is awaited by its client connect only).
_UNWATCHED = trio.Event()
#: trio-websocket's handler of each wsproto event, by name (not a dict of bound
#: methods per connection).
_HANDLERS: dict[type[Event], str] = {
    AcceptConnection: "_handle_accept_connection_event",
    BytesMessage: "_handle_message_event",
    CloseConnection: "_handle_close_connection_event",
    Ping: "_handle_ping_event",
    Pong: "_handle_pong_event",
    RejectConnection: "_handle_reject_connection_event",
    RejectData: "_handle_reject_data_event",
    Request: "_handle_request_event",
    TextMessage: "_handle_message_event",
}
#: What a request is replaced with once answered: the routed path is read before.
_SPENT_REQUEST = Request(host="", target="")


class _Owner:
    """What :meth:`DiscardingConnection.hand_over` keeps until it is used (then ``None``)."""

    __slots__ = ("finish", "on_stop")

    def __init__(self, on_stop: Callable[[], None], finish: Callable[[], Awaitable[None]]) -> None:
        self.on_stop: Callable[[], None] | None = on_stop
        self.finish: Callable[[], Awaitable[None]] | None = finish


class DiscardingConnection(WebSocketConnection):
    """A server connection whose reader discards client messages and says when it ends.

    Text and binary messages are counted against ``max_message_size``
    (larger ones still close with 1009, trio-websocket's own path) and then
    dropped instead of queued; pings are still answered and the close
    handshake still completed by trio-websocket's reader. Nobody has to
    drain anything, so no task per websocket does; :meth:`when_reader_ends`
    tells the owner that the peer went (close frame, TCP gone, protocol
    error, oversized message) or that the socket was closed.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_size: int,
        receive_buffer_size: int | None,
    ) -> None:
        super().__init__(
            stream,
            LeanWSConnection(),
            message_queue_size=0,
            max_message_size=max_message_size,
            receive_buffer_size=receive_buffer_size,
        )
        self._send_channel = self._recv_channel = _NO_QUEUE  # type: ignore[assignment]
        #: trio-websocket's stream lock, as a semaphore that any task may
        #: release (see :meth:`TrioWebSocket.send_now`). trio-websocket only
        #: ever enters it with ``async with``, which a semaphore supports; set
        #: before the reader starts, so no write ever held the lock it made.
        self._stream_lock = trio.Semaphore(1, max_value=1)  # type: ignore[assignment]
        self._open_handshake = self._for_testing_peer_closed_connection = _UNWATCHED
        self._reader_ended = False
        self._on_reader_end: Callable[[], None] | None = None
        #: Set by :meth:`hand_over`. (Attributes are counted: past 30, Python
        #: gives up the instance's shared-key dict, +1.3 KB per connection.)
        self._owner: _Owner | None = None
        #: The scope of the receive under way while the reader waits for a hand-over.
        self._receiving: trio.CancelScope | None = None

    @property
    def stream_lock(self) -> trio.Semaphore:
        """trio-websocket's stream lock, as a semaphore (see :meth:`TrioWebSocket.send_now`)."""
        return self._stream_lock  # type: ignore[return-value]

    def when_reader_ends(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (sync, must not raise) once the reading ends; at once if it has."""
        if self._reader_ended:
            callback()
        else:
            self._on_reader_end = callback

    @property
    def handed_over(self) -> bool:
        """Whether an owner took the websocket over from the routing task (:meth:`hand_over`)."""
        return self._owner is not None

    def hand_over(self, on_stop: Callable[[], None], finish: Callable[[], Awaitable[None]]) -> None:
        """The websocket's owner holds it from now on; the routing task may end.

        The reading continues in the connection's task, outside the nursery it
        shared with the routing task (see :meth:`read`). If that task is
        cancelled (the listener shuts down) while the owner holds the
        websocket, ``on_stop`` is called (sync, must not raise: the owner
        closes the websocket, with 1001) and the reading goes on, shielded and
        bounded, so the owner's close handshake completes; ``finish`` (the
        edge's end steps: close if still open, count the close) is awaited
        once the reading is over (:meth:`finish`).
        """
        self._owner = _Owner(on_stop, finish)
        receiving = self._receiving
        if receiving is not None:
            receiving.cancel()

    async def read(self, *, until_handed_over: bool, stop_grace: float) -> bool:
        """Run the reader loop in the calling task; ``False`` if it stopped for a hand-over.

        With ``until_handed_over``, a receive is interrupted (at its
        checkpoint: no byte is lost) once :meth:`hand_over` is called, so the
        caller can leave the nursery it shares with the routing task and call
        this again without it: the idle connection is then one task, not two.
        Otherwise it reads until the connection ends. Either way, once the
        reading is over, the :meth:`when_reader_ends` callback is called.
        ``stop_grace`` bounds the shielded reading after a cancellation (see
        :meth:`hand_over`).
        """
        ended = True
        try:
            try:
                ended = await self._read(until_handed_over)
            except trio.Cancelled:
                owner = self._owner
                stop = None if owner is None else owner.on_stop
                if owner is None or stop is None:
                    raise
                owner.on_stop = None
                stop()
                with trio.CancelScope(shield=True), trio.move_on_after(stop_grace):
                    await self._read(False)
                raise
        finally:
            if ended:
                self._reader_ended = True
                if self._owner is not None:
                    self._owner.on_stop = None
                callback, self._on_reader_end = self._on_reader_end, None
                if callback is not None:
                    callback()
        return ended

    async def finish(self) -> None:
        """The owner's end steps, once (shielded); nothing if it was never handed over."""
        owner = self._owner
        if owner is None:
            return
        finish, owner.finish, owner.on_stop = owner.finish, None, None
        if finish is not None:
            with trio.CancelScope(shield=True):
                await finish()

    async def _read(self, until_handed_over: bool) -> bool:
        """trio-websocket 0.12's server reader loop, minus what an idle connection kept.

        The same steps as ``WebSocketConnection._reader_task`` for a server
        (handle the pending events, read, feed wsproto, until the connection
        or the stream ends), except that it keeps no dict of bound handlers
        and no reference to the last event (the handshake request, with its
        headers, for an idle connection's life), it does not hold the
        inbound queue open (there is none), and it may stop for a hand-over
        (``False``; see :meth:`read`).
        """
        wsproto = self._wsproto
        while self._reader_running:
            await self._handle_events()
            try:
                if until_handed_over:
                    if self._owner is not None:
                        return False
                    receiving = self._receiving = trio.CancelScope()
                    with receiving:
                        data = await self._receive()
                    self._receiving = None
                    if receiving.cancelled_caught:
                        return False
                else:
                    data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abort_web_socket()
                break
            if not data:  # TCP closed, if before the websocket: an abnormal closure
                if wsproto.state != ConnectionState.CLOSED:
                    await self._abort_web_socket()
                break
            if wsproto.state != ConnectionState.CLOSED:
                try:
                    wsproto.receive_data(data if isinstance(data, bytes) else bytes(data))
                except RemoteProtocolError as error:
                    if error.event_hint:
                        await self._send(error.event_hint)
                    await self._close_stream()
            del data
        return True

    async def _receive(self) -> bytes | bytearray:
        """``receive_some`` of the stream; for plain TCP, a wait on the descriptor and a read.

        An idle connection waits here for its whole life: trio's
        ``SocketStream.receive_some`` waits three frames and a context
        manager deeper (~1 KB per connection). The descriptor is asked for
        on every call (a closed trio socket answers -1), a socket closed while
        waiting raises ``ClosedResourceError`` as trio's own read would, and
        socket errors become ``BrokenResourceError``.
        """
        stream = self._stream
        if type(stream) is not trio.SocketStream:
            return await stream.receive_some(self._receive_buffer_size)
        size = self._receive_buffer_size or DEFAULT_RECEIVE_SIZE
        while True:
            fd = stream.socket.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            await trio.lowlevel.wait_readable(fd)
            fd = stream.socket.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                return os.read(fd, size)
            except BlockingIOError:
                continue
            except OSError as error:
                raise trio.BrokenResourceError(str(error)) from error

    async def _handle_events(self) -> None:
        """Dispatch wsproto's pending events (a frame of its own: no event outlives it)."""
        for event in self._wsproto.events():
            name = _HANDLERS.get(type(event))
            if name is None:
                log.warning("%s received unknown event type: %r", self, type(event))
                continue
            try:
                await getattr(self, name)(event)
            except ConnectionClosed:
                self._reader_running = False
                return

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        size = self._message_size + len(event.data)
        if size > self._max_message_size:
            # trio-websocket's own 1009 close (it resets the counters).
            await super()._handle_message_event(event)
            return
        self._message_size = 0 if event.message_finished else size


class TrioWebSocket:
    """One accepted websocket (implements :class:`actors.ports.websocket.WebSocket`)."""

    def __init__(
        self,
        connection: DiscardingConnection,
        peer: str,
        *,
        close_timeout: float = 2.0,
    ) -> None:
        self._ws = connection
        self._lock = connection.stream_lock
        self._peer = peer
        self._close_timeout = close_timeout
        #: Set by our close/abort (a flag: an Event per websocket costs more).
        self._closed = False
        #: Bytes :meth:`send_now` could not write yet (see :meth:`flush`).
        self._held = b""
        #: Whether a partial write holds the stream lock until the rest is written.
        self._holds_lock = False
        #: The code this side closed with (``None``: the peer closed, or abort).
        self.sent_close_code: int | None = None

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def close_code(self) -> int:
        """How the connection ended: the code we sent, else the peer's, else 1006."""
        if self.sent_close_code is not None:
            return self.sent_close_code
        reason = self._ws.closed
        return reason.code if reason is not None else 1006

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Encode every frame, then write them with one ``send_all``.

        trio-websocket has no batch send: this mirrors its private ``_send``
        (same wsproto connection, same stream lock, so pongs and closes from
        its reader task never interleave with our bytes). Pinned to 0.12.x;
        tests/unit/web/test_trio_websocket_internals.py names every private
        attribute used here and fails if one goes. What :meth:`send_now`
        held is written first.
        """
        data = self._encode(texts)
        await self._write_after_held(data)

    def send_now(self, texts: Sequence[str]) -> bool:
        """Write the frames at once if the socket takes them; else hold the rest.

        Only a plain TCP stream is written directly (over TLS every byte goes
        through the TLS stream, so the frames are held for :meth:`flush`).
        The socket is asked for its descriptor on every call: a closed trio
        socket answers -1, so a descriptor the kernel gave to another
        connection since is never written.
        """
        data = self._encode(texts)
        stream = self._ws._stream
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        lock = self._lock
        if self._held or fd < 0 or lock.value == 0:
            self._held += data
            return False
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError as error:  # EPIPE, ECONNRESET: the peer is gone
            raise WebSocketClosed(str(error)) from None
        if written == len(data):
            return True
        self._held = data[written:]
        if written:
            # Half a frame is on the wire: nothing else may write until the rest is.
            lock.acquire_nowait()
            self._holds_lock = True
        return False

    async def flush(self) -> None:
        """Write what :meth:`send_now` held, under the stream lock."""
        if self._held:
            await self._write_after_held(b"")

    async def _write_after_held(self, data: bytes) -> None:
        """Write what :meth:`send_now` held, then ``data``, in one write under the stream lock.

        A partial write already holds the lock; otherwise it is taken here,
        without a checkpoint of its own when free (the usual case: ``send_all``
        checkpoints anyway, so one wake-up per write is saved). What is held
        is read once the lock is ours: :meth:`send_now` may add to it meanwhile.
        """
        lock = self._lock
        if self._holds_lock:
            self._holds_lock = False
        else:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
        try:
            held, self._held = self._held, b""
            await self._write(held + data if held else data)
        finally:
            lock.release()

    def _encode(self, texts: Sequence[str]) -> bytes:
        ws = self._ws
        if ws._close_reason is not None or ws._wsproto.state is not ConnectionState.OPEN:
            raise WebSocketClosed("The websocket is closed")
        return b"".join([text_frame(text) for text in texts])

    async def _write(self, data: bytes) -> None:
        """``send_all`` on trio-websocket's stream (the caller holds the stream lock)."""
        ws = self._ws
        try:
            await ws._stream.send_all(data)
        except CONNECTION_GONE as error:
            with trio.CancelScope(shield=True):
                await ws._abort_web_socket()
            raise WebSocketClosed(str(error)) from None

    def on_gone(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once trio-websocket's reader ends (the peer or the socket went)."""
        self._ws.when_reader_ends(callback)

    async def ping(self) -> None:
        """Ping and wait for the pong, or raise :class:`WebSocketClosed` if the socket goes."""
        if self._closed or self._ws.closed is not None:
            raise WebSocketClosed("The websocket is closed")
        answered = False
        async with trio.open_nursery() as nursery:

            async def wait_for_pong() -> None:
                nonlocal answered
                try:
                    await self._ws.ping()
                    answered = True
                # ValueError: a random payload collided with one in flight; treat as gone.
                except (*CONNECTION_GONE, ValueError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_for_pong)
            # trio-websocket sets ``_close_handshake`` when either side closes
            # or the stream breaks; our own close and abort end in one of those
            # (a close frame, or the dropped stream the reader then sees).
            nursery.start_soon(_wait_then_cancel, self._ws._close_handshake, nursery.cancel_scope)
        if not answered:
            raise WebSocketClosed("The websocket closed while waiting for a pong")

    async def close(self, code: int, reason: str) -> None:
        """Close handshake, shielded and bounded, then drop the socket; never raises."""
        if self._closed:
            return
        self._closed = True
        if self._ws.closed is None:  # else the peer (or trio-websocket) closed first
            self.sent_close_code = code
        if self._holds_lock:
            # Half a frame is on the wire: a close frame after it would be
            # garbage to the peer, so the connection is dropped instead.
            await self.abort()
            return
        with trio.CancelScope(shield=True):
            try:
                with trio.move_on_after(self._close_timeout):
                    await self._ws.aclose(code, close_reason(reason))
            except Exception:
                log.debug("Close of %s failed", self._peer, exc_info=True)
            await self._drop()

    async def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._drop()

    async def _drop(self) -> None:
        # ``aclose_forcefully`` skips graceful TLS shutdown too; the reader
        # task then sees the closed stream and marks the websocket closed.
        try:
            await trio.aclose_forcefully(self._ws._stream)
        except Exception:
            log.debug("Dropping the socket of %s failed", self._peer, exc_info=True)


@functools.lru_cache(maxsize=16)
def text_frame(text: str) -> bytes:
    """One unmasked, unfragmented server-to-client text frame (RFC 6455 section 5.2).

    Written here rather than by wsproto, whose per-frame event machinery
    showed in the live profile: a server frame carries no mask and no state
    (no extension is ever negotiated: trio-websocket accepts none), so the
    same text is the same bytes on every connection. Remembered for the
    last few texts: the members of a live-tail hub send the same one.
    """
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = _MEDIUM_HEADER.pack(0x81, 126, size)
    else:
        header = _LONG_HEADER.pack(0x81, 127, size)
    return header + payload


_MEDIUM_HEADER: Final = struct.Struct("!BBH")
_LONG_HEADER: Final = struct.Struct("!BBQ")


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class TrioPendingWebSocket:
    """A handshake not yet answered: an :class:`~actors.ports.websocket.PendingWebSocket`.

    It also counts the connection in the metrics: up when accepted, down (with
    the close code) in :meth:`finish`, which the edge runs once: when the
    routing ends, or, for a websocket handed over to its owner
    (:meth:`on_stop`), once the connection's reading is over.
    """

    def __init__(
        self,
        request: WebSocketRequest,
        connection: DiscardingConnection,
        *,
        accept_timeout: float = 10.0,
        close_timeout: float = 2.0,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._request = request
        self._connection = connection
        self._peer = format_peer(request.remote)
        self._accept_timeout = accept_timeout
        self._close_timeout = close_timeout
        self._metrics = metrics
        self.channel: TrioWebSocket | None = None

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def handed_over(self) -> bool:
        return self._connection.handed_over

    def on_stop(self, callback: Callable[[], None]) -> None:
        """The owner holds the websocket from now on: see :meth:`DiscardingConnection.hand_over`."""
        self._connection.hand_over(callback, self.finish)

    async def accept(self) -> TrioWebSocket:
        """Answer 101; bounded, because a client that stopped reading could stall it."""
        if self.channel is not None:
            return self.channel
        request = self._request
        try:
            with trio.fail_after(self._accept_timeout):
                connection = await request.accept()
        except (*CONNECTION_GONE, trio.TooSlowError) as error:
            raise WebSocketClosed(f"Handshake with {self._peer} failed: {error!r}") from None
        if connection is not self._connection:
            raise TypeError("TrioPendingWebSocket serves web.websocket's connections only")
        # The handler's frames still hold the request: drop its headers.
        request._event = _SPENT_REQUEST
        self.channel = TrioWebSocket(
            connection,
            self._peer,
            close_timeout=self._close_timeout,
        )
        if self._metrics is not None:
            self._metrics.websocket_connections.inc()
        return self.channel

    async def finish(self) -> None:
        """The edge's end of this websocket: close it if still open (1000), count the close.

        Never accepted: the socket is dropped, so an accept still to come fails
        (and is never counted).
        """
        channel = self.channel
        if channel is None:
            await trio.aclose_forcefully(self._connection._stream)
            return
        await channel.close(1000, "")
        metrics = self._metrics
        if metrics is not None:
            metrics.websocket_connections.dec()
            metrics.websocket_closes.labels(close_code_label(channel.close_code)).inc()


__all__ = [
    "CONNECTION_GONE",
    "DiscardingConnection",
    "LeanWSConnection",
    "TrioPendingWebSocket",
    "TrioWebSocket",
    "format_peer",
]
