"""An in-process :class:`~actors.ports.registry.Registry` for unit tests.

It keeps the port's transaction semantics (each method is atomic: it never
yields to the event loop in the middle) and lets a test take it away with
:meth:`MemoryRegistry.set_available`, as a full disk or a PostgreSQL outage
would.
"""

from __future__ import annotations

import builtins
import itertools
import time
from dataclasses import replace

import trio

from actors.ports.registry import (
    Deletion,
    QueueFate,
    RegistryUnavailable,
    StreamRecord,
    new_stream_uuid,
)


class MemoryRegistry:
    """An in-process :class:`Registry` for unit tests."""

    def __init__(self) -> None:
        self._records: dict[int, StreamRecord] = {}
        self._ids = itertools.count(1)
        self._pending: list[str] = []
        self._available = True
        self._reachable = True

    # -- test controls ----------------------------------------------------

    def set_available(self, available: bool) -> None:
        """Simulate the backend going away (``False``: every call raises) or coming back."""
        self._reachable = available

    # -- the Registry port ------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    async def _call(self, *, writes: bool = True) -> None:
        """A checkpoint, then the outcome a real backend would have now.

        As for the SQL adapters, only a write makes the registry available
        again: a read proves nothing about writing.
        """
        await trio.lowlevel.checkpoint()
        if not self._reachable:
            self._available = False
            raise RegistryUnavailable("the memory registry is unavailable")
        if writes:
            self._available = True

    async def create(self, routing_key: str, *, owns_queue: bool) -> StreamRecord:
        await self._call()
        claimed = routing_key in self._pending
        if claimed:
            self._pending.remove(routing_key)
        record = StreamRecord(
            id=next(self._ids),
            uuid=new_stream_uuid(),
            routing_key=routing_key,
            owns_queue=owns_queue or claimed,
            created_at=time.time(),
        )
        self._records[record.id] = record
        return record

    async def get(self, stream_id: int) -> StreamRecord | None:
        await self._call(writes=False)
        return self._records.get(stream_id)

    async def find(self, stream_uuid: str) -> StreamRecord | None:
        await self._call(writes=False)
        return next((r for r in self._records.values() if r.uuid == stream_uuid), None)

    async def list(self) -> builtins.list[StreamRecord]:
        await self._call(writes=False)
        return [self._records[key] for key in sorted(self._records)]

    async def delete(self, stream_id: int) -> Deletion | None:
        await self._call()
        record = self._records.pop(stream_id, None)
        if record is None:
            return None
        if not record.owns_queue:
            return Deletion(record, QueueFate())
        return Deletion(record, self._release(record.routing_key))

    async def add_pending_queue_deletion(self, routing_key: str) -> None:
        await self._call()
        self._add_pending(routing_key)

    async def pending_queue_deletions(self) -> builtins.list[str]:
        await self._call(writes=False)
        return list(self._pending)

    async def decide_pending_deletion(self, routing_key: str) -> QueueFate:
        await self._call()
        if routing_key not in self._pending:
            return QueueFate()
        fate = self._release(routing_key)
        if fate.heir is not None:
            self._pending.remove(routing_key)
        return fate

    async def complete_pending_deletion(self, routing_key: str) -> bool:
        await self._call()
        if routing_key in self._pending:
            self._pending.remove(routing_key)
        return any(r.routing_key == routing_key for r in self._records.values())

    async def remove_pending_queue_deletion(self, routing_key: str) -> None:
        await self._call()
        if routing_key in self._pending:
            self._pending.remove(routing_key)

    # -- helpers (no checkpoint: part of the caller's "transaction") -------

    def _add_pending(self, routing_key: str) -> None:
        if routing_key not in self._pending:
            self._pending.append(routing_key)

    def _release(self, routing_key: str) -> QueueFate:
        """The owner left: the oldest stream of the key owns the queue, or it is to go."""
        heirs = [r for r in self._records.values() if r.routing_key == routing_key]
        if not heirs:
            self._add_pending(routing_key)
            return QueueFate(delete=True)
        heir = replace(min(heirs, key=lambda r: r.id), owns_queue=True)
        self._records[heir.id] = heir
        return QueueFate(heir=heir)
