"""The log of the real process: JSON lines, followable connections, no credentials."""

from __future__ import annotations

import json
import re

import httpx
import trio

from actors.adapters.rabbitmq import RabbitMQBroker

from .client import connect, receive, wait_closed
from .service import ServiceProcess


async def test_json_log_follows_a_connection_and_never_holds_the_uuid(
    fresh_service: ServiceProcess, routing_key: str, amqp_url: str
) -> None:
    fresh_service.extra_env.update({"ESS_LOG_FORMAT": "json", "ESS_LOG_LEVEL": "INFO"})
    fresh_service.extra_env["ESS_MESSAGE_STATS_INTERVAL"] = "2"
    fresh_service.start()
    async with httpx.AsyncClient(base_url=fresh_service.api, timeout=10.0) as api:
        created = (await api.post("/event-stream/", json={"routing_key": routing_key})).json()
        uuid = created["location"].rsplit("/", 1)[1]
        broker = RabbitMQBroker(amqp_url, fresh_service.exchange, connection_name="ess-test-client")
        async with connect(created["location"]) as ws:
            async with trio.open_nursery() as nursery:
                await nursery.start(broker.run)
                await broker.wait_available()
                for n in range(3):
                    await broker.publish(routing_key, f"event {n}".encode())
                for _ in range(3):
                    await receive(ws)
                nursery.cancel_scope.cancel()
            assert (await api.delete(f"/event-stream/{created['id']}")).status_code == 204
            await wait_closed(ws)
    assert fresh_service.stop() == 0

    lines = [line for line in fresh_service.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert uuid not in fresh_service.log()
    about_stream = [r["message"] for r in records if f"stream={created['id']} " in r["message"]]
    conns = {m.group(1) for m in (re.search(r"conn=(\w+)", msg) for msg in about_stream) if m}
    assert len(conns) == 1, about_stream  # one connection, followable by its id
    (conn,) = conns
    followed = [msg for msg in about_stream if f"conn={conn}" in msg]
    assert any("stats" in msg for msg in followed)  # every ESS_MESSAGE_STATS_INTERVAL
    assert any("closed" in msg for msg in followed)  # and at close
