"""SPEC section 3, row by row, over real HTTP against the real process."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

import amqp
from actors.adapters.rabbitmq import RabbitMQBroker

from .service import ServiceProcess

LOCATION = re.compile(r"^ws://127\.0\.0\.1:(\d+)/event-stream/([A-Za-z0-9_-]+)$")


async def create(api: httpx.AsyncClient, routing_key: str) -> dict[str, object]:
    response = await api.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def test_version(api: httpx.AsyncClient) -> None:
    for path in ("/event-stream/version/", "/event-stream/version"):
        response = await api.get(path)
        assert response.status_code == 200
        body = response.json()
        assert body["protocol"] == "WEBSOCKET"
        assert isinstance(body["name"], str) and body["name"]
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", body["version"])


async def test_post_returns_id_and_unguessable_location(
    api: httpx.AsyncClient, service: ServiceProcess, routing_key: str
) -> None:
    first = await create(api, routing_key)
    second = await create(api, routing_key)  # several streams may share a key
    assert isinstance(first["id"], int) and first["id"] > 0
    assert second["id"] > first["id"]
    for body in (first, second):
        match = LOCATION.match(str(body["location"]))
        assert match, body
        assert int(match.group(1)) == service.public_port
        token = match.group(2).replace("-", "")
        assert len(token) >= 31  # a uuid4: 122 random bits
    assert first["location"] != second["location"]


async def test_post_without_trailing_slash(api: httpx.AsyncClient, routing_key: str) -> None:
    response = await api.post("/event-stream", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"routing_key": ""},
        {"routing_key": 42},
        {"routing_key": None},
        {"routing_key": ["a"]},
        {"routing_key": "é" * 128},  # 256 UTF-8 bytes
        {"routing_key": "a" * 256},
        {"routing_key": "bad\nkey"},
        {"routing_key": "bad\x00key"},
        {"routing_key": "amq.reserved"},
    ],
    ids=[
        "missing",
        "empty",
        "int",
        "null",
        "list",
        "256-utf8-bytes",
        "256-ascii",
        "newline",
        "nul",
        "amq-prefix",
    ],
)
async def test_post_rejects_bad_keys_with_422(api: httpx.AsyncClient, body: object) -> None:
    before = (await api.get("/event-stream/")).json()["event_streams"]
    response = await api.post("/event-stream/", json=body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], str)
    after = (await api.get("/event-stream/")).json()["event_streams"]
    assert after == before


@pytest.mark.parametrize("content", [b"[]", b'"key"', b"not json", b"", b"{", b"null", b"17"])
async def test_post_rejects_non_object_bodies_with_422(
    api: httpx.AsyncClient, content: bytes
) -> None:
    response = await api.post(
        "/event-stream/", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], str)


async def test_post_accepts_keys_at_the_limits(
    api: httpx.AsyncClient, broker: RabbitMQBroker
) -> None:
    suffix = uuid.uuid4().hex[:8]
    keys = [
        ("é" * 123) + suffix + "x",  # 246 + 9 = 255 UTF-8 bytes
        f"with spaces | and 'quotes'; DROP TABLE streams; -- {suffix}",
        f"ünïcödé ✓ {suffix}",
    ]
    assert len(keys[0].encode()) == 255
    try:
        for key in keys:
            body = await create(api, key)
            listed = (await api.get("/event-stream/")).json()["event_streams"]
            assert {"id": body["id"], "location": body["location"], "routing_key": key} in listed
            assert await broker.stream_exists(key)
    finally:
        listed = (await api.get("/event-stream/")).json()["event_streams"]
        for item in listed:
            if item["routing_key"] in keys:
                await api.delete(f"/event-stream/{item['id']}")


async def test_list_is_ordered_by_id_with_exact_fields(
    api: httpx.AsyncClient, routing_key: str
) -> None:
    created = [await create(api, f"{routing_key}.{n}") for n in range(3)]
    for path in ("/event-stream/", "/event-stream"):
        response = await api.get(path)
        assert response.status_code == 200
        streams = response.json()["event_streams"]
        ids = [item["id"] for item in streams]
        assert ids == sorted(ids)
        for n, body in enumerate(created):
            assert {
                "id": body["id"],
                "location": body["location"],
                "routing_key": f"{routing_key}.{n}",
            } in streams
        assert all(set(item) == {"id", "location", "routing_key"} for item in streams)


async def test_delete_answers_204_then_404(api: httpx.AsyncClient, routing_key: str) -> None:
    body = await create(api, routing_key)
    response = await api.delete(f"/event-stream/{body['id']}")
    assert response.status_code == 204
    assert response.content == b""
    listed = (await api.get("/event-stream/")).json()["event_streams"]
    assert body["id"] not in [item["id"] for item in listed]
    again = await api.delete(f"/event-stream/{body['id']}/")
    assert again.status_code == 404
    assert isinstance(again.json()["detail"], str)


@pytest.mark.parametrize("stream_id", ["abc", "1.5", "-1", "0", "99999999999", "1e3"])
async def test_delete_unknown_or_non_integer_id_is_404(
    api: httpx.AsyncClient, stream_id: str
) -> None:
    response = await api.delete(f"/event-stream/{stream_id}")
    assert response.status_code == 404, response.text
    assert isinstance(response.json()["detail"], str)


async def test_ids_are_never_reused(api: httpx.AsyncClient, routing_key: str) -> None:
    first = await create(api, routing_key)
    assert (await api.delete(f"/event-stream/{first['id']}")).status_code == 204
    second = await create(api, routing_key)
    assert second["id"] > first["id"]


async def test_post_declares_a_stream_queue_and_delete_removes_it(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    assert not await broker.stream_exists(routing_key)
    body = await create(api, routing_key)
    assert await broker.stream_exists(routing_key)
    assert (await api.delete(f"/event-stream/{body['id']}")).status_code == 204
    assert not await broker.stream_exists(routing_key)


async def test_existing_queue_is_used_and_kept(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    """Versions 2 and 3 of the AS create the stream queue themselves."""
    assert await broker.ensure_stream(routing_key) is True  # the "AS" owns it
    try:
        body = await create(api, routing_key)
        assert (await api.delete(f"/event-stream/{body['id']}")).status_code == 204
        assert await broker.stream_exists(routing_key)
    finally:
        await broker.delete_stream(routing_key)


async def test_post_for_an_existing_classic_queue_is_409_and_touches_nothing(
    api: httpx.AsyncClient, service: ServiceProcess, amqp_url: str, routing_key: str
) -> None:
    """SPEC section 2: a queue of that name that is not a stream queue is never used or changed.

    Needs the broker adapter's NotAStreamQueue (ensure_stream); the API maps it to 409.
    """
    async with amqp.connect(amqp_url) as connection, connection.channel() as channel:
        await channel.queue_declare(routing_key, durable=True)
        try:
            await channel.confirm_select()
            await channel.basic_publish(b"kept", routing_key=routing_key)  # default exchange
            before = await list_ids(api)

            response = await api.post("/event-stream/", json={"routing_key": routing_key})
            assert response.status_code == 409, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert "not a stream queue" in response.json()["detail"]
            assert await list_ids(api) == before  # nothing recorded

            # Not bound to the service's exchange: a message published there is unroutable.
            await channel.basic_publish(
                b"dropped", exchange=service.exchange, routing_key=routing_key
            )
            # Same queue, same type (a passive declare of a classic queue with its
            # arguments succeeds), same content: one message.
            still = await channel.queue_declare(routing_key, passive=True)
            assert still.message_count == 1
        finally:
            async with connection.channel() as cleanup:
                await cleanup.queue_delete(routing_key)


async def list_ids(api: httpx.AsyncClient) -> list[int]:
    response = await api.get("/event-stream/")
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["event_streams"]]


async def test_shared_key_queue_outlives_the_owner_while_another_stream_uses_it(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    owner = await create(api, routing_key)
    sharer = await create(api, routing_key)
    assert (await api.delete(f"/event-stream/{owner['id']}")).status_code == 204
    assert await broker.stream_exists(routing_key)
    assert (await api.delete(f"/event-stream/{sharer['id']}")).status_code == 204
    assert not await broker.stream_exists(routing_key)


async def test_operator_endpoints(api: httpx.AsyncClient, routing_key: str) -> None:
    assert (await api.get("/health/live")).status_code == 200
    assert (await api.get("/health/ready")).status_code == 200
    await create(api, routing_key)
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200
    assert "ess_event_streams" in metrics.text
    tree = (await api.get("/debug/actors")).json()
    assert tree["kind"] == "supervisor"
    assert any(child["kind"] == "stream" for child in tree["children"])
    openapi = (await api.get("/openapi.json")).json()
    assert "/event-stream/" in openapi["paths"] or "/event-stream" in openapi["paths"]
