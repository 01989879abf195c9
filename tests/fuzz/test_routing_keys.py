"""Routing keys at and over the limits, and with SQL and shell metacharacters.

Each key answers its documented status (201, or 422 with a JSON detail and
nothing recorded); every accepted key round-trips exactly through
``GET /event-stream/`` and works end to end (an event published to the
exchange with that key reaches a websocket); the service keeps working.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, note, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from actors.adapters.rabbitmq import RabbitMQBroker
from tests.e2e.service import ServiceProcess

MAX_KEY_BYTES = 255
#: RabbitMQ 3.10 declares stream queues with names up to 255 bytes but refuses
#: ``basic.consume`` on those over 233 (406 PRECONDITION_FAILED); see README.
CONSUMABLE_BYTES = 233
RECEIVE_TIMEOUT = 10.0


def uid() -> str:
    return f"fz{uuid.uuid4().hex[:10]}-"


def padded(prefix: str, total_bytes: int, char: str) -> str:
    """``prefix`` then ``char`` repeated, then ASCII, to exactly ``total_bytes`` UTF-8 bytes."""
    key = prefix
    while len((key + char).encode()) <= total_bytes:
        key += char
    return key + "x" * (total_bytes - len(key.encode()))


def accepted_keys() -> list[tuple[str, str]]:
    u = uid()
    return [
        ("sql-drop", f"{u}'; DROP TABLE streams; --"),
        ("sql-or", f"{u}' OR '1'='1"),
        ("sql-quote-backslash", f"{u}\\'\"\\\\"),
        ("shell-subst", f"{u}$(rm -rf /)"),
        ("backticks", f"{u}`id`"),
        ("shell-meta", f"{u};|&><*?~!{{}}[]#"),
        ("printf", f"{u}%s%d%n%x%%"),
        ("json-ish", f'{u}{{"routing_key": null}}'),
        ("html", f"{u}<script>alert(1)</script>"),
        ("path", f"{u}../../etc/passwd"),
        ("spaces", f"{u} leading and trailing "),
        ("AMQ-upper", f"AMQ.{u}"),
        ("amq-not-prefix", f"{u}amq.x"),
        ("line-separator", f"{u}\u2028\u2029"),
        ("bidi-zero-width", f"{u}\u202e\u200b\u200d\ufeff"),
        ("emoji", f"{u}\U0001f600\U0001f44d\U0001f3fd"),
        # RabbitMQ 3.10 consumes stream queues named up to 233 bytes (see below).
        ("ascii-233", padded(u, CONSUMABLE_BYTES, "a")),
        # Multibyte keys stay short enough that the broker's error texts quoting
        # them fit in 255 bytes (see tests/fuzz/test_routing_key_limits.py).
        ("2-byte-200", padded(u, 200, "\u00e9")),
        ("3-byte-200", padded(u, 200, "\u20ac")),
        ("4-byte-200", padded(u, 200, "\U0001f600")),
    ]


REJECTED_BODIES: list[tuple[str, bytes]] = [
    ("ascii-256", json.dumps({"routing_key": padded(uid(), 256, "a")}).encode()),
    ("2-byte-256", json.dumps({"routing_key": padded(uid(), 256, "\u00e9")}).encode()),
    ("4-byte-over", json.dumps({"routing_key": "\U0001f600" * 64}).encode()),  # 256 bytes
    ("amq-prefix", json.dumps({"routing_key": f"amq.{uid()}"}).encode()),
    ("amq-exact", b'{"routing_key": "amq."}'),
    ("nul", json.dumps({"routing_key": f"{uid()}\x00"}).encode()),
    ("newline", json.dumps({"routing_key": f"{uid()}\n"}).encode()),
    ("tab", json.dumps({"routing_key": f"{uid()}\t"}).encode()),
    ("escape", json.dumps({"routing_key": f"{uid()}\x1b[31m"}).encode()),
    ("del", json.dumps({"routing_key": f"{uid()}\x7f"}).encode()),
    ("c1-nel", json.dumps({"routing_key": f"{uid()}\x85"}).encode()),
    ("lone-high-surrogate", b'{"routing_key": "fz\\ud800"}'),
    ("lone-low-surrogate", b'{"routing_key": "fz\\udc00x"}'),
    ("reversed-pair", b'{"routing_key": "fz\\ude00\\ud83d"}'),
    ("empty", b'{"routing_key": ""}'),
    ("null", b'{"routing_key": null}'),
    ("number", b'{"routing_key": 42}'),
    ("list", b'{"routing_key": ["a"]}'),
    ("object", b'{"routing_key": {"a": 1}}'),
    ("missing", b'{"routingkey": "a"}'),
    ("not-object", b'["routing_key", "a"]'),
    ("string-body", b'"a"'),
    ("not-json", b"routing_key=a"),
    ("invalid-utf8", b'{"routing_key": "\xff\xfe"}'),
    ("sql-in-body", b"'; DROP TABLE streams; --"),
    ("deep-nesting", b"[" * 30_000 + b"]" * 30_000),  # under the 64 KiB body limit
    ("huge-integer", b'{"routing_key": 1' + b"0" * 5000 + b"}"),
    ("empty-body", b""),
]


async def listed(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await api.get("/event-stream/")
    assert response.status_code == 200
    streams: list[dict[str, Any]] = response.json()["event_streams"]
    return streams


async def round_trip(
    api: httpx.AsyncClient, broker: RabbitMQBroker, routing_key: str, body: bytes | None = None
) -> None:
    """Create, find it listed exactly, receive an event published with the key, delete."""
    content = body if body is not None else json.dumps({"routing_key": routing_key}).encode()
    response = await api.post(
        "/event-stream/", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    mine = [s for s in await listed(api) if s["id"] == created["id"]]
    assert mine == [
        {"id": created["id"], "location": created["location"], "routing_key": routing_key}
    ]
    async with open_websocket_url(
        created["location"], connect_timeout=RECEIVE_TIMEOUT, disconnect_timeout=5
    ) as ws:
        await broker.publish(routing_key, json.dumps({"key": routing_key}).encode())
        with trio.fail_after(RECEIVE_TIMEOUT):
            event = json.loads(await ws.get_message())
        assert event["key"] == routing_key and event["ess_ordinal"] == 1
        assert (await api.delete(f"/event-stream/{created['id']}")).status_code == 204
        with trio.fail_after(RECEIVE_TIMEOUT):
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        assert closed.value.reason.code == 1000
    assert created["id"] not in {s["id"] for s in await listed(api)}


@pytest.mark.parametrize(("label", "routing_key"), accepted_keys(), ids=lambda v: str(v)[:20])
async def test_accepted_keys_round_trip_and_work(
    api: httpx.AsyncClient, broker: RabbitMQBroker, label: str, routing_key: str
) -> None:
    if label == "ascii-233":
        assert len(routing_key.encode()) == CONSUMABLE_BYTES
    await round_trip(api, broker, routing_key)


async def test_a_255_byte_ascii_key_is_accepted_and_listed_exactly(api: httpx.AsyncClient) -> None:
    """Created, listed and deleted; not consumed (tests/fuzz/test_routing_key_limits.py)."""
    routing_key = padded(uid(), MAX_KEY_BYTES, "a")
    response = await api.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    created = response.json()
    assert {**created, "routing_key": routing_key} in await listed(api)
    assert (await api.delete(f"/event-stream/{created['id']}")).status_code == 204


async def test_escaped_surrogate_pair_is_one_character(
    api: httpx.AsyncClient, broker: RabbitMQBroker
) -> None:
    prefix = uid()
    body = b'{"routing_key": "' + prefix.encode() + b'\\ud83d\\ude00"}'
    await round_trip(api, broker, prefix + "\U0001f600", body)


@pytest.mark.parametrize(("label", "body"), REJECTED_BODIES, ids=[r[0] for r in REJECTED_BODIES])
async def test_rejected_bodies_answer_422_and_record_nothing(
    api: httpx.AsyncClient, label: str, body: bytes
) -> None:
    before = await listed(api)
    response = await api.post(
        "/event-stream/", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, (label, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert await listed(api) == before


def expected_status(key: str) -> int:
    """SPEC section 3, stated independently of the service's code."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return 422
    control = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in key)
    bad = not key or size > MAX_KEY_BYTES or control or key.startswith("amq.")
    return 422 if bad else 201


def test_generated_keys_answer_as_documented(service: ServiceProcess) -> None:
    """Hypothesis: arbitrary text (surrogates, controls, long) after a unique prefix."""
    counts = {201: 0, 422: 0}

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(
        tail=st.one_of(
            st.text(max_size=300).filter(
                lambda t: t.isascii() or len(t.encode("utf-8", "surrogatepass")) < 190
            ),
            st.text(st.characters(codec="ascii"), min_size=200, max_size=260),
            st.text(st.characters(categories=["Cc", "Cs", "Cf", "Zl", "Zp"]), max_size=3),
        ),
        amq=st.booleans(),
    )
    def one_key(tail: str, amq: bool) -> None:
        # json.dumps escapes lone surrogates as \udXXX: the raw-JSON route. What
        # the service sees is the decoded text (an escaped pair is one character).
        body = json.dumps({"routing_key": ("amq." if amq else "") + uid() + tail}).encode()
        key = json.loads(body)["routing_key"]
        note(repr(key))
        with httpx.Client(base_url=service.api, timeout=10.0) as client:
            response = client.post("/event-stream/", content=body)
            expected = expected_status(key)
            assert response.status_code == expected, (response.status_code, response.text)
            counts[expected] += 1
            if expected == 201:
                created = response.json()
                streams = client.get("/event-stream/").json()["event_streams"]
                assert {
                    "id": created["id"],
                    "location": created["location"],
                    "routing_key": key,
                } in streams
                assert client.delete(f"/event-stream/{created['id']}").status_code == 204
            else:
                assert isinstance(response.json()["detail"], str)

    one_key()
    print(f"generated routing keys: {counts}")
    assert counts[201] >= 10 and counts[422] >= 10, counts


async def test_service_still_works_end_to_end(
    api: httpx.AsyncClient, broker: RabbitMQBroker
) -> None:
    await round_trip(api, broker, f"ess.fuzz.normal.{uuid.uuid4().hex[:12]}")
