"""The websocket channel port: what a connection actor needs from a socket.

``web/`` implements it on trio-websocket; tests implement it in memory. The
actor layer therefore never imports a websocket library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


class WebSocketClosed(Exception):
    """The peer went away, or the channel was closed; nothing more can be sent."""


class WebSocket(Protocol):
    """One accepted websocket, seen from the connection actor."""

    @property
    def peer(self) -> str:
        """The client's address as ``host:port``, for logs and the debug tree."""
        ...

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Send several text frames, in order, in as few socket writes as possible.

        Raises :class:`WebSocketClosed`.
        """
        ...

    def send_now(self, texts: Sequence[str]) -> bool:
        """Hand frames to the socket without waiting; ``True`` if every byte is written.

        For a caller that must not block (the live-tail hub writing to an
        idle member from its own task). ``False``: the websocket holds what
        it could not write yet (all of it, or the rest of a partial write)
        and writes it before any other frame; :meth:`flush` waits for that.
        Raises :class:`WebSocketClosed`.
        """
        ...

    async def flush(self) -> None:
        """Write what :meth:`send_now` held; returns at once if nothing is held.

        Raises :class:`WebSocketClosed`.
        """
        ...

    def on_gone(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the peer goes; at once if it has gone already.

        "Gone": the client closed, the TCP connection dropped, or the
        protocol reader stopped (an oversized message, a protocol error), or
        this side closed or aborted the socket. Clients have nothing to say
        to this service: implementations discard their messages themselves
        (and keep answering pings), so the actor needs no task reading them.
        ``callback`` is synchronous and must not raise.
        """
        ...

    async def ping(self) -> None:
        """Send a ping and wait for its pong. Raises :class:`WebSocketClosed`."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason``; idempotent; never raises.

        Implementations bound the time spent waiting for the peer's close
        frame, so this is safe in a shielded ``finally``.
        """
        ...

    async def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (dead or stuck peer)."""
        ...


class PendingWebSocket(Protocol):
    """A websocket whose opening handshake has not been answered yet.

    The connection actor attaches its broker consumer *before* accepting, so
    that nothing published after the handshake completes can be missed.
    """

    @property
    def peer(self) -> str: ...

    async def accept(self) -> WebSocket:
        """Complete the handshake. Raises :class:`WebSocketClosed` if the peer left."""
        ...

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Take the websocket over from the edge's handler, which stops waiting for it.

        Called once, by the owner that will accept (or refuse) and close it
        (the stream actor, starting its connection actor): the edge's
        handler returns, and the edge keeps only what it needs to read the
        connection. ``callback`` (synchronous, must not raise) is called if the
        edge stops serving while the owner holds it (the listener shuts down):
        the owner should close the websocket as at shutdown (1001); the edge
        still reads the connection for a bounded time, so that close completes.
        """
        ...
