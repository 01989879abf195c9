"""One registry contract, run against every adapter: memory, SQLite and PostgreSQL.

The same tests prove that the memory fake the actor tests use behaves like
the real registries, and that SQLite and PostgreSQL behave alike (issue 10
point 3, issue 11 point 1): ids, order, uuids, verbatim keys, queue
ownership and its pending deletions, and what a caller sees when the
backend goes away. Adapter-specific behaviour is tested beside each adapter
(tests/unit/ess/test_registry.py for SQLite) and at the end of this file
(start-up of the persistent ones).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import trio

from actors.adapters.postgres_registry import PostgresRegistry
from actors.backoff import BackoffPolicy
from actors.ports.registry import (
    Deletion,
    QueueFate,
    Registry,
    RegistryUnavailable,
    StreamRecord,
)
from ess.errors import StartupError
from ess.registry_factory import open_registry

from . import registries
from .registries import (
    Backend,
    PostgresBackend,
    admin,
    postgres_url,
    until_usable,
    wait_available,
)

# The fixtures live in tests/contract/registries.py (conftest.py is the brokers').
registry_backend = registries.registry_backend
postgres_database = registries.postgres_database


async def test_create_get_list_delete(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        assert registry.available
        assert await registry.list() == []
        first = await registry.create("key.a", owns_queue=True)
        second = await registry.create("key.b", owns_queue=False)
        shared = await registry.create("key.a", owns_queue=False)  # keys may be shared
        assert first.id < second.id < shared.id
        assert first.routing_key == "key.a" and first.owns_queue is True
        assert second.owns_queue is False and shared.owns_queue is False
        assert await registry.get(first.id) == first
        assert await registry.get(second.id) == second
        assert await registry.get(999_999) is None
        assert await registry.list() == [first, second, shared]

        assert await registry.delete(second.id) == Deletion(second, QueueFate())
        assert await registry.delete(second.id) is None
        assert await registry.get(second.id) is None
        assert await registry.list() == [first, shared]


async def test_ids_increase_and_are_never_reused(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        ids = [(await registry.create("k", owns_queue=False)).id for _ in range(3)]
        assert ids == sorted(ids) and len(set(ids)) == 3
        await registry.delete(ids[2])  # the highest
        fourth = (await registry.create("k", owns_queue=False)).id
        assert fourth > ids[2]
        await registry.delete(fourth)  # the last one again
        await registry.delete(ids[1])
    async with registry_backend.open() as registry:  # nor after a restart
        fifth = (await registry.create("k", owns_queue=False)).id
        assert fifth > fourth
        assert [r.id for r in await registry.list()] == [ids[0], fifth]


async def test_uuids_are_unique_v4(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        records = [await registry.create("k", owns_queue=False) for _ in range(50)]
    uuids = {r.uuid for r in records}
    assert len(uuids) == 50
    assert all(len(u) == 36 and u[14] == "4" for u in uuids)


async def test_list_is_ordered_by_id(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        made = [await registry.create(f"k{i % 3}", owns_queue=i % 2 == 0) for i in range(10)]
        for record in made[::3]:
            await registry.delete(record.id)
        listed = await registry.list()
    assert [r.id for r in listed] == sorted(r.id for r in made if r not in made[::3])


async def test_records_survive_a_restart(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        created = [await registry.create(f"k{i}", owns_queue=i % 2 == 0) for i in range(5)]
        await registry.add_pending_queue_deletion("gone")
    async with registry_backend.open() as registry:
        assert await registry.list() == created
        assert await registry.pending_queue_deletions() == ["gone"]


@pytest.mark.parametrize(
    "routing_key",
    [
        "'; DROP TABLE streams; --",
        "Robert'); DROP TABLE streams;--",
        "\"double\" and 'single' quotes",
        "back\\slash % _ wildcard ? :name @p $1 %s %(x)s",
        "unicode: évènement 事件 🚀",
        "é" * 127 + "x",  # 255 UTF-8 bytes
        "x" * 255,
        "with spaces and.dots#and*stars",
    ],
)
async def test_routing_keys_stored_verbatim(registry_backend: Backend, routing_key: str) -> None:
    async with registry_backend.open() as registry:
        record = await registry.create(routing_key, owns_queue=False)
        await registry.add_pending_queue_deletion(routing_key)
    async with registry_backend.open() as registry:
        assert await registry.list() == [record]
        assert await registry.pending_queue_deletions() == [routing_key]
        heir = StreamRecord(record.id, record.uuid, routing_key, True, record.created_at)
        assert await registry.decide_pending_deletion(routing_key) == QueueFate(heir=heir)
        assert await registry.pending_queue_deletions() == []
        assert await registry.delete(record.id) == Deletion(heir, QueueFate(delete=True))
        assert await registry.list() == []
        assert await registry.pending_queue_deletions() == [routing_key]


async def test_deleting_the_owner_hands_the_queue_to_the_oldest_stream(
    registry_backend: Backend,
) -> None:
    async with registry_backend.open() as registry:
        owner = await registry.create("shared", owns_queue=True)
        second = await registry.create("shared", owns_queue=False)
        third = await registry.create("shared", owns_queue=False)
        await registry.create("other", owns_queue=True)
        deletion = await registry.delete(owner.id)
        heir = StreamRecord(second.id, second.uuid, "shared", True, second.created_at)
        assert deletion == Deletion(owner, QueueFate(heir=heir))
        assert await registry.get(second.id) == heir
        assert await registry.get(third.id) == third  # not the owner
        assert await registry.delete(third.id) == Deletion(third, QueueFate())
        assert await registry.pending_queue_deletions() == []
        assert await registry.delete(second.id) == Deletion(heir, QueueFate(delete=True))
        assert await registry.pending_queue_deletions() == ["shared"]


async def test_deleting_a_stream_that_does_not_own_its_queue_leaves_it(
    registry_backend: Backend,
) -> None:
    async with registry_backend.open() as registry:
        record = await registry.create("as-made", owns_queue=False)
        assert await registry.delete(record.id) == Deletion(record, QueueFate())
        assert await registry.pending_queue_deletions() == []


async def test_pending_deletions_are_listed_oldest_first_and_idempotent(
    registry_backend: Backend,
) -> None:
    async with registry_backend.open() as registry:
        assert await registry.pending_queue_deletions() == []
        await registry.add_pending_queue_deletion("b")
        await registry.add_pending_queue_deletion("a")
        await registry.add_pending_queue_deletion("b")
        assert await registry.pending_queue_deletions() == ["b", "a"]
        await registry.remove_pending_queue_deletion("b")
        await registry.remove_pending_queue_deletion("unknown")  # no-op
        assert await registry.pending_queue_deletions() == ["a"]


@pytest.mark.parametrize("owns_queue", [True, False])
async def test_create_claims_the_pending_deletion_of_its_key(
    registry_backend: Backend, owns_queue: bool
) -> None:
    async with registry_backend.open() as registry:
        await registry.add_pending_queue_deletion("rk")  # the intent, or a queue left over
        await registry.add_pending_queue_deletion("other")
        record = await registry.create("rk", owns_queue=owns_queue)
        assert record.owns_queue  # the queue is the service's: this stream keeps it
        assert await registry.pending_queue_deletions() == ["other"]
        assert await registry.get(record.id) == record


async def test_decide_pending_deletion(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        assert await registry.decide_pending_deletion("none") == QueueFate()
        await registry.add_pending_queue_deletion("rk")
        assert await registry.decide_pending_deletion("rk") == QueueFate(delete=True)
        assert await registry.pending_queue_deletions() == ["rk"]  # until the broker did it
        await registry.remove_pending_queue_deletion("rk")
        assert await registry.decide_pending_deletion("rk") == QueueFate()


async def test_decide_keeps_the_queue_of_a_stream_of_the_key(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        # A stream recorded while a pending deletion appeared (another replica).
        stream = await registry.create("rk", owns_queue=False)
        await registry.add_pending_queue_deletion("rk")
        fate = await registry.decide_pending_deletion("rk")
        heir = StreamRecord(stream.id, stream.uuid, "rk", True, stream.created_at)
        assert fate == QueueFate(heir=heir)
        assert await registry.pending_queue_deletions() == []
        assert await registry.get(stream.id) == heir


async def test_complete_pending_deletion_says_whether_a_stream_came_meanwhile(
    registry_backend: Backend,
) -> None:
    async with registry_backend.open() as registry:
        await registry.add_pending_queue_deletion("rk")
        assert await registry.complete_pending_deletion("rk") is False
        assert await registry.pending_queue_deletions() == []
        await registry.add_pending_queue_deletion("rk")
        assert await registry.decide_pending_deletion("rk") == QueueFate(delete=True)
        newcomer = await registry.create("rk", owns_queue=False)  # while the broker deletes
        assert newcomer.owns_queue
        assert await registry.complete_pending_deletion("rk") is True
        assert await registry.pending_queue_deletions() == []


@pytest.mark.parametrize("round_", range(4))
async def test_the_last_deletion_on_any_replica_releases_the_queue_exactly_once(
    registry_backend: Backend, round_: int
) -> None:
    # Two replicas (connections) on one registry delete every stream of a key at once.
    async with registry_backend.open() as one, registry_backend.open() as two:
        records = [await one.create("k", owns_queue=i == 0) for i in range(12)]
        fates: list[QueueFate] = []

        async def delete(registry: Registry, stream_id: int) -> None:
            deletion = await registry.delete(stream_id)
            assert deletion is not None
            fates.append(deletion.queue)
            if deletion.queue.delete:  # decided when no stream of the key was left
                assert await registry.list() == []

        async with trio.open_nursery() as nursery:
            for i, record in enumerate(records):
                nursery.start_soon(delete, (one, two)[(i + round_) % 2], record.id)
        assert [fate.delete for fate in fates].count(True) == 1
        assert await two.pending_queue_deletions() == ["k"]


async def test_concurrent_calls_all_land(registry_backend: Backend) -> None:
    results: list[StreamRecord] = []
    async with registry_backend.open() as registry:

        async def make(i: int) -> None:
            results.append(await registry.create(f"k{i % 4}", owns_queue=i < 4))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(make, i)
        assert len({r.id for r in results}) == 20
        assert sorted(await registry.list(), key=lambda r: r.id) == sorted(
            results, key=lambda r: r.id
        )


async def test_cancelled_caller_leaves_the_registry_usable(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        with trio.move_on_after(0):
            await registry.create("k", owns_queue=False)
        # Whether or not that create ran, the next calls work.
        after = await registry.create("k2", owns_queue=False)
        assert (await registry.list())[-1] == after


async def test_backend_going_away_raises_unavailable_until_it_is_back(
    registry_backend: Backend,
) -> None:
    async with registry_backend.open() as registry:
        kept = await registry.create("k", owns_queue=True)
        registry_backend.go_away(registry)
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.create("k", owns_queue=False)
        assert "\n" not in str(caught.value)
        assert not registry.available
        with pytest.raises(RegistryUnavailable):
            await registry.delete(kept.id)
        registry_backend.come_back()
        assert [r.id for r in await until_usable(registry)] == [kept.id]
        assert (await registry.create("k", owns_queue=False)).id > kept.id
        assert registry.available


# -- start-up of the persistent registries (through the factory) -------------


async def test_unreachable_postgres_starts_unavailable_and_connects_later(
    postgres_database: str,
) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
    async with trio.open_nursery() as nursery:
        policy = BackoffPolicy(initial=0.05, maximum=0.2)
        async with PostgresRegistry.open(url, nursery, policy=policy) as registry:
            assert not registry.available
            with pytest.raises(RegistryUnavailable, match="not connected"):
                await registry.list()
        nursery.cancel_scope.cancel()


async def test_postgres_connects_in_the_background_once_it_accepts(
    postgres_database: str,
) -> None:
    backend_url = postgres_url(postgres_database, "public")
    with admin() as conn:
        conn.execute(f'ALTER DATABASE "{postgres_database}" ALLOW_CONNECTIONS false')
    try:
        async with trio.open_nursery() as nursery:
            policy = BackoffPolicy(initial=0.05, maximum=0.2)
            async with PostgresRegistry.open(backend_url, nursery, policy=policy) as registry:
                assert not registry.available
                with admin() as conn:
                    conn.execute(f'ALTER DATABASE "{postgres_database}" ALLOW_CONNECTIONS true')
                await wait_available(registry)
                assert isinstance(await registry.list(), list)
            nursery.cancel_scope.cancel()
    finally:
        with admin() as conn:
            conn.execute(f'ALTER DATABASE "{postgres_database}" ALLOW_CONNECTIONS true')


@pytest.mark.parametrize(
    ("database", "reason"),
    [
        ("postgresql://postgres:s3cret-pw@127.0.0.1:5432/no_such_db_for_ess", "does not exist"),
        ("postgres://no_such_role:s3cret-pw@127.0.0.1:5432/test", "does not exist"),
        ("corrupt.db", "file is not a database"),
    ],
)
async def test_a_registry_that_cannot_be_opened_stops_start_up_with_one_line(
    database: str, reason: str, tmp_path: Path, postgres_database: str
) -> None:
    if not database.startswith("postgres"):
        (tmp_path / database).write_bytes(b"this is not sqlite" * 100)
        database = str(tmp_path / database)
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartupError) as caught:
            async with open_registry(database, nursery):
                pass
    message = str(caught.value)
    assert message.startswith("ESS_DATABASE: ")
    assert reason in message
    assert "s3cret-pw" not in message and "\n" not in message


async def test_replicas_starting_together_migrate_once(postgres_database: str) -> None:
    url = PostgresBackend(postgres_database).url
    async with trio.open_nursery() as nursery:
        opened: list[object] = []

        async def replica() -> None:
            async with PostgresRegistry.open(url, nursery) as registry:
                assert registry.available
                opened.append(await registry.create("k", owns_queue=False))

        async with trio.open_nursery() as replicas:
            for _ in range(4):
                replicas.start_soon(replica)
        nursery.cancel_scope.cancel()
    assert len(opened) == 4


async def test_every_change_to_a_key_waits_for_the_key_lock(postgres_database: str) -> None:
    # The discipline that makes concurrent replicas safe, seen from PostgreSQL:
    # while another transaction holds the key's lock, even the deletion of a
    # stream that does not own its queue waits for it.
    url = PostgresBackend(postgres_database).url
    async with trio.open_nursery() as nursery:
        async with PostgresRegistry.open(url, nursery) as registry:
            await registry.create("k", owns_queue=True)
            bystander = await registry.create("k", owns_queue=False)
            with psycopg.connect(url, autocommit=True) as holder:
                holder.execute("BEGIN")
                holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("k",))
                done = trio.Event()

                async def delete() -> None:
                    await registry.delete(bystander.id)
                    done.set()

                nursery.start_soon(delete)
                with trio.fail_after(30):
                    while not _waits_for_an_advisory_lock(holder, postgres_database):
                        await trio.sleep(0.02)
                assert not done.is_set()
                holder.execute("COMMIT")
            with trio.fail_after(30):
                await done.wait()
        nursery.cancel_scope.cancel()


def _waits_for_an_advisory_lock(conn: psycopg.Connection[tuple[object, ...]], db: str) -> bool:
    rows = conn.execute(
        "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = %s",
        (db,),
    ).fetchall()
    return bool(rows)
