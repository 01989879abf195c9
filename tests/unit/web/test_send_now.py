"""``TrioWebSocket.send_now`` / ``flush`` over real loopback sockets.

The live-tail hub writes to idle members from its own task with
``send_now``; these tests fill a real socket (a small send buffer and a
client that stops reading) so that a write is partial, and check that the
client still gets every frame whole and in order, with trio-websocket's own
pong waiting behind the held bytes instead of landing inside a frame.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from actors.ports.websocket import PendingWebSocket, WebSocketClosed
from actors.start import ClientStart
from web.client_socket import TrioWebSocket, text_frame

from .web_fakes import FakeActor, FakeDirectory
from .web_servers import running_websockets


class RawClient:
    """A websocket client that reads only when told to (wsproto over a trio stream)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.texts: list[str] = []
        self.pongs = 0
        self._partial: list[str] = []

    async def handshake(self, path: str) -> None:
        await self.stream.send_all(self.ws.send(Request(host="127.0.0.1", target=path)))
        while not any(isinstance(event, AcceptConnection) for event in await self._read()):
            pass

    async def ping(self) -> None:
        await self.stream.send_all(self.ws.send(Ping(payload=b"p")))

    async def read_texts(self, count: int) -> list[str]:
        with trio.fail_after(10):
            while len(self.texts) < count:
                await self._read()
        return self.texts

    async def _read(self) -> list[Event]:
        data = await self.stream.receive_some(65536)
        assert data, "the server closed the connection"
        self.ws.receive_data(data)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, TextMessage):
                self._partial.append(event.data)
                if event.message_finished:
                    self.texts.append("".join(self._partial))
                    self._partial = []
            elif isinstance(event, Pong):
                self.pongs += 1
        return events


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[trio.MemoryReceiveChannel[TrioWebSocket], RawClient]]:
    """A served websocket (its server side arrives on the channel) and its raw client."""
    directory = FakeDirectory()
    send, receive = trio.open_memory_channel[TrioWebSocket](1)
    done = trio.Event()

    async def hand_over(actor: FakeActor, websocket: PendingWebSocket, start: ClientStart) -> None:
        channel = await websocket.accept()
        assert isinstance(channel, TrioWebSocket)
        # A small send buffer: a few frames fill it.
        channel._ws._stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await send.send(channel)
        await done.wait()

    directory.behaviour = hand_over
    record = await directory.create_stream("rk")
    async with running_websockets(directory) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = RawClient(stream)
        await client.handshake(f"/event-stream/{record.uuid}")
        try:
            yield receive, client
        finally:
            done.set()
            await stream.aclose()


def fill(server: TrioWebSocket) -> list[str]:
    """``send_now`` one frame far larger than the socket's buffer: the write is partial."""
    text = "0001" + "x" * 1_000_000
    assert not server.send_now([text]), "the socket took 1 MB at once"
    assert server._holds_lock, "the write was not partial: the test proves nothing"
    return [text]


async def until_pong_attempted(server: TrioWebSocket) -> None:
    """Until trio-websocket's reader, answering the ping, wants the socket or has it."""
    lock = server._lock
    with trio.fail_after(5):
        while not (
            lock.statistics().tasks_waiting > 0 or (lock.value == 0 and not server._holds_lock)
        ):
            await trio.sleep(0.001)


async def test_frames_the_socket_takes_at_once_are_written_without_waiting() -> None:
    async with connected() as (servers, client):
        server = await servers.receive()
        assert server.send_now(["one", "two"])
        await server.flush()  # nothing held: returns at once
        assert await client.read_texts(2) == ["one", "two"]


async def test_a_partial_write_is_finished_by_flush_whole_and_in_order() -> None:
    async with connected() as (servers, client):
        server = await servers.receive()
        sent = fill(server)
        # Once something is held, later frames queue behind it, unwritten.
        assert not server.send_now(["after"])
        sent.append("after")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.flush)
            assert await client.read_texts(len(sent)) == sent


async def test_a_pong_waits_behind_held_bytes_instead_of_splitting_a_frame() -> None:
    async with connected() as (servers, client):
        server = await servers.receive()
        sent = fill(server)
        await client.ping()  # trio-websocket's reader answers it under the stream lock
        await until_pong_attempted(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.flush)
            assert await client.read_texts(len(sent)) == sent
        with trio.fail_after(5):
            while client.pongs == 0:
                await client._read()
        await server.send_texts(["last"])
        assert (await client.read_texts(len(sent) + 1))[-1] == "last"


async def test_send_texts_writes_what_was_held_first() -> None:
    async with connected() as (servers, client):
        server = await servers.receive()
        sent = fill(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_texts, ["next"])
            assert await client.read_texts(len(sent) + 1) == [*sent, "next"]


async def test_a_closed_websocket_is_never_written() -> None:
    async with connected() as (servers, _client):
        server = await servers.receive()
        await server.abort()
        try:
            written = server.send_now(["late"])
        except WebSocketClosed:
            return
        # The stream is closed: its descriptor reads -1, so nothing is written.
        assert not written


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_text_frames_are_what_wsproto_would_send(size: int) -> None:
    """Our encoder agrees with wsproto's at every length boundary (and with non-ASCII text)."""
    text = ("é" * size)[: size // 2] + "x" * (size - size // 2)
    server = WSConnection(ConnectionType.SERVER)
    server.initiate_upgrade_connection(
        [
            (b"host", b"x"),
            (b"connection", b"upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "/",
    )
    server.send(AcceptConnection())
    assert text_frame(text) == server.send(TextMessage(data=text))
