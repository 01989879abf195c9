"""Clients that send: text, binary, oversized, many small frames, pings while closing.

Clients have nothing to say to the service; it reads and discards what they
send (so trio-websocket's one-message inbound queue never blocks its reader)
and closes with 1009 a message over the 64 KiB limit. A bystander connection
on another stream must keep receiving throughout.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket,
    open_websocket_url,
)

from actors.adapters.rabbitmq import RabbitMQBroker
from tests.e2e.service import ServiceProcess

from .conftest import unique_key
from .probes import is_ready, wait_no_connections

MAX_MESSAGE = 64 * 1024
RECEIVE_TIMEOUT = 10.0


async def create(api: httpx.AsyncClient, label: str) -> tuple[str, str]:
    routing_key = unique_key(label)
    response = await api.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    return routing_key, response.json()["location"]


@asynccontextmanager
async def connect(location: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(
        location, connect_timeout=RECEIVE_TIMEOUT, disconnect_timeout=5
    ) as ws:
        yield ws


async def receive_json(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(RECEIVE_TIMEOUT):
        message = await ws.get_message()
    assert isinstance(message, str), message
    event = json.loads(message)
    assert isinstance(event, dict)
    return event


async def wait_closed(ws: WebSocketConnection) -> tuple[int, str | None]:
    with trio.fail_after(RECEIVE_TIMEOUT):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason


async def delivers(broker: RabbitMQBroker, routing_key: str, ws: WebSocketConnection) -> None:
    """Publish one event and require it on ``ws`` (the connection still works)."""
    marker = unique_key("marker")
    await broker.publish(routing_key, json.dumps({"marker": marker}).encode())
    event = await receive_json(ws)
    assert event["marker"] == marker, event


def frames(kind: str, size: int) -> str | bytes:
    return "t" * size if kind == "text" else b"\x00\xff" * (size // 2) + b"b" * (size % 2)


@pytest.mark.parametrize("kind", ["text", "binary", "mixed"])
async def test_many_small_frames_are_discarded_and_delivery_goes_on(
    api: httpx.AsyncClient, broker: RabbitMQBroker, service: ServiceProcess, kind: str
) -> None:
    key, location = await create(api, "frames")
    bystander_key, bystander_location = await create(api, "bystander")
    async with connect(location) as ws, connect(bystander_location) as bystander:
        for n in range(3000):
            sort = kind if kind != "mixed" else ("text", "binary")[n % 2]
            await ws.send_message(frames(sort, n % 200 + 1))
            if n % 1000 == 999:  # interleave deliveries with the flood
                await delivers(broker, key, ws)
        await delivers(broker, key, ws)
        await delivers(broker, bystander_key, bystander)
        assert ws.closed is None
    wait_no_connections(service.api)


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_a_message_of_exactly_64_kib_is_read_and_discarded(
    api: httpx.AsyncClient, broker: RabbitMQBroker, service: ServiceProcess, kind: str
) -> None:
    key, location = await create(api, "limit")
    async with connect(location) as ws:
        await ws.send_message(frames(kind, MAX_MESSAGE))
        await delivers(broker, key, ws)
    wait_no_connections(service.api)


@pytest.mark.parametrize("size", [MAX_MESSAGE + 1, 1024 * 1024])
@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_an_oversized_message_closes_1009_and_nobody_else_notices(
    api: httpx.AsyncClient, broker: RabbitMQBroker, service: ServiceProcess, kind: str, size: int
) -> None:
    _, location = await create(api, "huge")
    bystander_key, bystander_location = await create(api, "bystander")
    async with connect(bystander_location) as bystander:
        async with connect(location) as ws:
            try:
                await ws.send_message(frames(kind, size))
            except ConnectionClosed as closed:  # closed while we were still sending
                code: int | None = closed.reason.code
            else:
                code, _ = await wait_closed(ws)
            assert code == 1009
        await delivers(broker, bystander_key, bystander)
        # The stream of the closed connection still serves a new one.
        key2, location2 = await create(api, "after-huge")
        async with connect(location2) as again:
            await delivers(broker, key2, again)
    wait_no_connections(service.api)
    assert is_ready(service.api)


async def test_pings_while_the_service_closes_do_not_take_it_down(
    api: httpx.AsyncClient, broker: RabbitMQBroker, service: ServiceProcess
) -> None:
    """Regression: a ping that reached trio-websocket while it was closing ended
    the whole public server (LocalProtocolError for the pong), so the service
    exited. Ping right after handshakes that the service closes at once."""
    key, location = await create(api, "pinged")
    bystander_key, bystander_location = await create(api, "bystander")
    async with connect(bystander_location) as bystander:

        async def ping_while_closing(n: int) -> None:
            resource = (
                "/event-stream/no-such-stream"
                if n % 2
                else "/event-stream/x?stream_from_ordinal=-1"
            )
            try:
                async with open_websocket(
                    "127.0.0.1", service.public_port, resource, use_ssl=False, disconnect_timeout=2
                ) as ws:
                    # trio-websocket's ping waits forever once the peer closed: bound it.
                    with trio.move_on_after(0.05), contextlib.suppress(ConnectionClosed):
                        await ws.ping(b"p%d" % n)
            except HandshakeError as error:
                raise AssertionError(f"service gone after {n} pings: {error!r}") from error

        for batch in range(10):  # 100 attempts, 10 at a time
            async with trio.open_nursery() as nursery:
                for n in range(batch * 10, batch * 10 + 10):
                    nursery.start_soon(ping_while_closing, n)
        await delivers(broker, bystander_key, bystander)
    async with connect(location) as ws:
        await delivers(broker, key, ws)
    assert service.process is not None and service.process.poll() is None
    assert is_ready(service.api)
    wait_no_connections(service.api)
