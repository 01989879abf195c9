"""The broker goes away (``rabbitmqctl stop_app``) and comes back while clients are connected.

SPEC section 4: "While the broker is unreachable, connections stay open;
when it returns, each connection resumes after the last ordinal it
delivered: no gap, no duplicate." Section 3: POST answers 503 and records
nothing without a broker; DELETE still closes its websockets (1000) and
removes the record; the queue it owned is deleted once the broker is back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.e2e.client import connect, wait_closed

from .conftest import (
    WAIT_FOR_OTHERS,
    RoutingKeys,
    Services,
    api_client,
    create_stream,
    list_ids,
    open_publisher,
    poll_until,
    rabbitmqctl,
    start_broker,
    wait_status,
    wait_until_broker_is_ours,
)

pytestmark = [pytest.mark.slow, pytest.mark.stops_broker]

#: How long the broker stays down (the brief: about five seconds).
OUTAGE = 5.0
#: Ceiling on the service's connection attempts during the outage. With the
#: backoff (0.5 s doubling, full jitter down to half) each of the 2 pool
#: slots makes about 4-6 attempts in a 6-9 s outage; a fixed 0.5 s retry
#: would make about 30-40, a busy loop thousands.
MAX_ATTEMPTS = 20


class Collector:
    """Reads one websocket in the background; remembers every event and any close."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                self.events.append(json.loads(await self.ws.get_message()))
                self._changed.set()
                self._changed = trio.Event()
        except ConnectionClosed as closed:
            self.closed = closed
            self._changed.set()

    async def wait_count(self, count: int, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while len(self.events) < count:
                assert self.closed is None, f"websocket closed: {self.closed}"
                await self._changed.wait()


def connection_attempts(log_path: Path) -> tuple[int, int]:
    """(failed connects, successful connects) from the log lines of actors.adapters.rabbitmq."""
    text = log_path.read_text(errors="replace")
    failed = len(re.findall(r"actors\.adapters\.rabbitmq_pool: broker connection \d+ failed", text))
    up = len(re.findall(r"actors\.adapters\.rabbitmq_pool: broker connection \d+ up", text))
    return failed, up


@pytest.mark.timeout(WAIT_FOR_OTHERS + 180)
async def test_clients_resume_without_gap_or_duplicate_after_broker_outage(
    services: Services, routing_keys: RoutingKeys, amqp_url: str
) -> None:
    service = await services.start(f"{amqp_url.rstrip('/')}/?heartbeat=2")
    keys = [routing_keys.new() for _ in range(3)]
    doomed_key = routing_keys.new()
    before, after = 5, 5

    async with api_client(service) as api, trio.open_nursery() as nursery:
        streams = [await create_stream(api, key) for key in keys]
        doomed = await create_stream(api, doomed_key)
        async with (
            connect(streams[0]["location"]) as ws0,
            connect(streams[1]["location"]) as ws1,
            connect(streams[2]["location"]) as ws2,
            connect(doomed["location"]) as doomed_ws,
        ):
            collectors = [Collector(ws) for ws in (ws0, ws1, ws2)]
            for collector in collectors:
                nursery.start_soon(collector.run)

            async with open_publisher(amqp_url, service.exchange) as publisher:
                for seq in range(before):
                    for key in keys:
                        await publisher.publish(key, json.dumps({"seq": seq}).encode())
            for collector in collectors:
                await collector.wait_count(before)

            await wait_until_broker_is_ours()
            ids_before = await list_ids(api)
            stopped_at = trio.current_time()
            try:
                await rabbitmqctl("stop_app")
                await wait_status(api, "/health/ready", 503, timeout=20)
                failed_at_stop, up_at_stop = connection_attempts(service.log_path)  # type: ignore[arg-type]

                # POST without a broker: 503, nothing recorded.
                response = await api.post("/event-stream/", json={"routing_key": keys[0]})
                assert response.status_code == 503, response.text
                assert await list_ids(api) == ids_before

                # DELETE without a broker: its websocket closes 1000, the record goes.
                response = await api.delete(f"/event-stream/{doomed['id']}")
                assert response.status_code == 204, response.text
                closed = await wait_closed(doomed_ws, timeout=5)
                assert (closed.code, closed.reason) == (1000, "The stream has been deleted")
                assert doomed["id"] not in await list_ids(api)

                await trio.sleep_until(stopped_at + OUTAGE)  # the outage itself, not a sync
                assert all(c.closed is None for c in collectors), "a websocket closed"
            finally:
                with trio.CancelScope(shield=True):
                    await start_broker()
            outage = trio.current_time() - stopped_at

            await wait_status(api, "/health/ready", 200, timeout=60)
            failed, up = connection_attempts(service.log_path)  # type: ignore[arg-type]
            attempts = (failed - failed_at_stop) + (up - up_at_stop)
            assert failed - failed_at_stop >= 1, "no failed connection attempt during the outage?"
            assert attempts < MAX_ATTEMPTS, (
                f"{attempts} broker connection attempts during a {outage:.1f}s outage: no backoff"
            )

            async with open_publisher(amqp_url, service.exchange) as publisher:
                for seq in range(before, before + after):
                    for key in keys:
                        await publisher.publish(key, json.dumps({"seq": seq}).encode())
                for collector in collectors:
                    await collector.wait_count(before + after, timeout=60)

                # The queue the deleted stream owned is deleted once the broker is back.
                async def doomed_queue_gone() -> bool:
                    return not await publisher.stream_exists(doomed_key)

                await poll_until(doomed_queue_gone, 30, f"queue {doomed_key!r} deleted")

            total = before + after
            for collector in collectors:
                assert collector.closed is None, f"websocket closed: {collector.closed}"
                assert [e["seq"] for e in collector.events] == list(range(total))
                assert [e["ess_ordinal"] for e in collector.events] == list(range(1, total + 1))
            for stream in streams:
                response = await api.delete(f"/event-stream/{stream['id']}")
                assert response.status_code == 204
        nursery.cancel_scope.cancel()
