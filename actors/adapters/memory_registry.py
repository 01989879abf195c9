"""An in-process :class:`~actors.ports.registry.Registry` for unit tests."""

from __future__ import annotations

import builtins
import itertools
import time
from dataclasses import replace

from actors.ports.registry import StreamRecord, new_stream_uuid


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
