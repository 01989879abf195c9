"""A dropped broker connection loses nothing for anyone, even a client that got nothing yet.

SPEC section 4: "whenever the service loses a broker connection (an outage,
a connection closed by the broker or an operator, missed heartbeats),
connections stay open; when the service is connected again, each
connection resumes after the last ordinal it delivered, and one that has
delivered nothing yet starts with the first event published after its
handshake completed: no gap, no duplicate, for every client." (Issue 9.3.)

The clients are live (no parameter) and have received nothing when the
service's broker connections go (or, in the last test, connect while the
broker is unreachable for the service and receive events published
meanwhile by others): one alone on its stream, and two sharing
another stream (the live-tail hub, before its first event). From the
moment of the drop until the service is connected again and a while after,
events are published straight into both stream queues by a publisher of
the test's own that retries until the broker accepts each one. Every
client must then receive every one of them, in order, with consecutive
ordinals from 1, and, after the final sentinel, nothing more.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.e2e.client import connect
from tests.support.observe import close_service_connections, service_connections
from tests.support.proxy import FreezableProxy
from tests.support.raw_amqp import RawPublisher, Refused
from tests.support.ws_frames import describe_close

from .conftest import (
    RoutingKeys,
    Services,
    api_client,
    create_stream,
    named,
    poll_until,
    rabbitmqctl,
    start_broker,
    wait_status,
    wait_until_broker_is_ours,
)

POOL = 2  # the default ESS_AMQP_POOL_SIZE
#: Heartbeat of the service's broker connections in the missed-heartbeats case.
HEARTBEAT = 2
#: Publishing rate across the drop (per stream).
PUBLISH_INTERVAL = 0.02
#: Keep publishing this long after the service is connected again.
AFTER_RECONNECT = 1.0
#: How long the broker stays stopped in the restart case.
OUTAGE = 5.0
#: Bound on the service being connected again after each kind of drop.
RECONNECT_TIMEOUT = 60.0


@dataclass
class Collector:
    """Reads one websocket in the background: every event and how it closed, if it did."""

    name: str
    ws: WebSocketConnection
    events: list[dict[str, Any]] = field(default_factory=list)
    closed: str | None = None
    got_first: trio.Event = field(default_factory=trio.Event)
    got_sentinel: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        try:
            while True:
                event = json.loads(await self.ws.get_message())
                self.events.append(event)
                self.got_first.set()
                if event.get("sentinel"):
                    self.got_sentinel.set()
        except ConnectionClosed as closed:
            self.closed = describe_close(closed)
            self.got_sentinel.set()  # nothing more will come: let the test report it

    def check(self, stored: list[object]) -> None:
        """Exactly what the stream stored (seqs, then the sentinel), in order, ordinals 1..N."""
        assert self.closed is None, f"{self.name}: websocket closed ({self.closed})"
        seqs = [event.get("seq", "sentinel") for event in self.events]
        if seqs != stored:
            missing = [s for s in stored if s not in seqs]
            twice = len(seqs) - len(set(seqs))
            raise AssertionError(
                f"{self.name}: received {len(seqs)} events, the stream holds {len(stored)}; "
                f"missing {len(missing)} (first: {missing[:10]}), duplicates {twice}, "
                f"first received {seqs[:5]}"
            )
        ordinals = [event["ess_ordinal"] for event in self.events]
        assert ordinals == list(range(1, len(stored) + 1)), f"{self.name}: ordinals {ordinals}"


@asynccontextmanager
async def three_clients(
    alone: str, shared: str
) -> AsyncIterator[tuple[list[Collector], trio.Nursery]]:
    """The three clients of these tests, read in the nursery yielded with them:
    one alone on the stream at ``alone`` (a consumer of its own) and two
    sharing the one at ``shared`` (a live-tail hub)."""
    async with (
        connect(alone) as ws_alone,
        connect(shared) as ws_hub_a,
        connect(shared) as ws_hub_b,
        trio.open_nursery() as readers,
    ):
        collectors = [
            Collector("alone", ws_alone),
            Collector("hub member a", ws_hub_a),
            Collector("hub member b", ws_hub_b),
        ]
        for collector in collectors:
            readers.start_soon(collector.run)
        yield collectors, readers


def streams_of_three_clients(
    stored: dict[str, list[object]], alone_key: str, shared_key: str
) -> list[list[object]]:
    """What each of :func:`three_clients`' collectors must receive, in their order."""
    return [stored[alone_key], stored[shared_key], stored[shared_key]]


class Publishing(Protocol):
    async def publish(self, queue: str, body: bytes) -> None: ...


@dataclass
class SteadyPublishing:
    """``{"seq": n}`` to every key, ``n`` counting up from :attr:`published`, at
    :data:`PUBLISH_INTERVAL`, until :attr:`stop` is set (run it in a nursery)."""

    publisher: Publishing
    keys: Sequence[str]
    published: int = 0
    stop: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            body = json.dumps({"seq": self.published}).encode()
            for key in self.keys:
                await self.publisher.publish(key, body)
            self.published += 1
            await trio.sleep(PUBLISH_INTERVAL)  # the rate: load, not sync


async def end_with_sentinels(
    publisher: RetryingPublisher,
    keys: Sequence[str],
    collectors: Sequence[Collector],
    readers: trio.Nursery,
) -> None:
    """Publish the last event of each stream, wait (bounded) until every collector has
    it, and stop reading before the websockets close (a close would be reported)."""
    for key in keys:
        await publisher.publish(key, b'{"sentinel": true}')
    await publisher.aclose()
    with trio.move_on_after(30):
        for collector in collectors:
            await collector.got_sentinel.wait()
    readers.cancel_scope.cancel()


async def stored_seqs(amqp_url: str, queue: str) -> list[object]:
    """The seqs the stream queue holds, up to the sentinel, read straight from the broker.

    A publisher that retried after a lost confirm may have stored an event
    twice: a client must then receive it twice too (two ordinals).
    """
    reader = await RawPublisher.connect(amqp_url, name="ess-test-stream-reader")
    try:
        bodies = await reader.read_stream(queue, lambda body: b"sentinel" in body)
    finally:
        await reader.aclose()
    return [json.loads(body).get("seq", "sentinel") for body in bodies]


async def stored_in_full(
    amqp_url: str, keys: Sequence[str], published: int
) -> dict[str, list[object]]:
    """What each stream holds; fails unless it holds every confirmed publish.

    The harness's own check: a loss it finds is the broker's or the test's, not the service's.
    """
    stored = {key: await stored_seqs(amqp_url, key) for key in keys}
    for key, seqs in stored.items():
        assert set(range(published)) <= set(seqs), f"{key}: the stream lacks confirmed events"
    return stored


def check_all(collectors: Sequence[Collector], stored: Sequence[list[object]], case: str) -> None:
    """Every collector received exactly its stream (``stored``, in order); all failures at once."""
    failures = []
    for collector, seqs in zip(collectors, stored, strict=True):
        try:
            collector.check(seqs)
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, f"{case} " + "; ".join(failures)


@dataclass
class RetryingPublisher:
    """Publishes each event until the broker confirms it, reconnecting as often as it takes."""

    amqp_url: str
    publisher: RawPublisher | None = None
    retries: int = 0

    async def publish(self, queue: str, body: bytes) -> None:
        while True:
            try:
                if self.publisher is None:
                    self.publisher = await RawPublisher.connect(self.amqp_url)
                if await self.publisher.publish(queue, body):
                    return
            except (OSError, Refused, trio.TooSlowError, trio.BrokenResourceError):
                pass
            self.retries += 1
            await self.aclose()
            await trio.sleep(0.2)  # retry pace while the broker is away

    async def aclose(self) -> None:
        if self.publisher is not None:
            await self.publisher.aclose()
            self.publisher = None


async def wait_all_connected(name: str) -> dict[str, str]:
    """The service's pool is fully up (the second connection comes a moment later)."""
    found: dict[str, str] = {}

    async def all_up() -> bool:
        nonlocal found
        found = await service_connections(name)
        return len(found) >= POOL

    await poll_until(all_up, 30, f"{POOL} broker connections named {name}#*", 0.2)
    return found


async def wait_reconnected(name: str, old: dict[str, str]) -> None:
    """Every connection of the service is a new one (no old broker pid is left)."""

    async def replaced() -> bool:
        now = await service_connections(name)
        return len(now) >= len(old) and not set(now.values()) & set(old.values())

    await poll_until(replaced, RECONNECT_TIMEOUT, f"the service reconnected ({name})", 0.2)


async def restart_broker() -> None:
    """``stop_app``, the outage, ``start_app`` (always), then wait until it serves again."""
    try:
        await rabbitmqctl("stop_app")
        await trio.sleep(OUTAGE)  # the outage itself, not synchronisation
    finally:
        with trio.CancelScope(shield=True):
            await start_broker()


DROPS = [
    "close_connection",
    "missed_heartbeats",
    pytest.param(
        "broker_restart",
        marks=[pytest.mark.slow, pytest.mark.stops_broker, pytest.mark.timeout(420)],
    ),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("primed", [False, True], ids=["got-nothing-yet", "got-one-event"])
@pytest.mark.parametrize("drop", DROPS)
async def test_live_clients_lose_nothing_when_the_broker_connection_drops(
    services: Services, routing_keys: RoutingKeys, amqp_url: str, drop: str, primed: bool
) -> None:
    """``got-nothing-yet`` is issue 9.3; ``got-one-event`` resumes after a delivered ordinal."""
    if drop == "broker_restart":
        await wait_until_broker_is_ours()
    name = f"ess-faults-reconnect-{secrets.token_hex(4)}"
    alone_key, shared_key = routing_keys.new(), routing_keys.new()
    async with trio.open_nursery() as nursery:
        if drop == "missed_heartbeats":
            proxy = FreezableProxy(urlsplit(amqp_url).port or 5672)
            port = await nursery.start(proxy.run)
            url = f"amqp://guest:guest@127.0.0.1:{port}/?heartbeat={HEARTBEAT}&name={name}"
        else:
            url = named(amqp_url, name)
        service = await services.start(url, ESS_MAX_CONNECTIONS_PER_STREAM="0")
        before = await wait_all_connected(name)
        async with api_client(service) as api:
            alone = await create_stream(api, alone_key)
            shared = await create_stream(api, shared_key)
            async with three_clients(alone["location"], shared["location"]) as (
                collectors,
                readers,
            ):
                publisher = RetryingPublisher(amqp_url)
                publishing = SteadyPublishing(publisher, [alone_key, shared_key])
                if primed:  # every client delivers one event before the drop
                    await publisher.publish(alone_key, b'{"seq": 0}')
                    await publisher.publish(shared_key, b'{"seq": 0}')
                    publishing.published = 1
                    with trio.fail_after(30):
                        for collector in collectors:
                            await collector.got_first.wait()
                drop_started = trio.current_time()
                if drop == "close_connection":
                    assert await close_service_connections(name) >= POOL
                elif drop == "missed_heartbeats":
                    assert proxy.freeze() >= POOL  # no FIN, no RST: heartbeats just stop
                async with trio.open_nursery() as window:
                    window.start_soon(publishing.run)
                    if drop == "broker_restart":
                        await restart_broker()
                    await wait_reconnected(name, before)
                    await wait_status(api, "/health/ready", 200, timeout=RECONNECT_TIMEOUT)
                    down_for = trio.current_time() - drop_started
                    await trio.sleep(AFTER_RECONNECT)  # keep publishing a while after
                    publishing.stop.set()
                await end_with_sentinels(publisher, [alone_key, shared_key], collectors, readers)
        nursery.cancel_scope.cancel()
    published = publishing.published
    stored = await stored_in_full(amqp_url, [alone_key, shared_key], published)
    print(
        f"[{drop}, primed={primed}] {published} events per stream across a drop of {down_for:.1f}s "
        f"(publisher retries {publisher.retries}, stored {len(stored[alone_key])} and "
        f"{len(stored[shared_key])} with the sentinels); received "
        + ", ".join(f"{c.name}: {len(c.events)}" for c in collectors)
    )
    check_all(
        collectors,
        streams_of_three_clients(stored, alone_key, shared_key),
        f"[{drop}, primed={primed}]",
    )


@pytest.mark.timeout(180)
async def test_live_clients_that_connect_while_the_broker_is_unreachable_miss_nothing(
    services: Services, routing_keys: RoutingKeys, amqp_url: str
) -> None:
    """Accepted while the service cannot reach the broker, they get every event
    published after their handshakes: those published while the service was
    cut off (other publishers reach the broker) and after, up to the sentinel."""
    name = f"ess-faults-unreachable-{secrets.token_hex(4)}"
    alone_key, shared_key = routing_keys.new(), routing_keys.new()
    async with trio.open_nursery() as nursery:
        proxy = FreezableProxy(urlsplit(amqp_url).port or 5672)
        port = await nursery.start(proxy.run)
        url = f"amqp://guest:guest@127.0.0.1:{port}/?name={name}"
        service = await services.start(url, ESS_MAX_CONNECTIONS_PER_STREAM="0")
        await wait_all_connected(name)
        async with api_client(service) as api:
            alone = await create_stream(api, alone_key)
            shared = await create_stream(api, shared_key)
            await proxy.refuse()
            await wait_status(api, "/health/ready", 503, timeout=RECONNECT_TIMEOUT)
            async with three_clients(alone["location"], shared["location"]) as (
                collectors,
                readers,
            ):
                publisher = RetryingPublisher(amqp_url)  # straight to the broker
                publishing = SteadyPublishing(publisher, [alone_key, shared_key])
                async with trio.open_nursery() as window:
                    window.start_soon(publishing.run)
                    await trio.sleep(OUTAGE / 2)  # the cut itself, not synchronisation
                    proxy.accept()
                    await wait_status(api, "/health/ready", 200, timeout=RECONNECT_TIMEOUT)
                    await trio.sleep(AFTER_RECONNECT)  # keep publishing a while after
                    publishing.stop.set()
                await end_with_sentinels(publisher, [alone_key, shared_key], collectors, readers)
        nursery.cancel_scope.cancel()
    published = publishing.published
    stored = await stored_in_full(amqp_url, [alone_key, shared_key], published)
    check_all(
        collectors,
        streams_of_three_clients(stored, alone_key, shared_key),
        f"[unreachable at connect, {published} events per stream]",
    )
