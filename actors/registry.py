"""The registry port: where event streams are recorded durably.

The supervisor restores its stream actors from here at start-up and records
creations and deletions through it. :mod:`ess.registry` implements it on
SQLite; unit tests use :class:`MemoryRegistry`.
"""

from __future__ import annotations

import builtins
import itertools
import time
import uuid
from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One event stream as the Account Server knows it."""

    id: int
    uuid: str
    routing_key: str
    owns_queue: bool
    created_at: float


def new_stream_uuid() -> str:
    """The websocket credential: a version-4 UUID (122 random bits, URL-safe)."""
    return str(uuid.uuid4())


class Registry(Protocol):
    """Durable records of event streams, plus queues awaiting deletion."""

    async def create(self, routing_key: str, *, owns_queue: bool) -> StreamRecord:
        """Record a new event stream with a fresh id (never reused) and uuid."""
        ...

    async def get(self, stream_id: int) -> StreamRecord | None: ...

    async def list(self) -> builtins.list[StreamRecord]:
        """Every event stream, ordered by id."""
        ...

    async def delete(self, stream_id: int) -> StreamRecord | None:
        """Remove the record; returns what was removed (``None`` if unknown)."""
        ...

    async def set_owns_queue(self, stream_id: int, owns_queue: bool) -> None:
        """Hand queue ownership to another stream sharing the routing key."""
        ...

    async def add_pending_queue_deletion(self, routing_key: str) -> None:
        """Remember to delete an owned queue the broker could not delete yet."""
        ...

    async def pending_queue_deletions(self) -> builtins.list[str]: ...

    async def remove_pending_queue_deletion(self, routing_key: str) -> None: ...


class MemoryRegistry:
    """An in-process :class:`Registry` for unit tests."""

    def __init__(self) -> None:
        self._records: dict[int, StreamRecord] = {}
        self._ids = itertools.count(1)
        self._pending: list[str] = []

    async def create(self, routing_key: str, *, owns_queue: bool) -> StreamRecord:
        record = StreamRecord(
            id=next(self._ids),
            uuid=new_stream_uuid(),
            routing_key=routing_key,
            owns_queue=owns_queue,
            created_at=time.time(),
        )
        self._records[record.id] = record
        return record

    async def get(self, stream_id: int) -> StreamRecord | None:
        return self._records.get(stream_id)

    async def list(self) -> builtins.list[StreamRecord]:
        return [self._records[key] for key in sorted(self._records)]

    async def delete(self, stream_id: int) -> StreamRecord | None:
        return self._records.pop(stream_id, None)

    async def set_owns_queue(self, stream_id: int, owns_queue: bool) -> None:
        record = self._records.get(stream_id)
        if record is not None:
            self._records[stream_id] = replace(record, owns_queue=owns_queue)

    async def add_pending_queue_deletion(self, routing_key: str) -> None:
        if routing_key not in self._pending:
            self._pending.append(routing_key)

    async def pending_queue_deletions(self) -> builtins.list[str]:
        return list(self._pending)

    async def remove_pending_queue_deletion(self, routing_key: str) -> None:
        if routing_key in self._pending:
            self._pending.remove(routing_key)
