"""The SQLite registry against real files: durability, pragmas, open errors, crashes.

The behaviour every registry shares is in tests/contract/test_registry_contract.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from actors.adapters import sql_registry
from actors.adapters.sql_registry import RegistryClosedError, RegistryOpenError
from actors.adapters.sqlite_registry import SCHEMA_VERSION, SQLiteRegistry
from actors.ports.registry import Registry, RegistryUnavailable, StreamRecord

REPO_ROOT = Path(__file__).resolve().parents[3]


def _registry_type_check(registry: SQLiteRegistry) -> Registry:
    return registry  # mypy proves SQLiteRegistry satisfies the port


async def test_unwritable_database_raises_unavailable_until_writable(tmp_path: Path) -> None:
    # Root ignores file modes, so the file is made read-only the way SQLite
    # itself reports it (SQLITE_READONLY), as for a read-only file or mount.
    async with SQLiteRegistry.open(tmp_path / "r.db") as registry:
        kept = await registry.create("k", owns_queue=True)
        assert registry.available
        registry.connection.execute("PRAGMA query_only = ON")
        with pytest.raises(RegistryUnavailable, match="readonly"):
            await registry.create("k2", owns_queue=False)
        assert not registry.available
        with pytest.raises(RegistryUnavailable):
            await registry.delete(kept.id)
        assert await registry.list() == [kept]  # reads still work...
        assert not registry.available  # ...but say nothing about writing
        await registry.check()
        assert not registry.available
        registry.connection.execute("PRAGMA query_only = OFF")
        await registry.check()  # a real write
        assert registry.available
        assert (await registry.create("k2", owns_queue=False)).id == 2
        assert not registry.connection.in_transaction


async def test_availability_comes_back_without_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unready replica gets no API traffic: the registry must notice by itself.
    monkeypatch.setattr(sql_registry, "CHECK_INTERVAL", 0.01)
    async with trio.open_nursery() as nursery:
        async with SQLiteRegistry.open(tmp_path / "r.db", nursery) as registry:
            registry.connection.execute("PRAGMA query_only = ON")
            with pytest.raises(RegistryUnavailable):
                await registry.create("k", owns_queue=False)
            registry.connection.execute("PRAGMA query_only = OFF")
            with trio.fail_after(30):
                while not registry.available:
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_two_processes_share_one_file(tmp_path: Path) -> None:
    # Two connections, as two processes on one host have: ids stay unique and
    # each sees the other's records (WAL, BEGIN IMMEDIATE, busy timeout).
    path = tmp_path / "r.db"
    made: list[StreamRecord] = []
    async with SQLiteRegistry.open(path) as one, SQLiteRegistry.open(path) as two:

        async def make(registry: SQLiteRegistry, i: int) -> None:
            made.append(await registry.create(f"k{i % 2}", owns_queue=False))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(make, one if i % 2 else two, i)
        assert len({r.id for r in made}) == 20
        assert await one.list() == await two.list() == sorted(made, key=lambda r: r.id)


async def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SQLiteRegistry.open(path) as registry:
        conn = registry.connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryOpenError, match="newer than this service supports"):
        async with SQLiteRegistry.open(path):
            pass


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryOpenError) as caught:
        async with SQLiteRegistry.open(path):
            pass
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_directory_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryOpenError, match="cannot open the registry database"):
        async with SQLiteRegistry.open(tmp_path):
            pass


async def test_uncreatable_parent_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RegistryOpenError, match="cannot create the registry directory"):
        async with SQLiteRegistry.open(blocker / "sub" / "r.db"):
            pass


async def test_calls_after_close_raise(tmp_path: Path) -> None:
    async with SQLiteRegistry.open(tmp_path / "r.db") as registry:
        pass
    with pytest.raises(RegistryClosedError):
        await registry.list()


async def test_cancelled_caller_leaves_registry_usable(tmp_path: Path) -> None:
    async with SQLiteRegistry.open(tmp_path / "r.db") as registry:
        with trio.move_on_after(0):
            await registry.create("k", owns_queue=False)
        # Whether or not the create ran, the connection is not stuck mid-transaction.
        await registry.create("k2", owns_queue=False)
        assert not registry.connection.in_transaction


CHILD = textwrap.dedent(
    """
    import sys, time, trio
    from actors.adapters.sqlite_registry import SQLiteRegistry

    async def main(path):
        async with SQLiteRegistry.open(path) as registry:
            record = await registry.create("kill-9 key", owns_queue=True)
            print(record.id, record.uuid, flush=True)
            time.sleep(60)  # blocks the loop: nothing after this point can help

    trio.run(main, sys.argv[1])
    """
)


def test_acknowledged_create_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        child.send_signal(signal.SIGKILL)  # no close(), no checkpoint, no atexit
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    stream_id, stream_uuid = line.split()

    async def reopen() -> StreamRecord | None:
        async with SQLiteRegistry.open(path) as registry:
            return await registry.get(int(stream_id))

    record = trio.run(reopen)
    assert record is not None
    assert record.uuid == stream_uuid
    assert record.routing_key == "kill-9 key"
    assert record.owns_queue is True
