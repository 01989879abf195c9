"""The bytes under a connection: a plain TCP socket's fast path, or any anyio byte stream.

Why not always the anyio stream: on Trio, :class:`anyio.abc.SocketStream`
reads through trio's socket, which tries ``recv`` before it waits. The
reader has always drained the socket when it asks again, so every read of
a live event paid a failed ``recv`` (a syscall and a ``BlockingIOError``)
before its wait, and every write that the kernel took at once still paid a
reschedule of the writer task (trio's ``cancel_shielded_checkpoint``): one
scheduler batch more per acknowledgement write. Profiled under the
``fanout`` scenario that was about a fifth of the connection's CPU per
event (bench/README.md, "the AMQP transport").

:class:`SocketTransport` waits for readability first, then reads; it writes
straight to the non-blocking socket and waits only for what the kernel did
not take. Every other stream (TLS, a Unix socket wrapper, a test double)
goes through :class:`StreamTransport` unchanged. Errors are anyio's either
way (``EndOfStream``, ``BrokenResourceError``, ``ClosedResourceError``), so
the connection handles one set.

The raw socket is used only after the handshake, and only by the
connection's reader and writer; the stream itself is closed as usual
(closing it wakes a waiter here with ``ClosedResourceError``).
"""

from __future__ import annotations

import socket
from typing import Final, Protocol

import anyio
import anyio.abc

__all__ = ["READ_SIZE", "SocketTransport", "StreamTransport", "Transport", "transport_for"]

#: Bytes asked of the socket per read: large, so one read carries many frames.
READ_SIZE: Final = 65536


class Transport(Protocol):
    """What the connection's reader and writer need of the bytes below them."""

    async def receive(self) -> bytes:
        """Wait for and return at least one byte; ``anyio.EndOfStream`` at the end."""
        ...

    async def send(self, data: bytes) -> None:
        """Write all of ``data``; a checkpoint only if the kernel cannot take it now."""
        ...

    def write_now(self, data: bytes) -> int:
        """Write what the kernel takes of ``data`` without waiting; the bytes written."""
        ...


class StreamTransport:
    """Any anyio byte stream, as it is."""

    __slots__ = ("_stream",)

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def receive(self) -> bytes:
        return await self._stream.receive(READ_SIZE)

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)

    def write_now(self, data: bytes) -> int:
        return 0  # a stream writes only when awaited


class SocketTransport:
    """A plain TCP socket stream's own (non-blocking) socket, read after it is readable."""

    __slots__ = ("_socket",)

    def __init__(self, raw_socket: socket.socket) -> None:
        self._socket = raw_socket

    async def receive(self) -> bytes:
        sock = self._socket
        while True:
            await anyio.wait_readable(sock)  # the checkpoint of this read
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                continue  # woken without data (a spurious wake-up): wait again
            except OSError as exc:
                raise anyio.BrokenResourceError(str(exc)) from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, data: bytes) -> None:
        sent = self.write_now(data)
        if sent >= len(data):
            return
        view = memoryview(data)
        while sent < len(data):
            await anyio.wait_writable(self._socket)
            sent += self.write_now(view[sent:])

    def write_now(self, data: bytes | memoryview) -> int:
        try:
            return self._socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise anyio.BrokenResourceError(str(exc)) from exc


def transport_for(stream: anyio.abc.ByteStream) -> Transport:
    """The socket's fast path for a plain TCP socket stream, the stream itself otherwise.

    A TLS stream also reports the raw socket beneath it, so the test is for
    the socket stream type, not for the attribute.
    """
    if isinstance(stream, anyio.abc.SocketStream):
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if isinstance(raw, socket.socket) and raw.type == socket.SOCK_STREAM:
            return SocketTransport(raw)
    return StreamTransport(stream)
