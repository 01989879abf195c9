"""Fault-injection fixtures and helpers: the real process, the real broker, real sockets.

Everything here drives ``ess serve`` (started with :mod:`tests.e2e.service`)
from the outside: HTTP, websockets, signals, ``rabbitmqctl`` and ``/proc``.
Each test gets its own services (own ports, registry and exchange) and its
own routing keys; the fixtures delete the queues and exchanges afterwards.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import amqp
from actors.adapters.rabbitmq import RabbitMQBroker
from tests.e2e.service import ServiceProcess

#: Generous bound on any single wait in these tests (they use their own, tighter ones).
WAIT = 30.0


# --------------------------------------------------------------------------- #
# Services


class Services:
    """Starts ``ess serve`` processes for one test; all are killed afterwards."""

    def __init__(self, workdir: Path, amqp_url: str) -> None:
        self._workdir = workdir
        self._amqp_url = amqp_url
        self.started: list[ServiceProcess] = []

    async def start(self, amqp_url: str | None = None, **env: str) -> ServiceProcess:
        proc = ServiceProcess(
            workdir=self._workdir / f"ess-{len(self.started)}",
            amqp_url=amqp_url or self._amqp_url,
            extra_env=dict(env),
        )
        self.started.append(proc)
        # ServiceProcess.start blocks (it polls the readiness probe): keep the
        # event loop free for the test's websockets meanwhile.
        await trio.to_thread.run_sync(proc.start)
        return proc

    async def restart(self, proc: ServiceProcess) -> None:
        """Start ``proc`` again (same ports, registry and exchange) after it ended."""
        await trio.to_thread.run_sync(proc.start)

    async def kill(self, proc: ServiceProcess) -> None:
        """SIGKILL, and wait until the process is gone."""
        await trio.to_thread.run_sync(proc.kill)


@pytest.fixture
async def services(tmp_path: Path, amqp_url: str) -> AsyncIterator[Services]:
    registry = Services(tmp_path, amqp_url)
    try:
        yield registry
    finally:
        for proc in registry.started:
            proc.kill()
        exchanges = {proc.exchange for proc in registry.started}
        await delete_broker_objects(amqp_url, exchanges=exchanges)


class RoutingKeys:
    """Unique routing keys for one test; their queues are deleted afterwards."""

    def __init__(self, test_name: str) -> None:
        self._prefix = f"ess.faults.{re.sub(r'[^a-z0-9]+', '-', test_name.lower())[:40]}"
        self.made: list[str] = []

    def new(self) -> str:
        key = f"{self._prefix}.{uuid.uuid4().hex[:10]}"
        self.made.append(key)
        return key


@pytest.fixture
async def routing_keys(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[RoutingKeys]:
    keys = RoutingKeys(request.node.name)
    try:
        yield keys
    finally:
        await delete_broker_objects(amqp_url, queues=keys.made)


async def delete_broker_objects(
    amqp_url: str, *, queues: list[str] | None = None, exchanges: set[str] | None = None
) -> None:
    """Best-effort removal of test queues and exchanges (bounded: the broker may be down)."""
    with trio.move_on_after(20):
        try:
            async with amqp.connect(amqp_url) as connection:
                for queue in queues or []:
                    async with connection.channel() as channel:
                        await channel.queue_delete(queue)
                for exchange in exchanges or set():
                    async with connection.channel() as channel:
                        await channel.exchange_delete(exchange)
        except amqp.AMQPError:
            pass


# --------------------------------------------------------------------------- #
# HTTP


@asynccontextmanager
async def api_client(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.api, timeout=10.0) as client:
        yield client


async def create_stream(client: httpx.AsyncClient, routing_key: str) -> dict[str, Any]:
    response = await client.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def list_ids(client: httpx.AsyncClient) -> list[int]:
    response = await client.get("/event-stream/")
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["event_streams"]]


async def wait_status(
    client: httpx.AsyncClient, path: str, status: int, timeout: float = WAIT
) -> None:
    """Poll ``path`` until it answers ``status`` (a probe: there is no event to wait on)."""
    last: object = None
    try:
        with trio.fail_after(timeout):
            while True:
                try:
                    response = await client.get(path)
                    last = response.status_code
                    if response.status_code == status:
                        return
                except httpx.TransportError as error:
                    last = error
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"{path} did not answer {status} within {timeout}s: {last}") from None


async def actor_tree(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/debug/actors")
    assert response.status_code == 200, response.text
    tree: dict[str, Any] = response.json()
    return tree


def stream_node(tree: dict[str, Any], stream_id: int) -> dict[str, Any] | None:
    for child in tree["children"]:
        if child["kind"] == "stream" and child["counters"]["id"] == stream_id:
            node: dict[str, Any] = child
            return node
    return None


def descendants(node: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Every node of ``kind`` below ``node`` (the tree's shape below a stream may vary)."""
    found: list[dict[str, Any]] = []
    for child in node["children"]:
        if child["kind"] == kind:
            found.append(child)
        found.extend(descendants(child, kind))
    return found


def connections_of(tree: dict[str, Any], stream_id: int) -> list[dict[str, Any]]:
    node = stream_node(tree, stream_id)
    return [] if node is None else descendants(node, "connection")


async def publish_many(
    publisher: RabbitMQBroker, routing_key: str, bodies: list[bytes], concurrency: int = 32
) -> None:
    """Publish with confirms, ``concurrency`` at a time (order not preserved)."""
    queue = list(reversed(bodies))

    async def one_publisher() -> None:
        while queue:
            await publisher.publish(routing_key, queue.pop())

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(one_publisher)


async def poll_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``check`` until true; returns the seconds it took. For state with no event."""
    start = trio.current_time()
    try:
        with trio.fail_after(timeout):
            while not await check():
                await trio.sleep(interval)
    except trio.TooSlowError:
        raise AssertionError(f"not within {timeout}s: {what}") from None
    return trio.current_time() - start


# --------------------------------------------------------------------------- #
# The broker


@asynccontextmanager
async def open_publisher(amqp_url: str, exchange: str) -> AsyncIterator[RabbitMQBroker]:
    """The test's own broker client on the service's exchange (publish, inspect)."""
    async with trio.open_nursery() as nursery:
        broker = RabbitMQBroker(amqp_url, exchange, pool_size=1, backoff_max=1.0)
        await nursery.start(broker.run)
        with trio.fail_after(WAIT):
            await broker.wait_available()
        yield broker
        nursery.cancel_scope.cancel()


async def rabbitmqctl(*args: str, check: bool = True) -> str:
    result = await trio.run_process(
        ["rabbitmqctl", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')}"
        )
    return result.stdout.decode(errors="replace")


def named(amqp_url: str, name: str) -> str:
    """``amqp_url`` with a connection name, to find the service's connections in the broker."""
    return f"{amqp_url.rstrip('/')}/?name={name}"


async def broker_channels(connection_name: str, pool_size: int = 2) -> int:
    """Channels the broker counts on the connections named ``<connection_name>#<slot>``.

    RabbitMQ 3.10 neither lists AMQP consumers of stream queues
    (``list_consumers`` is empty) nor counts them promptly (``list_queues
    consumers`` comes from periodic stats). Every subscription of the service
    has a channel of its own, closed when the consumer is released, so the
    channel count of its connections is the prompt, broker-side observable.
    """
    out = await rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "client_properties", "channels"
    )
    marker = f'{{"connection_name","{connection_name}#'
    counts = [int(line.rsplit("\t", 1)[1]) for line in out.splitlines() if marker in line]
    assert len(counts) == pool_size, f"{len(counts)} broker connections named {connection_name}"
    return sum(counts)


async def wait_pool_connected(connection_name: str, pool_size: int = 2) -> None:
    """Wait until every pooled connection of the service is up (the second comes later)."""

    async def connected() -> bool:
        try:
            await broker_channels(connection_name, pool_size)
        except AssertionError:
            return False
        return True

    await poll_until(connected, WAIT, f"{pool_size} connections named {connection_name}", 0.2)


def port_accepts(port: int = 5672) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- #
# The service process, from /proc


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def service_pid(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


# --------------------------------------------------------------------------- #
# Sockets


class RawWebSocket:
    """A websocket client that completes the handshake and then never reads.

    Its receive buffer is made as small as the kernel allows, so the
    service's sends block (the kernel's buffers fill) after a few MB at most
    instead of after whatever a client library would buffer.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    @classmethod
    async def connect(cls, location: str, rcvbuf: int = 4096) -> RawWebSocket:
        match = re.fullmatch(r"ws://([^:/]+):(\d+)(/.*)", location)
        assert match, location
        host, port, path = match.group(1), int(match.group(2)), match.group(3)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.connect((host, port))
        stream = trio.SocketStream(sock)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(request.encode())
        head = b""
        with trio.fail_after(WAIT):
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(1)  # byte by byte: read nothing beyond
                assert chunk, f"connection closed during the handshake: {head!r}"
                head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(stream)

    async def drain_until_eof(self, timeout: float) -> int:
        """Read everything left; returns the byte count once the service has closed."""
        total = 0
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await self.stream.receive_some(1 << 20)
                except trio.BrokenResourceError:  # reset by the service: also gone
                    return total
                if not chunk:
                    return total
                total += len(chunk)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def raise_fd_limit(wanted: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


_BROKER_SUITES = ("tests/integration", "tests/e2e", "tests/fuzz", "tests/faults")


def _ancestors() -> set[int]:
    """This process and its ancestors (a wrapper such as ``timeout pytest ...`` is us too)."""
    pids = {os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def other_broker_tests_running() -> list[str]:
    """Command lines of other pytest processes that use the broker (integration, e2e, fuzz)."""
    mine = _ancestors()
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if not any(w.endswith("pytest") or w == "pytest" for w in words):
            continue
        paths = [w for w in words if w == "tests" or w.startswith("tests/")]
        if not paths or any(p == "tests" or p.startswith(_BROKER_SUITES) for p in paths):
            found.append(" ".join(words))
    return found


#: Other engineers' broker tests get this long to finish before we stop the broker.
WAIT_FOR_OTHERS = 240.0


async def wait_until_broker_is_ours() -> None:
    """Do not pull the broker from under another engineer's running tests."""
    with trio.move_on_after(WAIT_FOR_OTHERS):
        while other_broker_tests_running():
            await trio.sleep(1.0)
    others = other_broker_tests_running()
    if others:
        pytest.fail(f"other broker tests still running after {WAIT_FOR_OTHERS}s: {others}")


async def start_broker() -> None:
    """``start_app`` and wait until the broker really serves (idempotent)."""
    await rabbitmqctl("start_app")
    await poll_until(
        lambda: trio.to_thread.run_sync(port_accepts), 60, "RabbitMQ accepts on 5672", 0.2
    )
    await rabbitmqctl("await_startup")
