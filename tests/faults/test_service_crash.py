"""``kill -9`` of the service: what was acknowledged survives, clients resume by ordinal.

SPEC section 3: "Records survive a restart of the service (and a kill -9)";
section 4: "a client that saw ordinal K and reconnects with
stream_from_ordinal=K misses nothing and receives nothing twice".
"""

from __future__ import annotations

import json
import random

import httpx
import pytest
import trio

from tests.e2e.client import connect, expect_no_message, receive_json

from .conftest import RoutingKeys, Services, api_client, create_stream, list_ids, open_publisher

pytestmark = pytest.mark.slow

WORKERS = 4
#: The service is killed once this many POSTs and DELETEs were acknowledged.
ACKED_POSTS, ACKED_DELETES = 2 * WORKERS, 2
#: The workers keep calling this long after the kill (calls to a dead process).
AFTER_KILL = 0.5


async def test_acknowledged_posts_and_deletes_survive_kill_9(
    services: Services, routing_keys: RoutingKeys
) -> None:
    service = await services.start()
    keys = [routing_keys.new() for _ in range(8)]  # several streams share a key: queue handover
    acked_posts: set[int] = set()
    acked_deletes: set[int] = set()
    unanswered_deletes: set[int] = set()  # cut off by the kill: either outcome is allowed
    unanswered = 0
    rng = random.Random(0)
    enough = trio.Event()  # traffic enough to prove something: kill now

    async def worker(number: int) -> None:
        nonlocal unanswered
        mine: list[int] = []
        async with httpx.AsyncClient(base_url=service.api, timeout=5.0) as client:
            while True:
                victim = None
                try:
                    if mine and rng.random() < 0.4:
                        victim = mine.pop(rng.randrange(len(mine)))
                        response = await client.delete(f"/event-stream/{victim}")
                        assert response.status_code == 204, response.text
                        acked_deletes.add(victim)
                    else:
                        response = await client.post(
                            "/event-stream/", json={"routing_key": rng.choice(keys)}
                        )
                        assert response.status_code == 201, response.text
                        stream_id = response.json()["id"]
                        acked_posts.add(stream_id)
                        mine.append(stream_id)
                    if len(acked_posts) >= ACKED_POSTS and len(acked_deletes) >= ACKED_DELETES:
                        enough.set()
                except httpx.TransportError:
                    if victim is not None:
                        unanswered_deletes.add(victim)
                    unanswered += 1  # in flight at the kill, or sent to a dead process
                    await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for number in range(WORKERS):
            nursery.start_soon(worker, number)
        with trio.fail_after(60):
            await enough.wait()
        await services.kill(service)
        acked_at_kill = (len(acked_posts), len(acked_deletes))
        await trio.sleep(AFTER_KILL)  # the fault's window: calls now meet a dead process
        nursery.cancel_scope.cancel()

    assert acked_at_kill[0] >= WORKERS and acked_at_kill[1] >= 1, (
        f"too little traffic before the kill to prove anything: {acked_at_kill}"
    )
    assert unanswered >= 1, "no call was cut off by the kill"

    await services.restart(service)
    async with api_client(service) as api:
        present = set(await list_ids(api))
        lost = (acked_posts - acked_deletes - unanswered_deletes) - present
        resurrected = acked_deletes & present
        assert not lost, f"acknowledged POSTs lost by kill -9: {sorted(lost)}"
        assert not resurrected, f"acknowledged DELETEs undone by kill -9: {sorted(resurrected)}"
        # Ids are never reused, not even those of calls the kill cut off.
        newest = await create_stream(api, keys[0])
        assert newest["id"] > max(acked_posts | present)
        for stream_id in [*present, newest["id"]]:
            response = await api.delete(f"/event-stream/{stream_id}")
            assert response.status_code == 204, response.text


async def test_client_resumes_by_ordinal_across_kill_9(
    services: Services, routing_keys: RoutingKeys, amqp_url: str
) -> None:
    service = await services.start()
    key = routing_keys.new()
    first, while_down, after = 5, 5, 5

    async with api_client(service) as api:
        stream = await create_stream(api, key)

    async with open_publisher(amqp_url, service.exchange) as publisher:

        async def publish(seqs: range) -> None:
            for seq in seqs:
                await publisher.publish(key, json.dumps({"seq": seq}).encode())

        async with connect(stream["location"]) as ws:
            await publish(range(first))
            seen = [await receive_json(ws) for _ in range(first)]
            assert [e["ess_ordinal"] for e in seen] == list(range(1, first + 1))
            last_seen = seen[-1]["ess_ordinal"]
            await services.kill(service)

        # Published while the service is down: the stream queue keeps them.
        await publish(range(first, first + while_down))
        await services.restart(service)
        await publish(range(first + while_down, first + while_down + after))

        async with connect(stream["location"], f"stream_from_ordinal={last_seen}") as ws:
            rest = [await receive_json(ws) for _ in range(while_down + after)]
            await expect_no_message(ws)
        total = first + while_down + after
        assert [e["ess_ordinal"] for e in rest] == list(range(last_seen + 1, total + 1))
        assert [e["seq"] for e in rest] == list(range(first, total))

    async with api_client(service) as api:
        assert (await api.delete(f"/event-stream/{stream['id']}")).status_code == 204
