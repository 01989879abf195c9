"""SPEC section 4, row by row, over real websockets against the real process."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio

import amqp
from actors.adapters.rabbitmq import RabbitMQBroker

from .client import (
    connect,
    receive,
    receive_json,
    receive_many_json,
    wait_closed,
)
from .service import ServiceProcess


async def create(api: httpx.AsyncClient, routing_key: str) -> tuple[int, str]:
    response = await api.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["location"]


async def publish_numbered(
    broker: RabbitMQBroker, routing_key: str, numbers: range, *, to_queue: bool = False
) -> None:
    for n in numbers:
        await broker.publish(routing_key, json.dumps({"n": n}).encode(), to_queue=to_queue)


@pytest.mark.parametrize("to_queue", [False, True], ids=["via-exchange", "into-queue"])
async def test_live_tail_delivers_everything_published_after_the_handshake(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str, to_queue: bool
) -> None:
    _, location = await create(api, routing_key)
    await publish_numbered(broker, routing_key, range(3), to_queue=to_queue)  # before: not seen
    async with connect(location) as ws:
        await publish_numbered(broker, routing_key, range(3, 8), to_queue=to_queue)
        events = await receive_many_json(ws, 5)
    assert [event["n"] for event in events] == [3, 4, 5, 6, 7]
    assert [event["ess_ordinal"] for event in events] == [4, 5, 6, 7, 8]


async def test_no_gap_right_after_the_handshake(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    """Upstream lost events published in the first ~425 ms; we lose none."""
    _, location = await create(api, routing_key)
    for attempt in range(10):
        async with connect(location) as ws:
            await broker.publish(routing_key, json.dumps({"attempt": attempt}).encode())
            event = await receive_json(ws)
            assert event["attempt"] == attempt


async def test_replay_from_ordinal_zero_and_k(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    await publish_numbered(broker, routing_key, range(10))
    async with connect(location, "stream_from_ordinal=0") as ws:
        events = await receive_many_json(ws, 10)
    assert [event["ess_ordinal"] for event in events] == list(range(1, 11))
    assert [event["n"] for event in events] == list(range(10))
    async with connect(location, "stream_from_ordinal=4") as ws:
        events = await receive_many_json(ws, 6)
    assert [event["ess_ordinal"] for event in events] == list(range(5, 11))


async def test_reconnect_with_last_ordinal_misses_nothing_and_repeats_nothing(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    async with connect(location) as ws:
        await publish_numbered(broker, routing_key, range(5))
        seen = await receive_many_json(ws, 5)
    last = seen[-1]["ess_ordinal"]
    await publish_numbered(broker, routing_key, range(5, 9))  # while disconnected
    async with connect(location, f"stream_from_ordinal={last}") as ws:
        await publish_numbered(broker, routing_key, range(9, 11))
        resumed = await receive_many_json(ws, 6)
    ordinals = [event["ess_ordinal"] for event in seen + resumed]
    assert ordinals == list(range(1, 12))
    assert [event["n"] for event in seen + resumed] == list(range(11))


async def test_replay_from_timestamp_uses_the_events_own_timestamps(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    base = int(time.time() * 1000) - 60_000
    for n in range(6):
        body = json.dumps({"n": n}).encode()
        await broker.publish(routing_key, body, timestamp_ms=base + n * 1000)
    async with connect(location, f"stream_from_timestamp={base + 3000}") as ws:
        events = await receive_many_json(ws, 3)
    assert [event["n"] for event in events] == [3, 4, 5]
    assert [event["ess_timestamp"] for event in events] == [base + 3000, base + 4000, base + 5000]


async def test_replay_from_timestamp_of_events_without_their_own(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    """Events carrying no timestamp are positioned by the broker, in whole seconds."""
    _, location = await create(api, routing_key)
    await publish_numbered(broker, routing_key, range(3))
    # Wait until the broker's clock is in a later whole second, two seconds on.
    start = time.time()
    await trio.sleep(2.0 - (start % 1.0) + 1.0)
    cut = int(time.time() * 1000)
    await publish_numbered(broker, routing_key, range(3, 6))
    async with connect(location, f"stream_from_timestamp={cut}") as ws:
        events = await receive_many_json(ws, 3)
    assert [event["n"] for event in events] == [3, 4, 5]


@pytest.mark.parametrize("zone", ["", "Z", "+00:00", "+02:00"])
async def test_replay_from_datetime(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str, zone: str
) -> None:
    _, location = await create(api, routing_key)
    base = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    base_ms = int(base.timestamp() * 1000)
    for n in range(5):
        await broker.publish(
            routing_key, json.dumps({"n": n}).encode(), timestamp_ms=base_ms + n * 60_000
        )
    start = base + timedelta(minutes=2)
    if zone == "+02:00":
        text = (start + timedelta(hours=2)).replace(tzinfo=None).isoformat() + zone
    else:
        text = start.replace(tzinfo=None).isoformat() + zone
    async with connect(location, f"stream_from_datetime={text}") as ws:
        events = await receive_many_json(ws, 3)
    assert [event["n"] for event in events] == [2, 3, 4]


async def test_event_formatting_on_the_wire(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    async with connect(location) as ws:
        await broker.publish(routing_key, b'{"a": "\xc3\xa9", "b": [1, 2]}', timestamp_ms=1234)
        await broker.publish(routing_key, b"\xff\xfe not utf-8")  # skipped
        await broker.publish(routing_key, b"{not json")  # skipped
        await broker.publish(routing_key, b"DatasetChanged|id: 'x'", timestamp_ms=5678)
        await broker.publish(routing_key, b"{}", timestamp_ms=1000)  # earlier: clamped
        await broker.publish(routing_key, b"[1, 2]")  # no '{': text, stamped on receipt
        first = json.loads(await receive(ws))
        assert first == {"a": "\u00e9", "b": [1, 2], "ess_ordinal": 1, "ess_timestamp": 1234}
        assert await receive(ws) == "DatasetChanged|id: 'x'|ordinal: 4|timestamp: 5678"
        clamped = json.loads(await receive(ws))
        assert clamped == {"ess_ordinal": 5, "ess_timestamp": 5678}  # never decreases
        text = await receive(ws)
        match = re.fullmatch(r"\[1, 2\]\|ordinal: 6\|timestamp: (\d+)", text)
        assert match, text
        assert abs(int(match.group(1)) - time.time() * 1000) < 60_000  # when received


async def test_poison_closes_normally(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    async with connect(location) as ws:
        await broker.publish(routing_key, b"before")
        await broker.publish(routing_key, b"POISON")
        await broker.publish(routing_key, b"after")
        assert (await receive(ws)).startswith("before|ordinal: 1|")
        closed = await wait_closed(ws)
    assert closed.code == 1000


@pytest.mark.parametrize(
    "query",
    [
        "stream_from_ordinal=1&stream_from_timestamp=2",
        "stream_from_ordinal=1&stream_from_ordinal=2",
        "stream_from_ordinal=-1",
        "stream_from_ordinal=abc",
        "stream_from_ordinal=1.5",
        "stream_from_timestamp=soon",
        "stream_from_datetime=yesterday",
        "stream_from_datetime=2026-13-45T99:00:00",
    ],
)
async def test_bad_parameters_close_with_1002_naming_the_parameter(
    api: httpx.AsyncClient, routing_key: str, query: str
) -> None:
    _, location = await create(api, routing_key)
    async with connect(location, query) as ws:
        closed = await wait_closed(ws)
    assert closed.code == 1002
    assert closed.reason and "stream_from_" in closed.reason


async def test_unknown_uuid_closes_with_1000(service: ServiceProcess) -> None:
    location = f"{service.ws_base}/event-stream/00000000-0000-4000-8000-000000000000"
    async with connect(location) as ws:
        closed = await wait_closed(ws)
    assert closed.code == 1000
    assert closed.reason and "nknown" in closed.reason


async def test_missing_stream_queue_closes_with_1013(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    await broker.delete_stream(routing_key)  # behind the service's back
    async with connect(location) as ws:
        closed = await wait_closed(ws)
    assert closed.code == 1013


async def test_delete_closes_the_websocket_before_answering_204(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    stream_id, location = await create(api, routing_key)
    order: list[str] = []
    async with connect(location) as ws:
        await broker.publish(routing_key, b"hello")
        await receive(ws)

        async def watch() -> None:
            closed = await wait_closed(ws)
            order.append(f"closed {closed.code} {closed.reason}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            response = await api.delete(f"/event-stream/{stream_id}")
            order.append(f"http {response.status_code}")
    assert order == ["closed 1000 The stream has been deleted", "http 204"]


async def test_newer_connection_takes_over_with_4001(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    async with connect(location) as old, connect(location) as new:
        closed = await wait_closed(old)
        assert closed.code == 4001
        await broker.publish(routing_key, b"to the newest")
        assert (await receive(new)).startswith("to the newest|")


async def test_ess_timestamp_prefers_header_then_amqp_timestamp_then_receipt(
    api: httpx.AsyncClient, service: ServiceProcess, routing_key: str, amqp_url: str
) -> None:
    _, location = await create(api, routing_key)
    async with (
        connect(location) as ws,
        amqp.connect(amqp_url) as connection,
        connection.channel() as channel,
    ):
        await channel.confirm_select()

        async def publish(body: bytes, properties: amqp.Properties) -> None:
            await channel.basic_publish(
                body, exchange=service.exchange, routing_key=routing_key, properties=properties
            )

        # The header wins over the AMQP timestamp property.
        header_ms, property_s = 1_800_000_000_123, 1_900_000_000
        both = amqp.Properties(timestamp=1_700_000_000, headers={"timestamp_in_ms": header_ms})
        await publish(b'{"n": 1}', both)
        # The AMQP timestamp property (seconds) times 1000.
        await publish(b'{"n": 2}', amqp.Properties(timestamp=property_s))
        # Neither: the time the service received it (never below the last one).
        before_ms = int(time.time() * 1000)
        await publish(b'{"n": 3}', amqp.Properties())
        events = await receive_many_json(ws, 3)
    assert [event["ess_timestamp"] for event in events[:2]] == [header_ms, property_s * 1000]
    assert before_ms < property_s * 1000  # so the receipt time is below the last stamp:
    assert events[2]["ess_timestamp"] == property_s * 1000  # clamped, never decreases


async def test_receipt_time_stamps_events_without_their_own(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str
) -> None:
    _, location = await create(api, routing_key)
    async with connect(location) as ws:
        before_ms = int(time.time() * 1000)
        await broker.publish(routing_key, b'{"n": 1}')
        event = await receive_json(ws)
        after_ms = int(time.time() * 1000)
    assert before_ms <= event["ess_timestamp"] <= after_ms
