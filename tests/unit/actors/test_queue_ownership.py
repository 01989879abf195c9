"""Queue ownership survives failures and crashes at any point (SPEC sections 2 and 7).

A queue the service declared ends up either recorded as owned or deleted
again, whatever fails after the declare; a DELETE's queue removal is
recorded before the broker is asked; ownership is decided by the registry,
so it holds across replicas sharing it. The broker and registry here are the
memory adapters, with failures injected where a real one would fail.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import pytest
import trio

from actors.adapters.memory_broker import MemoryBroker
from actors.adapters.memory_registry import MemoryRegistry
from actors.ports.broker import BrokerUnavailable
from actors.ports.registry import RegistryUnavailable, StreamRecord

from .actor_fakes import WAIT, Harness, running, settle, until, wait_queue_deleted, wall_clock

pytestmark = pytest.mark.autojump

OnDeclare = Callable[[], Awaitable[None]] | None


class StepBroker(MemoryBroker):
    """A memory broker whose ``ensure_stream`` can fail or stall after the declare."""

    def __init__(self) -> None:
        super().__init__(clock=wall_clock)
        self.fail_bind = False
        self.stall_bind = False
        self.declared_meanwhile = False
        self.bind_reached = trio.Event()
        self.bind_released = trio.Event()
        self.stall_delete = False
        self.delete_reached = trio.Event()
        self.delete_released = trio.Event()

    async def ensure_stream(self, routing_key: str, *, on_declare: OnDeclare = None) -> bool:
        if self.declared_meanwhile and not self.has_stream(routing_key):
            # Someone else declares it between our check and our declare.
            if on_declare is not None:
                await on_declare()
            self.create_stream(routing_key)
            return await super().ensure_stream(routing_key)
        created = await super().ensure_stream(routing_key, on_declare=on_declare)
        self.bind_reached.set()
        if self.stall_bind:
            await self.bind_released.wait()
        if self.fail_bind:
            raise BrokerUnavailable("the bind timed out")
        return created

    async def delete_stream(self, routing_key: str) -> None:
        if self.stall_delete:
            self.delete_reached.set()
            await self.delete_released.wait()  # a DELETE is shielded: it must end
        await super().delete_stream(routing_key)


@dataclass
class Shared:
    """The broker and registry that replicas, or a crashed process and its restart, share."""

    broker: StepBroker = field(default_factory=StepBroker)
    registry: MemoryRegistry = field(default_factory=MemoryRegistry)

    def replica(self) -> AbstractAsyncContextManager[Harness]:
        """A supervisor (another replica, or the restart) on the shared broker and registry."""
        return running(broker=self.broker, registry=self.registry)


@pytest.fixture
def shared() -> Shared:
    return Shared()


class FailingCreateRegistry(MemoryRegistry):
    """A memory registry whose ``create`` fails (a full disk, PostgreSQL gone)."""

    async def create(self, routing_key: str, *, owns_queue: bool) -> StreamRecord:
        raise RegistryUnavailable("disk full")


@pytest.mark.parametrize("failure", ["the bind fails", "the registry fails", "the caller hangs up"])
async def test_a_failure_after_the_declare_deletes_the_queue_again(failure: str) -> None:
    broker = StepBroker()
    broker.fail_bind = failure == "the bind fails"
    broker.stall_bind = failure == "the caller hangs up"
    registry = FailingCreateRegistry() if failure == "the registry fails" else MemoryRegistry()
    async with running(broker=broker, registry=registry) as h:

        async def post() -> None:
            with pytest.raises((BrokerUnavailable, RegistryUnavailable)):
                await h.stream("rk")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post)
            if broker.stall_bind:
                await broker.bind_reached.wait()
                nursery.cancel_scope.cancel()
        assert broker.deleted_streams == ["rk"]
        assert not broker.has_stream("rk")
        assert await registry.pending_queue_deletions() == []
        assert await registry.list() == []


async def test_crash_after_the_declare_is_cleaned_up_by_the_next_start(shared: Shared) -> None:
    shared.broker.stall_bind = True
    async with shared.replica() as crashed:
        crashed.nursery.start_soon(crashed.stream, "rk")
        await shared.broker.bind_reached.wait()
        # The process dies here: what it recorded is what a restart finds.
        assert await shared.registry.pending_queue_deletions() == ["rk"]
        shared.broker.stall_bind = False
        async with shared.replica():
            await wait_queue_deleted(shared.broker, shared.registry)
        crashed.nursery.cancel_scope.cancel()


async def test_queue_declared_meanwhile_by_someone_else_is_not_owned() -> None:
    broker = StepBroker()
    broker.declared_meanwhile = True
    async with running(broker=broker) as h:
        record = await h.stream("rk")
        assert not record.owns_queue
        assert await h.registry.pending_queue_deletions() == []
        await h.supervisor.delete_stream(record.id)
        await settle()
        assert broker.has_stream("rk")


async def test_delete_records_the_pending_deletion_before_asking_the_broker(shared: Shared) -> None:
    async with shared.replica() as crashed:
        record = await crashed.stream("rk")
        shared.broker.stall_delete = True
        crashed.nursery.start_soon(crashed.supervisor.delete_stream, record.id)
        await shared.broker.delete_reached.wait()
        # A crash now: the record is gone and the queue's deletion is recorded.
        assert await shared.registry.list() == []
        assert await shared.registry.pending_queue_deletions() == ["rk"]
        shared.broker.stall_delete = False
        async with shared.replica():
            await wait_queue_deleted(shared.broker, shared.registry)
        shared.broker.delete_released.set()
        crashed.nursery.cancel_scope.cancel()


async def test_ownership_is_handed_to_a_stream_another_replica_created() -> None:
    broker = MemoryBroker(clock=wall_clock)
    registry = MemoryRegistry()
    async with running(broker=broker, registry=registry) as one:
        owner = await one.stream("shared")
        async with running(broker=broker, registry=registry) as two:
            heir = await two.stream("shared")  # replica one does not know this stream
            assert owner.owns_queue and not heir.owns_queue
            await one.supervisor.delete_stream(owner.id)
            await settle()
            assert broker.has_stream("shared")
            assert (await registry.get(heir.id)) == StreamRecord(
                heir.id, heir.uuid, "shared", True, heir.created_at
            )
            await two.supervisor.delete_stream(heir.id)
            await settle()
            assert not broker.has_stream("shared")
            assert broker.deleted_streams == ["shared"]  # exactly once


async def test_delete_while_the_registry_is_unavailable_changes_nothing() -> None:
    async with running() as h:
        record = await h.stream("rk")
        ws = await h.open(record)
        h.registry.set_available(False)
        with pytest.raises(RegistryUnavailable):
            await h.supervisor.delete_stream(record.id)
        assert not h.registry.available
        assert not ws.closed.is_set()
        assert h.supervisor.find_stream(record.uuid) is not None
        assert h.broker.has_stream("rk")
        h.registry.set_available(True)
        assert await h.supervisor.delete_stream(record.id)
        await ws.wait_closed()
        await settle()
        assert not h.broker.has_stream("rk")


async def test_pending_deletion_waits_for_the_registry() -> None:
    async with running() as h:
        record = await h.stream("rk")
        h.broker.set_available(False)
        await h.supervisor.delete_stream(record.id)
        h.registry.set_available(False)
        h.broker.set_available(True)
        await trio.sleep(30)  # the retry backs off; nothing breaks
        assert h.broker.has_stream("rk")
        h.registry.set_available(True)
        await wait_queue_deleted(h.broker, h.registry)


async def test_streams_are_restored_once_the_registry_is_reachable() -> None:
    broker = MemoryBroker(clock=wall_clock)
    registry = MemoryRegistry()
    await broker.ensure_stream("a")
    record = await registry.create("a", owns_queue=True)
    registry.set_available(False)
    async with running(broker=broker, registry=registry) as h:
        assert h.supervisor.find_stream(record.uuid) is None  # started, not restored
        registry.set_available(True)
        await until(lambda: h.supervisor.find_stream(record.uuid) is not None)
        await h.serves(record)


async def test_a_stream_recorded_on_another_replica_during_the_queue_deletion_keeps_its_queue(
    shared: Shared,
) -> None:
    async with shared.replica() as one:
        last = await one.stream("rk")
        shared.broker.stall_delete = True
        one.nursery.start_soon(one.supervisor.delete_stream, last.id)
        await shared.broker.delete_reached.wait()  # replica one decided: the queue goes
        async with shared.replica() as two:
            newcomer = await two.stream("rk")  # the queue still exists: claimed
            assert newcomer.owns_queue
            shared.broker.stall_delete = False
            shared.broker.delete_released.set()
            await settle()
            assert shared.broker.deleted_streams == ["rk"]
            assert shared.broker.has_stream("rk") and shared.broker.is_bound("rk")  # declared again
            assert await shared.registry.pending_queue_deletions() == []
            await two.serves(newcomer)


async def test_a_post_whose_intent_another_replica_cleaned_up_keeps_its_queue(
    shared: Shared,
) -> None:
    shared.broker.stall_bind = True
    async with shared.replica() as slow:
        created: list[StreamRecord] = []

        async def post() -> None:
            created.append(await slow.stream("rk"))

        slow.nursery.start_soon(post)
        await shared.broker.bind_reached.wait()
        # Another replica starts and takes the intent for a crashed POST's.
        async with shared.replica():
            with trio.fail_after(WAIT):
                await shared.broker.wait_deleted("rk")
        shared.broker.stall_bind = False
        shared.broker.bind_released.set()
        await settle()
        [record] = created
        assert record.owns_queue
        assert shared.broker.has_stream("rk")  # declared again once the stream was recorded
