"""The writer holds acknowledgements back briefly, so they share writes, never much credit.

Against the scripted broker of ``test_amqp_fake_broker``, in virtual time
(``pytest.mark.autojump``: the sleeps below model time passing between acks, they
synchronise nothing). Each client ``send`` on the socket is counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from pamqp import commands
from pamqp import heartbeat as pheartbeat

import amqp
from amqp import ConnectionParameters
from amqp.connection import ACK_HOLD_SHARE, ACK_LINGER, ACK_LINGER_FRAMES, ACK_LINGER_MAX
from tests.unit.amqp_client.test_amqp_fake_broker import AnyioAdapter, FakeBroker

pytestmark = pytest.mark.autojump

#: Virtual seconds between the acks of different quiet channels.
GAP = 0.002


class CountingAdapter(AnyioAdapter):
    """Counts the writes that carry a ``basic.ack``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.ack_writes = 0

    async def send(self, item: bytes) -> None:
        if b"\x00\x3c\x00\x50" in item:  # basic.ack's class and method ids
            self.ack_writes += 1
        await super().send(item)


class AckLog:
    """The broker side: every ``basic.ack`` with the virtual time it arrived."""

    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker
        self.acks: list[tuple[int, int, float]] = []
        self._changed = trio.Event()

    async def on_frame(self, channel: int, frame: Any) -> None:
        if isinstance(frame, commands.Basic.Qos):
            await self._broker.send(commands.Basic.QosOk(), channel)
        elif isinstance(frame, commands.Basic.Ack):
            self.acks.append((channel, frame.delivery_tag, trio.current_time()))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.acks) < count:
                await self._changed.wait()


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[amqp.Connection, CountingAdapter, AckLog]]:
    client_side, server_side = trio.testing.memory_stream_pair()
    broker = FakeBroker(server_side)
    adapter = CountingAdapter(client_side)
    log = AckLog(broker)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker.handshake, 0)
        async with amqp.connect(ConnectionParameters(heartbeat=0), stream=adapter) as connection:  # type: ignore[arg-type]
            nursery.start_soon(broker.serve_until_eof, log.on_frame)
            yield connection, adapter, log
        nursery.cancel_scope.cancel()


async def test_acks_of_quiet_channels_share_one_write() -> None:
    async with connected() as (connection, adapter, log):
        assert 2 * GAP < ACK_LINGER
        channels = [await connection.channel() for _ in range(3)]
        start = trio.current_time()
        for tag, channel in enumerate(channels, 1):
            await channel.basic_ack(tag)
            await trio.sleep(GAP)  # the next ack comes a little later
        await log.wait_for(3)
        assert adapter.ack_writes == 1
        assert [(c, t) for c, t, _ in log.acks] == [
            (ch.number, n) for n, ch in enumerate(channels, 1)
        ]
        # Nothing was read meanwhile: the writer's own deadline sent them.
        assert all(at - start <= ACK_LINGER_MAX + 1e-9 for _, _, at in log.acks)


async def test_any_other_frame_takes_the_held_acks_along_at_once() -> None:
    async with connected() as (connection, _, log):
        channel = await connection.channel()
        start = trio.current_time()
        await channel.basic_ack(1)
        await channel.basic_publish(b"x", routing_key="q")  # not an ack: no waiting
        await log.wait_for(1)
        assert log.acks[0][2] == start


async def test_the_per_event_acks_of_a_busy_channel_share_one_write() -> None:
    """A live stream acks every event alone; far from its window, they wait for company.

    The first held ack sets the deadline; the later ones join it, and the
    write goes when it passes, not a linger after the last of them (here
    the writer's, as nothing is read meanwhile).
    """
    assert 3 * GAP < ACK_LINGER
    async with connected() as (connection, adapter, log):
        channel = await connection.channel()
        await channel.basic_qos(200)
        start = trio.current_time()
        for tag in range(1, 5):
            if tag > 1:
                await trio.sleep(GAP)
            await channel.basic_ack(tag, multiple=True)
        await log.wait_for(4)
        assert adapter.ack_writes == 1
        assert log.acks == [(channel.number, tag, start + ACK_LINGER_MAX) for tag in range(1, 5)]


async def test_a_busy_connection_writes_held_acks_at_its_first_read_past_the_linger() -> None:
    """Past the linger the reader writes them at once; the writer's deadline is a backstop."""
    async with connected() as (connection, adapter, log):
        channel = await connection.channel()
        await channel.basic_qos(200)
        start = trio.current_time()
        await channel.basic_ack(1)
        await trio.sleep(ACK_LINGER / 2)
        await log._broker.stream.send_all(pheartbeat.Heartbeat().marshal())  # read too early
        await trio.sleep(ACK_LINGER / 2 + GAP)
        read_at = trio.current_time()
        await log._broker.stream.send_all(pheartbeat.Heartbeat().marshal())
        await log.wait_for(1)
        assert log.acks == [(channel.number, 1, read_at)]
        assert read_at - start < ACK_LINGER_MAX
        assert adapter.ack_writes == 1


async def test_a_full_outbox_of_held_acks_goes_at_once() -> None:
    """Held acks never pile up past one small write, however much window is left."""
    async with connected() as (connection, adapter, log):
        channel = await connection.channel()
        await channel.basic_qos(65535)
        start = trio.current_time()
        for tag in range(1, ACK_LINGER_FRAMES + 1):
            await channel.basic_ack(tag)
        await log.wait_for(ACK_LINGER_FRAMES)
        assert adapter.ack_writes == 1
        assert {at for _, _, at in log.acks} == {start}


@pytest.mark.parametrize("tag", [25, 26])
async def test_an_ack_covering_an_eighth_of_the_window_goes_at_once(tag: int) -> None:
    """A replay's quarter-window acks never wait: the broker needs that credit."""
    async with connected() as (connection, _, log):
        channel = await connection.channel()
        await channel.basic_qos(200)
        assert 200 // ACK_HOLD_SHARE == 25
        sent = trio.current_time()
        await channel.basic_ack(tag, multiple=True)
        await log.wait_for(1)
        assert log.acks[0][2] == sent


async def test_held_acks_together_never_keep_an_eighth_of_the_window() -> None:
    """The credit counted is all the channel's held acks cover, since its last write."""
    async with connected() as (connection, _, log):
        channel = await connection.channel()
        await channel.basic_qos(2 * ACK_HOLD_SHARE)
        await channel.basic_ack(1, multiple=True)  # 1 of 16: may wait
        await trio.sleep(GAP)
        sent = trio.current_time()
        await channel.basic_ack(2, multiple=True)  # 2 of 16 held: must not
        await log.wait_for(2)
        assert [at for _, _, at in log.acks] == [sent, sent]
        # Counted from what was written: the next ack covers 1 again and may wait.
        await channel.basic_ack(3, multiple=True)
        await log.wait_for(3)
        assert log.acks[2][2] == sent + ACK_LINGER_MAX


async def test_a_window_under_the_share_never_holds_an_ack() -> None:
    async with connected() as (connection, _, log):
        channel = await connection.channel()
        await channel.basic_qos(ACK_HOLD_SHARE - 1)
        sent = trio.current_time()
        await channel.basic_ack(1)
        await log.wait_for(1)
        assert log.acks[0][2] == sent
