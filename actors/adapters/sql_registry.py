"""The registry's operations in SQL, shared by the SQLite and PostgreSQL adapters.

Both adapters run the same statements and the same transactions; they differ
only in how a connection is made, kept and used (:class:`Session`) and in the
schema's column types. Every value is a bound parameter: the SQL text here is
constant (the upstream's SQL injection is one of the defects SPEC section 3
fixes). Statements are written with ``?`` placeholders; the PostgreSQL
session translates them (the text holds no other ``?``).

Each operation that changes a routing key's streams or its pending deletion
is one transaction that first takes :meth:`Session.lock` on the key, so that
replicas deciding about the same queue take turns and each sees what the
other committed (SPEC section 7: "a queue the service owns is deleted
exactly once, when the last event stream of its routing key is deleted").
Without it, PostgreSQL's READ COMMITTED would let one replica choose as
heir a stream that another replica is deleting at that moment
(test_the_last_deletion_on_any_replica_releases_the_queue_exactly_once).
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from actors.ports.registry import (
    Deletion,
    QueueFate,
    RegistryUnavailable,
    StreamRecord,
    new_stream_uuid,
)

__all__ = [
    "CHECK_INTERVAL",
    "Dialect",
    "RegistryClosedError",
    "RegistryOpenError",
    "SQLRegistry",
    "Session",
    "migrate",
    "schema_version_1",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The lock key that serialises schema migrations of replicas starting together.
SCHEMA_LOCK = "ess registry schema"
#: Seconds between availability checks (see :meth:`SQLRegistry.check`).
CHECK_INTERVAL = 5.0

_COLUMNS = "id, uuid, routing_key, owns_queue, created_at"
_SELECT = f"SELECT {_COLUMNS} FROM streams"


class RegistryOpenError(Exception):
    """The registry cannot be opened at all (corrupt file, bad credentials, newer schema).

    Carries one line for the operator, never a password; start-up stops.
    """


class RegistryClosedError(RegistryUnavailable):
    """A call arrived after the registry was closed (during shutdown)."""


class Session(Protocol):
    """One connection as the shared operations use it (called in a worker thread)."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> builtins.list[tuple[Any, ...]]:
        """Run one statement; its result rows (``[]`` for none)."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction: committed on exit, rolled back on an exception."""
        ...

    def lock(self, key: str) -> None:
        """Inside a transaction: wait until no other transaction holds ``key``, then hold it."""
        ...


def _record(row: tuple[Any, ...]) -> StreamRecord:
    return StreamRecord(
        id=int(row[0]),
        uuid=str(row[1]),
        routing_key=str(row[2]),
        owns_queue=bool(row[3]),
        created_at=float(row[4]),
    )


def _release(session: Session, routing_key: str) -> QueueFate:
    """The owner left (key locked): the oldest stream of the key owns the queue, or it is to go."""
    rows = session.execute(
        "UPDATE streams SET owns_queue = ? WHERE id = "
        "(SELECT MIN(id) FROM streams WHERE routing_key = ?) RETURNING " + _COLUMNS,
        (True, routing_key),
    )
    if rows:
        return QueueFate(heir=_record(rows[0]))
    _add_pending(session, routing_key)
    return QueueFate(delete=True)


def _add_pending(session: Session, routing_key: str) -> None:
    session.execute(
        "INSERT INTO pending_queue_deletions (routing_key, added_at) VALUES (?, ?)"
        " ON CONFLICT (routing_key) DO NOTHING",
        (routing_key, time.time()),
    )


def _remove_pending(session: Session, routing_key: str) -> bool:
    rows = session.execute(
        "DELETE FROM pending_queue_deletions WHERE routing_key = ? RETURNING routing_key",
        (routing_key,),
    )
    return bool(rows)


def schema_version_1(*, identity: str, boolean: str, real: str) -> tuple[str, ...]:
    """Version 1 of the schema in a dialect's column types (released: never edit).

    ``identity`` is an id column whose values are never handed out twice,
    even after the highest row is deleted.
    """
    return (
        f"""
        CREATE TABLE streams (
            id          {identity},
            uuid        TEXT NOT NULL UNIQUE,
            routing_key TEXT NOT NULL,
            owns_queue  {boolean},
            created_at  {real} NOT NULL
        )
        """,
        "CREATE INDEX streams_routing_key ON streams (routing_key)",
        f"""
        CREATE TABLE pending_queue_deletions (
            id          {identity},
            routing_key TEXT NOT NULL UNIQUE,
            added_at    {real} NOT NULL
        )
        """,
    )


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL backends besides the connection: the schema's versions.

    ``migrations[n]`` takes the schema from version ``n`` to ``n + 1``;
    append steps, never edit a released one. ``read_version`` and
    ``write_version`` keep the version number (SQLite: ``PRAGMA
    user_version``; PostgreSQL: a ``schema_version`` table).
    """

    migrations: tuple[tuple[str, ...], ...]
    read_version: Callable[[Session], int]
    write_version: Callable[[Session, int], None]


def migrate(session: Session, dialect: Dialect, *, where: str) -> None:
    """Bring the schema to the dialect's latest version in one transaction, replica-safe.

    The schema lock makes replicas that start together migrate one after
    the other: the second finds the work done.
    """
    target = len(dialect.migrations)
    with session.transaction():
        session.lock(SCHEMA_LOCK)
        version = dialect.read_version(session)
        if version > target:
            raise RegistryOpenError(
                f"{where} has schema version {version}, newer than this service "
                f"supports ({target}); upgrade the service"
            )
        for step in dialect.migrations[version:]:
            for statement in step:
                session.execute(statement)
        if version < target:
            dialect.write_version(session, target)
            log.info("registry schema migrated from version %d to %d", version, target)


class SQLRegistry(abc.ABC):
    """The :class:`~actors.ports.registry.Registry` port over a :class:`Session`.

    Subclasses provide :meth:`_execute`: run a function with the session in a
    worker thread, one call at a time (under :attr:`_limiter`), translating
    the driver's errors into :class:`RegistryUnavailable`; and
    :meth:`_disconnect`, what closing needs. The open/close scaffolding is
    here: :meth:`_serving` is the body of each ``open()``, and a call after
    the close raises :class:`RegistryClosedError`.

    :attr:`available` is the outcome of the last write (or check): a read
    that succeeds says nothing about whether the registry can be written
    (a read-only file serves reads). While it is false,
    :meth:`_keep_checking` tries a real write every :data:`CHECK_INTERVAL`
    seconds, so readiness comes back without waiting for traffic that an
    unready replica does not get.
    """

    def __init__(self, dialect: Dialect, label: str) -> None:
        self._dialect = dialect
        self._available = False
        #: What messages call the registry (a file, or a server; never a password).
        self._label = label
        #: One connection, one call at a time: calls run in the order they were issued.
        self._limiter = trio.CapacityLimiter(1)
        self._open = True

    @property
    def available(self) -> bool:
        """``False`` after a failed call (or while not connected) until a write succeeds."""
        return self._available

    async def check(self) -> None:
        """Update :attr:`available`: a real write while unavailable, a plain query otherwise."""

        def probe(session: Session) -> None:
            if self._available:
                session.execute("SELECT 1")
                return
            with session.transaction():  # rewrite the version: a committed write
                dialect = self._dialect
                dialect.write_version(session, dialect.read_version(session))

        with contextlib.suppress(RegistryUnavailable):
            await self._run(probe)

    async def _keep_checking(self, scope: trio.CancelScope) -> None:
        """Call :meth:`check` every :data:`CHECK_INTERVAL` seconds until ``scope`` is cancelled."""
        with scope:
            while True:
                await trio.sleep(CHECK_INTERVAL)
                await self.check()

    @abc.abstractmethod
    async def _execute(self, fn: Callable[[Session], _T]) -> _T:
        """Run ``fn(session)``; raises :class:`RegistryUnavailable`."""

    @abc.abstractmethod
    def _disconnect(self) -> Callable[[], None] | None:
        """Let go of the connection; return what closes it (``None``: there is none)."""

    @contextlib.asynccontextmanager
    async def _serving(self, background: trio.CancelScope) -> AsyncIterator[None]:
        """The block of ``open()``: then the ``background`` task ends and the registry closes."""
        try:
            yield
        finally:
            background.cancel()
            await self._close()

    async def _close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._available = False
        close = self._disconnect()
        if close is not None:
            # Shielded: closing during cancellation must still wait for any
            # in-flight statement and release the connection cleanly.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(close, limiter=self._limiter)

    async def _run(self, fn: Callable[[Session], _T], *, writes: bool = True) -> _T:
        try:
            if not self._open:
                raise RegistryClosedError(f"registry {self._label} is closed")
            result = await self._execute(fn)
        except RegistryUnavailable:
            self._available = False
            raise
        if writes:
            self._available = True
        return result

    async def _locked(self, routing_key: str, fn: Callable[[Session, str], _T]) -> _T:
        """Run ``fn(session, routing_key)`` in one transaction holding the key's lock.

        Every change to a key's streams or pending deletion takes that lock,
        so replicas sharing the database serialise their decisions per key.
        """

        def run(session: Session) -> _T:
            with session.transaction():
                session.lock(routing_key)
                return fn(session, routing_key)

        return await self._run(run)

    # -- the Registry port ------------------------------------------------

    async def create(self, routing_key: str, *, owns_queue: bool) -> StreamRecord:
        """Record a new event stream (claiming a pending deletion of its key)."""
        stream_uuid = new_stream_uuid()
        created_at = time.time()

        def insert(session: Session, routing_key: str) -> StreamRecord:
            owns = _remove_pending(session, routing_key) or owns_queue
            rows = session.execute(
                "INSERT INTO streams (uuid, routing_key, owns_queue, created_at)"
                " VALUES (?, ?, ?, ?) RETURNING " + _COLUMNS,
                (stream_uuid, routing_key, owns, created_at),
            )
            return _record(rows[0])

        return await self._locked(routing_key, insert)

    async def get(self, stream_id: int) -> StreamRecord | None:
        """The record with this id, or ``None``."""

        def select(session: Session) -> StreamRecord | None:
            rows = session.execute(_SELECT + " WHERE id = ?", (stream_id,))
            return _record(rows[0]) if rows else None

        return await self._run(select, writes=False)

    async def find(self, stream_uuid: str) -> StreamRecord | None:
        """The record with this websocket uuid, or ``None``."""

        def select(session: Session) -> StreamRecord | None:
            rows = session.execute(_SELECT + " WHERE uuid = ?", (stream_uuid,))
            return _record(rows[0]) if rows else None

        return await self._run(select, writes=False)

    async def delete(self, stream_id: int) -> Deletion | None:
        """Remove the record and settle its queue in one transaction."""

        def remove(session: Session) -> Deletion | None:
            with session.transaction():
                keys = session.execute("SELECT routing_key FROM streams WHERE id = ?", (stream_id,))
                if not keys:
                    return None
                # Every change to a key's streams holds the key's lock: an heir
                # chosen below cannot be deleted by another replica meanwhile.
                session.lock(str(keys[0][0]))
                rows = session.execute(
                    "DELETE FROM streams WHERE id = ? RETURNING " + _COLUMNS, (stream_id,)
                )
                if not rows:  # deleted by another replica while we waited
                    return None
                record = _record(rows[0])
                if not record.owns_queue:
                    return Deletion(record, QueueFate())
                return Deletion(record, _release(session, record.routing_key))

        return await self._run(remove)

    async def add_pending_queue_deletion(self, routing_key: str) -> None:
        """Record that the queue of ``routing_key`` is the service's to delete."""
        await self._locked(routing_key, _add_pending)

    async def pending_queue_deletions(self) -> builtins.list[str]:
        """Routing keys whose queues still await deletion, oldest first."""

        def select(session: Session) -> builtins.list[str]:
            rows = session.execute("SELECT routing_key FROM pending_queue_deletions ORDER BY id")
            return [str(row[0]) for row in rows]

        return await self._run(select, writes=False)

    async def decide_pending_deletion(self, routing_key: str) -> QueueFate:
        """Keep the queue for a stream of the key, or confirm its deletion."""

        def decide(session: Session, routing_key: str) -> QueueFate:
            rows = session.execute(
                "SELECT 1 FROM pending_queue_deletions WHERE routing_key = ?", (routing_key,)
            )
            if not rows:
                return QueueFate()
            fate = _release(session, routing_key)
            if fate.heir is not None:
                _remove_pending(session, routing_key)
            return fate

        return await self._locked(routing_key, decide)

    async def complete_pending_deletion(self, routing_key: str) -> bool:
        """Forget the pending deletion; whether a stream of the key was recorded meanwhile."""

        def complete(session: Session, routing_key: str) -> bool:
            _remove_pending(session, routing_key)
            rows = session.execute(
                "SELECT 1 FROM streams WHERE routing_key = ? LIMIT 1", (routing_key,)
            )
            return bool(rows)

        return await self._locked(routing_key, complete)

    async def remove_pending_queue_deletion(self, routing_key: str) -> None:
        """Forget a pending deletion (the queue was never ours)."""
        await self._locked(routing_key, _remove_pending)

    async def list(self) -> builtins.list[StreamRecord]:
        """Every event stream, ordered by id."""

        def select(session: Session) -> builtins.list[StreamRecord]:
            return [_record(row) for row in session.execute(_SELECT + " ORDER BY id")]

        return await self._run(select, writes=False)
