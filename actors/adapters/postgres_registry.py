"""The event-stream registry on PostgreSQL: one registry for replicas on any hosts.

Chosen when ``ESS_DATABASE`` is a ``postgresql://`` (or ``postgres://``) URL
(SPEC section 7). The statements and transactions are those of
:mod:`actors.adapters.sql_registry`, shared with SQLite; this module only
makes, keeps and uses the connection.

Connection. psycopg 3's blocking API in a Trio worker thread, one connection
behind a ``CapacityLimiter(1)``, as for SQLite: calls run in the order the
event loop issued them, and the load (API calls, start-up) is tiny. The
connection is in autocommit mode; each write is an explicit transaction.

Replicas. Each transaction that decides about a routing key's queue first
takes ``pg_advisory_xact_lock`` on the key (:meth:`_PostgresSession.lock`),
so replicas deciding about the same queue take turns and each sees what the
other committed (READ COMMITTED gives every statement a fresh snapshot).
Migrations take the same kind of lock on a fixed key, so replicas starting
together migrate one after the other; the version is kept in a
``schema_version`` table. Ids come from an identity column (a sequence:
unique, increasing, never handed out twice, even after a rollback).

Outages. PostgreSQL unreachable at start: the registry opens anyway, not
available, and connects in the background with backoff. A call while it is
not connected, or one that fails, raises
:class:`~actors.ports.registry.RegistryUnavailable`; a broken connection is
dropped and made again in the background, so calls work again without a
restart. While connected, the connection is checked every
:data:`~actors.adapters.sql_registry.CHECK_INTERVAL` seconds
(:meth:`SQLRegistry.check`), so ``/health/ready`` notices an outage, and its
end, even when no call is made. TCP keepalives bound how long a call can hang on a
peer that vanished.

Bad configuration. Credentials refused or an unknown database (the server
answers with a FATAL error) at start raise :class:`RegistryOpenError`: start-up
stops with one line that names the server, never the password.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

from actors.adapters.sql_registry import (
    CHECK_INTERVAL,
    Dialect,
    RegistryOpenError,
    Session,
    SQLRegistry,
    migrate,
    schema_version_1,
)
from actors.backoff import Backoff, BackoffPolicy
from actors.ports.registry import RegistryUnavailable

__all__ = ["DIALECT", "PostgresRegistry", "is_postgres_url"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


#: Bound on one statement (a lock wait included), in PostgreSQL's units.
STATEMENT_TIMEOUT = "30s"
#: Reconnection pauses while PostgreSQL is unreachable.
RECONNECT = BackoffPolicy(initial=0.5, maximum=10.0)

#: Connection parameters used unless the URL sets them.
_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "event-stream-service",
}
#: FATAL errors at connect that pass: the server is starting, stopping, full or closed for now.
_TRANSIENT = (
    "starting up",
    "shutting down",
    "in recovery",
    "too many",
    "connection slots",
    "not currently accepting",
)


def is_postgres_url(database: str) -> bool:
    """Whether ``ESS_DATABASE`` names PostgreSQL rather than a SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _PostgresSession:
    """:class:`Session` over an autocommit psycopg connection."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        # The shared SQL uses "?" placeholders and no literal "?" or "%".
        cursor = self.conn.execute(sql.replace("?", "%s"), tuple(params))
        return cursor.fetchall() if cursor.description is not None else []

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def lock(self, key: str) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))


def _read_version(session: Session) -> int:
    session.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = session.execute("SELECT version FROM schema_version")
    if not rows:
        session.execute("INSERT INTO schema_version (version) VALUES (?)", (0,))
        return 0
    return int(rows[0][0])


def _write_version(session: Session, version: int) -> None:
    session.execute("UPDATE schema_version SET version = ?", (version,))


#: The schema's versions: append steps, never edit a released one.
DIALECT = Dialect(
    migrations=(
        schema_version_1(
            identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            boolean="BOOLEAN NOT NULL",
            real="DOUBLE PRECISION",
        ),
    ),
    read_version=_read_version,
    write_version=_write_version,
)


class PostgresRegistry(SQLRegistry):
    """Durable event-stream records in a PostgreSQL database.

    Use ``async with PostgresRegistry.open(url, nursery) as registry:``; the
    background connection task runs in ``nursery`` (which must outlive the
    block). Calls after the block raise :class:`RegistryClosedError`.
    """

    def __init__(self, url: str, policy: BackoffPolicy = RECONNECT) -> None:
        """Prefer :meth:`open`; this connects nothing yet."""
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise RegistryOpenError(f"not a valid PostgreSQL URL: {_one_line(exc)}") from exc
        host = params.get("host") or "localhost"
        self._where = f"PostgreSQL {host}:{params.get('port') or 5432}/{params.get('dbname', '')}"
        super().__init__(DIALECT, self._where)
        self._params: dict[str, Any] = {**_DEFAULTS, **params}
        self._policy = policy
        self._session: _PostgresSession | None = None
        self._lost = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str, nursery: trio.Nursery, *, policy: BackoffPolicy = RECONNECT
    ) -> AsyncIterator[PostgresRegistry]:
        """Connect (or start connecting in the background) and migrate the schema.

        Raises :class:`RegistryOpenError` for a bad URL, refused credentials,
        an unknown database or a newer schema; an unreachable server is not
        an error (the registry is then not :attr:`available`).
        """
        registry = cls(url, policy)
        connecting = trio.CancelScope()
        await nursery.start(registry._keep_connected, connecting)
        async with registry._serving(connecting):
            yield registry

    @property
    def where(self) -> str:
        """The server and database, for messages (never the password)."""
        return self._where

    # -- connection handling ---------------------------------------------

    async def _keep_connected(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, then watch the connection and make it again when it breaks."""
        backoff = Backoff(self._policy)
        started = False
        with scope:
            while True:
                try:
                    session = await trio.to_thread.run_sync(self._connect)
                except RegistryUnavailable as error:
                    if backoff.attempts == 0:
                        log.warning("%s; connecting in the background", error)
                    if not started:
                        started = True
                        task_status.started()
                    await backoff.sleep()
                    continue
                except RegistryOpenError as error:
                    if not started:
                        raise
                    log.error("%s; retrying", error)  # e.g. a password changed meanwhile
                    await backoff.sleep()
                    continue
                self._session = session
                self._available = True
                backoff.reset()
                log.info("registry connected to %s", self._where)
                if not started:
                    started = True
                    task_status.started()
                await self._watch()

    async def _watch(self) -> None:
        """Return once the connection is lost (a failed call, or a failed check)."""
        while not self._lost.is_set():
            with trio.move_on_after(CHECK_INTERVAL):
                await self._lost.wait()
            if not self._lost.is_set():
                await self.check()
        self._lost = trio.Event()

    def _connect(self) -> _PostgresSession:
        """Open and migrate a connection (in a worker thread)."""
        try:
            conn = psycopg.connect(autocommit=True, **self._params)
        except psycopg.OperationalError as exc:
            reason = _one_line(exc)
            if "FATAL:" in reason and not any(word in reason for word in _TRANSIENT):
                raise RegistryOpenError(f"{self._where} refused us: {reason}") from exc
            raise RegistryUnavailable(f"{self._where} is not reachable: {reason}") from exc
        except psycopg.Error as exc:
            raise RegistryOpenError(f"cannot connect to {self._where}: {_one_line(exc)}") from exc
        session = _PostgresSession(conn)
        try:
            # A call never hangs for long on a lock or a stuck server: it
            # fails (RegistryUnavailable) and the caller answers 503.
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (STATEMENT_TIMEOUT,))
            migrate(session, DIALECT, where=f"registry {self._where}")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.OperationalError):
                raise RegistryUnavailable(f"{self._where}: {_one_line(exc)}") from exc
            if isinstance(exc, psycopg.Error):
                raise RegistryOpenError(
                    f"cannot create the schema in {self._where}: {_one_line(exc)}"
                ) from exc
            raise
        return session

    def _disconnect(self) -> Callable[[], None] | None:
        session, self._session = self._session, None
        return session.conn.close if session is not None else None

    async def _execute(self, fn: Callable[[Session], _T]) -> _T:
        """Run ``fn(session)`` in a worker thread, one call at a time."""
        session = self._session
        if session is None:
            raise RegistryUnavailable(f"{self._where} is not connected")

        def call() -> _T:
            try:
                return fn(session)
            except psycopg.Error as exc:
                raise RegistryUnavailable(f"{self._where}: {_one_line(exc)}") from exc

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except RegistryUnavailable:
            if (session.conn.broken or session.conn.closed) and self._session is session:
                self._session = None
                session.conn.close()  # already broken: nothing to wait for
                self._lost.set()
            raise
