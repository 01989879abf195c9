"""SPEC section 7 under failure and change: replicas restarted, killed, and the registry lost.

Real ``ess serve`` replicas on one registry and one exchange, websocket
clients spread over them, and a publisher putting about 300 events/s into
six stream queues (the Account Server's version 2/3 style) the whole time.
Each client is what SPEC section 4 tells a client to be: when its websocket
closes it reconnects, to a replica still serving, with
``stream_from_ordinal=<the last ordinal it received>``. At the end every
client must hold every event published on its stream exactly once, in
order, with consecutive ordinals from 1, and have been closed only as the
fault explains:

- a rolling restart (SIGTERM, start again, one replica after the other):
  each client of a stopped replica sees 1001 and nothing else;
- ``kill -9`` of one replica: only its clients see a close; DELETE of their
  streams still answers within the 5 s confirm bound, after the close;
- PostgreSQL stopped and started again (an instance of the test's own):
  no client sees a close; POST and DELETE answer 503 with a reason and
  ``/health/ready`` 503 while it is down, and work again without a restart
  of the replicas once it is back; a replica started while it is down
  starts not ready and becomes ready when it can connect.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from tests.support.postgres import PostgresInstance, own_postgres
from tests.support.raw_amqp import RawPublisher

from .client import connect
from .service import (
    ServiceProcess,
    clean_up_all,
    create_stream,
    replica_name,
    start_replicas,
    wait_until_all_listed,
)

pytestmark = pytest.mark.slow

STREAMS = 6
#: Per stream: 6 streams at 50 events/s are the 300 events/s of issue 11.
RATE_PER_STREAM = 50.0
#: Events each client must receive after a change before the next one (proof it is served).
PROGRESS = 25
#: Bound on any one wait for an event (the machine is shared and busy).
WAIT = 30.0
#: The DELETE bound when a replica is gone: its 5 s confirm, and slack for a busy machine.
DELETE_BOUND = 5.0 + 3.0
DELETED = (1000, "The stream has been deleted")


class Cluster:
    """The replicas, and which of them a reconnecting client may pick (those serving)."""

    def __init__(self, replicas: list[ServiceProcess]) -> None:
        self.replicas = replicas
        self.serving = list(range(len(replicas)))

    def other(self, index: int, spread: int) -> int:
        """A serving replica other than ``index`` (``spread`` picks which: clients spread)."""
        candidates = sorted(set(self.serving) - {index}) or self.serving
        assert candidates, "no replica is serving"
        return candidates[spread % len(candidates)]


@dataclass
class Client:
    """One websocket client of one stream: it records every event and every close.

    ``closes`` holds ``(replica name, code, reason, trio time)``; after a
    close (or a refused connect) the client goes to the next serving
    replica with its last ordinal; after 1000 "deleted" it stops.
    """

    number: int
    stream_id: int
    stream_uuid: str
    routing_key: str
    cluster: Cluster
    at: int
    seqs: list[int] = field(default_factory=list)
    ordinals: list[int] = field(default_factory=list)
    closes: list[tuple[str, int | None, str | None, float]] = field(default_factory=list)
    connected: bool = False
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def name(self) -> str:
        return f"client-{self.number}"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until ``condition()`` holds; it is re-checked after each change."""
        with trio.move_on_after(WAIT):
            while not condition():
                await self._changed.wait()
            return
        raise AssertionError(f"{self.name}: not within {WAIT}s: {what} ({self.describe()})")

    async def received(self, count: int) -> None:
        """Wait until this client holds ``count`` events."""
        await self._wait(lambda: len(self.seqs) >= count, f"{count} events")

    async def disconnected(self) -> None:
        await self._wait(lambda: not self.connected, "a close")

    def describe(self) -> str:
        return (
            f"on replica index {self.at} connected={self.connected}, "
            f"{len(self.seqs)} events, closes {[c[:3] for c in self.closes]}"
        )

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            replica = self.cluster.replicas[self.at]
            location = f"{replica.ws_base}/event-stream/{self.stream_uuid}"
            last = self.ordinals[-1] if self.ordinals else 0
            try:
                async with connect(location, f"stream_from_ordinal={last}") as ws:
                    self.connected = True
                    self._notify()
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        event = json.loads(await ws.get_message())
                        self.seqs.append(event["seq"])
                        self.ordinals.append(event["ess_ordinal"])
                        self._notify()
            except ConnectionClosed as closed:
                code, reason = (
                    (closed.reason.code, closed.reason.reason) if closed.reason else (None, None)
                )
                self.closes.append((replica_name(replica), code, reason, trio.current_time()))
                if (code, reason) == DELETED:
                    self.connected = False
                    self._notify()
                    return
            except (OSError, HandshakeError):
                # Refused: that replica is stopping or not started yet. A
                # client's retry pace, not synchronisation.
                await trio.sleep(0.05)
            self.connected = False
            self.at = self.cluster.other(self.at, self.number)
            self._notify()

    def check(self, published: int) -> None:
        """Every one of the ``published`` events exactly once, in order, ordinals 1..N."""
        if self.seqs != list(range(published)):
            seen = set(self.seqs)
            missing = [s for s in range(published) if s not in seen]
            raise AssertionError(
                f"{self.name}: received {len(self.seqs)} of {published}; missing "
                f"{len(missing)} (first {missing[:5]}), duplicated {len(self.seqs) - len(seen)}"
            )
        assert self.ordinals == list(range(1, published + 1)), f"{self.name}: ordinals"


@dataclass
class Publisher:
    """Publishes ``{"seq": n}`` to every stream queue at a steady rate until stopped."""

    amqp_url: str
    keys: list[str]
    published: int = 0
    stopped: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        publisher = await RawPublisher.connect(self.amqp_url, name="ess-test-replica-load")
        try:
            start = trio.current_time()
            while not self.stopped.is_set():
                body = json.dumps({"seq": self.published}).encode()
                for key in self.keys:
                    assert await publisher.publish(key, body), f"{key}: not stored"
                self.published += 1
                await trio.sleep_until(start + self.published / RATE_PER_STREAM)
        finally:
            await publisher.aclose()


@dataclass
class Load:
    """The streams, their clients and the publisher of one test."""

    cluster: Cluster
    clients: list[Client]
    publisher: Publisher
    publisher_done: trio.Event = field(default_factory=trio.Event)

    async def progress(self, clients: list[Client] | None = None) -> None:
        """Wait until each client (all by default) has received ``PROGRESS`` more events."""
        chosen = self.clients if clients is None else clients
        targets = [len(client.seqs) + PROGRESS for client in chosen]
        for client, target in zip(chosen, targets, strict=True):
            await client.received(target)

    async def finish(self) -> None:
        """Stop publishing; wait until every client that still streams has every event."""
        self.publisher.stopped.set()
        await self.publisher_done.wait()
        count = self.publisher.published
        for client in self.clients:
            try:
                await client.received(count)
            except AssertionError:
                client.check(count)  # what is missing or twice says more than a timeout
                raise
            client.check(count)


def routing_keys() -> list[str]:
    run = uuid.uuid4().hex[:10]
    return [f"ess.e2e.failures.{run}.{n}" for n in range(STREAMS)]


async def run_load(
    cluster: Cluster, amqp_url: str, nursery: trio.Nursery, *, streams: int = STREAMS
) -> Load:
    """Streams created round-robin over the replicas, a client for each on the replica that
    created it (from ordinal 0: every event), and the publisher, started."""
    keys = routing_keys()[:streams]
    clients: list[Client] = []
    for n, key in enumerate(keys):
        at = n % len(cluster.replicas)
        stream_id, stream_uuid = await create_stream(cluster.replicas[at], key)
        client = Client(n, stream_id, stream_uuid, key, cluster, at)
        await nursery.start(client.run)
        clients.append(client)
    load = Load(cluster, clients, Publisher(amqp_url, keys))

    async def publish() -> None:
        try:
            await load.publisher.run()
        finally:
            load.publisher_done.set()

    nursery.start_soon(publish)
    await load.progress()
    return load


def clients_of(load: Load, index: int) -> list[Client]:
    return [client for client in load.clients if client.connected and client.at == index]


@pytest.fixture
def three_replicas(tmp_path: Path, amqp_url: str) -> Iterator[Cluster]:
    replicas = start_replicas(tmp_path, amqp_url, 3)
    try:
        wait_until_all_listed(replicas)
        yield Cluster(replicas)
    finally:
        clean_up_all(replicas)


@pytest.fixture
async def load_nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


@pytest.fixture
async def load(three_replicas: Cluster, amqp_url: str, load_nursery: trio.Nursery) -> Load:
    """Three replicas, two streams created on each, their clients streaming at 300 events/s."""
    return await run_load(three_replicas, amqp_url, load_nursery)


@pytest.mark.timeout(180)
async def test_a_rolling_restart_under_load_loses_and_duplicates_nothing(load: Load) -> None:
    cluster = load.cluster
    for index, replica in enumerate(cluster.replicas):
        moved = clients_of(load, index)
        assert moved, f"no client on replica index {index}"
        cluster.serving.remove(index)
        replica.signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(replica.wait_exit) == 0, replica.log()
        # Its clients are served by another replica: they receive again.
        await load.progress(moved)
        assert all(client.at != index for client in moved)
        await trio.to_thread.run_sync(replica.start)
        cluster.serving.append(index)
    await load.progress()
    await load.finish()
    stopped = set()
    for client in load.clients:
        for name, code, reason, _ in client.closes:
            assert code == 1001, f"{client.name}: closed {code} {reason} by {name}"
            stopped.add(name)
    assert stopped == {replica_name(r) for r in cluster.replicas}


@pytest.mark.timeout(180)
async def test_kill_9_of_one_replica_takes_only_its_own_websockets(load: Load) -> None:
    cluster = load.cluster
    victim = len(cluster.replicas) - 1
    killed = clients_of(load, victim)
    others = [client for client in load.clients if client not in killed]
    assert killed and others
    cluster.serving.remove(victim)
    await trio.to_thread.run_sync(cluster.replicas[victim].kill)
    await load.progress(killed)
    await load.progress()
    await load.finish()
    for client in others:
        assert client.closes == [], f"{client.name}: {client.describe()}"
    for client in killed:
        assert [close[:2] for close in client.closes] == [("replica-3", 1006)], client.describe()
    # The killed replica may still be listed (three missed beats): a DELETE
    # waits for its confirm at most 5 s (so they run together, as an AS could).
    async with trio.open_nursery() as nursery:
        for client in killed:
            nursery.start_soon(delete_on, cluster.replicas[0], client)


async def delete_on(replica: ServiceProcess, client: Client) -> None:
    """DELETE the client's stream on ``replica``: 204 within the bound, after its close."""
    async with httpx.AsyncClient(base_url=replica.api, timeout=30.0) as api:
        started = trio.current_time()
        response = await api.delete(f"/event-stream/{client.stream_id}")
    answered = trio.current_time()
    assert response.status_code == 204, response.text
    assert answered - started < DELETE_BOUND, f"DELETE took {answered - started:.1f}s"
    await client.disconnected()
    _, code, reason, closed_at = client.closes[-1]
    assert (code, reason) == DELETED
    assert closed_at <= answered, f"{client.name}: the 204 came before the close"


# -- PostgreSQL lost and back ------------------------------------------------


@pytest.fixture
def pg() -> Iterator[PostgresInstance]:
    """A PostgreSQL of this test's own (never the shared one on 5432): it gets stopped."""
    with own_postgres() as instance:
        yield instance


@pytest.fixture
def pg_replicas(tmp_path: Path, amqp_url: str, pg: PostgresInstance) -> Iterator[Cluster]:
    replicas = start_replicas(tmp_path, amqp_url, 2, database=pg.url)
    try:
        wait_until_all_listed(replicas)
        yield Cluster(replicas)
    finally:
        if not pg.running():
            pg.start()  # so that clean-up can delete the streams and their queues
        clean_up_all(replicas)


async def post_until_created(api: httpx.AsyncClient, replica: ServiceProcess, key: str) -> int:
    """POST until it answers 201 (the registry is reconnected in the background)."""
    with trio.fail_after(WAIT):
        while True:
            response = await api.post(f"{replica.api}/event-stream/", json={"routing_key": key})
            if response.status_code == 201:
                stream_id: int = response.json()["id"]
                return stream_id
            assert response.status_code == 503, response.text
            await trio.sleep(0.2)  # polling the API, the event we wait on


def registry_down(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert "registry" in response.json()["detail"], response.text


@pytest.mark.timeout(180)
async def test_postgresql_restarted_under_load_stops_nothing_that_streams(
    pg_replicas: Cluster, pg: PostgresInstance, amqp_url: str, load_nursery: trio.Nursery
) -> None:
    cluster = pg_replicas
    load = await run_load(cluster, amqp_url, load_nursery, streams=4)
    spare = f"{load.clients[0].routing_key}.spare"
    await trio.to_thread.run_sync(pg.stop)
    async with httpx.AsyncClient(timeout=30.0) as api:
        for replica, client in zip(cluster.replicas, load.clients, strict=False):
            registry_down(
                await api.post(f"{replica.api}/event-stream/", json={"routing_key": spare})
            )
            # A DELETE that cannot be recorded changes nothing: its client streams on.
            registry_down(await api.delete(f"{replica.api}/event-stream/{client.stream_id}"))
            registry_down(await api.get(f"{replica.api}/health/ready"))
        await load.progress()  # every client is served while PostgreSQL is down
        await trio.to_thread.run_sync(pg.start)
        for replica in cluster.replicas:
            created = await post_until_created(api, replica, spare)
            deleted = await api.delete(f"{replica.api}/event-stream/{created}")
            assert deleted.status_code == 204, deleted.text
            assert (await api.get(f"{replica.api}/health/ready")).status_code == 200
    await load.progress()
    await load.finish()
    for client in load.clients:
        assert client.closes == [], f"{client.name}: {client.describe()}"


@pytest.mark.timeout(120)
async def test_a_replica_started_while_postgresql_is_down_becomes_ready_when_it_is_back(
    pg: PostgresInstance, fresh_service: ServiceProcess
) -> None:
    """``pg`` first: the service's clean-up (delete its streams) runs before PostgreSQL stops."""
    pg.stop()
    replica = fresh_service
    replica.extra_env["ESS_DATABASE"] = pg.url
    await trio.to_thread.run_sync(replica.start_live_only)
    async with httpx.AsyncClient(base_url=replica.api, timeout=30.0) as api:
        registry_down(await api.get("/health/ready"))
        key = routing_keys()[0]
        registry_down(await api.post("/event-stream/", json={"routing_key": key}))
        await trio.to_thread.run_sync(pg.start)
        # Ready without a restart: it connected (and created the schema) by itself.
        await trio.to_thread.run_sync(replica.wait_ready)
        stream_id = await post_until_created(api, replica, key)
        listed = (await api.get("/event-stream/")).json()["event_streams"]
        assert [entry["id"] for entry in listed] == [stream_id]
