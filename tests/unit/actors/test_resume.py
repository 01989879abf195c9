"""Resuming a lost consumer: at once; by time if nothing was delivered; no gap, no duplicate."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import trio

import actors.delivery
from actors.formatting import Formatted, format_event
from actors.start import AfterOrdinal

from .actor_fakes import (
    MANY,
    SETTINGS,
    FakeWebSocket,
    LossyBroker,
    crash_hub_at,
    hub_of,
    running,
    settle,
    wall_clock,
)

pytestmark = pytest.mark.autojump


async def test_a_lost_consumer_is_replaced_at_once_without_gap_or_duplicate() -> None:
    async with running(broker=LossyBroker(lose_after=3)) as h:
        record = await h.stream()
        await h.publish("rk", *[f"e{n}" for n in range(1, 21)])
        start = trio.current_time()
        ws = await h.open(record, AfterOrdinal(0))
        await ws.wait_frames(20)
        assert trio.current_time() == start  # no pause: nothing is refused
        await h.publish("rk", "e21", "e22")
        await ws.wait_frames(22)
        await settle()
        assert ws.ordinals() == list(range(1, 23))
        assert h.broker.subscriptions_opened >= 22 // 3
        assert not ws.closed.is_set()


async def test_a_slow_client_whose_consumer_overflows_keeps_every_event_in_order() -> None:
    settings = replace(SETTINGS, send_timeout=1000.0)
    async with running(settings, broker=LossyBroker(lose_after=4)) as h:
        record = await h.stream()
        ws = await h.open(record, AfterOrdinal(0), FakeWebSocket(read_budget=2))
        await h.publish("rk", *[f"e{n}" for n in range(1, 31)])
        await ws.wait_frames(2)
        await trio.sleep(100)  # not reading for a while
        ws.resume()
        await ws.wait_frames(30)
        await settle()
        assert ws.ordinals() == list(range(1, 31))
        assert all(s.max_in_flight <= settings.prefetch for s in h.broker.subscriptions)


async def test_a_client_that_never_reads_is_closed_by_the_send_timeout_despite_losses() -> None:
    async with running(broker=LossyBroker(lose_after=2)) as h:
        record = await h.stream()
        ws = await h.open(record, AfterOrdinal(0), FakeWebSocket(reading=False))
        start = trio.current_time()
        await h.publish("rk", *[f"e{n}" for n in range(1, 31)])
        await ws.wait_closed()
        assert ws.close_code == 1008
        assert ws.close_time is not None
        assert SETTINGS.send_timeout <= ws.close_time - start < SETTINGS.send_timeout + 1


async def test_the_hub_replaces_a_lost_consumer_at_once_for_every_member() -> None:
    async with running(MANY, broker=LossyBroker(lose_after=2)) as h:
        record = await h.stream()
        sockets = [await h.open(record) for _ in range(3)]
        start = trio.current_time()
        await h.publish("rk", *[f"e{n}" for n in range(1, 11)])
        for ws in sockets:
            await ws.wait_frames(10)
        assert trio.current_time() == start
        await settle()
        for ws in sockets:
            assert ws.ordinals() == list(range(1, 11))
        hub = hub_of(h, record)
        assert hub.subscriptions >= 5 and hub.demoted == 0 and hub.members == 3


async def test_a_hub_that_received_nothing_loses_nothing_published_during_an_outage() -> None:
    async with running(MANY) as h:
        record = await h.stream()
        early = await h.open(record)
        early_ms = int(wall_clock() * 1000)
        await trio.sleep(100)
        late = await h.open(record)
        late_ms = int(wall_clock() * 1000)
        h.broker.set_available(False)
        await settle()
        # Written while the service was disconnected:
        h.broker.append("rk", b"between", timestamp_ms=early_ms + 50_000)  # before late joined
        h.broker.append("rk", b"plain")  # no own time: positioned by the broker
        h.broker.append("rk", b"after", timestamp_ms=late_ms + 1)
        h.broker.set_available(True)
        await early.wait_frames(3)
        await late.wait_frames(2)
        await h.publish("rk", "live")
        await early.wait_frames(4)
        await late.wait_frames(3)
        await settle()
        assert [t.split("|")[0] for t in early.sent] == ["between", "plain", "after", "live"]
        assert [t.split("|")[0] for t in late.sent] == ["plain", "after", "live"]
        assert early.ordinals() == [1, 2, 3, 4]
        assert h.broker.active_subscriptions == 1


async def test_a_live_connection_that_received_nothing_resumes_from_its_attach_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crash_hub_at(monkeypatch, 1)  # its first event: nobody received anything yet
    async with running(MANY) as h:
        record = await h.stream()
        await h.publish("rk", "before")  # published before the handshake
        await trio.sleep(10)
        sockets = [await h.open(record) for _ in range(2)]
        await h.publish("rk", "e1")  # the hub fails: members move to their own consumers
        await h.publish("rk", "e2")
        for ws in sockets:
            await ws.wait_frames(2)
        await settle()
        for ws in sockets:
            assert [t.split("|")[0] for t in ws.sent] == ["e1", "e2"]
            assert ws.ordinals() == [2, 3]


async def test_a_message_that_cannot_be_formatted_is_skipped_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fragile(body: bytes, ordinal: int, timestamp_ms: int) -> Formatted:
        if body == b"bad":
            raise RecursionError("nested too deep")
        return format_event(body, ordinal, timestamp_ms)

    monkeypatch.setattr(actors.delivery, "format_event", fragile)
    caplog.set_level(logging.INFO)
    async with running() as h:
        record = await h.stream()
        ws = await h.open(record, AfterOrdinal(0))
        await h.publish("rk", "a", "bad", "b")
        await ws.wait_frames(2)
        await settle()
        assert ws.ordinals() == [1, 3]
        assert not ws.closed.is_set()
        assert h.actor(record).connections[0].messages_skipped == 1
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped and "ordinal=2" in skipped[0]
