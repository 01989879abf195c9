"""The registry port: where event streams are recorded durably.

The supervisor restores its stream actors from here at start-up and records
creations and deletions through it. Adapters:
:mod:`actors.adapters.sqlite_registry` (the embedded default),
:mod:`actors.adapters.postgres_registry` (shared by replicas on any hosts)
and :class:`actors.adapters.memory_registry.MemoryRegistry` (unit tests);
``tests/contract/test_registry_contract.py`` proves they behave alike.

Queue ownership lives here, not in a process's memory, so that it holds
across replicas (SPEC sections 2 and 7). A *pending deletion* of a routing
key means "the service owns this key's queue, and it must be deleted unless
an event stream of the key claims it". It is written

* before the service declares a queue (the intent: a crash between the
  declare and the record leaves a queue that the retry deletes), and
* by :meth:`Registry.delete` when the last stream of an owned queue goes,

and it is removed by :meth:`Registry.create` (the new stream owns the
queue), by :meth:`Registry.decide_pending_deletion` when a stream of the key
exists, or by :meth:`Registry.complete_pending_deletion` once the broker
deleted the queue. Each of these decisions is one registry transaction.

The broker's deletion itself cannot be part of a registry transaction, so
another replica may record a stream of the key while the queue is being
deleted. :meth:`Registry.complete_pending_deletion` tells the deleting
replica so (it then declares the queue again), and a replica that declared
a queue for a new stream ensures it once more after recording the stream:
whichever order the steps of two replicas take, a recorded stream is left
with its queue.
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


@dataclass(frozen=True, slots=True)
class QueueFate:
    """What becomes of a queue whose owning stream went (or that was declared).

    ``heir``: the queue is kept, and this stream (the oldest of the routing
    key) owns it now. ``delete``: no stream of the key is left; a pending
    deletion is recorded and the broker must delete the queue. Neither: there
    is nothing to do (the queue was not the service's, or is settled).
    """

    heir: StreamRecord | None = None
    delete: bool = False


@dataclass(frozen=True, slots=True)
class Deletion:
    """What :meth:`Registry.delete` removed, and what became of its queue."""

    record: StreamRecord
    queue: QueueFate


class RegistryUnavailable(Exception):
    """The registry cannot be read or written now (disk full, database down).

    The message is a human reason (never a password). The internal API
    answers 503 with it; :attr:`Registry.available` is ``False`` until a call
    succeeds again. Websockets that are already open keep streaming: they do
    not need the registry.
    """


def new_stream_uuid() -> str:
    """The websocket credential: a version-4 UUID (122 random bits, URL-safe)."""
    return str(uuid.uuid4())


class Registry(Protocol):
    """Durable records of event streams, plus queues awaiting deletion.

    Every method raises :class:`RegistryUnavailable` when the backend cannot
    be used now.
    """

    @property
    def available(self) -> bool:
        """``False`` after a call failed (or while not connected) until one succeeds."""
        ...

    async def create(self, routing_key: str, *, owns_queue: bool) -> StreamRecord:
        """Record a new event stream with a fresh id (never reused) and uuid.

        In the same transaction, a pending deletion of ``routing_key`` is
        removed, and the new stream then owns the queue even when
        ``owns_queue`` is false: the queue is the service's, and this stream
        keeps it.
        """
        ...

    async def get(self, stream_id: int) -> StreamRecord | None: ...

    async def find(self, stream_uuid: str) -> StreamRecord | None:
        """The record whose websocket uuid is ``stream_uuid``, or ``None``.

        A replica asks this for a websocket of a stream it does not know
        (created on another replica), or while it may have missed deletions.
        """
        ...

    async def list(self) -> builtins.list[StreamRecord]:
        """Every event stream, ordered by id."""
        ...

    async def delete(self, stream_id: int) -> Deletion | None:
        """Remove the record (``None`` if unknown) and settle its queue, in one transaction.

        If the stream owned its queue, the oldest remaining stream of the
        routing key becomes the owner (``queue.heir``); if none remains, a
        pending deletion of the key is recorded (``queue.delete``).
        """
        ...

    async def add_pending_queue_deletion(self, routing_key: str) -> None:
        """Record that the queue of ``routing_key`` is the service's to delete (idempotent)."""
        ...

    async def pending_queue_deletions(self) -> builtins.list[str]:
        """Routing keys with a pending deletion, oldest first."""
        ...

    async def decide_pending_deletion(self, routing_key: str) -> QueueFate:
        """Whether the pending deletion of ``routing_key`` still stands, in one transaction.

        No pending deletion: nothing to do. A stream of the key exists: the
        pending deletion is removed and the oldest such stream owns the
        queue (``heir``). Otherwise ``delete``: the broker must delete the
        queue, then call :meth:`remove_pending_queue_deletion`.
        """
        ...

    async def complete_pending_deletion(self, routing_key: str) -> bool:
        """The broker deleted the queue: forget its pending deletion, in one transaction.

        Returns ``True`` if a stream of the key is recorded now (another
        replica recorded it while the queue was being deleted): the caller
        declares the queue again.
        """
        ...

    async def remove_pending_queue_deletion(self, routing_key: str) -> None:
        """Forget a pending deletion without deleting anything (the queue was never ours)."""
        ...
