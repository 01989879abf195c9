"""Connection behaviour against a scripted in-process broker, on a MockClock.

The broker side runs over an in-memory stream pair, so time-dependent
behaviour (heartbeats, blocked publishers) is tested deterministically and
instantly: ``autojump_clock`` skips virtual time whenever every task waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from pamqp import base, commands
from pamqp import frame as pframe
from pamqp import heartbeat as pheartbeat

import amqp
from amqp import ConnectionParameters


class AnyioAdapter:
    """A trio stream seen through the anyio ByteStream interface."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return bytes(data)

    async def send(self, item: bytes) -> None:
        try:
            await self._stream.send_all(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self._stream.aclose()


class FakeBroker:
    """The server end: decodes client frames with pamqp, sends pamqp-encoded frames."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.received: list[Any] = []
        self.heartbeats_received: list[float] = []

    async def send(self, frame: Any, channel: int = 0) -> None:
        await self.stream.send_all(pframe.marshal(frame, channel))

    async def next_frame(self) -> tuple[int, Any]:
        while True:
            if self.buffer.startswith(b"AMQP"):
                self.buffer = self.buffer[8:]
                return 0, "protocol-header"
            if len(self.buffer) >= 8:
                size = int.from_bytes(self.buffer[3:7], "big")
                if len(self.buffer) >= size + 8:
                    consumed, channel, value = pframe.unmarshal(self.buffer)
                    self.buffer = self.buffer[consumed:]
                    if isinstance(value, pheartbeat.Heartbeat):
                        self.heartbeats_received.append(trio.current_time())
                        continue
                    self.received.append(value)
                    return channel, value
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.buffer += data

    async def expect(self, kind: type[base.Frame] | str) -> tuple[int, Any]:
        channel, value = await self.next_frame()
        if isinstance(kind, str):
            assert value == kind
        else:
            assert isinstance(value, kind), value
        return channel, value

    async def handshake(self, heartbeat: int = 0, auth_ok: bool = True) -> None:
        await self.expect("protocol-header")
        await self.send(
            commands.Connection.Start(
                server_properties={"product": "fake"}, mechanisms="PLAIN AMQPLAIN", locales="en_US"
            )
        )
        _, start_ok = await self.expect(commands.Connection.StartOk)
        assert start_ok.response == "\x00guest\x00guest"
        if not auth_ok:
            await self.send(commands.Connection.Close(403, "ACCESS_REFUSED - login refused", 0, 0))
            await self.expect(commands.Connection.CloseOk)
            return
        await self.send(commands.Connection.Tune(channel_max=16, frame_max=4096, heartbeat=60))
        _, tune_ok = await self.expect(commands.Connection.TuneOk)
        assert tune_ok.heartbeat == heartbeat
        await self.expect(commands.Connection.Open)
        await self.send(commands.Connection.OpenOk())

    async def serve_until_eof(self, on_frame: Callable[[int, Any], Any] | None = None) -> None:
        try:
            while True:
                channel, frame = await self.next_frame()
                if isinstance(frame, commands.Channel.Open):
                    await self.send(commands.Channel.OpenOk(), channel)
                elif isinstance(frame, commands.Connection.Close):
                    await self.send(commands.Connection.CloseOk())
                elif on_frame is not None:
                    await on_frame(channel, frame)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def fake_connection(
    heartbeat: int = 0, **params: Any
) -> AsyncIterator[tuple[amqp.Connection, FakeBroker]]:
    client_side, server_side = trio.testing.memory_stream_pair()
    broker = FakeBroker(server_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.handshake, heartbeat)
        parameters = ConnectionParameters(heartbeat=heartbeat, **params)
        async with amqp.connect(parameters, stream=AnyioAdapter(client_side)) as connection:  # type: ignore[arg-type]
            yield connection, broker
        nursery.cancel_scope.cancel()


async def test_handshake_negotiates_limits() -> None:
    async with fake_connection(heartbeat=0) as (connection, broker), trio.open_nursery() as nursery:
        nursery.start_soon(broker.serve_until_eof)
        assert (connection.channel_max, connection.frame_max, connection.heartbeat) == (16, 4096, 0)
        assert connection.server_properties["product"] == "fake"
        with trio.fail_after(1):
            await connection.close()
        assert isinstance(await connection.closed(), amqp.ConnectionClosedByClient)
        assert isinstance(broker.received[-1], commands.Connection.Close)


async def test_authentication_failure_is_typed() -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    broker = FakeBroker(server_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.handshake, 0, False)
        with pytest.raises(amqp.AuthenticationError) as info:
            async with amqp.connect(ConnectionParameters(), stream=AnyioAdapter(client_side)):  # type: ignore[arg-type]
                pass
        assert info.value.reply_code == 403


async def test_heartbeats_are_sent_and_a_silent_peer_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_connection(heartbeat=2) as (connection, broker):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker.serve_until_eof)  # reads, never sends
            reason = await connection.closed()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        assert isinstance(reason, amqp.HeartbeatTimeout)
        assert 4.0 <= elapsed <= 4.1  # two intervals of silence, not more
        # We sent a heartbeat every interval / 2 while idle.
        assert len(broker.heartbeats_received) >= 3
        with pytest.raises(amqp.HeartbeatTimeout):
            await connection.channel()


async def test_peer_heartbeats_keep_the_connection_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def beat(broker: FakeBroker) -> None:
        while True:
            await broker.stream.send_all(pheartbeat.Heartbeat().marshal())
            await trio.sleep(1)

    async with fake_connection(heartbeat=2) as (connection, broker), trio.open_nursery() as nursery:
        nursery.start_soon(broker.serve_until_eof)
        nursery.start_soon(beat, broker)
        await trio.sleep(30)  # virtual time: fifteen heartbeat timeouts' worth
        assert not connection.is_closed
        nursery.cancel_scope.cancel()


async def test_publish_waits_while_the_connection_is_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fake_connection() as (connection, broker):
        published = trio.Event()

        async def on_frame(channel: int, frame: Any) -> None:
            if isinstance(frame, commands.Basic.Publish):
                published.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker.serve_until_eof, on_frame)
            channel = await connection.channel()
            await broker.send(commands.Connection.Blocked("low on memory"))
            await trio.testing.wait_all_tasks_blocked()
            assert connection.is_blocked

            done = trio.Event()

            async def publisher() -> None:
                await channel.basic_publish(b"x", routing_key="q")
                done.set()

            nursery.start_soon(publisher)
            await trio.sleep(60)
            assert not done.is_set()
            assert not published.is_set()
            await broker.send(commands.Connection.Unblocked())
            with trio.fail_after(1):
                await done.wait()
                await published.wait()
            assert not connection.is_blocked
            nursery.cancel_scope.cancel()


async def test_server_close_is_typed_and_answered() -> None:
    async with fake_connection() as (connection, broker):
        await broker.send(commands.Connection.Close(320, "CONNECTION_FORCED - bye", 0, 0))
        await broker.expect(commands.Connection.CloseOk)
        reason = await connection.closed()
        assert isinstance(reason, amqp.ConnectionForced)
        assert reason.reply_code == 320
        assert connection.is_closed


async def test_garbage_is_a_protocol_error() -> None:
    async with fake_connection() as (connection, broker):
        await broker.stream.send_all(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x28\x00")
        reason = await connection.closed()
        assert isinstance(reason, amqp.ProtocolError)


async def test_eof_is_connection_lost_and_ends_consumers() -> None:
    async with fake_connection() as (connection, broker), trio.open_nursery() as nursery:

        async def on_frame(channel: int, frame: Any) -> None:
            if isinstance(frame, commands.Basic.Consume):
                await broker.send(commands.Basic.ConsumeOk(frame.consumer_tag), channel)

        nursery.start_soon(broker.serve_until_eof, on_frame)
        channel = await connection.channel()
        async with channel.basic_consume("q") as consumer:
            await broker.stream.aclose()
            with pytest.raises(amqp.ConnectionLost):
                async for _ in consumer:
                    pass
        nursery.cancel_scope.cancel()


async def test_outer_cancellation_still_closes_with_a_handshake() -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    broker = FakeBroker(server_side)

    async def serve() -> None:
        await broker.handshake()
        await broker.serve_until_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        start = trio.current_time()
        with trio.CancelScope() as scope:
            async with amqp.connect(
                ConnectionParameters(heartbeat=0), stream=AnyioAdapter(client_side)
            ) as conn:  # type: ignore[arg-type]
                scope.cancel()
                await trio.sleep_forever()
        assert trio.current_time() - start < 1  # answered close-ok: no close timeout
        assert isinstance(broker.received[-1], commands.Connection.Close)
        assert isinstance(await conn.closed(), amqp.ConnectionClosedByClient)
        nursery.cancel_scope.cancel()


async def test_cancelled_as_its_handshake_ends_connect_gives_up_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller gives up just as the broker lets the connection in.

    trio's ``start()`` then ignores the connection's ``started()`` and waits
    for its task to end; that task's group is shielded (for the close
    handshake), so before the fix it never ended: the connect, and the
    caller's cancellation, hung for good (seen in a pool being shut down
    while a slot was connecting).
    """
    client_side, server_side = trio.testing.memory_stream_pair()
    broker = FakeBroker(server_side)
    open_ok = pframe.marshal(commands.Connection.OpenOk(), 0)
    scope = trio.CancelScope()
    done = trio.Event()
    entered = False

    class CancelledAtOpenOk(AnyioAdapter):
        async def receive(self, max_bytes: int = 65536) -> bytes:
            data = await super().receive(max_bytes)
            if open_ok in data:
                scope.cancel()
            return data

    async def connect() -> None:
        nonlocal entered
        with scope:
            async with amqp.connect(
                ConnectionParameters(heartbeat=0),
                stream=CancelledAtOpenOk(client_side),  # type: ignore[arg-type]
            ):
                entered = True
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.handshake)
        nursery.start_soon(connect)
        with trio.move_on_after(5):
            await done.wait()
        hung = not done.is_set()
        await broker.stream.aclose()  # frees a hung connect, so the test ends either way
    assert not hung, "connect() hung after a cancellation at the end of its handshake"
    assert not entered, "the block ran on a connection whose caller had given up"
