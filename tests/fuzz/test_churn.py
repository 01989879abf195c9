"""Churn: 10,000 websocket connect/disconnect cycles across 100 streams, 50 in flight.

Before (after a warm-up) and after, it measures the service's open file
descriptors, its RSS, the broker channels and consumers on its AMQP
connections, and the connection nodes of ``/debug/actors``; everything must
return to (near) the baseline. ``ESS_FUZZ_CHURN_CYCLES`` lowers the count for
local runs; CI runs the default.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.e2e.service import ServiceProcess

from .conftest import start_service, unique_key
from .probes import (
    actor_tree,
    broker_usage,
    is_ready,
    open_fds,
    poll_until,
    rss_kib,
    wait_no_connections,
)

CYCLES = int(os.environ.get("ESS_FUZZ_CHURN_CYCLES", "10000"))
STREAMS = 100
IN_FLIGHT = 50
WARM_UP = 500
#: Tolerances after the churn, against the warmed-up baseline.
FD_SLACK = 10
RSS_SLACK_KIB = 30 * 1024
SETTLE_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def churn_service(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str
) -> Iterator[ServiceProcess]:
    proc = start_service(
        tmp_path_factory, amqp_url, ESS_MAX_CONNECTIONS_PER_STREAM="0", ESS_LOG_LEVEL="WARNING"
    )
    yield proc
    code = proc.clean_up()
    assert code == 0, f"ess serve exited with {code}:\n{proc.log()}"


async def churn(locations: list[str], cycles: int) -> None:
    """``cycles`` connect/close cycles, ``IN_FLIGHT`` at a time, round robin over streams."""
    counter = iter(range(cycles))

    async def worker() -> None:
        for n in counter:
            async with open_websocket_url(
                locations[n % len(locations)], connect_timeout=20, disconnect_timeout=10
            ) as ws:
                assert ws.closed is None

    async with trio.open_nursery() as nursery:
        for _ in range(IN_FLIGHT):
            nursery.start_soon(worker)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_connection_churn_leaves_nothing_behind(churn_service: ServiceProcess) -> None:
    pid = churn_service.process.pid  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=churn_service.api, timeout=10.0) as api:
        locations = []
        for n in range(STREAMS):
            response = await api.post("/event-stream/", json={"routing_key": unique_key(f"c{n}")})
            assert response.status_code == 201, response.text
            locations.append(response.json()["location"])

    await churn(locations, WARM_UP)
    wait_no_connections(churn_service.api, SETTLE_TIMEOUT)
    base_fds, base_rss, base_broker = open_fds(pid), rss_kib(pid), broker_usage(pid)

    started = time.monotonic()
    await churn(locations, CYCLES)
    seconds = time.monotonic() - started
    peak_rss = rss_kib(pid)

    wait_no_connections(churn_service.api, SETTLE_TIMEOUT)
    fds = poll_until(
        lambda: open_fds(pid), lambda n: n <= base_fds + FD_SLACK, SETTLE_TIMEOUT, "open fds"
    )
    broker = poll_until(
        lambda: broker_usage(pid),
        lambda u: (
            (u.connections, u.channels, u.consumers)
            == (base_broker.connections, base_broker.channels, base_broker.consumers)
        ),
        SETTLE_TIMEOUT,
        f"broker usage (baseline {base_broker})",
    )
    rss = rss_kib(pid)
    print(
        f"churn: {CYCLES} cycles over {STREAMS} streams, {IN_FLIGHT} in flight, in "
        f"{seconds:.1f}s ({CYCLES / seconds:.0f}/s); fds {base_fds} -> {fds}; "
        f"RSS {base_rss} -> {peak_rss} (end of churn) -> {rss} KiB; "
        f"broker {base_broker} -> {broker}"
    )
    assert rss <= base_rss + RSS_SLACK_KIB, (base_rss, rss)
    assert is_ready(churn_service.api)
    tree = actor_tree(churn_service.api)
    assert tree["counters"]["streams"] == STREAMS, tree["counters"]
