"""The connection actor against the memory broker, under the autojump MockClock."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import trio

from actors.delivery import SEND_BATCH, start_position
from actors.ports.broker import FromOffset, FromTimestamp
from actors.ports.observer import NullObserver
from actors.resubscription import RESUBSCRIBE_BACKOFF
from actors.start import AfterOrdinal, AtOrAfterTime, LiveTail

from .actor_fakes import (
    MANY,
    SETTINGS,
    TAKEOVER,
    WAIT,
    FakeWebSocket,
    Harness,
    running,
    settle,
    until,
    wall_clock,
)

pytestmark = pytest.mark.autojump


def test_start_positions() -> None:
    assert start_position(AfterOrdinal(0)) == FromOffset(0)
    assert start_position(AfterOrdinal(7)) == FromOffset(7)
    assert start_position(AtOrAfterTime(1_700_000_000_500)) == FromTimestamp(1_699_999_999)


async def test_live_tail_attaches_before_accept(h: Harness) -> None:
    record = await h.stream()
    await h.publish("rk", "before")
    # Published synchronously inside accept(): only a consumer attached
    # *before* the handshake completes can see it.
    ws = FakeWebSocket(on_accept=lambda: h.broker.append("rk", b"during"))
    h.connect(record, LiveTail(), ws)
    await ws.wait_accepted()
    await h.publish("rk", "after")
    await ws.wait_frames(2)
    assert [text.split("|")[0] for text in ws.sent] == ["during", "after"]
    assert ws.ordinals() == [2, 3]
    assert not ws.closed.is_set()


async def test_replay_from_ordinal_zero_and_k() -> None:
    async with running(replace(SETTINGS, max_connections_per_stream=0)) as h:
        record = await h.stream()
        await h.publish("rk", *[f"e{n}" for n in range(1, 6)])
        from_zero = await h.open(record, AfterOrdinal(0))
        from_three = await h.open(record, AfterOrdinal(3))
        await from_zero.wait_frames(5)
        await from_three.wait_frames(2)
        await h.publish("rk", "e6")
        await from_zero.wait_frames(6)
        await from_three.wait_frames(3)
        assert from_zero.ordinals() == [1, 2, 3, 4, 5, 6]
        assert from_three.ordinals() == [4, 5, 6]
        assert from_three.sent[0].startswith("e4|ordinal: 4|timestamp: ")


async def test_ordinal_beyond_the_end_waits_for_it(h: Harness) -> None:
    record = await h.stream()
    await h.publish("rk", "e1", "e2")
    ws = await h.open(record, AfterOrdinal(4))
    await h.publish("rk", "e3", "e4", "e5", "e6")
    await ws.wait_frames(2)
    assert ws.ordinals() == [5, 6]


async def test_ordinal_gone_by_retention_starts_at_the_oldest(h: Harness) -> None:
    record = await h.stream()
    await h.publish("rk", *[f"e{n}" for n in range(1, 6)])
    h.broker.truncate_before("rk", 3)
    ws = await h.open(record, AfterOrdinal(1))
    await ws.wait_frames(2)
    assert ws.ordinals() == [4, 5]


async def test_timestamp_start_never_delivers_an_event_stamped_before_it(h: Harness) -> None:
    record = await h.stream()
    await h.publish("rk", "old")  # a broker second far before: positioned away
    await trio.sleep(100)
    t = int(wall_clock() * 1000)
    await h.publish("rk", "a", timestamp_ms=t - 5000)  # same broker second, own time early
    await h.publish("rk", "b", timestamp_ms=t - 1)
    await h.publish("rk", "c", timestamp_ms=t)
    await h.publish("rk", "d")  # no own time: stamped on receipt
    # Stamped before the requested time although it comes after the first
    # one at or after it: never delivered (SPEC section 4, issue 9 point 4).
    await h.publish("rk", "e", timestamp_ms=t - 100)
    ws = await h.open(record, AtOrAfterTime(t))
    await h.publish("rk", "f", timestamp_ms=t + 1)
    await ws.wait_frames(3)
    await settle()
    assert [text.split("|")[0] for text in ws.sent] == ["c", "d", "f"]
    assert ws.ordinals() == [4, 5, 7]
    stamps = [int(text.rsplit("|timestamp: ", 1)[1]) for text in ws.sent]
    assert stamps[0] == t
    assert stamps == sorted(stamps), "ess_timestamp decreased along the connection"


async def test_events_without_own_time_are_positioned_by_the_broker(h: Harness) -> None:
    record = await h.stream()
    await h.publish("rk", "n0")
    await trio.sleep(10)
    s = int(wall_clock())
    await h.publish("rk", "n1")
    ws = await h.open(record, AtOrAfterTime(s * 1000 + 900))
    await ws.wait_frames(1)
    # n1 was stamped by the broker in second s (< s.9): not skipped, as
    # it carries no time of its own; n0 is outside the broker's window.
    assert [text.split("|")[0] for text in ws.sent] == ["n1"]


async def test_json_and_text_formatting(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record, AfterOrdinal(0))
    await h.publish("rk", '{"kind": "é", "n": 1}', timestamp_ms=42)
    await h.publish("rk", "TaskEvent|id: 7", timestamp_ms=43)
    await ws.wait_frames(2)
    assert ws.sent == [
        '{"kind":"é","n":1,"ess_ordinal":1,"ess_timestamp":42}',
        "TaskEvent|id: 7|ordinal: 2|timestamp: 43",
    ]
    connection = h.actor(record).connections[0]
    assert connection.bytes_sent == sum(len(text.encode()) for text in ws.sent)


class RecordingObserver(NullObserver):
    """Keeps every ``frames_sent`` report."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int, float]] = []

    def frames_sent(self, frames: int, utf8_bytes: int, seconds_since_received: float) -> None:
        self.reports.append((frames, utf8_bytes, seconds_since_received))


async def test_every_frame_sent_is_reported_once_with_its_bytes() -> None:
    """The one count of frames and bytes sent (the metrics are fed from it)."""
    observer = RecordingObserver()
    async with running(replace(SETTINGS, max_connections_per_stream=2), observer=observer) as h:
        record = await h.stream()
        await h.publish("rk", "é-1", "two", '{"n": 3}')
        replaying = await h.open(record, AfterOrdinal(0))  # a burst: batched writes
        live = await h.open(record)
        await h.publish("rk", "four")  # live: one write to each
        await replaying.wait_frames(4)
        await live.wait_frames(1)
        await settle()
    sent = replaying.sent + live.sent
    assert sum(frames for frames, _, _ in observer.reports) == len(sent) == 5
    assert sum(size for _, size, _ in observer.reports) == sum(len(t.encode()) for t in sent)
    assert all(lag >= 0 for _, _, lag in observer.reports)


async def test_bad_bodies_are_skipped_without_closing(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record, AfterOrdinal(0))
    await h.publish("rk", b"\xff\xfe", b"{not json", b"[1]", b"{}")
    await ws.wait_frames(2)
    await settle()
    assert ws.ordinals() == [3, 4]
    assert not ws.closed.is_set()
    connection = h.actor(record).connections[0]
    assert connection.messages_skipped == 2
    assert connection.messages_received == 4
    [subscription] = h.broker.subscriptions
    assert subscription.acked_offset == 3


async def test_skipped_events_are_not_replayed_after_an_outage(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record, AfterOrdinal(0))
    await h.publish("rk", b"ok", b"\xff")
    await ws.wait_frames(1)
    await settle()
    h.broker.set_available(False)
    await settle()
    h.broker.set_available(True)
    await h.publish("rk", b"next")
    await ws.wait_frames(2)
    assert ws.ordinals() == [1, 3]
    assert h.actor(record).connections[0].messages_skipped == 1


async def test_poison_closes_normally(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record)
    await h.publish("rk", "a", "POISON", "b")
    await ws.wait_closed()
    assert (ws.close_code, ws.close_reason) == (1000, "POISON received")
    assert ws.ordinals() == [1]
    with trio.fail_after(WAIT):
        await ws.served.wait()
    # The POISON may have reached it from the hub's task, which then
    # releases the consumer in its own time.
    await until(lambda: h.broker.active_subscriptions == 0)


async def test_missing_queue_closes_1013(h: Harness) -> None:
    record = await h.stream()
    await h.broker.delete_stream("rk")
    ws = h.connect(record)
    await ws.wait_closed()
    assert ws.accepted.is_set()
    assert (ws.close_code, ws.close_reason) == (1013, "The stream queue does not exist")


async def test_queue_deleted_under_a_connection_closes_1013(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record)
    await h.broker.delete_stream("rk")
    await ws.wait_closed()
    assert ws.close_code == 1013


async def test_outage_keeps_the_websocket_and_resumes_without_gap_or_duplicate(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record, AfterOrdinal(0))
    await h.publish("rk", "e1", "e2", "e3")
    await ws.wait_frames(3)
    h.broker.set_available(False)
    await settle()
    assert not ws.closed.is_set()
    connection = h.actor(record).connections[0]
    assert connection.snapshot()["children"][0]["state"] == "reconnecting"  # type: ignore[index]
    h.broker.append("rk", b"e4")  # written while we were disconnected
    await trio.sleep(30)  # a long outage: keepalive still answered
    assert not ws.closed.is_set()
    h.broker.set_available(True)
    await h.publish("rk", "e5")
    await ws.wait_frames(5)
    await settle()
    assert ws.ordinals() == [1, 2, 3, 4, 5]
    assert h.broker.subscriptions_opened == 2
    assert connection.snapshot()["children"][0]["state"] == "attached"  # type: ignore[index]


async def test_outage_with_unacked_events_in_flight(h: Harness) -> None:
    record = await h.stream()
    ws = FakeWebSocket(read_budget=2)
    await h.open(record, AfterOrdinal(0), ws)
    await h.publish("rk", *[f"e{n}" for n in range(1, 7)])
    await ws.wait_frames(2)
    await settle()
    h.broker.set_available(False)
    await settle()
    h.broker.set_available(True)
    ws.resume()
    await ws.wait_frames(6)
    await settle()
    assert ws.ordinals() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("clients", [1, 2], ids=["alone", "hub"])
async def test_a_live_tail_refused_at_first_gets_what_was_published_since_it_connected(
    clients: int,
) -> None:
    """Its consumer refused (this node's broker down, or no stream member here),
    a live client still gets every event published after it connected: the
    other nodes took them meanwhile. Nothing from before it connected."""
    async with running(MANY) as h:
        await _refused_at_first(h, clients)


async def _refused_at_first(h: Harness, clients: int) -> None:
    record = await h.stream()
    h.broker.append("rk", b"before", timestamp_ms=int(wall_clock() * 1000))
    await trio.sleep(10)
    h.broker.set_available(False)
    sockets = [await h.open(record) for _ in range(clients)]
    await trio.sleep(5)
    h.broker.append("rk", b"meanwhile", timestamp_ms=int(wall_clock() * 1000))
    h.broker.set_available(True)
    # One consumer for them all: the hub kept its joiners while it retried.
    await until(lambda: h.broker.active_subscriptions > 0, RESUBSCRIBE_BACKOFF.maximum)
    await h.publish("rk", "live")
    for ws in sockets:
        await ws.wait_frames(2)
        assert ws.ordinals() == [2, 3]  # not "before" (1): it was published before the client came
    assert h.broker.active_subscriptions == 1


async def test_broker_down_at_first_subscribe_accepts_and_waits(h: Harness) -> None:
    record = await h.stream()
    h.broker.set_available(False)
    ws = await h.open(record)
    await trio.sleep(60)
    assert not ws.closed.is_set()
    h.broker.set_available(True)
    # Virtual time: waits for the jittered resubscribe.
    await until(lambda: h.broker.active_subscriptions > 0, RESUBSCRIBE_BACKOFF.maximum)
    await h.publish("rk", "live")
    await ws.wait_frames(1)
    assert ws.ordinals() == [1]


async def test_slow_client_closed_1008_after_send_timeout(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record, websocket=FakeWebSocket(reading=False))
    start = trio.current_time()
    await h.publish("rk", "x")
    await ws.wait_closed()
    assert ws.close_code == 1008
    assert ws.close_reason is not None and "5" in ws.close_reason
    assert ws.close_time is not None
    assert SETTINGS.send_timeout <= ws.close_time - start < SETTINGS.send_timeout + 1


async def test_slow_client_aborted_when_the_close_cannot_complete(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record, websocket=FakeWebSocket(reading=False, close_blocks=True))
    await h.publish("rk", "x")
    await ws.wait_closed()
    assert ws.close_calls == [(1008, "The client did not read for 5 seconds")]
    assert ws.aborted
    with trio.fail_after(WAIT):
        await ws.served.wait()


async def test_dead_peer_aborted_after_ping_timeout(h: Harness) -> None:
    record = await h.stream()
    live = await h.open(await h.stream("other"))
    start = trio.current_time()
    ws = await h.open(record, websocket=FakeWebSocket(answers_pings=False))
    await ws.wait_closed()
    assert ws.aborted
    assert ws.close_calls == []
    elapsed = (ws.close_time or 0) - start
    assert elapsed >= SETTINGS.ping_interval + SETTINGS.ping_timeout
    assert elapsed < SETTINGS.ping_interval + SETTINGS.ping_timeout + 1
    assert live.pings >= 1
    assert not live.closed.is_set()


async def test_a_ping_that_fails_unexpectedly_closes_only_its_connection_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pings run as tasks of the stream actor: a bug in one must not take the stream down."""
    async with running(MANY) as h:
        record = await h.stream()
        neighbour = await h.open(record)
        ws = FakeWebSocket()

        async def broken_ping() -> None:
            raise RuntimeError("ping bug")

        monkeypatch.setattr(ws, "ping", broken_ping)
        await h.open(record, websocket=ws)
        await ws.wait_closed()
        assert (ws.close_code, ws.close_reason) == (1011, "Internal error")
        await trio.sleep(SETTINGS.ping_interval * 2)  # the neighbour is pinged and answers
        assert neighbour.pings >= 2 and not neighbour.closed.is_set()
        assert h.actor(record).restarts == 0


async def test_a_ping_under_way_ends_with_its_connection(
    h: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = await h.stream()
    old = FakeWebSocket()
    pings: list[float] = []

    async def unanswered_even_once_closed() -> None:
        pings.append(trio.current_time())
        await trio.sleep_forever()

    monkeypatch.setattr(old, "ping", unanswered_even_once_closed)
    await h.open(record, websocket=old)
    await trio.sleep(SETTINGS.ping_interval + SETTINGS.ping_timeout / 2)  # waiting for a pong
    assert len(pings) == 1
    newer = await h.open(record)  # replaces it (4001); the stream actor lives on
    await old.wait_closed()
    assert old.close_calls == [TAKEOVER]
    await trio.sleep(SETTINGS.ping_timeout)
    assert not [r for r in caplog.records if "no pong" in r.getMessage()]
    assert not newer.closed.is_set()


async def test_client_leaving_ends_the_connection_and_its_consumer(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record)
    assert h.broker.active_subscriptions == 1
    await ws.leave()
    assert ws.close_calls == []
    assert h.broker.active_subscriptions == 0
    assert h.actor(record).connections == []
    await settle()
    assert not h.actor(record).running


async def test_crash_in_a_connection_closes_1011_and_nothing_else(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    record = await h.stream()
    other = await h.stream("other")
    bystander = await h.open(other)
    ws = await h.open(record, websocket=FakeWebSocket(fail_send=RuntimeError("boom")))
    await h.publish("rk", "x")
    await ws.wait_closed()
    assert (ws.close_code, ws.close_reason) == (1011, "Internal error")
    crash_logs = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert crash_logs and crash_logs[0].exc_info is not None
    assert f"stream={record.id} conn=" in crash_logs[0].getMessage()
    # the stream still serves, and so does the other stream
    again = await h.open(record, AfterOrdinal(0))
    await again.wait_frames(1)
    await h.publish("other", "y")
    await bystander.wait_frames(1)
    assert not bystander.closed.is_set()
    assert h.actor(record).restarts == 0


async def test_backpressure_reaches_the_broker() -> None:
    settings = replace(SETTINGS, prefetch=4, send_timeout=1000.0)
    async with running(settings) as h:
        record = await h.stream()
        ws = await h.open(record, AfterOrdinal(0), FakeWebSocket(read_budget=3))
        await h.publish("rk", *[f"e{n}" for n in range(1, 101)])
        await ws.wait_frames(3)
        await settle()
        [subscription] = h.broker.subscriptions
        # never acknowledged what the client has not read (frames sent in one
        # batch are acknowledged together, after the whole batch is written);
        # never more than the window taken
        assert subscription.acked_offset is None or subscription.acked_offset <= 2
        assert subscription.delivered <= 3 + settings.prefetch
        assert subscription.max_in_flight <= settings.prefetch
        ws.resume()
        await ws.wait_frames(100)
        assert ws.ordinals() == list(range(1, 101))
        assert subscription.max_in_flight <= settings.prefetch


async def test_stats_are_logged_and_logs_never_hold_the_uuid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running() as h:
        record = await h.stream()
        ws = await h.open(record)
        await h.publish("rk", "1", "2", "3", "4")
        await ws.wait_frames(4)
        await settle()
        await ws.leave()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("actors")]
    stats = [m for m in messages if " stats " in m]
    assert len(stats) == 1 and "sent=3" in stats[0]
    closed = [m for m in messages if " closed " in m]
    assert len(closed) == 1 and "sent=4" in closed[0] and "last_ordinal=4" in closed[0]
    for r in caplog.records:
        if r.levelno >= logging.INFO:
            assert record.uuid not in r.getMessage()
    conn_lines = [m for m in messages if "conn=" in m]
    assert conn_lines and all(f"stream={record.id} " in m for m in conn_lines)


async def test_connection_snapshot(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record, AfterOrdinal(0))
    await h.publish("rk", "abc", b"\xff")
    await ws.wait_frames(1)
    await settle()
    [connection] = h.actor(record).connections
    snap = connection.snapshot()
    json.dumps(snap)
    assert snap["kind"] == "connection"
    assert snap["name"] == connection.id and len(connection.id) == 6
    assert snap["state"] == "open"
    counters = snap["counters"]
    assert counters == {
        "messages_received": 2,
        "messages_sent": 1,
        "messages_skipped": 1,
        "bytes_sent": len(ws.sent[0]),
        "last_ordinal": 1,
        "peer": "192.0.2.7:50000",
    }
    [consumer] = snap["children"]  # type: ignore[misc]
    assert consumer["kind"] == "consumer"
    assert consumer["state"] == "attached"
    assert consumer["counters"] == {
        "start": "offset 0",
        "prefetch": 8,
        "subscriptions": 1,
        "last_offset": 1,
    }


async def test_a_replay_burst_is_written_in_batches_and_a_live_event_alone(h: Harness) -> None:
    record = await h.stream()
    await h.publish("rk", *[f"e{n}" for n in range(1, 101)])
    ws = await h.open(record, AfterOrdinal(0))
    await ws.wait_frames(100)
    assert ws.ordinals() == list(range(1, 101))
    assert len(ws.batches) < 100  # bursts share socket writes
    assert max(ws.batches) <= SEND_BATCH
    batches_before = len(ws.batches)
    await h.publish("rk", "live")
    await ws.wait_frames(101)
    assert ws.batches[batches_before:] == [1]  # nothing waits for company


async def test_every_line_of_a_stream_or_connection_carries_its_log_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(replace(SETTINGS, max_connections_per_stream=0)) as h:
        record = await h.stream()
        live = await h.open(record)  # through the live-tail hub
        replay = await h.open(record, AfterOrdinal(0))
        await h.publish("rk", b"a", b"\xff")
        await replay.wait_frames(1)
        await live.wait_frames(1)
        h.broker.set_available(False)
        await settle()
        h.broker.set_available(True)
        await h.publish("rk", b"b")
        await replay.wait_frames(2)
        await live.wait_frames(2)
        replay.disconnect()
        live.disconnect()
        await settle()
    actor_records = [
        r for r in caplog.records if r.name in ("actors.connection_actor", "actors.hub")
    ]
    assert {r.name for r in actor_records} == {"actors.connection_actor", "actors.hub"}
    messages = [r.getMessage() for r in actor_records]
    assert any("resubscribing" in m for m in messages)
    assert any("skipped ordinal=2" in m for m in messages)
    for r in actor_records:
        assert r.stream == record.id  # type: ignore[attr-defined]  # structured, for JSON
        assert r.getMessage().startswith(f"stream={record.id} ")
        if r.name == "actors.connection_actor":
            assert r.getMessage().startswith(f"stream={record.id} conn={r.conn} ")  # type: ignore[attr-defined]
        assert record.uuid not in r.getMessage()
