"""``Registry.find`` (by websocket uuid), on every registry adapter: memory, SQLite, PostgreSQL.

A replica asks it for a websocket of a stream created on another replica,
and while it may have missed deletions (SPEC section 7). Beside the main
registry contract so that the replicas' one addition to the port is proven
on its own.
"""

from __future__ import annotations

import uuid

from . import registries
from .registries import Backend

registry_backend = registries.registry_backend
postgres_database = registries.postgres_database


async def test_find_by_uuid(registry_backend: Backend) -> None:
    async with registry_backend.open() as registry:
        first = await registry.create("key.a", owns_queue=True)
        second = await registry.create("key.a", owns_queue=False)
        assert await registry.find(first.uuid) == first
        assert await registry.find(second.uuid) == second
        assert await registry.find(str(uuid.uuid4())) is None
        assert await registry.find("not a uuid at all") is None
        await registry.delete(first.id)
        assert await registry.find(first.uuid) is None
        heir = await registry.find(second.uuid)  # now owns the queue: the record changed
        assert heir is not None and heir == await registry.get(second.id)
