"""Stream actors and the supervisor: policies, deletion, ownership, restarts, shutdown."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace

import pytest
import trio

from actors.adapters.memory_broker import MemoryBroker
from actors.adapters.memory_registry import MemoryRegistry
from actors.ports.broker import BrokerUnavailable
from actors.start import AfterOrdinal
from actors.stream import StreamActor

from .actor_fakes import (
    SETTINGS,
    TAKEOVER,
    WAIT,
    FakeWebSocket,
    Harness,
    oldest_of_three_taken_over,
    running,
    settle,
    until,
    wait_queue_deleted,
    wall_clock,
)

pytestmark = pytest.mark.autojump

DELETED = (1000, "The stream has been deleted")
SHUTDOWN = (1001, "The service is shutting down")


def code(ws: FakeWebSocket) -> tuple[int | None, str | None]:
    return ws.close_code, ws.close_reason


async def test_newest_connection_takes_over(h: Harness) -> None:
    record = await h.stream()
    first = await h.open(record)
    second = await h.open(record)
    await first.wait_closed()
    assert code(first) == TAKEOVER
    with trio.fail_after(WAIT):
        await first.served.wait()
    await h.publish("rk", "x")
    await second.wait_frames(1)
    assert not second.closed.is_set()
    assert len(h.actor(record).connections) == 1
    assert h.broker.active_subscriptions == 1


async def test_policy_of_two_keeps_two_and_replaces_the_oldest() -> None:
    async with oldest_of_three_taken_over() as (_, _, second, third):
        assert not second.closed.is_set() and not third.closed.is_set()


async def test_policy_zero_is_unlimited() -> None:
    async with running(replace(SETTINGS, max_connections_per_stream=0)) as h:
        record = await h.stream()
        sockets = [await h.open(record) for _ in range(5)]
        await h.publish("rk", "x")
        for ws in sockets:
            await ws.wait_frames(1)
        assert not any(ws.closed.is_set() for ws in sockets)


async def test_takeover_is_per_stream(h: Harness) -> None:
    one = await h.open(await h.stream("a"))
    two = await h.open(await h.stream("a"))  # another stream, same routing key
    await settle()
    assert not one.closed.is_set() and not two.closed.is_set()


async def test_delete_closes_with_1000_and_returns_after_the_close(h: Harness) -> None:
    record = await h.stream()
    other = await h.stream("other")
    bystander = await h.open(other)
    ws = await h.open(record, websocket=FakeWebSocket(close_delay=1.5))
    start = trio.current_time()
    assert await h.supervisor.delete_stream(record.id) is True
    # the close handshake (1.5 s) completed before delete_stream returned
    assert ws.closed.is_set()
    assert code(ws) == DELETED
    assert trio.current_time() - start >= 1.5
    assert h.actor(other) is not None
    assert h.supervisor.find_stream(record.uuid) is None
    assert await h.registry.get(record.id) is None
    assert h.broker.deleted_streams == ["rk"]
    assert [s.id for s in await h.supervisor.list_streams()] == [other.id]
    await h.publish("other", "y")
    await bystander.wait_frames(1)
    assert not bystander.closed.is_set()


async def test_delete_with_a_pending_handshake_closes_it(h: Harness) -> None:
    record = await h.stream()
    actor = h.actor(record)
    ws = h.connect(record, websocket=FakeWebSocket(accept_delay=1.0))
    await settle()
    assert actor.connections and not ws.accepted.is_set()  # handshake under way
    assert await h.supervisor.delete_stream(record.id)
    assert ws.closed.is_set()
    assert code(ws) == DELETED
    # a handler that found the actor before the delete is refused
    late = FakeWebSocket()
    await actor.serve(late, AfterOrdinal(0))
    assert code(late) == DELETED


async def test_delete_unknown_and_twice(h: Harness) -> None:
    assert await h.supervisor.delete_stream(999) is False
    record = await h.stream()
    ws = await h.open(record, websocket=FakeWebSocket(close_delay=1.0))
    results: list[bool] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(lambda: _append(results, h.supervisor.delete_stream(record.id)))
    assert results == [True, True]
    assert ws.close_calls == [DELETED]
    assert await h.supervisor.delete_stream(record.id) is False


async def _append(results: list[bool], call: object) -> None:
    results.append(await call)  # type: ignore[misc]


async def test_delete_hands_queue_ownership_to_a_stream_sharing_the_key(h: Harness) -> None:
    first = await h.stream("shared")
    second = await h.stream("shared")
    third = await h.stream("shared")
    assert (first.owns_queue, second.owns_queue, third.owns_queue) == (True, False, False)
    await h.supervisor.delete_stream(first.id)
    assert h.broker.has_stream("shared")
    assert (await h.registry.get(second.id)).owns_queue  # type: ignore[union-attr]
    assert h.actor(second).record.owns_queue
    await h.supervisor.delete_stream(third.id)  # not the owner: queue stays
    assert h.broker.has_stream("shared")
    await h.supervisor.delete_stream(second.id)
    assert not h.broker.has_stream("shared")


async def test_queue_created_by_the_account_server_is_never_deleted(h: Harness) -> None:
    h.broker.create_stream("as-made")
    record = await h.stream("as-made")
    assert record.owns_queue is False
    assert h.broker.is_bound("as-made")
    await h.supervisor.delete_stream(record.id)
    assert h.broker.has_stream("as-made")


async def test_create_fails_cleanly_when_the_broker_is_down(h: Harness) -> None:
    h.broker.set_available(False)
    with pytest.raises(BrokerUnavailable):
        await h.stream()
    assert await h.supervisor.list_streams() == []


async def test_pending_queue_deletion_runs_when_the_broker_returns(h: Harness) -> None:
    record = await h.stream()
    ws = await h.open(record)
    h.broker.set_available(False)
    assert await h.supervisor.delete_stream(record.id) is True
    assert code(ws) == DELETED
    assert h.broker.has_stream("rk")
    assert await h.registry.pending_queue_deletions() == ["rk"]
    await trio.sleep(120)  # still down: nothing happens, nothing breaks
    assert h.broker.has_stream("rk")
    h.broker.set_available(True)
    await wait_queue_deleted(h.broker, h.registry)


async def test_pending_deletion_is_cancelled_by_a_new_stream_of_the_key(h: Harness) -> None:
    record = await h.stream()
    h.broker.set_available(False)
    await h.supervisor.delete_stream(record.id)
    h.broker.set_available(True)
    again = await h.stream("rk")  # races the retry: must keep (and own) the queue
    await settle()
    assert again.owns_queue
    assert h.broker.has_stream("rk")
    assert await h.registry.pending_queue_deletions() == []
    assert (await h.registry.get(again.id)).owns_queue  # type: ignore[union-attr]


async def test_pending_deletion_restored_at_start_is_retried() -> None:
    broker = MemoryBroker(clock=wall_clock)
    broker.create_stream("leftover")
    registry = MemoryRegistry()
    await registry.add_pending_queue_deletion("leftover")
    async with running(broker=broker, registry=registry):
        with trio.fail_after(WAIT):
            await broker.wait_deleted("leftover")


async def test_streams_are_restored_from_the_registry() -> None:
    broker = MemoryBroker(clock=wall_clock)
    registry = MemoryRegistry()
    await broker.ensure_stream("a")
    one = await registry.create("a", owns_queue=True)
    two = await registry.create("b", owns_queue=False)
    async with running(broker=broker, registry=registry) as h:
        assert h.supervisor.find_stream(one.uuid) is not None
        assert h.actor(two).record == two
        ws = await h.open(one, AfterOrdinal(0))
        await h.publish("a", "x")
        await ws.wait_frames(1)
        missing = await h.open(two)  # its queue does not exist
        await missing.wait_closed()
        assert missing.close_code == 1013


async def test_idle_streams_have_no_task(h: Harness) -> None:
    records = [await h.stream(f"k{n}") for n in range(3)]
    assert not any(h.actor(r).running for r in records)
    ws = await h.open(records[0])
    assert h.actor(records[0]).running
    assert h.actor(records[0]).state == "active"
    await ws.leave()
    await settle()
    assert not h.actor(records[0]).running
    assert h.actor(records[0]).state == "idle"
    again = await h.open(records[0])  # starts again on demand
    await h.publish("k0", "x")
    await again.wait_frames(1)


async def test_serve_returns_once_the_connection_actor_holds_the_websocket(h: Harness) -> None:
    record = await h.stream()
    ws = FakeWebSocket()
    actor = h.actor(record)
    with trio.fail_after(1):
        await actor.serve(ws, AfterOrdinal(0))  # no waiting handler task per websocket
    assert ws.handed_over and len(actor.connections) == 1
    await ws.wait_accepted()
    assert not ws.closed.is_set()


async def test_the_edge_stopping_closes_a_handed_over_connection_with_1001(h: Harness) -> None:
    record = await h.stream()
    actor = h.actor(record)
    ws = await h.open(record)
    ws.stop()  # what the websocket edge does when its listener is cancelled
    await ws.wait_closed()
    assert code(ws) == SHUTDOWN
    await until(lambda: actor.connections == [])
    await until(lambda: h.broker.active_subscriptions == 0)  # the shared consumer let go


async def test_handler_cancelled_before_the_hand_over_leaves_nothing(h: Harness) -> None:
    record = await h.stream()
    actor = h.actor(record)
    ws = FakeWebSocket()
    with trio.CancelScope() as scope:
        scope.cancel()  # cancelled while the stream actor's task starts
        await actor.serve(ws, AfterOrdinal(0))
    assert scope.cancelled_caught
    assert not ws.handed_over and not ws.accepted.is_set()
    assert actor.connections == []
    await settle()
    assert h.broker.active_subscriptions == 0


async def test_crashed_stream_actor_is_restarted_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crash = trio.Event()
    original = StreamActor._host

    async def host(self: StreamActor) -> None:
        if self.record.routing_key == "fragile" and self.restarts == 0:
            await crash.wait()
            raise RuntimeError("stream actor bug")
        await original(self)

    monkeypatch.setattr(StreamActor, "_host", host)
    async with running() as h:
        fragile = await h.stream("fragile")
        sturdy = await h.stream("sturdy")
        bystander = await h.open(sturdy)
        victim = await h.open(fragile)
        crash.set()
        await victim.wait_closed()
        assert code(victim) == (1011, "Internal error")
        actor = h.actor(fragile)
        assert actor.state == "restarting"
        crashed_at = trio.current_time()
        newcomer = await h.open(fragile)  # waits for the restart, then is served
        assert trio.current_time() - crashed_at >= SETTINGS.restart_backoff_initial
        assert actor.restarts == 1
        await h.publish("fragile", "after restart")
        await newcomer.wait_frames(1)
        await h.publish("sturdy", "unaffected")
        await bystander.wait_frames(1)
        assert not bystander.closed.is_set()


async def test_restart_backoff_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    async def host(self: StreamActor) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("always")

    monkeypatch.setattr(StreamActor, "_host", host)
    async with running() as h:
        record = await h.stream()
        actor = h.actor(record)
        times = []
        for _ in range(4):
            ws = await h.open(record)
            await ws.wait_closed()
            times.append(trio.current_time())
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
        assert gaps == [0.5, 1.0, 2.0]
        assert actor.restarts == 4
        assert await h.supervisor.delete_stream(record.id)  # also during a backoff


async def test_shutdown_closes_everything_with_1001() -> None:
    async with running(replace(SETTINGS, max_connections_per_stream=0)) as h:
        one = await h.stream("a")
        two = await h.stream("b")
        await h.stream("idle")
        sockets = [await h.open(one), await h.open(one), await h.open(two)]
        stuck = await h.open(two, websocket=FakeWebSocket(close_blocks=True))
        start = trio.current_time()
        await h.supervisor.shutdown()
        elapsed = trio.current_time() - start
        assert elapsed <= SETTINGS.close_timeout * 2 + 1
        for ws in sockets:
            assert code(ws) == SHUTDOWN
        assert stuck.close_calls == [SHUTDOWN] and stuck.aborted
        assert h.broker.active_subscriptions == 0
        late = FakeWebSocket()
        await h.actor(one).serve(late, AfterOrdinal(0))
        assert code(late) == SHUTDOWN
        created = await h.stream("after")
        later = FakeWebSocket()
        await h.actor(created).serve(later, AfterOrdinal(0))
        assert code(later) == SHUTDOWN


async def test_supervisor_cancelled_closes_with_1001() -> None:
    broker = MemoryBroker(clock=wall_clock)
    async with running(broker=broker) as h:
        ws = await h.open(await h.stream())
        h.nursery.cancel_scope.cancel()
    assert code(ws) == SHUTDOWN


async def test_snapshot_shows_the_tree(h: Harness) -> None:
    record = await h.stream("rk")
    idle = await h.stream("quiet")
    ws = await h.open(record, AfterOrdinal(0))
    await h.publish("rk", "a", "b")
    await ws.wait_frames(2)
    await settle()
    snap = h.supervisor.snapshot()
    text = json.dumps(snap)
    assert record.uuid not in text and idle.uuid not in text
    assert snap["kind"] == "supervisor"
    assert snap["state"] == "running"
    assert snap["counters"] == {"streams": 2, "connections": 1, "pending_queue_deletions": 0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(snap["started_at"]))
    streams = snap["children"]
    assert isinstance(streams, list)
    assert [s["name"] for s in streams] == [record.uuid[:8], idle.uuid[:8]]
    busy, quiet = streams
    assert busy["kind"] == "stream" and busy["state"] == "active"
    assert busy["counters"] == {
        "id": record.id,
        "routing_key": "rk",
        "connections": 1,
        "restarts": 0,
    }
    assert quiet["state"] == "idle" and quiet["children"] == []
    [connection] = busy["children"]
    assert connection["kind"] == "connection"
    assert connection["counters"]["messages_sent"] == 2
    assert connection["counters"]["last_ordinal"] == 2
    [consumer] = connection["children"]
    assert consumer["kind"] == "consumer" and consumer["state"] == "attached"
    await ws.leave()
    assert h.supervisor.snapshot()["counters"]["connections"] == 0  # type: ignore[index]
