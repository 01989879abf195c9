"""The public websocket edge (SPEC section 4) on trio-websocket.

Each handshake is routed here: the path names the event stream, the query
its start position. Well-formed requests for a known stream are handed to
the stream's actor, which accepts the websocket itself once its broker
consumer is attached. Everything else is answered at the edge:

- a path other than ``/event-stream/<uuid>`` (optional trailing slash): HTTP
  404, no websocket;
- a bad ``stream_from_*`` query: accept, close 1002 with the reason;
- an unknown uuid: accept, close 1000 "Unknown event stream" (upstream
  compatible: clients treat it as a normal close).

Bounds: a client must complete its HTTP handshake within
``handshake_timeout``; messages from clients (who have nothing to say) are
limited to ``max_message_size`` (larger ones close with 1009); closes are
bounded by ``close_timeout``. A handler never raises into trio-websocket's
server, whose nursery would otherwise take every connection down with it.

Nothing a client without a credential does can grow the log or the metrics
without bound: the lines for refused handshakes (and for connections that
fail inside trio-websocket) go through :class:`web.log_limit.RateLimitedLog`,
and close codes are counted under :func:`web.metrics.close_code_label`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import trio
from trio_websocket import WebSocketRequest, WebSocketServer

from web.client_socket import (
    CONNECTION_GONE,
    DiscardingConnection,
    TrioPendingWebSocket,
    TrioWebSocket,
    format_peer,
)
from web.log_limit import RateLimitedLog
from web.metrics import ServiceMetrics
from web.params import StartParameterError, parse_start
from web.ports import StreamDirectory

__all__ = [
    "UNKNOWN_STREAM_REASON",
    "TrioPendingWebSocket",
    "TrioWebSocket",
    "serve_public_websockets",
]

log = logging.getLogger(__name__)

UNKNOWN_STREAM_REASON = "Unknown event stream"
SHUTDOWN_REASON = "The service is shutting down"
_STREAM_PATH = re.compile(r"/event-stream/([^/]+)/?")
_NOT_FOUND_BODY = b"Not found: websockets are served at /event-stream/<uuid>\n"
#: Refused-handshake lines let through per window, and the window in seconds.
REFUSAL_LOG_BURST = 20
REFUSAL_LOG_INTERVAL = 60.0
#: Extra time, beyond twice the close timeout, that a handed-over websocket is
#: still read after the listener was cancelled (its owner's close handshake).
STOP_MARGIN = 1.0


async def serve_public_websockets(
    streams: StreamDirectory,
    *,
    host: str,
    port: int,
    metrics: ServiceMetrics | None = None,
    handshake_timeout: float = 10.0,
    close_timeout: float = 2.0,
    max_message_size: int = 64 * 1024,
    ssl_context: ssl.SSLContext | None = None,
    sockets: Sequence[socket.socket] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``ws://host:port/event-stream/<uuid>`` until cancelled.

    With ``nursery.start`` this returns the bound port once listening (use
    ``port=0`` in tests). With a host that resolves to several addresses
    and ``port=0``, each listener may get its own port; the first is
    reported. ``sockets``, if given, are bound sockets to listen on instead
    of binding ``host:port`` (a worker of ``ess serve --workers N`` binds
    them with ``SO_REUSEPORT``, which trio's own listeners cannot set).
    """
    edge = _Edge(streams, metrics, handshake_timeout, close_timeout)
    listeners: list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]
    if sockets is not None:
        plain = [_listen_on(sock) for sock in sockets]
        listeners = (
            plain
            if ssl_context is None
            else [trio.SSLListener(lst, ssl_context, https_compatible=True) for lst in plain]
        )
    elif ssl_context is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = await trio.open_ssl_over_tcp_listeners(
            port, ssl_context, host=host, https_compatible=True
        )
    server = _IsolatingWebSocketServer(
        edge,
        listeners,
        max_message_size=max_message_size,
        connect_timeout=handshake_timeout,
        disconnect_timeout=close_timeout,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        bound = [listener.port for listener in server.listeners if not isinstance(listener, str)]
        log.info("Public websockets listening on %s", ", ".join(map(str, server.listeners)))
        task_status.started(bound[0])


def _listen_on(sock: socket.socket) -> trio.SocketListener:
    sock.listen(socket.SOMAXCONN)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


class _IsolatingWebSocketServer(WebSocketServer):
    """trio-websocket's server, except that one connection cannot end all of them.

    trio-websocket runs each connection's reader task in a nursery under its
    listeners' nursery, so an exception escaping a reader task ends the
    whole server, and with it the service. One does escape: a client ping
    that arrives while the server is closing makes the reader answer with a
    pong that wsproto refuses (``LocalProtocolError: Event Pong cannot be
    sent in state LOCAL_CLOSING``); any client can trigger it by pinging
    right after the handshake of a connection that the service closes at
    once (an unknown uuid, a bad query). Found by tests/fuzz. Here such a
    failure is logged and ends that connection only.
    """

    def __init__(self, edge: _Edge, *args: Any, **kwargs: Any) -> None:
        super().__init__(_routed_by_the_edge, *args, **kwargs)
        self._edge = edge
        self._failures = RateLimitedLog(
            log,
            what="websocket connections failed inside trio-websocket",
            burst=REFUSAL_LOG_BURST,
            interval=REFUSAL_LOG_INTERVAL,
            level=logging.WARNING,
        )

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        # This task reads the connection for its whole life. The handshake and
        # its routing run beside it, in a child that ends once the stream
        # actor holds the websocket (or it is refused); then the reading goes
        # on outside that nursery, so an idle websocket is this one task (and
        # its connection actor's). The edge's end steps (close if still open,
        # count the close) run here once the reading is over.
        try:
            connection = DiscardingConnection(
                stream,
                max_message_size=self._max_message_size,
                receive_buffer_size=self._receive_buffer_size,
            )
            grace = self._disconnect_timeout * 2 + STOP_MARGIN
            try:
                if not await self._open(connection, grace):
                    await connection.read(until_handed_over=False, stop_grace=grace)
            finally:
                await connection.finish()
        except* Exception as failure:
            self._failures.log(
                "A websocket connection failed inside trio-websocket; dropped it: %r",
                failure.exceptions,
            )
            await trio.aclose_forcefully(stream)

    async def _open(self, connection: DiscardingConnection, grace: float) -> bool:
        """Read beside the routing task until it ends; ``False`` if it handed the websocket over.

        A frame of its own: the nursery is gone with it.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._route, connection)
            return await connection.read(until_handed_over=True, stop_grace=grace)

    async def _route(self, connection: DiscardingConnection) -> None:
        """The handshake (bounded) and its routing, until the stream actor holds the websocket."""
        request: WebSocketRequest | None = None
        with trio.move_on_after(self._connect_timeout):
            request = await connection._get_request()
        if request is None:
            await trio.aclose_forcefully(connection._stream)  # the reader ends
            return
        try:
            await self._edge.handle(request, connection)
        finally:
            if not connection.handed_over:
                with trio.move_on_after(self._disconnect_timeout):
                    # aclose() ends the reading even if cancelled.
                    await connection.aclose()


async def _routed_by_the_edge(request: WebSocketRequest) -> None:
    """trio-websocket's handler argument; never called: our server routes through :class:`_Edge`."""
    raise NotImplementedError("_IsolatingWebSocketServer routes through _Edge.handle")


class _Edge:
    """Routes one handshake; holds the settings so the handler stays small."""

    def __init__(
        self,
        streams: StreamDirectory,
        metrics: ServiceMetrics | None,
        handshake_timeout: float,
        close_timeout: float,
    ) -> None:
        self._streams = streams
        self._metrics = metrics
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._refusals = RateLimitedLog(
            log,
            what="refused websocket handshakes",
            burst=REFUSAL_LOG_BURST,
            interval=REFUSAL_LOG_INTERVAL,
        )

    async def handle(self, request: WebSocketRequest, connection: DiscardingConnection) -> None:
        """Route one handshake: never raises (except cancellation).

        Routes the handshake, then runs the stream actor's ``serve``, which
        returns once the actor holds the websocket (``connection.handed_over``:
        the connection's task then closes and counts it when it is over) or
        after refusing it. Else the websocket is closed (if still open) and
        counted here, however that ended.
        """
        try:
            path, _, query = request.path.partition("?")
            match = _STREAM_PATH.fullmatch(path)
            if match is None:
                await _reject(request, 404)
                return
            pending = TrioPendingWebSocket(
                request,
                connection,
                accept_timeout=self._handshake_timeout,
                close_timeout=self._close_timeout,
                metrics=self._metrics,
            )
            try:
                try:
                    start = parse_start(query)
                except StartParameterError as error:
                    self._refusals.log("Websocket %s: %s", pending.peer, error.reason)
                    await _accept_and_close(pending, 1002, error.reason)
                    return
                actor = self._streams.find_stream(match.group(1))
                if actor is None:
                    self._refusals.log("Websocket %s: unknown event stream", pending.peer)
                    await _accept_and_close(pending, 1000, UNKNOWN_STREAM_REASON)
                    return
                try:
                    await actor.serve(pending, start)
                except trio.Cancelled:
                    if pending.channel is not None and not pending.handed_over:
                        await pending.channel.close(1001, SHUTDOWN_REASON)
                    raise
                except Exception:
                    log.exception("Stream actor failed serving %s", pending.peer)
                    if pending.channel is not None and not pending.handed_over:
                        await pending.channel.close(1011, "Internal error")
            finally:
                if not pending.handed_over:
                    # The actor normally closed it already; then this only counts.
                    await pending.finish()
        except Exception:
            log.exception("Websocket handler failed for %s", format_peer(request.remote))


async def _accept_and_close(pending: TrioPendingWebSocket, code: int, reason: str) -> None:
    try:
        channel = await pending.accept()
    except Exception:  # WebSocketClosed: the client left; nothing to tell it
        return
    await channel.close(code, reason)


async def _reject(request: WebSocketRequest, status: int) -> None:
    with contextlib.suppress(*CONNECTION_GONE):
        await request.reject(
            status, extra_headers=[(b"Content-Type", b"text/plain")], body=_NOT_FOUND_BODY
        )
