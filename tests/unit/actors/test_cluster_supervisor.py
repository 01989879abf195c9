"""Supervisors as replicas: one memory broker, one memory registry, one control bus.

Each replica is a real :class:`Supervisor` joined to a real
:class:`Coordinator` on a :class:`MemoryControl` endpoint, under Trio's
autojump clock (the 5 s confirm bound passes at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from actors.adapters.memory_broker import MemoryBroker
from actors.adapters.memory_control import MemoryControl, MemoryControlBus
from actors.adapters.memory_registry import MemoryRegistry
from actors.close import DELETED, TAKEOVER, CloseReason
from actors.cluster.coordinator import CONFIRM_TIMEOUT, Coordinator
from actors.cluster.messages import Closed, Message, StreamDeleted, decode
from actors.ports.registry import StreamRecord
from actors.start import LiveTail
from actors.supervisor import REGISTRY_UNAVAILABLE, UNKNOWN_STREAM, Supervisor

from .actor_fakes import SETTINGS, FakeWebSocket, until, wall_clock

pytestmark = pytest.mark.autojump


@dataclass
class Replica:
    supervisor: Supervisor
    coordinator: Coordinator
    control: MemoryControl
    nursery: trio.Nursery

    async def open(self, record: StreamRecord) -> FakeWebSocket:
        """Serve a websocket of ``record`` here (as the websocket edge does); wait for accept."""
        ws = self.connect(record.uuid)
        await ws.wait_accepted()
        return ws

    def connect(self, uuid: str) -> FakeWebSocket:
        ws = FakeWebSocket()
        handle = self.supervisor.find_stream(uuid)
        assert handle is not None

        async def handler() -> None:
            try:
                await handle.serve(ws, LiveTail())
            finally:
                ws.served.set()

        self.nursery.start_soon(handler)
        return ws

    async def refused(self, uuid: str) -> CloseReason:
        """Connect to ``uuid`` here; wait until the server closes it; how it closed it."""
        ws = self.connect(uuid)
        await ws.wait_closed()
        return code(ws)

    async def learn(self, record: StreamRecord) -> None:
        """Serve one websocket of ``record`` that leaves at once.

        Afterwards this replica knows the stream (it has its actor) but serves
        nothing of it.
        """
        ws = await self.open(record)
        await ws.leave()

    async def cut_off(self) -> None:
        """Cut this replica off the control bus; wait until it knows it is not synced."""
        self.control.cut()
        await until(lambda: not self.coordinator.synced)


@dataclass
class Cluster:
    broker: MemoryBroker
    registry: MemoryRegistry
    bus: MemoryControlBus
    replicas: list[Replica]


@asynccontextmanager
async def cluster(count: int) -> AsyncIterator[Cluster]:
    broker = MemoryBroker(clock=wall_clock)
    registry = MemoryRegistry()
    bus = MemoryControlBus()
    async with trio.open_nursery() as nursery:
        replicas = []
        for n in range(count):
            supervisor = Supervisor(broker, registry, SETTINGS, clock=wall_clock)
            control = bus.endpoint()
            coordinator = Coordinator(control, f"r{n}.id", f"r{n}", clock=wall_clock)
            supervisor.join(coordinator)
            await nursery.start(supervisor.run)
            await nursery.start(coordinator.run)
            replicas.append(Replica(supervisor, coordinator, control, nursery))
        for replica in replicas:
            await until(lambda r=replica: len(r.coordinator.replicas()) == count)
        yield Cluster(broker, registry, bus, replicas)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def pair() -> AsyncIterator[Cluster]:
    """Two replicas, running (in the virtual time of the module's ``pytest.mark.autojump``)."""
    async with cluster(2) as c:
        yield c


def published(bus: MemoryControlBus, kind: type[Message]) -> list[bytes]:
    """The bodies of the control messages of ``kind`` published so far."""
    return [body for body in bus.published if isinstance(decode(body), kind)]


def code(ws: FakeWebSocket) -> CloseReason:
    assert ws.close_code is not None and ws.close_reason is not None
    return CloseReason(ws.close_code, ws.close_reason)


async def test_delete_closes_the_websockets_of_every_replica_before_it_returns() -> None:
    async with cluster(3) as c:
        a, b, other = c.replicas
        record = await a.supervisor.create_stream("rk")
        # Created on A, served on B (found in the registry) and on A.
        on_b = await b.open(record)
        assert await other.supervisor.delete_stream(record.id) is True
        assert on_b.closed.is_set()
        assert code(on_b) == DELETED
        assert await c.registry.get(record.id) is None
        assert c.broker.deleted_streams == ["rk"]
        # No replica serves it any more.
        for replica in c.replicas:
            assert await replica.refused(record.uuid) == UNKNOWN_STREAM


async def test_delete_of_an_unknown_stream_is_false_on_every_replica(pair: Cluster) -> None:
    assert await pair.replicas[0].supervisor.delete_stream(999) is False


async def test_a_replica_that_does_not_confirm_is_presumed_gone_after_the_bound(
    pair: Cluster,
) -> None:
    a, b = pair.replicas
    record = await a.supervisor.create_stream("rk")
    await a.supervisor.create_stream("rk")  # keeps the queue: only B can close on_b
    on_b = await b.open(record)
    b.control.cut()  # B is cut off: it hears nothing and answers nothing
    start = trio.current_time()
    assert await a.supervisor.delete_stream(record.id) is True
    assert CONFIRM_TIMEOUT <= trio.current_time() - start < CONFIRM_TIMEOUT + 1
    assert [r.name for r in a.coordinator.replicas()] == ["r0"]  # B dropped
    assert not on_b.closed.is_set()  # B never heard of it: it keeps streaming for now
    # B comes back: it re-reads the registry and closes the stream before anything else.
    b.control.restore()
    await on_b.wait_closed()
    assert code(on_b) == DELETED


async def test_a_cut_off_replica_checks_the_registry_before_serving(pair: Cluster) -> None:
    a, b = pair.replicas
    record = await a.supervisor.create_stream("rk")
    kept = await a.supervisor.create_stream("kept")
    await b.learn(record)  # the client left: B knows the stream, serves nothing of it
    await b.cut_off()
    assert await a.supervisor.delete_stream(record.id) is True
    # B still has the actor, but does not serve it: the registry no longer has it.
    assert await b.refused(record.uuid) == UNKNOWN_STREAM
    served = await b.open(kept)  # a stream the registry has is served as usual
    assert not served.closed.is_set()


async def test_a_newer_connection_on_another_replica_takes_over_with_4001(pair: Cluster) -> None:
    a, b = pair.replicas
    record = await a.supervisor.create_stream("rk")
    old = await a.open(record)
    new = await b.open(record)
    await old.wait_closed()
    assert code(old) == TAKEOVER
    await pair.broker.publish("rk", b"x")
    await new.wait_frames(1)
    assert not new.closed.is_set()


async def test_a_duplicated_deletion_is_answered_again_and_harms_nothing(pair: Cluster) -> None:
    a, b = pair.replicas
    record = await a.supervisor.create_stream("rk")
    kept = await a.supervisor.create_stream("kept")
    on_b = await b.open(kept)
    await a.supervisor.delete_stream(record.id)
    (deletion,) = published(pair.bus, StreamDeleted)
    assert len(published(pair.bus, Closed)) == 1
    await a.control.publish(deletion)  # the same message again
    await until(lambda: len(published(pair.bus, Closed)) == 2)
    assert not on_b.closed.is_set()
    assert b.supervisor.find_stream(kept.uuid) is not None


async def test_cut_off_from_broker_and_registry_serves_what_it_knows_and_refuses_the_rest(
    pair: Cluster,
) -> None:
    a, b = pair.replicas
    known = await a.supervisor.create_stream("known")
    elsewhere = await a.supervisor.create_stream("elsewhere")
    await b.learn(known)  # B now knows this stream
    await b.cut_off()
    pair.registry.set_available(False)
    served = await b.open(known)
    assert not served.closed.is_set()
    assert await b.refused(elsewhere.uuid) == REGISTRY_UNAVAILABLE
    # Not a uuid at all: refused at the edge, the registry is not asked.
    assert b.supervisor.find_stream("not-a-uuid") is None
