"""SPEC section 7 over real sockets: several ``ess serve`` replicas, one registry, one broker.

Three real processes on their own ports share one SQLite registry file and
one exchange. Each proves one bullet: a DELETE on any replica closes the
websockets on every replica before its 204; the 4001 takeover holds across
replicas; ``/debug/replicas`` lists them all; a replica killed with SIGKILL
does not hold a DELETE on another for more than the 5 s confirm bound.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection

from actors.adapters.rabbitmq import RabbitMQBroker
from tests.integration.amqp_client.conftest import close_connection_named

from .client import connect, receive, wait_closed
from .service import (
    ServiceProcess,
    clean_up_all,
    create_stream,
    start_replicas,
    wait_until_all_listed,
)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str
) -> Iterator[list[ServiceProcess]]:
    replicas = start_replicas(tmp_path_factory.mktemp("replicas"), amqp_url, 3)
    try:
        wait_until_all_listed(replicas)
        yield replicas
    finally:
        clean_up_all(replicas)


#: The name the second replica of :func:`pair` gives its broker connections.
PAIR_CONNECTION = f"ess-e2e-replica-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pair(tmp_path: Path, amqp_url: str) -> Iterator[list[ServiceProcess]]:
    """Two replicas of the test's own (the second gets killed or cut off)."""
    separator = "&" if "?" in amqp_url else "?"
    named = f"{amqp_url}{separator}connection_name={PAIR_CONNECTION}"
    replicas = start_replicas(tmp_path, amqp_url, 2, last_url=named)
    try:
        wait_until_all_listed(replicas)
        yield replicas
    finally:
        clean_up_all(replicas)


@pytest.fixture
async def broker(cluster: list[ServiceProcess], amqp_url: str) -> AsyncIterator[RabbitMQBroker]:
    async with trio.open_nursery() as nursery:
        test_broker = RabbitMQBroker(amqp_url, cluster[0].exchange)
        await nursery.start(test_broker.run)
        await test_broker.wait_available()
        yield test_broker
        nursery.cancel_scope.cancel()


@pytest.fixture
def routing_key() -> str:
    return f"ess.e2e.replicas.{uuid.uuid4().hex[:12]}"


def on(replica: ServiceProcess, stream_uuid: str) -> str:
    """The websocket URL of the stream on ``replica``."""
    return f"{replica.ws_base}/event-stream/{stream_uuid}"


async def timed_delete(replica: ServiceProcess, stream_id: int) -> float:
    """DELETE on ``replica``, which must answer 204; returns how long it took (seconds)."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30.0) as api:
        response = await api.delete(f"{replica.api}/event-stream/{stream_id}")
    assert response.status_code == 204
    return time.monotonic() - started


async def relayed(
    broker: RabbitMQBroker, routing_key: str, ws: WebSocketConnection, body: str
) -> None:
    """Publish ``body`` on ``routing_key``; ``ws`` must receive it as its next event."""
    await broker.publish(routing_key, body.encode())
    assert (await receive(ws)).startswith(f"{body}|")


@asynccontextmanager
async def served_stream(
    broker: RabbitMQBroker,
    routing_key: str,
    created_on: ServiceProcess,
    served_by: ServiceProcess,
    body: str,
) -> AsyncIterator[tuple[int, str, WebSocketConnection]]:
    """A stream created on one replica and a websocket for it on another, proven to relay.

    Yields the stream's id, its uuid and the websocket.
    """
    stream_id, stream_uuid = await create_stream(created_on, routing_key)
    async with connect(on(served_by, stream_uuid)) as ws:
        await relayed(broker, routing_key, ws, body)
        yield stream_id, stream_uuid, ws


async def delete_and_watch(
    deleter: ServiceProcess, stream_id: int, ws: WebSocketConnection
) -> list[str]:
    order: list[str] = []

    async def watch() -> None:
        closed = await wait_closed(ws)
        order.append(f"closed {closed.code} {closed.reason}")

    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30.0) as api:
        nursery.start_soon(watch)
        response = await api.delete(f"{deleter.api}/event-stream/{stream_id}")
        order.append(f"http {response.status_code}")
    return order


async def test_debug_replicas_lists_every_replica(cluster: list[ServiceProcess]) -> None:
    async with httpx.AsyncClient(timeout=10.0) as api:
        for replica in cluster:
            body = (await api.get(f"{replica.api}/debug/replicas")).json()
            names = [entry["name"] for entry in body["replicas"]]
            assert sorted(names) == ["replica-1", "replica-2", "replica-3"]
            this = [entry for entry in body["replicas"] if entry["this"]]
            assert [entry["name"] for entry in this] == [replica.extra_env["ESS_REPLICA_NAME"]]
            for entry in body["replicas"]:
                assert isinstance(entry["started_at"], float)
                assert entry["websockets"] >= 0


async def test_delete_on_one_replica_closes_the_websocket_on_another_before_the_204(
    cluster: list[ServiceProcess], broker: RabbitMQBroker, routing_key: str
) -> None:
    first, second, third = cluster
    # The stream is created on replica 1; replica 2 serves it all the same.
    served = served_stream(broker, routing_key, first, second, "served by replica 2")
    async with served as (stream_id, stream_uuid, ws):
        order = await delete_and_watch(third, stream_id, ws)
    assert order == ["closed 1000 The stream has been deleted", "http 204"]
    async with httpx.AsyncClient(timeout=10.0) as api:
        listed = (await api.get(f"{second.api}/event-stream/")).json()["event_streams"]
    assert stream_id not in [entry["id"] for entry in listed]
    # A websocket for the deleted stream is not served by any replica.
    for replica in cluster:
        async with connect(on(replica, stream_uuid)) as late:
            closed = await wait_closed(late)
            assert (closed.code, closed.reason) == (1000, "Unknown event stream")


async def test_a_newer_connection_on_another_replica_takes_over_with_4001(
    cluster: list[ServiceProcess], broker: RabbitMQBroker, routing_key: str
) -> None:
    first, second, third = cluster
    async with (
        served_stream(broker, routing_key, third, first, "before") as (_, stream_uuid, old),
        connect(on(second, stream_uuid)) as new,
    ):
        closed = await wait_closed(old)
        assert closed.code == 4001
        await relayed(broker, routing_key, new, "to the newest")


async def test_delete_answers_within_the_bound_when_a_replica_was_killed(
    pair: list[ServiceProcess], routing_key: str
) -> None:
    survivor, victim = pair
    stream_id, stream_uuid = await create_stream(survivor, routing_key)
    async with connect(on(victim, stream_uuid)):
        victim.kill()
    elapsed = await timed_delete(survivor, stream_id)
    assert elapsed < 5.0 + 3.0, f"DELETE took {elapsed:.1f}s"


async def test_a_replica_cut_off_during_a_delete_closes_the_stream_when_it_is_back(
    pair: list[ServiceProcess], routing_key: str
) -> None:
    survivor, cut_off = pair
    stream_id, stream_uuid = await create_stream(survivor, routing_key)
    await create_stream(survivor, routing_key)  # keeps the queue: only the re-read can close
    async with connect(on(cut_off, stream_uuid)) as ws:
        assert cut_off.process is not None
        # Frozen, and its broker connections (so its control queue) closed by the broker.
        cut_off.process.send_signal(signal.SIGSTOP)
        try:
            await close_connection_named(PAIR_CONNECTION)
            assert await timed_delete(survivor, stream_id) < 5.0 + 3.0
        finally:
            cut_off.process.send_signal(signal.SIGCONT)
        # Back: it reconnects, re-reads the registry and closes the deleted stream.
        closed = await wait_closed(ws, timeout=30.0)
        assert (closed.code, closed.reason) == (1000, "The stream has been deleted")
