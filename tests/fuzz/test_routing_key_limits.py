"""Routing keys at the length limit, kept apart on a service of their own.

SPEC section 3 accepts routing keys up to 255 UTF-8 bytes, and the service
declares the stream queue, but RabbitMQ 3.10 refuses ``basic.consume`` on a
stream queue whose name is longer than 233 bytes (406 PRECONDITION_FAILED),
so such a stream can never deliver: a strict known failure of the broker,
which fails loudly once fixed. When the key holds multibyte characters the
broker also cuts its close text at 255 bytes inside a character; the AMQP
client must decode that leniently rather than drop the pooled connection.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from actors.adapters.rabbitmq import RabbitMQBroker

from .probes import known_failure
from .test_routing_keys import MAX_KEY_BYTES, padded, uid

LONG_NAME_BUG = "RabbitMQ 3.10 cannot consume stream queues named over 233 bytes (see README)"


async def test_a_255_byte_ascii_key_delivers_events(
    api: httpx.AsyncClient, broker: RabbitMQBroker
) -> None:
    failure = await attempt(deliver_one(api, broker, padded(uid(), MAX_KEY_BYTES, "a")))
    known_failure(LONG_NAME_BUG, failure)


@pytest.mark.parametrize("size", [233, 255])
@pytest.mark.parametrize(
    "char", ["\u00e9", "\u20ac", "\U0001f600"], ids=["2-byte", "3-byte", "4-byte"]
)
async def test_a_long_multibyte_key_can_be_created(
    api: httpx.AsyncClient, char: str, size: int
) -> None:
    routing_key = padded(uid(), size, char)

    async def create_and_delete() -> None:
        response = await api.post("/event-stream/", json={"routing_key": routing_key})
        assert response.status_code == 201, response.text
        assert (await api.delete(f"/event-stream/{response.json()['id']}")).status_code == 204

    await create_and_delete()


async def attempt(work: Awaitable[None]) -> Callable[[], None]:
    """Run ``work`` now; return a callable that re-raises its failure, if any."""
    try:
        await work
    except Exception as error:
        failure = error

        def fail() -> None:
            raise failure

        return fail
    return lambda: None


async def deliver_one(api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str) -> None:
    response = await api.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    created = response.json()
    try:
        async with open_websocket_url(
            created["location"], connect_timeout=5, disconnect_timeout=2
        ) as ws:
            await broker.publish(routing_key, b'{"n": 1}')
            with trio.fail_after(5):
                event = json.loads(await ws.get_message())
            assert event["n"] == 1
    finally:
        await api.delete(f"/event-stream/{created['id']}")
