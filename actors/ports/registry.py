"""The registry port: where event streams are recorded durably.

The supervisor restores its stream actors from here at start-up and records
creations and deletions through it. :mod:`ess.registry` implements it on
SQLite; unit tests use :class:`actors.adapters.memory_registry.MemoryRegistry`.
"""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One event stream as the Account Server knows it."""

    id: int
    uuid: str
    routing_key: str
    owns_queue: bool
    created_at: float


class RegistryUnavailable(Exception):
    """The registry cannot be read or written now (disk full, database down).

    The internal API answers 503 with the reason; ``/health/ready`` is 503
    until a call succeeds again. Websockets that are already open keep
    streaming: they do not need the registry.
    """


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
