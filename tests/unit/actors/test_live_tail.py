"""The shared live-tail consumer (actors/tail.py) under the autojump MockClock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import NamedTuple

import pytest
import trio

from actors.connection_actor import ConnectionActor
from actors.hub import DEMOTE_GRACE, LiveTailHub
from actors.ports.broker import StartPosition, Subscription
from actors.ports.registry import StreamRecord
from actors.resubscription import RESUBSCRIBE_BACKOFF
from actors.start import AfterOrdinal

from .actor_fakes import (
    MANY,
    SETTINGS,
    FakeWebSocket,
    Harness,
    crash_hub_at,
    hub_of,
    oldest_of_three_taken_over,
    receive_each,
    running,
    settle,
    until,
    wall_clock,
)

pytestmark = pytest.mark.autojump


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    """A running supervisor that shares a hub between live connections (``MANY``).

    It stands in, in this module, for the default ``h`` of the actors' conftest.
    """
    async with running(MANY) as harness:
        yield harness


def consumer_state(connection: ConnectionActor) -> str:
    [consumer] = connection.snapshot()["children"]  # type: ignore[misc]
    return str(consumer["state"])


async def test_many_live_connections_share_one_broker_consumer(h: Harness) -> None:
    record = await h.stream()
    sockets = [h.connect(record) for _ in range(10)]  # concurrently: some join while attaching
    for ws in sockets:
        await ws.wait_accepted()
    assert h.broker.active_subscriptions == 1
    await h.publish("rk", *[f"e{n}" for n in range(1, 21)])
    for ws in sockets:
        await ws.wait_frames(20)
    await settle()
    for ws in sockets:
        assert ws.ordinals() == list(range(1, 21))
        assert not ws.closed.is_set()
    assert h.broker.subscriptions_opened == 1
    [subscription] = h.broker.subscriptions
    assert subscription.acked_offset == 19
    hub = hub_of(h, record)
    assert (hub.members, hub.received, hub.last_offset, hub.demoted) == (10, 20, 19, 0)
    for connection in h.actor(record).connections:
        assert consumer_state(connection) == "shared"


class PacedWebSocket(FakeWebSocket):
    """A healthy client that takes ``pace`` seconds per frame (slower than the hub)."""

    def __init__(self, pace: float) -> None:
        super().__init__()
        self.pace = pace

    async def send_text(self, text: str) -> None:
        await trio.sleep(self.pace)
        await super().send_text(text)

    def send_now(self, texts: Sequence[str]) -> bool:
        """Never at once: every frame takes its pace, in the connection's task."""
        self.batches.append(len(texts))
        self.held.extend(texts)
        return False


async def test_a_burst_larger_than_the_buffers_demotes_nobody(h: Harness) -> None:
    record = await h.stream()
    pace = DEMOTE_GRACE / 50  # the burst takes 0.6 grace to absorb
    sockets = [await h.open(record, websocket=PacedWebSocket(pace)) for _ in range(3)]
    for burst in range(2):  # catching up in between earns a fresh grace
        start = trio.current_time()
        for n in range(1, 31):  # no checkpoint: the hub reads it as fast as it can
            h.broker.append("rk", f"e{n}".encode())
        for ws in sockets:
            await ws.wait_frames(30 * (burst + 1))
        await settle()
        assert trio.current_time() - start < 30 * pace + 0.01
        await trio.sleep(DEMOTE_GRACE)
    for ws in sockets:
        assert ws.ordinals() == list(range(1, 61))
    assert hub_of(h, record).demoted == 0
    assert h.broker.subscriptions_opened == 1
    assert h.broker.subscriptions[0].max_in_flight <= SETTINGS.prefetch


async def test_late_joiner_gets_what_follows_its_join_and_nothing_before(h: Harness) -> None:
    record = await h.stream()
    early = await h.open(record)
    await h.publish("rk", "e1", "e2", "e3")
    await early.wait_frames(3)
    await settle()
    # Published synchronously inside accept(): the member is registered
    # before the handshake completes, so it must get it.
    late = FakeWebSocket(on_accept=lambda: h.broker.append("rk", b"e4"))
    await h.open(record, websocket=late)
    await h.publish("rk", "e5")
    await late.wait_frames(2)
    await early.wait_frames(5)
    await settle()
    assert late.ordinals() == [4, 5]
    assert [text.split("|")[0] for text in late.sent] == ["e4", "e5"]
    assert early.ordinals() == [1, 2, 3, 4, 5]
    assert h.broker.subscriptions_opened == 1


async def test_slow_member_is_demoted_then_catches_up_on_its_own_consumer() -> None:
    settings = replace(MANY, send_timeout=1000.0)
    async with running(settings) as h:
        record = await h.stream()
        fast = await h.open(record)
        slow = await h.open(record, websocket=FakeWebSocket(read_budget=2))
        other = await h.open(record)
        start = trio.current_time()
        await h.publish("rk", *[f"e{n}" for n in range(1, 31)])
        await fast.wait_frames(30)
        await other.wait_frames(30)
        # The slow one held the others up for at most its grace period.
        assert trio.current_time() - start <= DEMOTE_GRACE + 0.1
        await settle()
        hub = hub_of(h, record)
        assert hub.demoted == 1 and hub.members == 2
        slow_connection = h.actor(record).connections[1]
        assert len(slow.sent) == 2
        # It left the hub, but only drains what it buffered once it reads again.
        assert consumer_state(slow_connection) == "shared"
        assert h.broker.active_subscriptions == 1
        slow.resume()
        await h.publish("rk", "e31")
        await slow.wait_frames(31)
        await fast.wait_frames(31)
        await other.wait_frames(31)
        await settle()
        assert slow.ordinals() == list(range(1, 32))
        assert fast.ordinals() == list(range(1, 32))
        assert other.ordinals() == list(range(1, 32))
        assert not any(ws.closed.is_set() for ws in (fast, slow, other))
        # One shared consumer plus the slow client's own (backpressured) one.
        assert h.broker.active_subscriptions == 2
        assert h.broker.subscriptions_opened == 2
        assert consumer_state(slow_connection) == "attached"
        assert [consumer_state(c) for c in h.actor(record).connections] == [
            "shared",
            "attached",
            "shared",
        ]
        # Memory stayed bounded: nobody ever held more than its buffer.
        assert all(s.max_in_flight <= settings.prefetch for s in h.broker.subscriptions)


class StuckBurst(NamedTuple):
    record: StreamRecord
    fast: FakeWebSocket
    stuck: list[FakeWebSocket]
    #: When the burst was published.
    start: float


async def burst_past_stuck_members(h: Harness, stuck: int) -> StuckBurst:
    """A stream with one reading member and ``stuck`` that never read, then e1-e20 published."""
    record = await h.stream()
    fast = await h.open(record)
    members = [await h.open(record, websocket=FakeWebSocket(reading=False)) for _ in range(stuck)]
    start = trio.current_time()
    await h.publish("rk", *[f"e{n}" for n in range(1, 21)])
    return StuckBurst(record, fast, members, start)


async def test_demoted_client_that_never_reads_is_closed_by_the_send_timeout(h: Harness) -> None:
    record, fast, [stuck], start = await burst_past_stuck_members(h, 1)
    await fast.wait_frames(20)
    await stuck.wait_closed()
    assert stuck.close_code == 1008
    assert stuck.close_time is not None
    assert stuck.close_time - start < SETTINGS.send_timeout + 1
    assert hub_of(h, record).demoted == 1
    await h.publish("rk", "e21")
    await fast.wait_frames(21)
    assert fast.ordinals() == list(range(1, 22))
    await settle()
    assert h.broker.active_subscriptions == 1


async def test_many_stuck_members_stall_the_others_for_one_grace_at_most(h: Harness) -> None:
    record, fast, stuck, start = await burst_past_stuck_members(h, 5)
    await fast.wait_frames(20)
    assert trio.current_time() - start <= DEMOTE_GRACE + 0.01
    assert fast.ordinals() == list(range(1, 21))
    assert hub_of(h, record).demoted == 5
    for ws in stuck:
        ws.resume()
    for ws in stuck:
        await ws.wait_frames(20)
        assert ws.ordinals() == list(range(1, 21))


async def test_a_full_member_that_leaves_releases_the_hub_at_once(h: Harness) -> None:
    record, fast, [stuck], start = await burst_past_stuck_members(h, 1)
    await settle()  # the hub waits for the stuck member's buffer to have room
    assert trio.current_time() == start
    assert len(fast.sent) < 20
    stuck.disconnect()
    await fast.wait_frames(20)
    assert trio.current_time() - start < DEMOTE_GRACE / 10
    assert fast.ordinals() == list(range(1, 21))
    assert hub_of(h, record).demoted == 0


async def test_outage_resumes_every_member_with_one_resubscription(h: Harness) -> None:
    record = await h.stream()
    sockets = [await h.open(record) for _ in range(3)]
    await h.publish("rk", "e1", "e2", "e3")
    for ws in sockets:
        await ws.wait_frames(3)
    h.broker.set_available(False)
    await settle()
    hub = hub_of(h, record)
    assert hub.state == "reconnecting"
    h.broker.append("rk", b"e4")  # written while we were disconnected
    await trio.sleep(30)  # a long outage: websockets stay open
    assert not any(ws.closed.is_set() for ws in sockets)
    h.broker.set_available(True)
    await h.publish("rk", "e5")
    await receive_each(sockets, [1, 2, 3, 4, 5])
    assert h.broker.subscriptions_opened == 2
    assert h.broker.active_subscriptions == 1
    assert hub.state == "attached" and hub.subscriptions == 2
    for connection in h.actor(record).connections:
        assert consumer_state(connection) == "shared"
        assert connection.state == "open"


async def test_outage_before_the_first_event_resubscribes_from_next(h: Harness) -> None:
    record = await h.stream()
    sockets = [await h.open(record) for _ in range(2)]
    h.broker.set_available(False)
    await settle()
    h.broker.set_available(True)
    await until(lambda: hub_of(h, record).attached)
    await h.publish("rk", "e1")
    await receive_each(sockets, [1])
    assert h.broker.subscriptions_opened == 2


async def test_last_member_leaving_releases_the_broker_consumer(h: Harness) -> None:
    record = await h.stream()
    one = await h.open(record)
    two = await h.open(record)
    assert h.broker.active_subscriptions == 1
    await one.leave()
    await settle()
    assert h.broker.active_subscriptions == 1
    assert hub_of(h, record).members == 1
    await two.leave()
    assert h.broker.active_subscriptions == 0
    await settle()
    actor = h.actor(record)
    assert actor.live_tail is None
    assert not actor.running
    again = await h.open(record)  # a new hub, on demand
    await h.publish("rk", "x")
    await again.wait_frames(1)
    assert h.broker.subscriptions_opened == 2


async def test_delete_closes_every_member_and_the_shared_consumer(h: Harness) -> None:
    record = await h.stream()
    sockets = [await h.open(record) for _ in range(3)]
    await h.publish("rk", "e1")
    for ws in sockets:
        await ws.wait_frames(1)
    assert await h.supervisor.delete_stream(record.id)
    for ws in sockets:
        assert (ws.close_code, ws.close_reason) == (1000, "The stream has been deleted")
    assert h.broker.active_subscriptions == 0


async def test_takeover_closes_the_oldest_member_and_keeps_the_consumer() -> None:
    async with oldest_of_three_taken_over() as (h, record, _, _):
        await settle()
        assert h.broker.subscriptions_opened == 1
        assert h.broker.active_subscriptions == 1
        assert hub_of(h, record).members == 2


async def test_replay_connections_get_their_own_consumer(h: Harness) -> None:
    record = await h.stream()
    await h.publish("rk", "e1", "e2")
    live = await h.open(record)
    replay = await h.open(record, AfterOrdinal(0))
    another = await h.open(record, AfterOrdinal(1))
    assert h.broker.active_subscriptions == 3
    await h.publish("rk", "e3")
    await live.wait_frames(1)
    await replay.wait_frames(3)
    await another.wait_frames(2)
    assert live.ordinals() == [3]
    assert replay.ordinals() == [1, 2, 3]
    assert another.ordinals() == [2, 3]
    states = [consumer_state(c) for c in h.actor(record).connections]
    assert states == ["shared", "attached", "attached"]


async def test_missing_queue_closes_every_member_1013(h: Harness) -> None:
    record = await h.stream()
    sockets = [await h.open(record) for _ in range(2)]
    await h.broker.delete_stream("rk")
    for ws in sockets:
        await ws.wait_closed()
        assert (ws.close_code, ws.close_reason) == (1013, "The stream queue does not exist")
    await settle()
    assert h.actor(record).live_tail is None
    assert h.broker.active_subscriptions == 0


async def test_a_crashed_hub_sends_members_to_their_own_consumers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crash_hub_at(monkeypatch, 2)
    async with running(MANY) as h:
        record = await h.stream()
        sockets = [await h.open(record) for _ in range(2)]
        await h.publish("rk", "e1", "e2")
        for ws in sockets:
            await ws.wait_frames(2)
        await settle()
        late = await h.open(record)  # has no cursor when the hub fails
        await h.publish("rk", "e3", "e4", "e5")
        for ws in sockets:
            await ws.wait_frames(5)
        await late.wait_frames(3)
        await settle()
        for ws in sockets:
            assert ws.ordinals() == [1, 2, 3, 4, 5]
            assert not ws.closed.is_set()
        assert late.ordinals() == [3, 4, 5]
        actor = h.actor(record)
        assert actor.restarts == 0
        assert h.broker.active_subscriptions == 3
        assert [consumer_state(c) for c in actor.connections] == ["attached"] * 3
        again = await h.open(record)  # a new hub for newcomers
        await h.publish("rk", "e6")
        await again.wait_frames(1)
        assert again.ordinals() == [6]


async def test_joiners_of_a_hub_that_crashes_during_an_outage_get_what_was_published_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Left by their hub before it ever attached, its joiners, accepted and waiting,
    resume on consumers of their own from their handshakes: by time, as a refused
    live tail does, not from whatever is next."""
    subscribe = LiveTailHub.subscribe
    attempts: list[StartPosition] = []

    def crash_on_the_second_attempt(
        self: LiveTailHub, position: StartPosition
    ) -> AbstractAsyncContextManager[Subscription]:
        attempts.append(position)
        if len(attempts) == 2:
            raise RuntimeError("hub bug")
        return subscribe(self, position)

    monkeypatch.setattr(LiveTailHub, "subscribe", crash_on_the_second_attempt)
    async with running(MANY) as h:
        record = await h.stream()
        h.broker.append("rk", b"before", timestamp_ms=int(wall_clock() * 1000))
        await trio.sleep(10)
        h.broker.set_available(False)
        sockets = [await h.open(record) for _ in range(2)]  # accepted while the hub waits
        await trio.sleep(5)
        h.broker.append("rk", b"meanwhile", timestamp_ms=int(wall_clock() * 1000))
        h.broker.set_available(True)  # the hub's next attempt crashes
        await until(lambda: h.broker.active_subscriptions == 2, RESUBSCRIBE_BACKOFF.maximum)
        assert h.actor(record).live_tail is None
        await h.publish("rk", "live")
        await receive_each(sockets, [2, 3])  # not "before" (1)


async def test_broker_down_when_joining_accepts_and_joins_later(h: Harness) -> None:
    record = await h.stream()
    h.broker.set_available(False)
    sockets = [await h.open(record) for _ in range(3)]  # accepted while the hub waits
    await settle()
    hub = h.actor(record).live_tail
    assert hub is not None and hub.members == 3  # one hub retries for all three
    assert all(ws.state == "waiting" for ws in h.actor(record).connections)
    await trio.sleep(30)
    h.broker.set_available(True)
    await until(lambda: all(consumer_state(c) == "shared" for c in h.actor(record).connections))
    await h.publish("rk", "live")
    await receive_each(sockets, [1])
    assert h.broker.active_subscriptions == 1


async def test_joiners_that_leave_during_an_outage_stop_the_waiting_hub(h: Harness) -> None:
    record = await h.stream()
    h.broker.set_available(False)
    sockets = [await h.open(record) for _ in range(2)]
    await settle()
    assert h.actor(record).live_tail is not None
    for ws in sockets:
        await ws.leave()
    await until(lambda: h.actor(record).live_tail is None)  # no joiner: nobody retries
    h.broker.set_available(True)
    await settle()
    assert h.broker.subscriptions_opened == 0


async def test_snapshot_shows_the_shared_consumer(h: Harness) -> None:
    record = await h.stream()
    for _ in range(2):
        await h.open(record)
    await h.publish("rk", "a", "b")
    await settle()
    snap = h.actor(record).snapshot()
    json.dumps(snap)
    children = snap["children"]
    assert isinstance(children, list)
    assert [c["kind"] for c in children] == ["connection", "connection", "consumer"]
    hub = children[-1]
    assert hub["name"] == "live-tail" and hub["state"] == "attached"
    assert hub["counters"] == {
        "members": 2,
        "received": 2,
        "last_offset": 1,
        "subscriptions": 1,
        "demoted": 0,
        "prefetch": SETTINGS.prefetch,
    }
    for connection in children[:2]:
        [consumer] = connection["children"]
        assert consumer["state"] == "shared"
        assert consumer["counters"]["start"] == "next"


async def test_join_is_synchronous_once_attached(h: Harness) -> None:
    record = await h.stream()
    await h.open(record)
    hub = hub_of(h, record)
    assert hub.attached
    membership = hub.membership(4)
    with trio.testing.assert_no_checkpoints():
        member = await membership.__aenter__()
    try:
        assert hub.members == 2
        h.broker.append("rk", b"x")
        await settle()
        assert member.buffered == 1
    finally:
        await membership.__aexit__(None, None, None)
    assert hub.members == 1


# -- the fast path: the hub writes to an idle member from its own task ----


async def test_an_idle_member_is_written_from_the_hubs_task(h: Harness) -> None:
    record = await h.stream()
    sockets = [await h.open(record) for _ in range(3)]
    for n in range(1, 6):
        await h.publish("rk", f"e{n}")  # one at a time: every member is idle when it comes
        for ws in sockets:
            await ws.wait_frames(n)
    for ws in sockets:
        assert ws.ordinals() == [1, 2, 3, 4, 5]
        assert ws.sends_started == 0, "the connection's own task wrote a frame"
    for connection in h.actor(record).connections:
        assert (connection.messages_received, connection.messages_sent) == (5, 5)
        assert connection.last_ordinal == 5


async def test_a_live_event_is_fanned_out_and_acked_in_the_task_that_received_it(
    h: Harness,
) -> None:
    record = await h.stream()
    sockets = [await h.open(record) for _ in range(3)]
    await settle()
    [subscription] = h.broker.subscriptions
    for n in range(1, 4):
        # The broker's side hands the event over: no other task runs before the frames are out.
        with trio.testing.assert_no_checkpoints():
            h.broker.append("rk", b"e%d" % n)
        assert [ws.ordinals() for ws in sockets] == [list(range(1, n + 1))] * 3
        assert subscription.acked_offset == n - 1
    assert hub_of(h, record).received == 3
    for ws in sockets:
        assert ws.sends_started == 0, "the connection's own task wrote a frame"


async def test_an_event_a_full_member_has_no_room_for_goes_through_the_hubs_task(
    h: Harness,
) -> None:
    record = await h.stream()
    stalled = await h.open(record, websocket=FakeWebSocket(read_budget=1))
    other = await h.open(record)
    await h.publish("rk", *[f"e{n}" for n in range(1, SETTINGS.prefetch + 3)])
    await settle()
    hub = hub_of(h, record)
    [member] = [m for m in hub._members if m.full]
    h.broker.append("rk", b"late")  # not taken on the broker's side: the hub's task waits
    count = SETTINGS.prefetch + 3
    assert other.ordinals() == list(range(1, count))
    stalled.resume()
    await stalled.wait_frames(count)
    await other.wait_frames(count)
    assert stalled.ordinals() == other.ordinals() == list(range(1, count + 1))
    assert member.next_offset == count
    assert hub.demoted == 0


async def test_what_the_socket_did_not_take_is_written_before_the_next_event(h: Harness) -> None:
    record = await h.stream()
    stalled = await h.open(record, websocket=FakeWebSocket(read_budget=1))
    other = await h.open(record)
    await h.publish("rk", "e1", "e2", "e3", "e4")  # e2 is held by the socket, e3/e4 buffered
    await other.wait_frames(4)
    await settle()
    assert stalled.ordinals() == [1]
    assert not stalled.closed.is_set()
    stalled.resume()
    await stalled.wait_frames(4)
    await h.publish("rk", "e5")
    await stalled.wait_frames(5)
    assert stalled.ordinals() == [1, 2, 3, 4, 5]
    assert other.ordinals() == [1, 2, 3, 4, 5]
    assert hub_of(h, record).demoted == 0


async def test_a_member_whose_socket_never_takes_the_rest_is_closed_by_the_send_timeout(
    h: Harness,
) -> None:
    record = await h.stream()
    stalled = await h.open(record, websocket=FakeWebSocket(read_budget=0))
    other = await h.open(record)
    await h.publish("rk", "e1")
    start = trio.current_time()
    with trio.fail_after(SETTINGS.send_timeout + 1):
        await stalled.closed.wait()
    assert trio.current_time() - start == pytest.approx(SETTINGS.send_timeout, abs=0.01)
    assert stalled.close_code == 1008
    await h.publish("rk", "e2")
    await other.wait_frames(2)
    assert other.ordinals() == [1, 2]


async def test_poison_on_the_fast_path_closes_after_what_came_before(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record)
    other = await h.open(record)
    await h.publish("rk", "a")
    await ws.wait_frames(1)
    await h.publish("rk", "POISON")
    with trio.fail_after(5):
        await ws.closed.wait()
    assert (ws.close_code, ws.close_reason) == (1000, "POISON received")
    assert ws.ordinals() == [1]
    await other.closed.wait()
    assert other.ordinals() == [1]


async def test_a_failing_socket_on_the_fast_path_ends_that_connection_only(h: Harness) -> None:
    record = await h.stream()
    healthy = await h.open(record)
    failing = await h.open(record, websocket=FakeWebSocket(fail_send=RuntimeError("boom")))
    await h.publish("rk", "e1")
    with trio.fail_after(5):
        await failing.closed.wait()
    assert failing.close_code == 1011
    await h.publish("rk", "e2")
    await healthy.wait_frames(2)
    assert healthy.ordinals() == [1, 2]
    assert hub_of(h, record).state == "attached"
