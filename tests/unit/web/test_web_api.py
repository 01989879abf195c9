"""The internal API (SPEC section 3) over real HTTP (Hypercorn + httpx)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from web.api import MAX_BODY_BYTES
from web.metrics import ServiceMetrics

from .web_fakes import FakeDirectory
from .web_servers import make_app, running_api

Make = Callable[..., Any]


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
async def client(directory: FakeDirectory) -> AsyncIterator[httpx.AsyncClient]:
    async with running_api(make_app(directory)) as http:
        yield http


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["detail"]
    assert isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


@pytest.mark.parametrize("path", ["/event-stream/version/", "/event-stream/version"])
async def test_version(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.json() == {"protocol": "WEBSOCKET", "name": "ess-test", "version": "1.2.3"}


@pytest.mark.parametrize("path", ["/event-stream/", "/event-stream"])
async def test_create_list_delete(
    client: httpx.AsyncClient, directory: FakeDirectory, path: str
) -> None:
    first = await client.post(path, json={"routing_key": "abc"})
    second = await client.post(path, json={"routing_key": "abc", "ignored": [1]})
    assert first.status_code == 201 and second.status_code == 201
    one, two = first.json(), second.json()
    assert set(one) == {"id", "location"}
    assert one["id"] == 1 and two["id"] == 2
    uuid = directory.actors[1].record.uuid
    assert one["location"] == f"ws://events.example.com/event-stream/{uuid}"

    listed = await client.get(path)
    assert listed.status_code == 200
    assert listed.json() == {
        "event_streams": [
            {"id": 1, "location": one["location"], "routing_key": "abc"},
            {"id": 2, "location": two["location"], "routing_key": "abc"},
        ]
    }

    deleted = await client.delete(f"/event-stream/{one['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    deleted = await client.delete(f"/event-stream/{two['id']}/")
    assert deleted.status_code == 204
    assert (await client.get(path)).json() == {"event_streams": []}
    assert_error(await client.delete("/event-stream/1"), 404)


async def test_secure_location_and_unicode_key(directory: FakeDirectory) -> None:
    app = make_app(directory, ingress_secure=True, ingress_location="h:443/")
    async with running_api(app) as client:
        response = await client.post("/event-stream/", json={"routing_key": "ключ with space"})
        assert response.status_code == 201
        assert response.json()["location"].startswith("wss://h:443/event-stream/")
        listed = (await client.get("/event-stream")).json()["event_streams"]
        assert listed[0]["routing_key"] == "ключ with space"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"not json",
        b"{",
        b"[]",
        b'["routing_key"]',
        b'"abc"',
        b"42",
        b"null",
        b"{}",
        b'{"routing_key": null}',
        b'{"routing_key": 5}',
        b'{"routing_key": ["a"]}',
        b'{"routing_key": ""}',
        b'{"routing_key": "amq.reserved"}',
        b'{"routing_key": "tab\\there"}',
        b'{"routing_key": "del\\u007f"}',
        b'{"routing_key": "c1\\u0085"}',
        b'{"routing_key": "nul\\u0000"}',
        b'{"routing_key": "lone \\ud800 surrogate"}',
        ('{"routing_key": "' + "x" * 256 + '"}').encode(),
        ('{"routing_key": "' + "é" * 128 + '"}').encode(),  # 256 UTF-8 bytes
        b"[" * 20000,
        b"\xff\xfe\x00",
    ],
)
async def test_create_rejects_bad_bodies_with_422(
    client: httpx.AsyncClient, directory: FakeDirectory, body: bytes
) -> None:
    response = await client.post(
        "/event-stream/", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422)
    assert directory.actors == {}


async def test_create_accepts_limits_and_any_content_type(client: httpx.AsyncClient) -> None:
    for key in ["x" * 255, "é" * 127, "AMQ.is.fine", "a b/c#d*e"]:
        response = await client.post(
            "/event-stream/",
            content=f'{{"routing_key": "{key}"}}'.encode(),
            headers={"Content-Type": "text/plain"},
        )
        assert response.status_code == 201, (key, response.text)
    response = await client.post(
        "/event-stream/",
        content=b'{"routing_key": "form"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 201
    response = await client.post("/event-stream/", content=b'{"routing_key": "none"}')
    assert response.status_code == 201


async def test_create_answers_503_when_the_broker_is_down(
    client: httpx.AsyncClient, directory: FakeDirectory
) -> None:
    directory.broker_up = False
    response = await client.post("/event-stream/", json={"routing_key": "abc"})
    assert "broker" in assert_error(response, 503)
    assert response.headers["retry-after"] == "5"
    assert (await client.get("/event-stream/")).json() == {"event_streams": []}


async def test_body_size_is_bounded(client: httpx.AsyncClient) -> None:
    response = await client.post("/event-stream/", content=b" " * (MAX_BODY_BYTES + 1))
    assert_error(response, 413)


@pytest.mark.parametrize(
    "stream_id", ["0", "-1", "1.0", "abc", "9" * 30, "9223372036854775808", "%D9%A1", "1e3"]
)
async def test_delete_unknown_or_malformed_ids_is_404(
    client: httpx.AsyncClient, directory: FakeDirectory, stream_id: str
) -> None:
    await client.post("/event-stream/", json={"routing_key": "abc"})
    assert_error(await client.delete(f"/event-stream/{stream_id}"), 404)
    assert_error(await client.delete(f"/event-stream/{stream_id}/"), 404)
    assert list(directory.actors) == [1]


async def test_unknown_routes_and_methods_answer_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404)
    assert_error(await client.get("/event-stream/1/extra"), 404)
    response = await client.put("/event-stream/")
    assert_error(response, 405)
    assert "POST" in response.headers["allow"]
    assert_error(await client.get("/event-stream/5"), 405)
    assert_error(await client.post("/health/live"), 405)


async def test_no_redirects_for_either_slash_form(client: httpx.AsyncClient) -> None:
    for path in [
        "/health/live", "/health/live/", "/health/ready/", "/metrics/", "/debug/actors/",
        "/debug", "/debug/", "/openapi.json",
    ]:  # fmt: skip
        response = await client.get(path)
        assert response.status_code == 200, path


async def test_unexpected_errors_are_json_500_and_logged(
    directory: FakeDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> list[Any]:
        raise RuntimeError("boom")

    directory.list_streams = broken  # type: ignore[method-assign,unused-ignore]
    async with running_api(make_app(directory)) as client:
        with caplog.at_level(logging.ERROR, logger="web.errors"):
            response = await client.get("/event-stream/")
    detail = assert_error(response, 500)
    assert "boom" not in detail and "Traceback" not in response.text
    assert any("boom" in str(record.exc_info) for record in caplog.records)


async def test_health(directory: FakeDirectory) -> None:
    reason: list[str | None] = [None]
    app = make_app(directory, readiness=lambda: reason[0], replica="ess-7")
    async with running_api(app) as client:
        assert (await client.get("/health/live")).json() == {"status": "ok", "replica": "ess-7"}
        ready = (await client.get("/health/ready")).json()
        assert ready == {"status": "ready", "replica": "ess-7"}
        reason[0] = "broker connection is down"
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json() == {"detail": "broker connection is down", "replica": "ess-7"}
        assert (await client.get("/health/live")).status_code == 200


async def test_replica_is_named_in_metrics_and_the_actor_tree(directory: FakeDirectory) -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    async with running_api(make_app(directory, metrics=metrics, replica="ess-b")) as client:
        text = (await client.get("/metrics")).text
        assert 'ess_replica_info{replica="ess-b"} 1.0' in text
        assert (await client.get("/debug/actors")).json()["replica"] == "ess-b"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/event-stream/", {"routing_key": "k"}),
        ("DELETE", "/event-stream/1", None),
        ("GET", "/event-stream/", None),
    ],
)
async def test_an_unusable_registry_is_503_with_the_reason(
    directory: FakeDirectory, method: str, path: str, body: object
) -> None:
    """Disk full, read-only file, database down: 503 and Retry-After, never 500."""
    async with running_api(make_app(directory)) as client:
        assert (await client.post("/event-stream/", json={"routing_key": "k"})).status_code == 201
        directory.registry_down = "database or disk is full"
        response = await client.request(method, path, json=body)
        detail = assert_error(response, 503)
        assert "database or disk is full" in detail
        assert int(response.headers["retry-after"]) > 0
        directory.registry_down = None
        assert len((await client.get("/event-stream/")).json()["event_streams"]) == 1


async def test_a_classic_queue_of_that_name_is_409(directory: FakeDirectory) -> None:
    directory.classic_queues.add("legacy.queue")
    async with running_api(make_app(directory)) as client:
        response = await client.post("/event-stream/", json={"routing_key": "legacy.queue"})
        detail = assert_error(response, 409)
        assert "legacy.queue" in detail and "not a stream queue" in detail
        assert (await client.get("/event-stream/")).json() == {"event_streams": []}


BAD_AUTHORIZATIONS: list[dict[str, str | bytes]] = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "s3cret"},
    {"Authorization": "Basic czNjcmV0"},
    {"Authorization": "Bearer ключ".encode()},
]


async def test_bearer_token(directory: FakeDirectory) -> None:
    app = make_app(directory, internal_token="s3cret", readiness=lambda: "not yet")
    async with running_api(app) as client:
        for method, path in [
            ("GET", "/event-stream/version/"), ("POST", "/event-stream/"),
            ("GET", "/event-stream"), ("DELETE", "/event-stream/1"), ("GET", "/metrics"),
            ("GET", "/debug/actors"), ("GET", "/openapi.json"), ("GET", "/unknown"),
        ]:  # fmt: skip
            for headers in BAD_AUTHORIZATIONS:
                response = await client.request(method, path, headers=headers)
                assert_error(response, 401)
                assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret"}
        assert (await client.get("/event-stream/version", headers=good)).status_code == 200
        lower = {"Authorization": "bearer s3cret"}
        response = await client.post("/event-stream/", json={"routing_key": "k"}, headers=lower)
        assert response.status_code == 201
        assert (await client.get("/openapi.json", headers=good)).status_code == 200
        # Health and the (data-free) debug page stay open.
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/debug/")).status_code == 200
        assert (await client.get("/debug/static/debug.js")).status_code == 200


async def test_metrics(directory: FakeDirectory) -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    async with running_api(make_app(directory, metrics=metrics)) as client:
        await client.post("/event-stream/", json={"routing_key": "abc"})
        await client.delete("/event-stream/77")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name in [
        "ess_event_streams", "ess_websocket_connections", "ess_messages_received_total",
        "ess_messages_sent_total", "ess_bytes_sent_total", "ess_websocket_closes_total",
        "ess_broker_reconnects_total", "ess_consumer_subscriptions_total",
        "ess_api_requests_total", "ess_api_request_duration_seconds_bucket",
        "ess_delivery_lag_seconds_bucket",
    ]:  # fmt: skip
        assert name in text, name
    assert "ess_event_streams 1.0" in text
    assert 'ess_api_requests_total{method="POST",route="/event-stream/",status="201"} 1.0' in text
    assert (
        'ess_api_requests_total{method="DELETE",route="/event-stream/<stream_id>",status="404"} 1.0'
        in text
    )


async def test_debug_actors(client: httpx.AsyncClient) -> None:
    await client.post("/event-stream/", json={"routing_key": "abc"})
    tree = (await client.get("/debug/actors")).json()
    assert tree["kind"] == "supervisor"
    assert tree["children"][0]["name"] == "1"


@pytest.mark.parametrize("secured", [False, True])
async def test_openapi_document(directory: FakeDirectory, secured: bool) -> None:
    token = "t" if secured else None
    async with running_api(make_app(directory, internal_token=token)) as client:
        response = await client.get("/openapi.json", headers={"Authorization": "Bearer t"})
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert set(paths["/event-stream/"]) == {"get", "post"}
    post = paths["/event-stream/"]["post"]["responses"]
    assert {"201", "413", "422", "503", "500"} <= set(post)
    assert set(paths["/event-stream/{stream_id}"]["delete"]["responses"]) >= {"204", "404"}
    assert "503" in paths["/health/ready"]["get"]["responses"]
    assert ("401" in paths["/metrics"]["get"]["responses"]) is secured
    assert "401" not in paths["/health/live"]["get"]["responses"]
    assert ("securitySchemes" in document["components"]) is secured
    _assert_refs_resolve(document, document)


def _assert_refs_resolve(node: object, document: dict[str, Any]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = document
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
        for value in node.values():
            _assert_refs_resolve(value, document)
    elif isinstance(node, list):
        for value in node:
            _assert_refs_resolve(value, document)
