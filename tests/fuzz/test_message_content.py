"""Whatever a publisher puts in a message's properties affects that message alone (issue 9.2).

SPEC section 2: "Whatever a publisher puts into a message (any body, any
properties, any header names, types and values, however large or nested)
affects that message alone. A field the service cannot use is treated as
absent (for ``ess_timestamp``, the next source in its order of preference
is used); a message it cannot use at all is skipped and logged with its
ordinal. A message never closes a broker connection, a channel or a
websocket."

Each case publishes, straight into the stream queue (as the Account Server
of versions 2 and 3 does) and with content headers built byte by byte
(:mod:`tests.support.raw_amqp`), a normal neighbour, the suspect message
and another neighbour. A live client (connected before) and a replay client
(connected after, positioned before the first neighbour) must both receive
the neighbours, in order, with consecutive ordinals, over websockets that
stay open; the suspect is either delivered in between or skipped and logged;
and the service's broker connections are the very same ones afterwards
(broker pids of its named connections, and its reconnect counter).
RabbitMQ refuses some headers itself (it closes the publisher's connection
with 541): then the suspect was never stored and only the neighbours count.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, Phase, example, given, note, settings
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.e2e.client import connect
from tests.e2e.service import ServiceProcess
from tests.support.amqp_fields import (
    LAST_SECOND_OF_9999,
    RawProperties,
    double,
    field,
    nested_tables,
    table,
    timestamp_in_ms,
    uint64,
)
from tests.support.observe import broker_reconnects, labelled_metric, service_connections
from tests.support.raw_amqp import RawPublisher, Refused, longstr
from tests.support.ws_frames import describe_close

from .conftest import start_service, unique_key
from .content_headers import raw_properties

EXAMPLES = 40
#: 9999-12-31T23:59:59.999Z: no usable time is later.
LAST_MS_OF_9999 = LAST_SECOND_OF_9999 * 1000 + 999
#: Bound on waiting for one websocket frame.
FRAME_TIMEOUT = 10.0
#: Bound on waiting for the log line of a skipped message.
LOG_TIMEOUT = 5.0


@dataclass(frozen=True)
class ContentService:
    """The module's service, its broker connection name and one stream it serves."""

    process: ServiceProcess
    connection_name: str


@pytest.fixture(scope="module")
def content_service(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str
) -> Iterator[ContentService]:
    name = f"ess-fuzz-content-{secrets.token_hex(4)}"
    proc = start_service(
        tmp_path_factory,
        f"{amqp_url.rstrip('/')}/?name={name}",
        ESS_MAX_CONNECTIONS_PER_STREAM="0",  # the live and the replay client share a stream
    )
    yield ContentService(proc, name)
    proc.clean_up()


def create_stream(service: ServiceProcess, routing_key: str) -> str:
    response = httpx.post(
        f"{service.api}/event-stream/", json={"routing_key": routing_key}, timeout=10.0
    )
    assert response.status_code == 201, response.text
    location: str = response.json()["location"]
    return location


# --------------------------------------------------------------------------- #
# One suspect message between two neighbours


@dataclass(frozen=True)
class Frame:
    """One delivered text frame, as the tests compare it."""

    role: str  # "before", "suspect", "after", or "?" (not one of ours)
    ordinal: int
    timestamp: int
    text: str


def parse(text: str, token: str) -> Frame:
    event: Any = json.loads(text) if text.startswith("{") else None
    assert isinstance(event, dict), f"not a JSON object event: {text[:200]!r}"
    role = event.get("role", "?") if event.get("token") == token else "?"
    return Frame(role, event["ess_ordinal"], event["ess_timestamp"], text)


def body(role: str, token: str) -> bytes:
    return json.dumps({"role": role, "token": token}).encode()


async def read_through_after(ws: WebSocketConnection, token: str, who: str) -> list[Frame]:
    """Frames up to and including this case's ``after`` neighbour."""
    frames: list[Frame] = []
    while not frames or frames[-1].role != "after":
        try:
            with trio.fail_after(FRAME_TIMEOUT):
                message = await ws.get_message()
        except ConnectionClosed as closed:
            raise AssertionError(
                f"{who}: websocket closed ({describe_close(closed)}) "
                f"after {[f.role for f in frames]}"
            ) from None
        except trio.TooSlowError:
            raise AssertionError(
                f"{who}: no frame within {FRAME_TIMEOUT}s after {[f.role for f in frames]}"
            ) from None
        assert isinstance(message, str), f"{who}: binary frame {message!r}"
        frames.append(parse(message, token))
    return frames


@dataclass
class CaseResult:
    refusal: str | None  # why the broker did not store the suspect (None: it did)
    live: list[Frame]
    replay: list[Frame]
    published_ms: int  # just before the suspect was published
    received_ms: int  # once both clients had the after neighbour

    @property
    def stored(self) -> bool:
        return self.refusal is None


async def publish_case(
    amqp_url: str, queue: str, properties: bytes, token: str, neighbour_ms: int
) -> str | None:
    """Publish before / suspect / after; returns why the broker refused the suspect, if it did."""
    neighbours = RawProperties(headers=table(timestamp_in_ms(neighbour_ms))).encode()
    publisher = await RawPublisher.connect(amqp_url)
    try:
        assert await publisher.publish(queue, body("before", token), neighbours)
        try:
            acked = await publisher.publish(queue, body("suspect", token), properties)
            refusal = None if acked else "nacked"
        except Refused as refused:
            refusal = str(refused)
            await publisher.aclose()
            publisher = await RawPublisher.connect(amqp_url)
        assert await publisher.publish(queue, body("after", token), neighbours)
    finally:
        await publisher.aclose()
    return refusal


async def run_case(
    location: str, amqp_url: str, queue: str, properties: bytes, neighbour_ms: int
) -> CaseResult:
    token = secrets.token_hex(6)
    async with connect(location) as live:
        published_ms = int(time.time() * 1000)
        refusal = await publish_case(amqp_url, queue, properties, token, neighbour_ms)
        live_frames = await read_through_after(live, token, "live client")
    before = live_frames[0] if live_frames[0].role == "before" else None
    assert before is not None, f"live client: first frame {live_frames[0]} is not the neighbour"
    query = f"stream_from_ordinal={before.ordinal - 1}"
    async with connect(location, query) as replay:
        replay_frames = await read_through_after(replay, token, "replay client")
    return CaseResult(refusal, live_frames, replay_frames, published_ms, int(time.time() * 1000))


def check_neighbours(result: CaseResult) -> Frame | None:
    """The neighbours' contract; returns the suspect's frame if it was delivered."""
    for who, frames in (("live", result.live), ("replay", result.replay)):
        roles = [frame.role for frame in frames]
        allowed = (["before", "suspect", "after"], ["before", "after"])
        assert roles in allowed, f"{who} client got {roles}: {[f.text for f in frames]}"
        before, after = frames[0], frames[-1]
        expected_gap = 2 if result.stored else 1
        assert after.ordinal == before.ordinal + expected_gap, (
            f"{who} client: neighbours at ordinals {before.ordinal} and {after.ordinal}, "
            f"expected {expected_gap} apart (suspect stored: {result.stored})"
        )
        if len(frames) == 3:
            assert result.stored, f"{who} client got a suspect the broker never stored"
            assert frames[1].ordinal == before.ordinal + 1, frames
        for frame in frames:
            assert 0 <= frame.timestamp <= LAST_MS_OF_9999, (
                f"{who} client: ess_timestamp {frame.timestamp} of the {frame.role} message is "
                "not a time in years 1970-9999 (an unusable timestamp was used, and the "
                "'never decreases' rule carries it to every later event)"
            )
    live_roles = [(f.role, f.ordinal) for f in result.live]
    replay_roles = [(f.role, f.ordinal) for f in result.replay]
    assert live_roles == replay_roles, f"live {live_roles} != replay {replay_roles}"
    return result.live[1] if len(result.live) == 3 else None


def skip_logged(log: str, ordinal: int) -> bool:
    """A log line says the message at ``ordinal`` was skipped ("skipped ordinal=5: ...",
    "ordinal 5 skipped"), not merely a line with a skip count and another ordinal."""
    near = r"[^=\n]{0,30}?"
    number = rf"\bordinal\W{{1,3}}{ordinal}\b"
    pattern = re.compile(rf"(?i)\bskip\w*\b{near}{number}|{number}{near}\bskip", re.MULTILINE)
    return pattern.search(log) is not None


def log_size(service: ServiceProcess) -> int:
    assert service.log_path is not None
    return service.log_path.stat().st_size


def log_since(service: ServiceProcess, offset: int) -> str:
    """What the service logged after ``offset`` (earlier cases used the same ordinals)."""
    assert service.log_path is not None
    with service.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


async def wait_skip_logged(service: ServiceProcess, ordinal: int, since: int) -> None:
    with trio.move_on_after(LOG_TIMEOUT):
        while not skip_logged(log_since(service, since), ordinal):
            await trio.sleep(0.05)  # polling a file: no event to wait on
        return
    raise AssertionError(
        f"the suspect at ordinal {ordinal} was neither delivered nor logged as skipped "
        f"(no log line like 'skipped ... ordinal={ordinal}')"
    )


async def reconnects(service: ServiceProcess) -> float:
    async with httpx.AsyncClient(base_url=service.api, timeout=10.0) as api:
        return await broker_reconnects(api)


# --------------------------------------------------------------------------- #
# Property-based: any content header


@pytest.mark.timeout(300)
def test_generated_content_headers_affect_their_message_alone(
    content_service: ContentService, amqp_url: str
) -> None:
    service = content_service.process
    queue = unique_key("content")
    location = create_stream(service, queue)
    connections_before = trio.run(service_connections, content_service.connection_name)
    assert connections_before, "the service's broker connections are not visible by name"
    counts = {"stored": 0, "refused": 0, "delivered": 0, "skipped": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        # No shrinking: each example costs a broker round trip and two
        # websockets; the failing example itself is reported as generated.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(properties=raw_properties)
    @example(properties=RawProperties(headers=table(field(b"\xff\xfe", b"S", longstr(b"x")))))
    @example(
        properties=RawProperties(headers=table(field(b"name", b"S", longstr(b"\xff\xfe\xfd"))))
    )
    @example(
        properties=RawProperties(
            headers=table(field(b"when", b"T", uint64(LAST_SECOND_OF_9999 + 1)))
        )
    )
    @example(properties=RawProperties(headers=table(field(b"when", b"T", uint64(2**64 - 1)))))
    @example(properties=RawProperties(timestamp=LAST_SECOND_OF_9999 + 1))
    @example(properties=RawProperties(timestamp=2**64 - 1))
    @example(properties=RawProperties(headers=table(timestamp_in_ms(2**63 - 1))))
    @example(properties=RawProperties(headers=table(timestamp_in_ms(-(2**63)))))
    @example(
        properties=RawProperties(headers=table(field(b"timestamp_in_ms", b"S", longstr(b"soon"))))
    )
    @example(
        properties=RawProperties(headers=table(field(b"timestamp_in_ms", b"S", longstr(b"\xff"))))
    )
    @example(
        properties=RawProperties(headers=table(field(b"timestamp_in_ms", b"d", double(1.5e12))))
    )
    @example(
        properties=RawProperties(
            headers=table(field(b"timestamp_in_ms", b"d", double(float("nan"))))
        )
    )
    @example(properties=RawProperties(headers=table(field(b"deep", b"F", nested_tables(3000)))))
    @example(properties=RawProperties(headers=table(field(b"odd", b"Z", b"\x00\x00\x00\x01"))))
    def one_case(properties: RawProperties) -> None:
        reconnects_before = trio.run(reconnects, service)
        logged_before = log_size(service)
        result = trio.run(
            run_case, location, amqp_url, queue, properties.encode(), int(time.time() * 1000)
        )
        if result.refusal:
            note(f"the broker did not store the suspect: {result.refusal}")
        suspect = check_neighbours(result)
        counts["stored" if result.stored else "refused"] += 1
        if result.stored and suspect is None:
            trio.run(wait_skip_logged, service, result.live[0].ordinal + 1, logged_before)
            counts["skipped"] += 1
        elif suspect is not None:
            counts["delivered"] += 1
        assert trio.run(reconnects, service) == reconnects_before, (
            "the service reconnected to the broker"
        )

    one_case()
    print(f"content header cases: {counts}")
    connections_after = trio.run(service_connections, content_service.connection_name)
    assert connections_after == connections_before, (
        f"the service's broker connections changed: {connections_before} -> {connections_after}"
    )
    metrics = httpx.get(f"{service.api}/metrics", timeout=10.0).text
    assert labelled_metric(metrics, "ess_websocket_closes_total", 'code="1011"') == 0, metrics


# --------------------------------------------------------------------------- #
# Each listed kind, with its specific outcome


@dataclass(frozen=True)
class Kind:
    """A suspect's properties and the ``ess_timestamp`` values allowed if it is delivered.

    ``properties(stamp_ms, property_s)`` builds the suspect; ``stamp_ms`` is a
    usable ``timestamp_in_ms`` and ``property_s`` a usable ``timestamp``
    property, both distinct from the neighbours' time and from now.
    ``allowed(stamp_ms, property_s, neighbour_ms)`` is the set of acceptable
    values, or ``None`` for "the time the service received it" (no usable
    source at all).
    """

    properties: Callable[[int, int], RawProperties]
    allowed: Callable[[int, int, int], set[int]] | None


def _stamp(s: int, p: int, n: int) -> set[int]:
    return {s}


def _property(s: int, p: int, n: int) -> set[int]:
    return {p * 1000}


KINDS: dict[str, Kind] = {
    "header-name-not-utf8": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"\xff\xfe\x80", b"S", longstr(b"x")), timestamp_in_ms(s))
        ),
        _stamp,
    ),
    "header-value-not-utf8": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"junk", b"S", longstr(b"\xff\xfe")), timestamp_in_ms(s))
        ),
        _stamp,
    ),
    "content-type-not-utf8": Kind(
        lambda s, p: RawProperties(content_type=b"\xff\xfe", headers=table(timestamp_in_ms(s))),
        _stamp,
    ),
    "T-header-beyond-9999": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"when", b"T", uint64(LAST_SECOND_OF_9999 + 1)), timestamp_in_ms(s))
        ),
        _stamp,
    ),
    "timestamp-property-beyond-9999": Kind(
        lambda s, p: RawProperties(timestamp=LAST_SECOND_OF_9999 + 1), None
    ),
    "timestamp-property-2**64-1": Kind(lambda s, p: RawProperties(timestamp=2**64 - 1), None),
    "timestamp-property-beyond-9999-with-header": Kind(
        lambda s, p: RawProperties(
            headers=table(timestamp_in_ms(s)), timestamp=LAST_SECOND_OF_9999 + 1
        ),
        _stamp,
    ),
    "timestamp_in_ms-huge": Kind(
        lambda s, p: RawProperties(headers=table(timestamp_in_ms(2**63 - 1)), timestamp=p),
        _property,
    ),
    # A negative time is before 1970, not unusable: either it is treated as
    # absent, or used and then held up by "never decreases" at the neighbour's.
    "timestamp_in_ms-negative": Kind(
        lambda s, p: RawProperties(headers=table(timestamp_in_ms(-5)), timestamp=p),
        lambda s, p, n: {p * 1000, n},
    ),
    "timestamp_in_ms-text": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"timestamp_in_ms", b"S", longstr(b"soon"))), timestamp=p
        ),
        _property,
    ),
    "timestamp_in_ms-text-not-utf8": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"timestamp_in_ms", b"S", longstr(b"\xff\xfe"))), timestamp=p
        ),
        _property,
    ),
    # Digits as text: parsing them is as acceptable as ignoring them.
    "timestamp_in_ms-digits-as-text": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"timestamp_in_ms", b"S", longstr(str(s).encode()))), timestamp=p
        ),
        lambda s, p, n: {s, p * 1000},
    ),
    "timestamp_in_ms-float": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"timestamp_in_ms", b"d", double(s + 0.5))), timestamp=p
        ),
        lambda s, p, n: {s, s + 1, p * 1000},
    ),
    "timestamp_in_ms-nan": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"timestamp_in_ms", b"d", double(float("nan")))), timestamp=p
        ),
        _property,
    ),
    "nested-tables-3000-deep": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"deep", b"F", nested_tables(3000)), timestamp_in_ms(s))
        ),
        _stamp,
    ),
    "unknown-field-tag": Kind(
        lambda s, p: RawProperties(
            headers=table(field(b"odd", b"Z", b"\x00\x00\x00\x01"), timestamp_in_ms(s))
        ),
        _stamp,
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_of_unusable_field_is_absent_or_its_message_skipped(
    content_service: ContentService, amqp_url: str, kind: str
) -> None:
    service = content_service.process
    # An earlier case that broke the service's broker connections must not fail this one.
    await trio.to_thread.run_sync(service.wait_ready)
    queue, bystander_queue = unique_key("kind"), unique_key("bystander")
    location = await trio.to_thread.run_sync(create_stream, service, queue)
    bystander_location = await trio.to_thread.run_sync(create_stream, service, bystander_queue)
    connections_before = await service_connections(content_service.connection_name)
    reconnects_before = await reconnects(service)
    now_ms = int(time.time() * 1000)
    neighbour_ms = now_ms - 60_000
    stamp_ms, property_s = now_ms - 40_000, now_ms // 1000 - 20
    spec = KINDS[kind]
    logged_before = log_size(service)

    async with connect(bystander_location) as bystander:
        publisher = await RawPublisher.connect(amqp_url)
        sent = 0
        case_done = trio.Event()

        async def bystander_load() -> None:
            nonlocal sent
            while not case_done.is_set():
                body = json.dumps({"bystander": sent}).encode()
                assert await publisher.publish(bystander_queue, body)
                sent += 1
                await trio.sleep(0.05)  # a steady trickle on another stream: load

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bystander_load)
                result = await run_case(
                    location,
                    amqp_url,
                    queue,
                    spec.properties(stamp_ms, property_s).encode(),
                    neighbour_ms,
                )
                case_done.set()
        finally:
            await publisher.aclose()
        seen: list[int] = []
        ordinals: list[int] = []
        with trio.move_on_after(FRAME_TIMEOUT):
            while len(seen) < sent:
                event = json.loads(await bystander.get_message())
                seen.append(event["bystander"])
                ordinals.append(event["ess_ordinal"])
        assert seen == list(range(sent)), (
            f"the bystander on another stream got {len(seen)} of {sent} events: {seen}"
        )
        assert ordinals == list(range(1, sent + 1)), f"bystander ordinals {ordinals}"
    suspect = check_neighbours(result)

    print(f"{kind}: stored={result.stored} delivered={suspect is not None}")
    if result.stored and suspect is None:
        await wait_skip_logged(service, result.live[0].ordinal + 1, logged_before)
    elif suspect is not None:
        replay_suspect = result.replay[1]
        for who, frame in (("live", suspect), ("replay", replay_suspect)):
            if spec.allowed is None:
                low, high = result.published_ms - 1000, result.received_ms + 1000
                assert low <= frame.timestamp <= high, (
                    f"{who}: ess_timestamp {frame.timestamp} is not the receive time "
                    f"[{low}, {high}]: the unusable timestamp was not treated as absent"
                )
            else:
                allowed = spec.allowed(stamp_ms, property_s, neighbour_ms)
                assert frame.timestamp in allowed, (
                    f"{who}: ess_timestamp {frame.timestamp}, expected one of {sorted(allowed)} "
                    f"(the next usable source in SPEC section 4's order)"
                )
    assert await reconnects(service) == reconnects_before, "the service reconnected to the broker"
    connections_after = await service_connections(content_service.connection_name)
    assert connections_after == connections_before, (
        f"the service's broker connections changed: {connections_before} -> {connections_after}"
    )
