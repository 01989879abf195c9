"""SIGTERM with 500 websockets connected: every one closes with 1001, exit 0 within the grace.

SPEC section 4 (closing codes): "the service is shutting down (SIGTERM/
SIGINT): 1001"; DESIGN: "stop accepting, close every websocket with 1001,
drain, exit 0 within a bounded time" (``ESS_SHUTDOWN_GRACE``).
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest
import trio

from tests.e2e.client import connect, wait_closed

from .conftest import (
    RoutingKeys,
    Services,
    actor_tree,
    api_client,
    create_stream,
    raise_fd_limit,
)

pytestmark = pytest.mark.slow

CLIENTS = 500
STREAMS = 50
GRACE = 10.0


async def test_sigterm_closes_500_websockets_with_1001_and_exits_0_within_grace(
    services: Services, routing_keys: RoutingKeys
) -> None:
    raise_fd_limit(4 * CLIENTS)  # our 500 client sockets, plus the service's own
    service = await services.start(
        ESS_MAX_CONNECTIONS_PER_STREAM="0",
        ESS_SHUTDOWN_GRACE=str(GRACE),
        ESS_LOG_LEVEL="INFO",  # DEBUG logs every frame of 500 sockets
    )
    async with api_client(service) as api:
        streams = [await create_stream(api, routing_keys.new()) for _ in range(STREAMS)]

        codes: list[int | None] = []
        connected = 0
        all_connected = trio.Event()
        handshakes = trio.Semaphore(50)

        async def client(location: str) -> None:
            nonlocal connected
            async with handshakes:
                ws_context = connect(location)
                ws = await ws_context.__aenter__()
            try:
                connected += 1
                if connected == CLIENTS:
                    all_connected.set()
                closed = await wait_closed(ws, timeout=60)
                codes.append(closed.code)
            finally:
                await ws_context.__aexit__(None, None, None)

        exited_after: float | None = None
        exit_code: int | None = None

        async def wait_exit(signalled_at: float) -> None:
            nonlocal exited_after, exit_code
            exit_code = await trio.to_thread.run_sync(service.wait_exit, GRACE + 20)
            exited_after = trio.current_time() - signalled_at

        async with trio.open_nursery() as nursery:
            for number in range(CLIENTS):
                nursery.start_soon(client, streams[number % STREAMS]["location"])
            with trio.fail_after(60):
                await all_connected.wait()

            # Every websocket is served by a connection actor before we signal.
            async def all_served() -> int:
                tree = await actor_tree(api)
                count: int = tree["counters"]["connections"]
                return count

            with trio.fail_after(30):
                while await all_served() < CLIENTS:
                    await trio.sleep(0.1)  # polling the tree: no event to wait on

            service.signal(signal.SIGTERM)
            nursery.start_soon(wait_exit, trio.current_time())

    assert len(codes) == CLIENTS
    assert Counter(codes) == Counter({1001: CLIENTS}), Counter(codes)
    assert exit_code == 0, service.log()
    assert exited_after is not None and exited_after < GRACE, (
        f"exited {exited_after:.1f}s after SIGTERM (grace {GRACE}s)"
    )
    print(f"{CLIENTS} websockets closed with 1001; exit 0 after {exited_after:.2f}s")
