"""Clients that stop reading or silently vanish must not cost memory or consumers.

SPEC section 4: "A client that stops reading is not allowed to grow the
service's memory without bound: backpressure reaches the broker (unacked
window), and a client that has not read for a configurable time is closed."
DESIGN: trio-websocket has no keepalive, so the service pings and drops a
peer that stops answering.
"""

from __future__ import annotations

import json
import re
import secrets
import statistics

import pytest
import trio

from actors.ports.broker import FromNext
from tests.e2e.client import connect, receive_json
from tests.support.proxy import FreezableProxy

from .conftest import (
    RawWebSocket,
    RoutingKeys,
    Services,
    actor_tree,
    api_client,
    broker_channels,
    connections_of,
    create_stream,
    named,
    open_publisher,
    poll_until,
    publish_many,
    rss_bytes,
    service_pid,
    wait_pool_connected,
)

pytestmark = pytest.mark.slow

MB = 1024 * 1024
EVENTS = 20_000
EVENT_BYTES = 2048
PREFETCH = 200
#: RSS growth allowed while 20,000 x 2 KB (about 40 MB) pile up for a client
#: that never reads. What the service may legitimately hold for it: the
#: unacked window, PREFETCH x 2 KB = 0.4 MB, in up to ~3 forms (AMQP read
#: buffer, message body, formatted text frame) and twice over (the shared
#: live-tail buffer before the slow member is demoted to a consumer of its
#: own, then that consumer's window): under 3 MB. The kernel's socket
#: buffers (several MB on loopback) are not in the process's RSS. The rest
#: is fixed overhead: allocator arenas, HTTP polling of /debug/actors,
#: metrics. Buffering the backlog instead would cost at least 40 MB (bytes)
#: plus as much again as text frames, so 20 MB separates the two clearly.
RSS_GROWTH_BOUND = 20 * MB
#: Publish-to-receive latency of a client on another stream meanwhile.
LATENCY_P99_BOUND = 0.2


def padded(seq: int) -> bytes:
    head = json.dumps({"seq": seq, "pad": ""}).encode()
    return json.dumps({"seq": seq, "pad": "x" * (EVENT_BYTES - len(head))}).encode()


def via(location: str, port: int) -> str:
    return re.sub(r"^ws://([^:/]+):\d+", f"ws://127.0.0.1:{port}", location)


async def test_non_reading_client_costs_bounded_memory_and_others_stay_prompt(
    services: Services, routing_keys: RoutingKeys, amqp_url: str
) -> None:
    service = await services.start(
        ESS_SEND_TIMEOUT="60",  # not closed for being slow during the test
        ESS_PING_INTERVAL="60",  # the raw client never answers pings
        ESS_PING_TIMEOUT="60",
        ESS_PREFETCH=str(PREFETCH),
    )
    pid = service_pid(service)
    slow_key, fast_key = routing_keys.new(), routing_keys.new()
    async with api_client(service) as api:
        slow_stream = await create_stream(api, slow_key)
        fast_stream = await create_stream(api, fast_key)

        slow = await RawWebSocket.connect(slow_stream["location"])
        async with (
            connect(fast_stream["location"]) as fast,
            open_publisher(amqp_url, service.exchange) as bulk,
            open_publisher(amqp_url, service.exchange) as prompt,
        ):
            # Warm up every code path on both streams, then take the baseline.
            await publish_many(bulk, slow_key, [padded(-i) for i in range(1, 101)])
            for seq in range(20):
                await prompt.publish(fast_key, json.dumps({"seq": seq}).encode())
                assert (await receive_json(fast))["seq"] == seq
            baseline = rss_bytes(pid)
            peak = baseline
            sent_at: dict[int, float] = {}
            broker_at: dict[int, float] = {}  # a direct consumer of the same queue
            client_at: dict[int, float] = {}  # the service's websocket client
            bulk_done = trio.Event()

            async def sample_rss() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rss_bytes(pid))
                    await trio.sleep(0.05)

            async def control_consumer(task_status: trio.TaskStatus[None]) -> None:
                async with prompt.subscribe(fast_key, FromNext(), prefetch=1000) as subscription:
                    task_status.started()
                    async for event in subscription:
                        broker_at[json.loads(event.body)["seq"]] = trio.current_time()
                        await subscription.ack(event.offset)

            async def probe_publisher() -> None:
                seq = 1000
                while not bulk_done.is_set():
                    sent_at[seq] = trio.current_time()
                    await prompt.publish(fast_key, json.dumps({"seq": seq}).encode())
                    seq += 1
                    await trio.sleep(0.02)
                sent_at[-1] = trio.current_time()
                await prompt.publish(fast_key, json.dumps({"seq": -1}).encode())

            probes_done = trio.Event()

            async def probe_receiver() -> None:
                expected = 1000
                while True:
                    event = await receive_json(fast)
                    client_at[event["seq"]] = trio.current_time()
                    if event["seq"] == -1:
                        probes_done.set()
                        return
                    assert event["seq"] == expected, "out of order or lost on the fast stream"
                    expected += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample_rss)
                await nursery.start(control_consumer)
                nursery.start_soon(probe_receiver)
                nursery.start_soon(probe_publisher)
                with trio.fail_after(120):
                    await publish_many(bulk, slow_key, [padded(i) for i in range(EVENTS)])
                    # Let the service settle on the backlog for a while, still probing.
                    await trio.sleep(1.0)
                    bulk_done.set()
                    await probes_done.wait()
                    while -1 not in broker_at:  # the control consumer's last event
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

            tree = await actor_tree(api)
        await slow.aclose()

    (slow_connection,) = connections_of(tree, slow_stream["id"])
    growth = peak - baseline
    # What the service adds: websocket arrival minus the arrival at a plain
    # AMQP consumer of the same queue (the broker's own delay under the bulk
    # load is not the service's to answer for).
    added = [client_at[seq] - broker_at[seq] for seq in client_at]
    overall = [client_at[seq] - sent_at[seq] for seq in client_at]
    p99 = statistics.quantiles(added, n=100)[98]
    report = (
        f"RSS {baseline / MB:.1f} MB -> peak {peak / MB:.1f} MB (+{growth / MB:.1f} MB); "
        f"fast stream over {len(added)} events: service-added latency "
        f"p50 {statistics.median(added) * 1000:.1f} ms p99 {p99 * 1000:.1f} ms, "
        f"publish-to-client p50 {statistics.median(overall) * 1000:.1f} ms "
        f"max {max(overall) * 1000:.1f} ms; slow client sent "
        f"{slow_connection['counters']['messages_sent']} of {EVENTS + 100}"
    )
    print(report)
    # The slow client really was stalled: the backlog stayed in the broker.
    assert slow_connection["counters"]["messages_sent"] < EVENTS // 4, report
    assert growth < RSS_GROWTH_BOUND, report
    assert len(added) >= 50, report
    assert p99 < LATENCY_P99_BOUND, report


async def test_vanished_client_is_dropped_by_ping_timeout_and_its_consumer_released(
    services: Services, routing_keys: RoutingKeys, amqp_url: str
) -> None:
    name = f"ess-faults-{secrets.token_hex(4)}"
    service = await services.start(
        named(amqp_url, name), ESS_PING_INTERVAL="1", ESS_PING_TIMEOUT="1"
    )
    key = routing_keys.new()
    await wait_pool_connected(name)
    idle_channels = await broker_channels(name)
    proxy = FreezableProxy(service.public_port)
    async with api_client(service) as api, trio.open_nursery() as nursery:
        stream = await create_stream(api, key)
        port = await nursery.start(proxy.run)
        async with (
            connect(via(stream["location"], port)) as ws,
            open_publisher(amqp_url, service.exchange) as publisher,
        ):
            await publisher.publish(key, b'{"hello": 1}')
            assert (await receive_json(ws))["ess_ordinal"] == 1
            assert len(connections_of(await actor_tree(api), stream["id"])) == 1
            assert await broker_channels(name) == idle_channels + 1  # its consumer

            proxy.freeze()  # no FIN, no RST: the peer just stops answering

            async def connection_gone() -> bool:
                return not connections_of(await actor_tree(api), stream["id"])

            took = await poll_until(connection_gone, 10, "vanished connection dropped")

            async def consumer_released() -> bool:
                return await broker_channels(name) == idle_channels

            await poll_until(consumer_released, 10, "its consumer channel closed", 0.2)
            await proxy.close_all()
        nursery.cancel_scope.cancel()
    # Ping interval 1 s + pong timeout 1 s + a bounded abort: well within 5 s.
    assert took < 5.0, f"vanished client dropped only after {took:.1f}s"
    assert "no pong within 1s" in service.log_path.read_text()  # type: ignore[union-attr]


async def test_client_that_stops_reading_is_closed_after_send_timeout(
    services: Services, routing_keys: RoutingKeys, amqp_url: str
) -> None:
    name = f"ess-faults-{secrets.token_hex(4)}"
    service = await services.start(
        named(amqp_url, name),
        ESS_SEND_TIMEOUT="2",
        ESS_PING_INTERVAL="60",  # so that only the send timeout can end it
        ESS_PING_TIMEOUT="60",
        ESS_PREFETCH=str(PREFETCH),
    )
    key = routing_keys.new()
    await wait_pool_connected(name)
    idle_channels = await broker_channels(name)
    async with api_client(service) as api:
        stream = await create_stream(api, key)
        slow = await RawWebSocket.connect(stream["location"])
        try:
            assert len(connections_of(await actor_tree(api), stream["id"])) == 1
            assert await broker_channels(name) == idle_channels + 1  # its consumer
            # About 8 MB: more than the kernel buffers both ways (4 MB send
            # buffer at most, a minimal receive buffer), so sending blocks.
            async with open_publisher(amqp_url, service.exchange) as publisher:
                await publish_many(publisher, key, [padded(i) for i in range(4000)])

            async def connection_gone() -> bool:
                return not connections_of(await actor_tree(api), stream["id"])

            await poll_until(connection_gone, 20, "non-reading connection closed")

            async def consumer_released() -> bool:
                return await broker_channels(name) == idle_channels

            await poll_until(consumer_released, 10, "its consumer channel closed", 0.2)
            # The service closed the TCP connection: what is buffered ends in EOF.
            await slow.drain_until_eof(timeout=10)
            metrics = (await api.get("/metrics")).text
        finally:
            await slow.aclose()
    assert "client did not read for 2s" in service.log_path.read_text()  # type: ignore[union-attr]
    assert re.search(r'ess_websocket_closes_total\{code="1008"\} 1\.0', metrics), metrics
