"""Idle live-tail websockets over the real edge and the real actors (memory broker).

What an idle websocket costs is counted in trio tasks here (issue 12: memory
per idle websocket): the edge's task, which reads the connection, and its
connection actor's task; no handler task waits for the actor. And the closes
of such handed-over websockets still carry the service's codes and are
counted in the metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from actors.adapters.memory_broker import MemoryBroker
from actors.adapters.memory_registry import MemoryRegistry
from actors.settings import ActorSettings
from actors.supervisor import Supervisor
from web.metrics import ServiceMetrics
from web.websocket import serve_public_websockets

SETTINGS = replace(ActorSettings(), max_connections_per_stream=0, ping_interval=60.0)


def live_tasks(nursery: trio.Nursery) -> int:
    """Every task under ``nursery`` (the service's, not the clients' reader tasks)."""
    count, todo = 0, list(nursery.child_tasks)
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


@dataclass
class Service:
    supervisor: Supervisor
    port: int
    #: Where every task of the service runs (not the clients' reader tasks).
    tasks: trio.Nursery
    #: The websocket edge's own scope: cancelling it is the listener stopping alone.
    edge: trio.CancelScope


@asynccontextmanager
async def service(metrics: ServiceMetrics) -> AsyncIterator[Service]:
    """A supervisor on the memory fakes behind the real websocket edge."""
    supervisor = Supervisor(MemoryBroker(), MemoryRegistry(), SETTINGS)
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        port = await nursery.start(edge, supervisor, metrics, scope)
        yield Service(supervisor, port, nursery, scope)
        nursery.cancel_scope.cancel()


async def edge(
    supervisor: Supervisor,
    metrics: ServiceMetrics,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await serve_public_websockets(
            supervisor,
            host="127.0.0.1",
            port=0,
            metrics=metrics,
            close_timeout=5.0,
            task_status=task_status,
        )


async def until_open(supervisor: Supervisor, count: int) -> None:
    """Until ``count`` connections are open and the stream's live tail is attached."""
    with trio.fail_after(10):
        while True:
            connections = [c for s in supervisor.streams for c in s.connections]
            hubs = [s.live_tail for s in supervisor.streams]
            if (
                len(connections) == count
                and all(c.state == "open" for c in connections)
                and all(hub is not None and hub.attached for hub in hubs)
            ):
                return
            await trio.sleep(0.01)


async def read_close(ws: WebSocketConnection) -> tuple[int, str | None]:
    with trio.fail_after(10):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                return closed.reason.code, closed.reason.reason


async def test_an_idle_live_tail_websocket_is_two_tasks_and_delete_still_closes_it() -> None:
    metrics = ServiceMetrics()
    async with service(metrics) as it, AsyncExitStack() as clients:
        supervisor, port = it.supervisor, it.port
        record = await supervisor.create_stream("rk")
        url = f"ws://127.0.0.1:{port}/event-stream/{record.uuid}"
        sockets = [await clients.enter_async_context(open_websocket_url(url))]
        await until_open(supervisor, 1)  # the stream's task and its hub run now
        one = live_tasks(it.tasks)
        sockets += [await clients.enter_async_context(open_websocket_url(url)) for _ in range(5)]
        await until_open(supervisor, 6)
        # The edge's task (reading the connection) and the connection actor's: the
        # handler returned once the actor held the websocket.
        assert live_tasks(it.tasks) - one == 5 * 2
        registry = metrics.registry
        assert registry.get_sample_value("ess_websocket_connections") == 6

        assert await supervisor.delete_stream(record.id)
        for ws in sockets:
            assert await read_close(ws) == (1000, "The stream has been deleted")
        with trio.fail_after(10):
            while registry.get_sample_value("ess_websocket_connections") != 0:
                await trio.sleep(0.01)
        assert registry.get_sample_value("ess_websocket_closes_total", {"code": "1000"}) == 6


async def test_shutdown_closes_handed_over_websockets_with_1001() -> None:
    metrics = ServiceMetrics()
    async with service(metrics) as it, AsyncExitStack() as clients:
        supervisor, port = it.supervisor, it.port
        record = await supervisor.create_stream("rk")
        url = f"ws://127.0.0.1:{port}/event-stream/{record.uuid}"
        sockets = [await clients.enter_async_context(open_websocket_url(url)) for _ in range(3)]
        await until_open(supervisor, 3)
        with trio.fail_after(10):
            await supervisor.shutdown()  # what `ess serve` does first on SIGTERM
        for ws in sockets:
            assert await read_close(ws) == (1001, "The service is shutting down")
        registry = metrics.registry
        with trio.fail_after(10):
            while registry.get_sample_value("ess_websocket_connections") != 0:
                await trio.sleep(0.01)
        assert registry.get_sample_value("ess_websocket_closes_total", {"code": "1001"}) == 3


async def test_the_listener_cancelled_alone_closes_handed_over_websockets_with_1001() -> None:
    """The edge tells each connection actor, and keeps reading until its close completes."""
    metrics = ServiceMetrics()
    async with service(metrics) as it, AsyncExitStack() as clients:
        supervisor, port = it.supervisor, it.port
        record = await supervisor.create_stream("rk")
        url = f"ws://127.0.0.1:{port}/event-stream/{record.uuid}"
        sockets = [await clients.enter_async_context(open_websocket_url(url)) for _ in range(3)]
        await until_open(supervisor, 3)
        started = trio.current_time()
        it.edge.cancel()
        for ws in sockets:
            assert await read_close(ws) == (1001, "The service is shutting down")
        with trio.fail_after(10):
            while supervisor.streams[0].connections:
                await trio.sleep(0.01)
        # Each close handshake was read by the edge: well within the 5 s close timeout.
        assert trio.current_time() - started < 2
        registry = metrics.registry
        assert registry.get_sample_value("ess_websocket_closes_total", {"code": "1001"}) == 3
        assert registry.get_sample_value("ess_websocket_connections") == 0
