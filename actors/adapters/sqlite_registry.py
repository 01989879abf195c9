"""The event-stream registry on SQLite: the embedded default.

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

Several processes on one host may share the file (SPEC section 7): every
write transaction is ``BEGIN IMMEDIATE`` (the write lock up front, so a
read-then-write decision cannot be invalidated by another process between
the two), and a busy database is waited for (5 s) rather than failed.

Concurrency inside a process. One connection, used from Trio worker threads
one call at a time (a ``CapacityLimiter(1)``), because:

* SQLite has one writer per database anyway; several connections would only
  add ``SQLITE_BUSY`` retries and snapshot differences between them;
* calls then execute in exactly the order the event loop issued them, so a
  ``DELETE`` that follows a ``POST`` always sees it;
* the load is tiny (API calls and start-up), so parallel reads buy nothing.

``trio.to_thread.run_sync`` is not abandoned on cancellation: a cancelled
request still lets its statement finish (or roll back) before the lock is
released, so the connection is never left mid-transaction.

Failures. A file that cannot be opened (not a database, an uncreatable
directory, a newer schema) raises :class:`RegistryOpenError` at open. Once
open, any SQLite error (read-only file or directory, disk I/O error, disk
full, a database locked past the busy timeout) raises
:class:`~actors.ports.registry.RegistryUnavailable` and makes
:attr:`SQLiteRegistry.available` false until a call succeeds.

Schema. Versioned with ``PRAGMA user_version``; :data:`DIALECT` holds one
step per version (see :func:`actors.adapters.sql_registry.migrate`). Ids come
from ``INTEGER PRIMARY KEY AUTOINCREMENT``, whose ``sqlite_sequence`` row
guarantees an id is never handed out twice, even after deleting the highest.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import trio

from actors.adapters.sql_registry import (
    Dialect,
    RegistryOpenError,
    Session,
    SQLRegistry,
    migrate,
    schema_version_1,
)
from actors.ports.registry import RegistryUnavailable

__all__ = ["DIALECT", "SCHEMA_VERSION", "SQLiteRegistry"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _SQLiteSession:
    """:class:`Session` over a connection in autocommit mode (we issue BEGIN/COMMIT)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            # SQLite may already have rolled back (e.g. on SQLITE_FULL); a second
            # ROLLBACK would raise and hide the original error.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def lock(self, key: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the database's write lock."""


def _read_version(session: Session) -> int:
    return int(session.execute("PRAGMA user_version")[0][0])


def _write_version(session: Session, version: int) -> None:
    # PRAGMA takes no bound parameters; `version` is our own int.
    session.execute(f"PRAGMA user_version = {int(version)}")


#: The schema's versions: append steps, never edit a released one.
DIALECT = Dialect(
    migrations=(
        schema_version_1(
            identity="INTEGER PRIMARY KEY AUTOINCREMENT",
            boolean="INTEGER NOT NULL CHECK (owns_queue IN (0, 1))",
            real="REAL",
        ),
    ),
    read_version=_read_version,
    write_version=_write_version,
)
SCHEMA_VERSION = len(DIALECT.migrations)


def _connect(path: Path) -> _SQLiteSession:
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
        session = _SQLiteSession(conn)
        migrate(session, DIALECT, where=f"registry {path}")
        return session
    except RegistryOpenError:
        if conn is not None:
            conn.close()
        raise
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise RegistryOpenError(f"cannot open the registry database {path}: {exc}") from exc


class SQLiteRegistry(SQLRegistry):
    """Durable event-stream records in one SQLite file.

    Use ``async with SQLiteRegistry.open(path) as registry:``; the connection
    is closed when the block exits, and later calls raise
    :class:`RegistryClosedError`.
    """

    def __init__(self, session: _SQLiteSession, path: Path) -> None:
        """Wrap an already configured connection; prefer :meth:`open`."""
        super().__init__(DIALECT, str(path))
        self._session = session
        self._path = path
        self._available = True

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: str | PathLike[str], nursery: trio.Nursery | None = None
    ) -> AsyncIterator[SQLiteRegistry]:
        """Open (creating file, parent directories and schema as needed).

        With a ``nursery``, availability is checked in it while the block
        runs (see :meth:`SQLRegistry.check`). Raises
        :class:`RegistryOpenError` with a one-line reason if the file cannot
        be created, is not a SQLite database, or is from a newer schema.
        """
        db_path = Path(path)
        session = await trio.to_thread.run_sync(_connect, db_path)
        registry = cls(session, db_path)
        checking = trio.CancelScope()
        if nursery is not None:
            nursery.start_soon(registry._keep_checking, checking)
        async with registry._serving(checking):
            yield registry

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection (for tests that inspect pragmas and transactions)."""
        return self._session.conn

    def _disconnect(self) -> Callable[[], None]:
        return self._session.conn.close

    async def _execute(self, fn: Callable[[Session], _T]) -> _T:
        """Run ``fn(session)`` in a worker thread, one call at a time."""

        def call() -> _T:
            try:
                return fn(self._session)
            except sqlite3.Error as exc:
                raise RegistryUnavailable(f"registry {self._path}: {exc}") from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)
