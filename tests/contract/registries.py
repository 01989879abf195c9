"""The registry adapters the contract suite runs against, each on fresh storage.

``registry_backend`` is parametrised over the memory fake, SQLite (a file in
the test's temporary directory) and PostgreSQL (127.0.0.1:5432, trust auth:
one database per test session, created here and dropped afterwards, and one
schema per test in it). A backend can be opened several times on the same
storage (a restart) and can be taken away and given back (:meth:`go_away`,
:meth:`come_back`) the way its real failure looks to the adapter.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import psycopg
import pytest
import trio

from actors.adapters.memory_registry import MemoryRegistry
from actors.adapters.postgres_registry import PostgresRegistry
from actors.adapters.sqlite_registry import SQLiteRegistry
from actors.backoff import BackoffPolicy
from actors.ports.registry import Registry, RegistryUnavailable, StreamRecord
from tests.support.net import reachable

POSTGRES_ADMIN = os.environ.get(
    "ESS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: Quick reconnection, so the tests that take PostgreSQL away do not wait long.
FAST_RECONNECT = BackoffPolicy(initial=0.05, maximum=0.5)
WAIT = 60.0


def admin() -> psycopg.Connection[tuple[object, ...]]:
    """A connection to the machine's ``test`` database, for setting up and breaking."""
    return psycopg.connect(POSTGRES_ADMIN, autocommit=True)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of our own for this session (dropped at the end); its name."""
    if not reachable(5432):
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (run `make test`)")
    name = f"ess_contract_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_url(database: str, schema: str) -> str:
    return f"postgresql://postgres@127.0.0.1:5432/{database}?options=-csearch_path%3D{schema}"


class Backend(Protocol):
    """One adapter on storage of its own; see the module documentation."""

    def open(self) -> AbstractAsyncContextManager[Registry]:
        """The registry on this storage (again: a restart); several may be open at once."""
        ...

    def go_away(self, registry: Registry) -> None:
        """Make the backend unusable: the next write must fail."""
        ...

    def come_back(self) -> None:
        """Undo :meth:`go_away`."""
        ...


class MemoryBackend:
    def __init__(self) -> None:
        self.registry = MemoryRegistry()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Registry]:
        yield self.registry

    def go_away(self, registry: Registry) -> None:
        self.registry.set_available(False)

    def come_back(self) -> None:
        self.registry.set_available(True)


class SQLiteBackend:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._broken: SQLiteRegistry | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Registry]:
        async with SQLiteRegistry.open(self.path) as registry:
            yield registry

    def go_away(self, registry: Registry) -> None:
        # As SQLite reports a read-only file (root ignores file modes).
        assert isinstance(registry, SQLiteRegistry)
        registry.connection.execute("PRAGMA query_only = ON")
        self._broken = registry

    def come_back(self) -> None:
        assert self._broken is not None
        self._broken.connection.execute("PRAGMA query_only = OFF")


class PostgresBackend:
    def __init__(self, database: str) -> None:
        self.database = database
        self.schema = f"t_{uuid.uuid4().hex[:12]}"
        with admin() as conn:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        with psycopg.connect(postgres_url(database, "public"), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        self.url = postgres_url(database, self.schema)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Registry]:
        async with trio.open_nursery() as nursery:
            async with PostgresRegistry.open(self.url, nursery, policy=FAST_RECONNECT) as registry:
                yield registry
            nursery.cancel_scope.cancel()

    def go_away(self, registry: Registry) -> None:
        # Our own database only: refuse new connections, end the existing ones.
        with admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            )

    def come_back(self) -> None:
        with admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def registry_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each contract test runs once per registry adapter."""
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path / "registry.db")
    return PostgresBackend(request.getfixturevalue("postgres_database"))


async def wait_available(registry: Registry) -> None:
    """Until the adapter reports itself available again (it reconnects on its own)."""
    with trio.fail_after(WAIT):
        while not registry.available:
            await trio.sleep(0.05)


async def until_usable(registry: Registry) -> list[StreamRecord]:
    """List the records as soon as a call succeeds again (PostgreSQL reconnects by itself)."""
    with trio.fail_after(WAIT):
        while True:
            try:
                return await registry.list()
            except RegistryUnavailable:
                await trio.sleep(0.05)
