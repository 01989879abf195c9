"""The operator metrics of issue 13 in a real ``ess serve``'s ``/metrics``.

Connection lag (``ess_connection_lag_events`` and its ``_max``), the replica
name, the stream count; and the worst lag's stream in ``/debug/actors``.
"""

from __future__ import annotations

import json

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.adapters.rabbitmq import RabbitMQBroker

from .client import connect, receive_many_json
from .service import ServiceProcess

Samples = dict[str, float]


async def scrape(api: httpx.AsyncClient) -> Samples:
    """``/metrics`` as {sample name with its labels: value}."""
    response = await api.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_a_live_connection_is_sampled_into_the_lag_metrics(
    service: ServiceProcess, api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    created = (await api.post("/event-stream/", json={"routing_key": routing_key})).json()
    try:
        async with connect(created["location"]) as ws:
            await ws.ping()  # the server-side handshake completed
            for n in range(3):
                await broker.publish(routing_key, json.dumps({"n": n}).encode())
            await receive_many_json(ws, 3)
            with trio.fail_after(10):  # a sample is taken at most once a second
                while (metrics := await scrape(api))["ess_connection_lag_events_count{}"] < 1:
                    await trio.sleep(0.2)
            summary = (await api.get("/debug/actors?summary=1")).json()
    finally:
        await api.delete(f"/event-stream/{created['id']}")
    assert metrics["ess_connection_lag_events_bucket{le=0.0}"] >= 1  # it is up to date
    assert metrics["ess_connection_lag_events_max{}"] == 0
    assert metrics["ess_event_streams{}"] >= 1
    replica = [name for name in metrics if name.startswith("ess_replica_info{replica=")]
    assert len(replica) == 1 and metrics[replica[0]] == 1
    assert summary["lag_max"] == {"stream": created["id"], "lag": 0}


async def test_the_broker_connections_up_are_exported(api: httpx.AsyncClient) -> None:
    assert (await scrape(api)).get("ess_broker_connections{}", 0) >= 1
