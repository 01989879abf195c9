"""What the supervisor tells the operator views: its streams, their count, the busy ones.

``/debug/actors`` pages by id through :attr:`Supervisor.streams`, ``/metrics``
counts with :attr:`Supervisor.stream_count` and samples lag from
:attr:`Supervisor.busy_streams` only, so a scrape never visits every stream.
"""

from __future__ import annotations

import pytest

from actors.adapters.memory_broker import MemoryBroker
from actors.adapters.memory_registry import MemoryRegistry

from .actor_fakes import running, settle, until, wall_clock

pytestmark = pytest.mark.autojump


async def test_streams_are_by_id_even_when_restored_after_a_create() -> None:
    registry = MemoryRegistry()
    broker = MemoryBroker(clock=wall_clock)
    for key in ("a", "b"):
        await broker.ensure_stream(key)
        await registry.create(key, owns_queue=True)
    registry.set_available(False)  # the first restore fails: the supervisor retries later
    async with running(registry=registry, broker=broker) as h:
        registry.set_available(True)
        created = await h.stream("c")  # added before the retried restore adds 1 and 2
        await until(lambda: h.supervisor.stream_count == 3)
        assert [actor.record.id for actor in h.supervisor.streams] == [1, 2, created.id]
        assert created.id == 3


async def test_stream_count_follows_creates_and_deletes() -> None:
    async with running() as h:
        assert h.supervisor.stream_count == 0
        records = [await h.stream(f"k{n}") for n in range(3)]
        assert h.supervisor.stream_count == 3
        assert await h.supervisor.delete_stream(records[1].id)
        assert h.supervisor.stream_count == 2
        assert [a.record.id for a in h.supervisor.streams] == [records[0].id, records[2].id]


async def test_busy_streams_are_those_with_a_running_task() -> None:
    async with running() as h:
        quiet, busy, other = [await h.stream(f"k{n}") for n in range(3)]
        assert h.supervisor.busy_streams == []
        first = await h.open(busy)
        second = await h.open(other)
        assert h.supervisor.busy_streams == [h.actor(busy), h.actor(other)]
        first.disconnect()
        await first.served.wait()
        await settle()
        assert h.supervisor.busy_streams == [h.actor(other)]
        assert h.actor(quiet).state == "idle"
        assert await h.supervisor.delete_stream(other.id)
        await second.served.wait()
        await settle()
        assert h.supervisor.busy_streams == []
