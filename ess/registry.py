"""The event-stream registry on SQLite: :class:`actors.ports.registry.Registry` for real.

Durability. An acknowledged ``POST`` must survive ``kill -9`` of the process
*and* a power loss of the machine (SPEC section 3). We use WAL journaling with
``synchronous=FULL``: every commit fsyncs the write-ahead log before
``create()`` returns, so a record the API has answered 201 for is on stable
storage. (``synchronous=NORMAL`` in WAL mode survives a process crash, since
the OS still holds the page cache, but may lose the last commits on power
loss.) The price is one fsync per create/delete/ownership change: those are
rare, operator-paced calls, never on the event path. ``fullfsync`` is also on
so macOS really flushes to the platter (it is ignored elsewhere). WAL keeps
readers (an operator's ``sqlite3`` shell, a backup) from blocking us.

Concurrency. One connection, used from Trio worker threads one call at a
time (a ``CapacityLimiter(1)``), because:

* SQLite has one writer per database anyway; several connections would only
  add ``SQLITE_BUSY`` retries and snapshot differences between them;
* calls then execute in exactly the order the event loop issued them, so a
  ``DELETE`` that follows a ``POST`` always sees it;
* the load is tiny (API calls and start-up), so parallel reads buy nothing.

``trio.to_thread.run_sync`` is not abandoned on cancellation: a cancelled
request still lets its statement finish (or roll back) before the lock is
released, so the connection is never left mid-transaction.

Safety. Values are always bound parameters, never formatted into SQL (the
upstream's SQL injection is one of the defects SPEC section 3 fixes).

Schema. Versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` holds one
step per version, applied in order in its own transaction at open. Ids come
from ``INTEGER PRIMARY KEY AUTOINCREMENT``, whose ``sqlite_sequence`` row
guarantees an id is never handed out twice, even after deleting the highest.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import trio

from actors.ports.registry import StreamRecord, new_stream_uuid
from ess.errors import StartupError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "RegistryClosedError",
    "RegistryError",
    "RegistryOpenError",
    "SQLiteRegistry",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Each entry migrates the schema from version ``index`` to ``index + 1``.
#: Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE streams (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            uuid        TEXT    NOT NULL UNIQUE,
            routing_key TEXT    NOT NULL,
            owns_queue  INTEGER NOT NULL CHECK (owns_queue IN (0, 1)),
            created_at  REAL    NOT NULL
        )
        """,
        "CREATE INDEX streams_routing_key ON streams (routing_key)",
        """
        CREATE TABLE pending_queue_deletions (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            routing_key TEXT    NOT NULL UNIQUE,
            added_at    REAL    NOT NULL
        )
        """,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

#: Constant SQL text only; values are always bound with ``?``.
_SELECT = "SELECT id, uuid, routing_key, owns_queue, created_at FROM streams"


class RegistryError(Exception):
    """The registry database failed; the message says what and where."""


class RegistryOpenError(RegistryError, StartupError):
    """The registry could not be opened at start-up (one line for the operator)."""


class RegistryClosedError(RegistryError):
    """A call arrived after the registry was closed."""


def _record(row: tuple[Any, ...]) -> StreamRecord:
    return StreamRecord(
        id=int(row[0]),
        uuid=str(row[1]),
        routing_key=str(row[2]),
        owns_queue=bool(row[3]),
        created_at=float(row[4]),
    )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """An explicit write transaction (the connection is in autocommit mode).

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a read-then-write
    sequence cannot be invalidated by another process between the two.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite may already have rolled back (e.g. on SQLITE_FULL); a second
        # ROLLBACK would raise and hide the original error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RegistryOpenError(
            f"registry {path} has schema version {version}, newer than this "
            f"service supports ({SCHEMA_VERSION}); upgrade the service"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with _transaction(conn):
            for statement in MIGRATIONS[target - 1]:
                conn.execute(statement)
            # PRAGMA takes no bound parameters; `target` is our own int.
            conn.execute(f"PRAGMA user_version = {int(target)}")
        log.info("registry schema migrated to version %d", target, extra={"path": str(path)})


def _connect(path: Path) -> sqlite3.Connection:
    """Open, configure and migrate the database file (runs in a worker thread)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryOpenError(
            f"cannot create the registry directory {path.parent}: {exc.strerror or exc}"
        ) from exc
    conn: sqlite3.Connection | None = None
    try:
        # isolation_level=None: autocommit; we issue BEGIN/COMMIT ourselves so
        # each statement's durability is explicit rather than implicit.
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            # e.g. some network file systems; still durable, just less concurrent.
            log.warning("registry %s: WAL unavailable, journal mode is %s", path, mode)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA fullfsync = ON")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
        return conn
    except RegistryError:
        if conn is not None:
            conn.close()
        raise
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise RegistryOpenError(f"cannot open the registry database {path}: {exc}") from exc


class SQLiteRegistry:
    """Durable event-stream records in one SQLite file.

    Use ``async with SQLiteRegistry.open(path) as registry:``; the connection
    is closed when the block exits, and later calls raise
    :class:`RegistryClosedError`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Wrap an already configured connection; prefer :meth:`open`."""
        self._conn = conn
        self._path = path
        self._limiter = trio.CapacityLimiter(1)
        self._open = True

    @classmethod
    @asynccontextmanager
    async def open(cls, path: str | PathLike[str]) -> AsyncIterator[SQLiteRegistry]:
        """Open (creating file, parent directories and schema as needed).

        Raises :class:`RegistryOpenError` with a one-line reason if the file
        cannot be created, is not a SQLite database, or is from a newer schema.
        """
        db_path = Path(path)
        conn = await trio.to_thread.run_sync(_connect, db_path)
        registry = cls(conn, db_path)
        try:
            yield registry
        finally:
            await registry._close()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def is_open(self) -> bool:
        """Whether calls can be served (``/health/ready`` reports it)."""
        return self._open

    async def _close(self) -> None:
        if not self._open:
            return
        self._open = False
        # Shielded: closing during cancellation must still wait for any
        # in-flight statement and release the file cleanly.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._conn.close, limiter=self._limiter)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` in a worker thread, one call at a time."""
        if not self._open:
            raise RegistryClosedError(f"registry {self._path} is closed")

        def call() -> _T:
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise RegistryError(f"registry {self._path}: {exc}") from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    # -- the Registry protocol ------------------------------------------------

    async def create(self, routing_key: str, *, owns_queue: bool) -> StreamRecord:
        """Record a new event stream; durable (fsynced) when this returns."""
        stream_uuid = new_stream_uuid()
        created_at = time.time()

        def insert(conn: sqlite3.Connection) -> StreamRecord:
            cursor = conn.execute(
                "INSERT INTO streams (uuid, routing_key, owns_queue, created_at)"
                " VALUES (?, ?, ?, ?)",
                (stream_uuid, routing_key, int(owns_queue), created_at),
            )
            assert cursor.lastrowid is not None
            return StreamRecord(
                id=cursor.lastrowid,
                uuid=stream_uuid,
                routing_key=routing_key,
                owns_queue=owns_queue,
                created_at=created_at,
            )

        return await self._run(insert)

    async def get(self, stream_id: int) -> StreamRecord | None:
        """The record with this id, or ``None``."""

        def select(conn: sqlite3.Connection) -> StreamRecord | None:
            row = conn.execute(_SELECT + " WHERE id = ?", (stream_id,)).fetchone()
            return None if row is None else _record(row)

        return await self._run(select)

    async def get_by_uuid(self, stream_uuid: str) -> StreamRecord | None:
        """The record with this websocket uuid, or ``None`` (for tools)."""

        def select(conn: sqlite3.Connection) -> StreamRecord | None:
            row = conn.execute(_SELECT + " WHERE uuid = ?", (stream_uuid,)).fetchone()
            return None if row is None else _record(row)

        return await self._run(select)

    async def delete(self, stream_id: int) -> StreamRecord | None:
        """Remove the record; returns what was removed (``None`` if unknown)."""

        def remove(conn: sqlite3.Connection) -> StreamRecord | None:
            with _transaction(conn):
                row = conn.execute(_SELECT + " WHERE id = ?", (stream_id,)).fetchone()
                if row is None:
                    return None
                conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,))
            return _record(row)

        return await self._run(remove)

    async def set_owns_queue(self, stream_id: int, owns_queue: bool) -> None:
        """Hand queue ownership to another stream sharing the routing key."""

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE streams SET owns_queue = ? WHERE id = ?", (int(owns_queue), stream_id)
            )

        await self._run(update)

    async def add_pending_queue_deletion(self, routing_key: str) -> None:
        """Remember to delete an owned queue the broker could not delete yet."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO pending_queue_deletions (routing_key, added_at)"
                " VALUES (?, ?)",
                (routing_key, time.time()),
            )

        await self._run(insert)

    async def pending_queue_deletions(self) -> list[str]:
        """Routing keys whose queues still await deletion, oldest first."""

        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT routing_key FROM pending_queue_deletions ORDER BY id"
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._run(select)

    async def remove_pending_queue_deletion(self, routing_key: str) -> None:
        """Forget a pending deletion (done, or the queue is in use again)."""

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM pending_queue_deletions WHERE routing_key = ?", (routing_key,)
            )

        await self._run(delete)

    async def list(self) -> list[StreamRecord]:
        """Every event stream, ordered by id.

        Defined last in the class: once ``list`` is bound here, the name
        ``list`` in later annotations would mean this method (mypy).
        """

        def select(conn: sqlite3.Connection) -> list[StreamRecord]:
            rows = conn.execute(_SELECT + " ORDER BY id").fetchall()
            return [_record(row) for row in rows]

        return await self._run(select)
