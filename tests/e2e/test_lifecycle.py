"""Start-up, restart, kill -9, signals, configuration and auth of the real process."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import trio

import amqp

from .client import connect, wait_closed
from .service import ServiceProcess, free_port


async def create(api: str, routing_key: str, **headers: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=api, timeout=10.0, headers=headers) as client:
        response = await client.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def listed(api: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=api, timeout=10.0) as client:
        response = await client.get("/event-stream/")
    assert response.status_code == 200
    streams = response.json()["event_streams"]
    assert isinstance(streams, list)
    return streams


async def test_records_survive_restart_and_kill_9(
    fresh_service: ServiceProcess, routing_key: str
) -> None:
    fresh_service.start()
    first = await create(fresh_service.api, routing_key)
    assert fresh_service.stop() == 0
    fresh_service.start()
    second = await create(fresh_service.api, routing_key)
    fresh_service.kill()
    fresh_service.start()
    streams = await listed(fresh_service.api)
    ids = [item["id"] for item in streams]
    assert ids == [first["id"], second["id"]]
    # The restored stream actors serve their websockets again.
    async with connect(str(second["location"]), "stream_from_ordinal=0") as ws:
        async with httpx.AsyncClient(base_url=fresh_service.api) as client:
            response = await client.delete(f"/event-stream/{second['id']}")
            assert response.status_code == 204
        closed = await wait_closed(ws)
        assert closed.code == 1000


async def test_sigterm_closes_websockets_with_1001_and_exits_0(
    fresh_service: ServiceProcess, routing_key: str
) -> None:
    fresh_service.start()
    body = await create(fresh_service.api, routing_key)
    async with connect(str(body["location"])) as ws:
        fresh_service.signal(signal.SIGTERM)
        closed = await wait_closed(ws)
    assert closed.code == 1001
    assert await trio.to_thread.run_sync(fresh_service.wait_exit) == 0


async def test_sigint_exits_0(fresh_service: ServiceProcess) -> None:
    fresh_service.start()
    fresh_service.signal(signal.SIGINT)
    assert await trio.to_thread.run_sync(fresh_service.wait_exit) == 0


async def test_post_answers_503_and_records_nothing_without_a_broker(
    fresh_service: ServiceProcess, routing_key: str
) -> None:
    fresh_service.amqp_url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    fresh_service.start_live_only()
    async with httpx.AsyncClient(base_url=fresh_service.api, timeout=10.0) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert isinstance(ready.json()["detail"], str)
        response = await client.post("/event-stream/", json={"routing_key": routing_key})
        assert response.status_code == 503
        assert isinstance(response.json()["detail"], str)
        assert (await client.get("/event-stream/")).json() == {"event_streams": []}


async def test_internal_token_guards_everything_but_health(
    fresh_service: ServiceProcess, routing_key: str
) -> None:
    fresh_service.extra_env["ESS_INTERNAL_TOKEN"] = "s3cret-token"
    fresh_service.start()
    async with httpx.AsyncClient(base_url=fresh_service.api, timeout=10.0) as client:
        for path in ("/event-stream/", "/event-stream/version/", "/metrics", "/debug/actors"):
            denied = await client.get(path)
            assert denied.status_code == 401, path
            assert isinstance(denied.json()["detail"], str)
            wrong = await client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
    body = await create(fresh_service.api, routing_key, Authorization="Bearer s3cret-token")
    assert str(body["location"]).startswith("ws://")


def test_bad_configuration_stops_start_up_with_one_line(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ess", "serve"],
        env={"ESS_PUBLIC_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "ESS_PUBLIC_PORT" in lines[0]


async def test_an_exchange_of_another_type_stops_start_up_with_one_line(
    fresh_service: ServiceProcess, amqp_url: str
) -> None:
    async with amqp.connect(amqp_url) as connection, connection.channel() as channel:
        await channel.exchange_declare(fresh_service.exchange, "fanout", durable=True)
    result = await trio.run_process(
        [sys.executable, "-m", "ess", "serve"],
        env=fresh_service.env(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.decode().splitlines() if "cannot start" in line]
    assert len(errors) == 1, result.stderr.decode()
    assert fresh_service.exchange in errors[0]
    assert "Traceback" not in result.stderr.decode()
