"""A client that reads slowly or not at all delays nobody else (issue 9.1, SPEC section 4).

SPEC section 4: "Connections are independent. What one client does
(reading slowly, not reading at all, replaying a long history, ...) never
delays the events of any other connection or any API call. A client that
stops reading is not allowed to grow the service's memory without bound
... and a client that has not read for a configurable time is closed."
Section 2: "RabbitMQ 3.x delivers stream queues to AMQP consumers in whole
chunks, beyond the prefetch window; the service must stay bounded anyway."

The stalled clients are raw sockets (:class:`RawWebSocket`: the handshake,
then no read, a minimal receive buffer), so the service's sends block once
the kernel's buffers are full. Their streams hold either a backlog
published with thousands of publishes in flight (RabbitMQ writes it as big
chunks) or one published one confirmed message at a time (a chunk per
event), or they are live streams published to in big bursts. Everything is
published straight into the stream queues (AS versions 2 and 3 style) by a
raw publisher of the tests' own (:mod:`tests.support.raw_amqp`).
"""

from __future__ import annotations

import json
import secrets
import statistics
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

import amqp
from tests.e2e.client import connect
from tests.e2e.service import ServiceProcess
from tests.support.observe import labelled_metric
from tests.support.raw_amqp import RawPublisher
from tests.support.ws_frames import FrameReader, describe_close

from .conftest import (
    RawWebSocket,
    RoutingKeys,
    Services,
    api_client,
    create_stream,
    named,
    rss_bytes,
    service_pid,
)

pytestmark = pytest.mark.slow

MB = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Backlog:
    """How a stalled client's stream is filled."""

    events: int
    size: int  # bytes per event body
    pipelined: bool  # thousands in flight (big chunks) or one confirmed at a time


#: 20,000 x 300 B with thousands in flight: RabbitMQ stores big chunks.
CHUNKED = Backlog(20_000, 300, pipelined=True)
#: 2,000 published one confirmed message at a time: one event per chunk. The
#: events are 4 KB so that the backlog (8 MB) is more than the kernel buffers
#: of a stalled socket can absorb (4 MB send buffer at most, on loopback).
SINGLE = Backlog(2_000, 4096, pipelined=False)
#: A live stream: 10 bursts of 1,000 x 2 KB events, pipelined (20 MB), then 4 more
#: while the probes run (28 MB in all).
BURST, BURSTS, BURST_SIZE = 1000, 10, 2048

#: The service's unacked window per consumer. RabbitMQ 3.10 here writes these
#: backlogs in chunks of about 20 to 250 events, and delivers whole chunks
#: whatever the window: a window of 10 makes nearly every chunk overshoot it,
#: the condition of issue 9, every run (with the default 200 only some do).
PREFETCH = 10
#: The other clients' probes: a baseline without the stalled client, then with it.
BASELINE_EVENTS, BASELINE_INTERVAL = 30, 0.05
PROBE_EVENTS, PROBE_INTERVAL = 50, 0.1  # 50 events over 5 s
#: Publish-to-receive p99 of the probes may exceed the baseline's by this much ...
LATENCY_MARGIN = 0.5
#: ... and never reach this.
LATENCY_CEILING = 1.0
#: API calls and a new stream's websocket handshake, meanwhile.
API_BOUND = HANDSHAKE_BOUND = 2.0
#: RSS growth while the stalled client holds a whole backlog unread. The
#: service may hold a bounded window per consumer: PREFETCH events plus one
#: broker chunk of overshoot (chunks here are at most a few hundred events,
#: under 1 MB), in a few forms (AMQP frames, message, text frame): a few MB.
#: Buffering the live backlog instead (28 MB of bodies, more as Python
#: objects) would pass this bound; the rest is allocator and fixed overhead.
RSS_GROWTH_BOUND = 40 * MB

#: The slow reader: one frame every 10 ms for this many frames, then as fast as it can.
SLOW_FRAMES, SLOW_PAUSE = 500, 0.01
#: A small send timeout for the tests of it.
SEND_TIMEOUT = 3.0


def padded(seq: int, size: int) -> bytes:
    head = json.dumps({"seq": seq, "pad": ""}).encode()
    return json.dumps({"seq": seq, "pad": "x" * max(0, size - len(head))}).encode()


async def fill(amqp_url: str, queue: str, backlog: Backlog) -> None:
    """Declare ``queue`` as the Account Server would (a plain stream queue) and publish."""
    async with amqp.connect(amqp_url) as connection, connection.channel() as channel:
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
    await publish_backlog(amqp_url, queue, backlog)


async def publish_backlog(amqp_url: str, queue: str, backlog: Backlog) -> None:
    publisher = await RawPublisher.connect(amqp_url)
    try:
        bodies = [padded(seq, backlog.size) for seq in range(backlog.events)]
        if backlog.pipelined:
            await publisher.publish_pipelined(queue, bodies)
        else:
            for body in bodies:
                assert await publisher.publish(queue, body)
    finally:
        await publisher.aclose()


async def delete_queues(amqp_url: str, queues: list[str]) -> None:
    async with amqp.connect(amqp_url) as connection:
        for queue in queues:
            async with connection.channel() as channel:
                await channel.queue_delete(queue)


@pytest.fixture(scope="module")
def backlogs(amqp_url: str) -> Iterator[dict[str, str]]:
    """Stream queues filled once for the module (the AS's own queues): kind -> queue name."""
    queues = {
        "chunked": f"ess.faults.isolation.chunked.{secrets.token_hex(4)}",
        "single": f"ess.faults.isolation.single.{secrets.token_hex(4)}",
    }
    try:
        trio.run(fill, amqp_url, queues["chunked"], CHUNKED)
        trio.run(fill, amqp_url, queues["single"], SINGLE)
        yield queues
    finally:
        trio.run(delete_queues, amqp_url, list(queues.values()))


def with_query(location: str, query: str) -> str:
    return f"{location}?{query}" if query else location


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method: a small sample's top value counts)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# --------------------------------------------------------------------------- #
# Probes: a live client of another stream, API calls, a new handshake, RSS


@dataclass
class Probe:
    """Publishes events to live streams at a steady rate and times their arrival.

    Event ``seq`` goes to stream ``seq % len(queues)``. There are two streams
    so that, whatever way the service spreads consumers over a pool of two
    connections, one of them shares a connection with the stalled client.
    """

    queues: list[str]
    sent: dict[int, float] = field(default_factory=dict)
    received: dict[int, float] = field(default_factory=dict)
    order: dict[int, list[int]] = field(default_factory=dict)
    closed: list[str] = field(default_factory=list)

    async def receive(self, ws: WebSocketConnection, index: int) -> None:
        order = self.order.setdefault(index, [])
        try:
            while True:
                event = json.loads(await ws.get_message())
                self.received[event["seq"]] = trio.current_time()
                order.append(event["seq"])
        except ConnectionClosed as closed:
            self.closed.append(f"stream {index}: {describe_close(closed)}")

    async def publish(self, publisher: RawPublisher, seqs: range, interval: float) -> None:
        for seq in seqs:
            self.sent[seq] = trio.current_time()
            queue = self.queues[seq % len(self.queues)]
            assert await publisher.publish(queue, json.dumps({"seq": seq}).encode())
            await trio.sleep(interval)  # the publishing rate: load, not synchronisation

    def in_order(self, seqs: range) -> bool:
        """Each stream received its share of ``seqs`` in publish order (and nothing else)."""
        n = len(self.queues)
        return all(
            [s for s in self.order.get(i, []) if s in seqs] == [s for s in seqs if s % n == i]
            for i in range(n)
        )

    async def wait_received(self, seqs: range, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while not all(seq in self.received for seq in seqs):
                await trio.sleep(0.02)  # the receiver task records arrivals

    def latencies(self, seqs: range) -> list[float]:
        return [self.received[s] - self.sent[s] for s in seqs if s in self.received]


@asynccontextmanager
async def rss_sampler(pid: int) -> AsyncIterator[list[int]]:
    """Samples the service's RSS every 50 ms while the block runs (list of samples)."""
    samples = [rss_bytes(pid)]

    async def sample() -> None:
        while True:
            await trio.sleep(0.05)
            samples.append(rss_bytes(pid))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        yield samples
        nursery.cancel_scope.cancel()


async def drain_events(raw: RawWebSocket, count: int, timeout: float) -> FrameReader:
    """Read a raw client's frames until ``count`` text frames have arrived."""
    reader = FrameReader()
    with trio.fail_after(timeout):
        while len(reader.texts) < count:
            chunk = await raw.stream.receive_some(1 << 20)
            assert chunk, (
                f"the service closed the stalled client after {len(reader.texts)} of "
                f"{count} events (close code {reader.close_code})"
            )
            reader.feed(chunk)
    return reader


def assert_consecutive(events: list[dict[str, object]], first_ordinal: int, who: str) -> None:
    ordinals = [event["ess_ordinal"] for event in events]
    expected = list(range(first_ordinal, first_ordinal + len(events)))
    if ordinals != expected:
        bad = next(i for i, (a, b) in enumerate(zip(ordinals, expected, strict=True)) if a != b)
        raise AssertionError(
            f"{who}: ordinals not strictly consecutive from {first_ordinal}: at index {bad} "
            f"got {ordinals[max(0, bad - 3) : bad + 4]}, expected "
            f"{expected[max(0, bad - 3) : bad + 4]} ({len(events)} events)"
        )


@dataclass(frozen=True)
class Call:
    """How an API call or a handshake made while a client was stalled went."""

    seconds: float
    status: int | str  # the HTTP status (101 for a websocket), or what went wrong


async def timed_call(
    calls: dict[str, Call], name: str, call: Awaitable[T], bound: float = 3 * API_BOUND
) -> T | None:
    """Await ``call`` for at most ``bound`` seconds; record how long it took and its status."""
    start = trio.current_time()
    result: T | None = None
    with trio.move_on_after(bound):
        try:
            status: int | str
            result = await call
            status = result.status_code if isinstance(result, httpx.Response) else 101
        except (httpx.HTTPError, HandshakeError, OSError) as error:
            status = repr(error)
        calls[name] = Call(trio.current_time() - start, status)
        return result
    calls[name] = Call(bound, f"no answer within {bound}s")
    return None


async def handshake(location: str) -> None:
    """Open a websocket (the opening handshake) and close it again."""
    async with connect(location):
        pass


def assert_payloads_in_order(events: list[dict[str, object]], total: int, who: str) -> None:
    """The events carry the published ``seq`` 0..total-1, in order."""
    seqs = [event["seq"] for event in events]
    if seqs != list(range(total)):
        bad = next((i for i, s in enumerate(seqs) if s != i), len(seqs))
        raise AssertionError(
            f"{who}: {len(seqs)} events, expected seq 0..{total - 1}; first difference at "
            f"index {bad}: {seqs[max(0, bad - 3) : bad + 4]}"
        )


# --------------------------------------------------------------------------- #
# The stalled client must delay nobody


#: ``live-single``: a live client stalls while :data:`SINGLE` is published one
#: confirmed event at a time. ``replay-chunked-prefetch-default`` is the
#: chunked stall with the service's own default window (the configuration of
#: issue 9's report); today it fails only when a chunk happens to exceed it.
STALLS = [
    "replay-chunked",
    "replay-single",
    "live-bursts",
    "live-single",
    "replay-chunked-prefetch-default",
]
POOLS = {"pool-1": {"ESS_AMQP_POOL_SIZE": "1"}, "pool-default": {}}


async def start_service(services: Services, amqp_url: str, **env: str) -> ServiceProcess:
    settings = {
        "ESS_LOG_LEVEL": "INFO",  # DEBUG writes a line per frame
        "ESS_PREFETCH": str(PREFETCH),
        "ESS_PING_INTERVAL": "120",  # the raw client never answers pings
        "ESS_PING_TIMEOUT": "120",
    }
    settings.update(env)
    settings = {name: value for name, value in settings.items() if value != "default"}
    return await services.start(
        named(amqp_url, f"ess-faults-isolation-{secrets.token_hex(4)}"), **settings
    )


async def publish_bursts(amqp_url: str, queue: str, first: int, bursts: int, gap: float) -> int:
    """Publish ``bursts`` bursts of :data:`BURST` events from seq ``first``; returns the next."""
    publisher = await RawPublisher.connect(amqp_url)
    try:
        seq = first
        for _ in range(bursts):
            await publisher.publish_pipelined(
                queue, [padded(s, BURST_SIZE) for s in range(seq, seq + BURST)]
            )
            seq += BURST
            await trio.sleep(gap)  # between bursts: load shape, not synchronisation
    finally:
        await publisher.aclose()
    return seq


@pytest.mark.timeout(240)
@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("stall", STALLS)
async def test_stalled_client_delays_no_other_stream_and_no_api_call(
    services: Services,
    routing_keys: RoutingKeys,
    amqp_url: str,
    backlogs: dict[str, str],
    stall: str,
    pool: str,
) -> None:
    prefetch = "default" if stall.endswith("prefetch-default") else str(PREFETCH)
    service = await start_service(
        services, amqp_url, ESS_SEND_TIMEOUT="200", ESS_PREFETCH=prefetch, **POOLS[pool]
    )
    pid = service_pid(service)
    live_key, probe_keys = routing_keys.new(), [routing_keys.new(), routing_keys.new()]
    stalled_key = live_key if stall.startswith("live") else backlogs[stall.split("-")[1]]
    async with api_client(service) as api:
        stalled_stream = await create_stream(api, stalled_key)
        probe_streams = [await create_stream(api, key) for key in probe_keys]
        probe = Probe(probe_keys)
        publisher = await RawPublisher.connect(amqp_url)
        async with (
            connect(probe_streams[0]["location"]) as probe_ws0,
            connect(probe_streams[1]["location"]) as probe_ws1,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(probe.receive, probe_ws0, 0)
            nursery.start_soon(probe.receive, probe_ws1, 1)
            baseline = range(BASELINE_EVENTS)
            await probe.publish(publisher, baseline, BASELINE_INTERVAL)
            await probe.wait_received(baseline, 10)
            assert len(probe.latencies(baseline)) == BASELINE_EVENTS, "baseline incomplete"

            async with rss_sampler(pid) as rss:
                if stall == "live-bursts":
                    raw = await RawWebSocket.connect(stalled_stream["location"])
                    next_seq = await publish_bursts(amqp_url, live_key, 0, BURSTS, 0.05)
                    stalled_total = next_seq
                elif stall == "live-single":
                    raw = await RawWebSocket.connect(stalled_stream["location"])
                    await publish_backlog(amqp_url, live_key, SINGLE)
                    stalled_total = SINGLE.events
                else:
                    raw = await RawWebSocket.connect(
                        with_query(stalled_stream["location"], "stream_from_ordinal=0")
                    )
                    stalled_total = (CHUNKED if "chunked" in stall else SINGLE).events
                calls: dict[str, Call] = {}

                async def api_calls() -> None:
                    await trio.sleep(1.0)  # into the probe window
                    await timed_call(calls, "GET", api.get("/event-stream/"))
                    for n in (1, 2):  # two: one lands on the stalled client's connection
                        body = {"routing_key": routing_keys.new()}
                        post = await timed_call(
                            calls, f"POST-{n}", api.post("/event-stream/", json=body)
                        )
                        if post is not None and post.status_code == 201:
                            location = post.json()["location"]
                            await timed_call(calls, f"handshake-{n}", handshake(location))

                async def more_bursts() -> None:
                    if stall == "live-bursts":  # keep it coming while the probes run
                        await publish_bursts(amqp_url, live_key, next_seq, 4, 1.0)

                with trio.fail_after(60):
                    async with trio.open_nursery() as window:
                        window.start_soon(api_calls)
                        window.start_soon(more_bursts)
                        probes = range(1000, 1000 + PROBE_EVENTS)
                        await probe.publish(publisher, probes, PROBE_INTERVAL)
                        await probe.wait_received(probes, 10)
            if stall == "live-bursts":
                stalled_total += 4 * BURST
            await publisher.aclose()

            # The stalled client starts reading: it gets every event, in order.
            reader = await drain_events(raw, stalled_total, timeout=90)
            await raw.aclose()
            nursery.cancel_scope.cancel()

    base = probe.latencies(baseline)
    during = probe.latencies(probes)
    growth = max(rss) - rss[0]
    report = (
        f"[{stall}, {pool}] probe streams received {len(during)} of {PROBE_EVENTS}; "
        f"baseline p99 {quantile(base, 99) * 1000:.0f} ms"
        + (f", with the stalled client p99 {quantile(during, 99) * 1000:.0f} ms" if during else "")
        + f"; calls {calls}; RSS +{growth / MB:.1f} MB; probe websockets closed: "
        f"{probe.closed}"
    )
    print(report)
    assert len(during) == PROBE_EVENTS, f"events lost or held back: {report}"
    assert probe.in_order(probes), f"out of order: {report}"
    p99 = quantile(during, 99)
    assert p99 <= quantile(base, 99) + LATENCY_MARGIN, f"latency rose: {report}"
    assert p99 < LATENCY_CEILING, f"latency over {LATENCY_CEILING}s: {report}"
    expected = {"GET": 200, "POST-1": 201, "handshake-1": 101, "POST-2": 201, "handshake-2": 101}
    assert {name: calls[name].status for name in calls} == expected, f"API calls: {report}"
    assert max(c.seconds for c in calls.values()) < API_BOUND, f"API calls slow: {report}"
    assert growth < RSS_GROWTH_BOUND, f"memory grew: {report}"
    events = reader.events()
    assert_consecutive(events, 1, f"[{stall}] stalled client once it read")
    assert_payloads_in_order(events, stalled_total, f"[{stall}] stalled client once it read")


@dataclass(frozen=True)
class Source:
    """What a reader's stream holds: live bursts on a fresh key, or the chunked backlog."""

    kind: str
    key: str
    #: The websocket's query: the backlog is replayed from the first event.
    query: str

    @property
    def live(self) -> bool:
        return self.kind == "live-bursts"


@pytest.fixture(params=["replay-chunked", "live-bursts"])
def source(
    request: pytest.FixtureRequest, routing_keys: RoutingKeys, backlogs: dict[str, str]
) -> Source:
    """Each reader test runs once on the replayed chunked backlog, once on live bursts."""
    kind: str = request.param
    if kind == "live-bursts":
        return Source(kind, routing_keys.new(), "")
    return Source(kind, backlogs["chunked"], "stream_from_ordinal=0")


# --------------------------------------------------------------------------- #
# A slow reader gets everything, in order


@pytest.mark.timeout(240)
async def test_slow_reader_gets_every_event_in_order(
    services: Services,
    amqp_url: str,
    source: Source,
) -> None:
    service = await start_service(services, amqp_url, ESS_SEND_TIMEOUT="60")
    total = 5 * BURST if source.live else CHUNKED.events
    async with api_client(service) as api:
        stream = await create_stream(api, source.key)
    events: list[dict[str, object]] = []
    async with connect(stream["location"], source.query) as ws, trio.open_nursery() as nursery:
        if source.live:
            nursery.start_soon(publish_bursts, amqp_url, source.key, 0, 5, 0.2)
        with trio.fail_after(180):
            while len(events) < total:
                events.append(json.loads(await ws.get_message()))
                if len(events) < SLOW_FRAMES:
                    await trio.sleep(SLOW_PAUSE)  # the client's reading pace: the test's subject
    assert_consecutive(events, 1, f"[{source.kind}] slow reader")
    assert_payloads_in_order(events, total, f"[{source.kind}] slow reader")


# --------------------------------------------------------------------------- #
# A client that never reads is closed after the send timeout


@pytest.mark.timeout(180)
async def test_client_that_never_reads_is_closed_1008_after_the_send_timeout(
    services: Services,
    amqp_url: str,
    source: Source,
) -> None:
    service = await start_service(services, amqp_url, ESS_SEND_TIMEOUT=str(SEND_TIMEOUT))
    async with api_client(service) as api, trio.open_nursery() as nursery:
        stream = await create_stream(api, source.key)
        raw = await RawWebSocket.connect(with_query(stream["location"], source.query))
        opened = trio.current_time()
        if source.live:
            nursery.start_soon(publish_bursts, amqp_url, source.key, 0, BURSTS, 0.05)

        async def closes_1008() -> float:
            response = await api.get("/metrics")
            return labelled_metric(response.text, "ess_websocket_closes_total", 'code="1008"')

        closed_after: float | None = None
        with trio.move_on_after(SEND_TIMEOUT + 30):
            while await closes_1008() < 1:
                await trio.sleep(0.1)  # polling a counter: no event to wait on
            closed_after = trio.current_time() - opened
        assert closed_after is not None, (
            f"a client that read nothing was not closed with 1008 within {SEND_TIMEOUT + 30}s "
            f"(ESS_SEND_TIMEOUT={SEND_TIMEOUT})"
        )
        reader = FrameReader()
        ended = False
        with trio.move_on_after(30):
            while not ended:
                try:
                    chunk = await raw.stream.receive_some(1 << 20)
                except trio.BrokenResourceError:
                    chunk = b""  # reset by the service: closed as well
                ended = not chunk
                reader.feed(chunk)
        assert ended, (
            f"the service counted a 1008 close but did not end the TCP connection within 30 s "
            f"({len(reader.texts)} events read meanwhile, close frame {reader.close_code})"
        )
        await raw.aclose()
        nursery.cancel_scope.cancel()
    print(
        f"[{source.kind}] closed after {closed_after:.1f}s; {len(reader.texts)} events delivered "
        f"first; close frame {reader.close_code} {reader.close_reason!r}"
    )
    assert closed_after >= SEND_TIMEOUT - 0.5, f"closed after {closed_after:.1f}s, too early"
    assert reader.close_code in (None, 1008), f"closed with {reader.close_code}, not 1008"
    assert_consecutive(reader.events(), 1, f"[{source.kind}] what it was sent before the close")
