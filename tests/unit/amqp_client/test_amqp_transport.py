"""The connection's transport: a plain TCP socket's fast path, any other stream as it is.

Over real loopback sockets (anyio's TCP listener and ``connect_tcp``), so the
fast path is proven against the kernel's partial writes and closes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
import trio
import trio.testing

from amqp.transport import SocketTransport, StreamTransport, transport_for
from tests.unit.amqp_client.test_amqp_fake_broker import AnyioAdapter


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]]:
    """A connected client stream and the server's end of it."""
    accepted: list[anyio.abc.SocketStream] = []
    arrived = anyio.Event()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def keep(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)
        arrived.set()
        await anyio.sleep_forever()

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, keep)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        client = await anyio.connect_tcp("127.0.0.1", port)
        with anyio.fail_after(5):
            await arrived.wait()
        async with client, accepted[0]:
            yield client, accepted[0]
        group.cancel_scope.cancel()


async def test_a_plain_tcp_stream_gets_the_socket_fast_path() -> None:
    async with tcp_pair() as (client, _):
        assert isinstance(transport_for(client), SocketTransport)


async def test_any_other_stream_is_used_as_it_is() -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    transport = transport_for(AnyioAdapter(client_side))  # type: ignore[arg-type]
    assert isinstance(transport, StreamTransport)
    await server_side.send_all(b"through the stream")
    assert await transport.receive() == b"through the stream"
    await transport.send(b"and back")
    assert await server_side.receive_some() == b"and back"


async def test_receive_waits_for_data_and_ends_with_end_of_stream() -> None:
    async with tcp_pair() as (client, server):
        transport = transport_for(client)
        async with anyio.create_task_group() as group:
            got: list[bytes] = []

            async def read() -> None:
                got.append(await transport.receive())

            group.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # nothing to read: it waits, it does not spin
            await server.send(b"frame bytes")
        assert got == [b"frame bytes"]
        await server.aclose()
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await transport.receive()


async def test_a_write_larger_than_the_socket_takes_waits_and_loses_nothing() -> None:
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB: far over the socket buffers
    async with tcp_pair() as (client, server):
        transport = transport_for(client)
        received = bytearray()

        async def read_slowly() -> None:
            while len(received) < len(payload):
                received.extend(await server.receive(65536))
                await trio.sleep(0)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(read_slowly)
                await transport.send(payload)
        assert bytes(received) == payload


async def test_write_now_takes_what_the_socket_takes_and_never_waits() -> None:
    async with tcp_pair() as (client, server):
        transport = transport_for(client)
        assert transport.write_now(b"at once") == len(b"at once")
        assert await server.receive() == b"at once"
        chunk = b"x" * 65536
        written = [transport.write_now(chunk) for _ in range(200)]  # nobody reads
        assert written[-1] == 0  # the socket is full: nothing taken, no wait
        assert 0 < sum(written) < len(chunk) * len(written)


async def test_a_stream_writes_nothing_now() -> None:
    client_side, _ = trio.testing.memory_stream_pair()
    assert transport_for(AnyioAdapter(client_side)).write_now(b"later") == 0  # type: ignore[arg-type]


async def test_closing_the_stream_ends_a_waiting_receive() -> None:
    async with tcp_pair() as (client, _):
        transport = transport_for(client)
        ended: list[BaseException] = []

        async def read() -> None:
            try:
                await transport.receive()
            except anyio.ClosedResourceError as exc:
                ended.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                await client.aclose()
        assert len(ended) == 1


async def test_a_write_to_a_reset_connection_is_a_broken_resource() -> None:
    async with tcp_pair() as (client, server):
        transport = transport_for(client)
        server_socket = server.extra(anyio.abc.SocketAttribute.raw_socket)
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.aclose()  # linger 0: the peer's close is a reset
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            while True:  # until the reset has reached our socket
                await transport.send(b"x" * 1024)
                await trio.sleep(0)
