"""The private parts of trio-websocket that web/ relies on are still there, with their types.

trio-websocket has no batch send, no bounded close and no way to wake a
ping when the connection dies, so :mod:`web.client_socket` reaches into
``WebSocketConnection`` and :mod:`web.websocket` overrides
``WebSocketServer._handle_connection``. pyproject.toml pins the 0.12 series
where these were read; an upgrade that changes any of them fails here, with
the attribute's name, instead of in production.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
import trio
import trio.testing
from trio_websocket import CloseReason, WebSocketConnection, WebSocketRequest, WebSocketServer
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import Request


def _connection() -> tuple[WebSocketConnection, trio.abc.Stream]:
    stream, _ = trio.testing.memory_stream_pair()
    return WebSocketConnection(stream, WSConnection(ConnectionType.SERVER)), stream


def test_the_installed_version_is_the_pinned_series() -> None:
    installed = version("trio-websocket")
    assert installed.startswith("0.12."), (
        f"trio-websocket {installed} is installed; web/client_socket.py was written against "
        "0.12.x private attributes: re-read them, then widen the pin in pyproject.toml"
    )


async def test_connection_private_attributes() -> None:
    ws, stream = _connection()
    expected: dict[str, type | tuple[type, ...]] = {
        # send_texts: refuses to send once closed
        "_close_reason": (type(None), CloseReason),
        # send_texts / send_now: write only while the connection's wsproto state is OPEN
        "_wsproto": WSConnection,
        # send_texts: the lock trio-websocket's reader also takes to write pongs/closes
        "_stream_lock": trio.StrictFIFOLock,
        # ping: set when either side closes or the stream breaks
        "_close_handshake": trio.Event,
    }
    for name, kind in expected.items():
        assert hasattr(ws, name), f"trio-websocket's WebSocketConnection has no {name} any more"
        value = getattr(ws, name)
        assert isinstance(value, kind), (
            f"WebSocketConnection.{name} is now {type(value).__name__}, web/ expects {kind}"
        )
    # send_texts and _drop write to / close the very stream given to the connection.
    assert getattr(ws, "_stream", None) is stream, "WebSocketConnection._stream changed"
    assert ws._wsproto.state is ConnectionState.CONNECTING, "wsproto's WSConnection.state changed"


@pytest.mark.parametrize(
    ("owner", "name", "parameters"),
    [
        # send_texts aborts a connection whose stream broke, as trio-websocket's _send does.
        (WebSocketConnection, "_abort_web_socket", ["self"]),
        # web.websocket._IsolatingWebSocketServer wraps each connection's handling.
        (WebSocketServer, "_handle_connection", ["self", "stream"]),
        # DiscardingConnection wraps the reader and the message handler; the
        # server's connection handling (re-done in web.websocket) gets the request.
        (WebSocketConnection, "_reader_task", ["self"]),
        (WebSocketConnection, "_handle_message_event", ["self", "event"]),
        (WebSocketConnection, "_get_request", ["self"]),
    ],
)
def test_private_coroutines(owner: type, name: str, parameters: list[str]) -> None:
    method = getattr(owner, name, None)
    assert method is not None, f"trio-websocket's {owner.__name__} has no {name} any more"
    assert inspect.iscoroutinefunction(method), f"{owner.__name__}.{name} is not async any more"
    assert list(inspect.signature(method).parameters) == parameters, (
        f"{owner.__name__}.{name} now takes {inspect.signature(method)}"
    )


async def test_close_reason_is_set_by_a_close() -> None:
    """``_close_reason`` goes from None to a CloseReason when the connection closes."""
    ws, _ = _connection()
    assert ws._close_reason is None
    await ws._abort_web_socket()
    assert isinstance(ws._close_reason, CloseReason)
    assert ws.closed is ws._close_reason


def test_the_stream_lock_is_only_entered_with_async_with() -> None:
    """web.client_socket.DiscardingConnection swaps ``_stream_lock`` for a releasable semaphore.

    That holds only while trio-websocket does nothing with the lock but
    ``async with`` (a semaphore has no ``locked()``, no owner).
    """
    source = inspect.getsource(WebSocketConnection)
    uses = [line.strip() for line in source.splitlines() if "_stream_lock" in line]
    assert uses == [
        "self._stream_lock = trio.StrictFIFOLock()",
        "async with self._stream_lock:",
    ], f"trio-websocket now uses its stream lock as: {uses}"


async def test_discarding_connection_private_attributes() -> None:
    """web.client_socket.DiscardingConnection replaces the queue and counts message sizes."""
    from wsproto.handshake import H11Handshake

    ws, _ = _connection()
    # Replaced by one shared _NoQueue: the reader enters/closes the send end,
    # aclose/get_message close/receive from the receive end.
    assert isinstance(ws._send_channel, trio.MemorySendChannel)
    assert isinstance(ws._recv_channel, trio.MemoryReceiveChannel)
    # DiscardingConnection's reader loop (trio-websocket's, re-done).
    assert ws._reader_running is True
    assert ws._receive_buffer_size is None or isinstance(ws._receive_buffer_size, int)
    for name in ("_close_stream", "_send", "_abort_web_socket"):
        assert inspect.iscoroutinefunction(getattr(ws, name)), f"{name} changed"
    # Only ever set on a server connection: shared by all of them.
    assert isinstance(ws._open_handshake, trio.Event)
    assert isinstance(ws._for_testing_peer_closed_connection, trio.Event)
    # _handle_message_event's size accounting.
    assert ws._message_size == 0
    assert isinstance(ws._max_message_size, int)
    # The request wrapper's event is swapped for a spent one after accept.
    request = WebSocketRequest(ws, Request(host="h", target="/p"))
    assert request._event.target == "/p"
    # LeanWSConnection drops the handshake once the connection exists.
    wsproto = WSConnection(ConnectionType.SERVER)
    assert isinstance(wsproto.handshake, H11Handshake)
    assert wsproto.connection is None
    assert len(wsproto.handshake._events) == 0


def test_every_event_handler_the_reader_dispatches_to_exists() -> None:
    from web.client_socket import _HANDLERS

    for event_type, name in _HANDLERS.items():
        method = getattr(WebSocketConnection, name, None)
        assert method is not None, f"WebSocketConnection.{name} ({event_type.__name__}) is gone"
        assert list(inspect.signature(method).parameters) == ["self", "event"]


async def test_server_settings_the_connection_handler_reads() -> None:
    """web.websocket._IsolatingWebSocketServer re-does _handle_connection with these."""

    async def handler(request: object) -> None:
        await trio.lowlevel.checkpoint()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = WebSocketServer(handler, listeners)
    for name in (
        "_handler",
        "_max_message_size",
        "_receive_buffer_size",
        "_connect_timeout",
        "_disconnect_timeout",
    ):
        assert hasattr(server, name), f"trio-websocket's WebSocketServer has no {name} any more"
    for listener in listeners:
        await listener.aclose()


def test_wsproto_queues_connection_events_only_for_a_lost_transport() -> None:
    """LeanWSConnection swaps the open connection's event deque for a list with ``popleft``.

    That holds while wsproto's ``Connection`` only appends to ``_events`` when
    told the transport is gone (``receive_data(None)``, which the reader never
    calls) and only takes from it with ``popleft``.
    """
    from wsproto.connection import Connection

    source = inspect.getsource(Connection)
    uses = [line.strip() for line in source.splitlines() if "_events" in line]
    assert uses == [
        "self._events: deque[Event] = deque()",
        "self._events.append(CloseConnection(code=CloseReason.ABNORMAL_CLOSURE))",
        "while self._events:",
        "yield self._events.popleft()",
    ], f"wsproto's Connection now uses its events as: {uses}"


async def test_a_socket_stream_exposes_the_socket_the_reader_waits_on() -> None:
    """DiscardingConnection reads a plain trio.SocketStream through its socket's descriptor."""
    import socket as stdlib_socket

    left, right = stdlib_socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
    assert stream.socket.fileno() == left.fileno()
    stream.socket.close()
    assert stream.socket.fileno() == -1  # a closed trio socket answers -1: never a reused fd
    right.close()
