"""Hypothesis-generated websocket paths and query strings against the real service.

Each generated (path, query) has one documented outcome, computed from how
the input was built (not by calling the service's parser):

- a path other than ``/event-stream/<id>`` (optional trailing slash): HTTP 404;
- more than one ``stream_from_*`` parameter, or a bad value: close 1002,
  the reason naming the parameter;
- an unknown id: close 1000, the reason saying it is unknown;
- otherwise the connection is open (it answers a ping), and we close it.

After every example ``/debug/actors`` must answer 200; after all of them the
tree must hold no connection, the service must be ready, and the broker must
hold no channel or consumer for the service's websockets.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import string
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket

from tests.e2e.service import ServiceProcess

from .conftest import unique_key
from .probes import (
    actor_tree,
    broker_usage,
    is_ready,
    poll_until,
    queue_consumers,
    wait_no_connections,
)

EXAMPLES = 200
ORDINAL, TIMESTAMP, DATETIME = (
    "stream_from_ordinal",
    "stream_from_timestamp",
    "stream_from_datetime",
)
START_PARAMETERS = (ORDINAL, TIMESTAMP, DATETIME)
MAX_ORDINAL = 2**63 - 1
MAX_TIMESTAMP_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
#: Request lines are kept under this (trio-websocket's handshake buffer is larger).
MAX_RESOURCE = 12_000
VCHAR = {chr(c) for c in range(0x21, 0x7F)}


@dataclass(frozen=True)
class Expect:
    kind: str  # "404", "1002", "unknown", "open"
    parameter: str = ""


# ---------------------------------------------------------------- paths


def encode_path(text: str) -> str:
    """Percent-encode what cannot appear raw in a request target (keeps ``%`` raw)."""
    return "".join(c if c in VCHAR and c not in "?#" else quote(c, safe="") for c in text)


@st.composite
def paths(draw: st.DrawFn, stream_id: str) -> str:
    segment = st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s)
    shape = draw(
        st.sampled_from(
            ["known", "known/", "unknown", "traversal", "nested", "prefix", "any", "long"]
        )
    )
    if shape == "known":
        return f"/event-stream/{stream_id}"
    if shape == "known/":
        return f"/event-stream/{stream_id}/"
    if shape == "unknown":
        return "/event-stream/" + encode_path(draw(segment))
    if shape == "traversal":
        return draw(
            st.sampled_from(
                [
                    f"/event-stream/../event-stream/{stream_id}",
                    f"/event-stream/./{stream_id}",
                    f"/event-stream//{stream_id}",
                    f"//event-stream/{stream_id}",
                    f"/event-stream/{stream_id}//",
                    f"/event-stream/%2e%2e/{stream_id}",
                    f"/event-stream/{stream_id}%2F",
                    f"/event-stream%2F{stream_id}",
                    f"/EVENT-STREAM/{stream_id}",
                    "/event-stream/..",
                    "/event-stream/%00",
                    "/event-stream/",
                    "/event-stream",
                    "/",
                    "/../../etc/passwd",
                ]
            )
        )
    if shape == "nested":
        return f"/event-stream/{stream_id}/" + encode_path(draw(segment))
    if shape == "prefix":
        return encode_path(draw(st.text(max_size=30))) + f"/event-stream/{stream_id}"
    if shape == "long":
        unit = draw(st.sampled_from(["a", "%41", "%C3%A9"]))
        return "/event-stream/" + unit * draw(st.integers(1_000, 10_000 // len(unit)))
    return "/" + encode_path(draw(st.text(max_size=200)))


def expected_for_path(path: str, stream_id: str) -> Expect | None:
    """``None``: a websocket path; else the rejection. Mirrors SPEC section 4."""
    match = re.fullmatch(r"/event-stream/([^/]+)/?", path)
    if match is None:
        return Expect("404")
    return None if match.group(1) == stream_id else Expect("unknown")


# ---------------------------------------------------------------- queries

datetimes = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.none()
)


@st.composite
def valid_datetime(draw: st.DrawFn) -> str:
    moment = draw(datetimes)
    form = draw(st.sampled_from(["naive", "utc", "Z", "offset", "date", "space", "basic"]))
    if form == "date":
        return moment.date().isoformat()
    if form == "basic":
        return moment.strftime("%Y%m%dT%H%M%S")
    if form == "space":
        return moment.isoformat(sep=" ")
    if form == "naive":
        return moment.isoformat()
    if form == "offset":
        minutes = draw(st.integers(-14 * 60, 14 * 60))
        zone = dt.timezone(dt.timedelta(minutes=minutes))
        return moment.replace(tzinfo=zone).isoformat()
    text = moment.replace(tzinfo=dt.UTC).isoformat()
    return text.replace("+00:00", "Z") if form == "Z" else text


def _not_plain_digits(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(max_value=-1).map(str),
        st.integers(min_value=limit + 1).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["", " 1", "1 ", "0x10", "1e3", "+1", "-0", "1_000", "\u0661\u0662"]),
        st.text(max_size=40).filter(lambda s: re.fullmatch(r"[0-9]{1,19}", s) is None),
    )


invalid_datetime = st.one_of(
    st.sampled_from(
        [
            "",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00+00:01",
            "0001-01-01",
            "10000-01-01",
            "9999-12-31T23:59:59-01:00",
            "2024-13-01",
            "2024-02-30",
            "2024-01-01T25:00",
            "now",
            "1700000000000",
            "\u0661\u0669\u0667\u0660-01-01",
            "2024-01-01" + "0" * 100,
        ]
    ),
    st.text(max_size=80).filter(lambda s: not s[:4].isdigit()),
)

#: (parameter, value, valid?) for one stream_from_* field.
start_fields = st.one_of(
    st.tuples(st.just(ORDINAL), st.integers(0, MAX_ORDINAL).map(str), st.just(True)),
    st.tuples(st.just(ORDINAL), _not_plain_digits(MAX_ORDINAL), st.just(False)),
    st.tuples(st.just(TIMESTAMP), st.integers(0, MAX_TIMESTAMP_MS).map(str), st.just(True)),
    st.tuples(st.just(TIMESTAMP), _not_plain_digits(MAX_TIMESTAMP_MS), st.just(False)),
    st.tuples(st.just(DATETIME), valid_datetime(), st.just(True)),
    st.tuples(st.just(DATETIME), invalid_datetime, st.just(False)),
)
noise_names = st.one_of(
    st.sampled_from(["stream_from", "STREAM_FROM_ORDINAL", "stream_from_ordinal_", "x", "_", ""]),
    st.text(max_size=30),
).filter(lambda name: name not in START_PARAMETERS)
noise_values = st.one_of(
    st.text(max_size=300), st.integers(1, 3000).map(lambda n: "v" * n), st.just("")
)


def encode_name(name: str, draw: st.DrawFn) -> str:
    """A parameter name, sometimes percent-encoded even where it need not be."""
    if draw(st.booleans()):
        return quote(name, safe="")
    return "".join(f"%{ord(c):02X}" if c == "_" else c for c in name)


def encode_value(value: str, draw: st.DrawFn) -> str:
    # ``+`` is literal for the service, so it may go raw (RFC 3986), or as %2B.
    return quote(value, safe=draw(st.sampled_from(["", "+:", ":"])))


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, Expect]:
    fields: list[str] = []
    given: list[tuple[str, bool]] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            name, value, valid = draw(start_fields)
            given.append((name, valid))
            if value == "" and draw(st.booleans()):
                fields.append(encode_name(name, draw))  # no "=" at all
            else:
                fields.append(f"{encode_name(name, draw)}={encode_value(value, draw)}")
        else:
            fields.append(
                f"{quote(draw(noise_names), safe='')}={encode_value(draw(noise_values), draw)}"
            )
        if draw(st.integers(0, 9)) == 0:
            fields.append("")  # "&&": an empty field
    query = "&".join(fields)
    if not given:
        return query, Expect("open")
    if len(given) > 1:
        return query, Expect("1002", given[0][0])
    name, valid = given[0]
    return query, Expect("open") if valid else Expect("1002", name)


# ---------------------------------------------------------------- the driver


async def outcome(
    service: ServiceProcess, resource: str, expect_open: bool
) -> tuple[str, int | None, str]:
    """("rejected", status, "") / ("closed", code, reason) / ("open", None, "").

    A connection expected to stay open must answer a ping (raced against the
    server closing it: trio-websocket's ping alone would wait forever on a
    closed connection); one expected to close is not pinged, only read.
    """
    try:
        async with open_websocket(
            "127.0.0.1",
            service.public_port,
            resource,
            use_ssl=False,
            connect_timeout=10,
            disconnect_timeout=5,
        ) as ws:
            answered = False
            closed: ConnectionClosed | None = None
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def ping() -> None:
                        nonlocal answered
                        await ws.ping()
                        answered = True
                        nursery.cancel_scope.cancel()

                    async def read_until_closed() -> None:
                        nonlocal closed
                        try:
                            while True:
                                await ws.get_message()  # nothing is published
                        except ConnectionClosed as error:
                            closed = error
                            nursery.cancel_scope.cancel()

                    if expect_open:
                        nursery.start_soon(ping)
                    nursery.start_soon(read_until_closed)
            if closed is not None:
                return "closed", closed.reason.code, closed.reason.reason or ""
            assert answered
            return "open", None, ""
    except ConnectionRejected as rejected:
        return "rejected", rejected.status_code, ""


def check(result: tuple[str, int | None, str], expect: Expect) -> None:
    kind, code, reason = result
    if expect.kind == "404":
        assert (kind, code) == ("rejected", 404), result
    elif expect.kind == "unknown":
        assert (kind, code) == ("closed", 1000) and "unknown" in reason.lower(), result
    elif expect.kind == "1002":
        assert (kind, code) == ("closed", 1002) and expect.parameter in reason, (result, expect)
    else:
        assert kind == "open", result


@pytest.fixture(scope="module")
def stream(service: ServiceProcess) -> tuple[int, str]:
    """A real event stream: (id, uuid)."""
    response = httpx.post(
        f"{service.api}/event-stream/", json={"routing_key": unique_key("ws-inputs")}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["location"].rsplit("/", 1)[1]


def test_generated_paths_and_queries_get_their_documented_outcome(
    service: ServiceProcess, stream: tuple[int, str]
) -> None:
    _, stream_id = stream
    seen: Counter[str] = Counter()
    baseline = broker_usage(service.process.pid)  # type: ignore[union-attr]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(path=paths(stream_id), query=queries())
    def one_connection(path: str, query: tuple[str, Expect]) -> None:
        query_text, query_expect = query
        resource = f"{path}?{query_text}" if query_text else path
        if len(resource) > MAX_RESOURCE:
            resource, query_expect = path, Expect("open")
        # The path decides first (404, then unknown id), then the query.
        path_expect = expected_for_path(path, stream_id)
        expect = path_expect if path_expect and path_expect.kind == "404" else None
        if expect is None:
            expect = query_expect if query_expect.kind == "1002" else path_expect or query_expect
        note(f"resource ({len(resource)} chars): {resource[:500]!r}; expect {expect}")
        result = trio.run(outcome, service, resource, expect.kind == "open")
        check(result, expect)
        seen[expect.kind] += 1
        actor_tree(service.api)  # answers 200: nothing crashed the tree

    one_connection()
    print(f"websocket inputs: {sum(seen.values())} connections {dict(seen)}")
    assert all(seen[kind] >= 10 for kind in ("404", "1002", "unknown", "open")), seen

    wait_no_connections(service.api)
    assert is_ready(service.api)
    poll_until(
        lambda: broker_usage(service.process.pid),  # type: ignore[union-attr]
        lambda usage: (usage.channels, usage.consumers) == (baseline.channels, baseline.consumers),
        15.0,
        f"broker channels/consumers of the service (baseline {baseline})",
    )


def raw_handshake(port: int, target: bytes) -> bytes:
    """Send a websocket upgrade with a raw request target; the status line, or b""."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            return sock.recv(4096).split(b"\r\n", 1)[0]
        except ConnectionResetError:
            return b""


@pytest.mark.parametrize(
    "target",
    [
        b"",
        b"/event-stream/\xc3\xa9",
        b"/event-stream/\xff\xfe",
        b"/event-stream/a\x00b",
        b"/event-stream/a\x1bb",
        b"/event-stream/a b",
        b"/event-stream/abc?stream_from_ordinal=\xff",
        b"/event-stream/" + b"a" * 200_000,
        b"/event-stream/abc?x=" + b"v" * 200_000,
    ],
    ids=["empty", "utf8", "not-utf8", "nul", "esc", "space", "query-byte", "200k-path", "200k-q"],
)
def test_raw_request_targets_are_rejected_and_harmless(
    service: ServiceProcess, stream: tuple[int, str], target: bytes
) -> None:
    """Bytes no client library would send: an HTTP error or a dropped connection, never 101."""
    status = raw_handshake(service.public_port, target)
    assert not status.startswith(b"HTTP/1.1 101"), status
    assert status == b"" or re.match(rb"HTTP/1\.1 4\d\d", status), status
    _, stream_id = stream
    ok = raw_handshake(service.public_port, f"/event-stream/{stream_id}".encode())
    assert ok.startswith(b"HTTP/1.1 101"), ok  # the control: the service still upgrades
    wait_no_connections(service.api)


def test_every_printable_ascii_query_character_is_survivable(
    service: ServiceProcess, stream: tuple[int, str]
) -> None:
    """Each visible ASCII character raw in a start value: always a 1002, never a crash."""
    _, stream_id = stream

    async def all_characters() -> None:
        for char in sorted(set(string.punctuation) - {"#", "&", "%"}):
            for name in START_PARAMETERS:
                resource = f"/event-stream/{stream_id}?{name}=1{char}"
                check(await outcome(service, resource, False), Expect("1002", name))

    trio.run(all_characters)
    wait_no_connections(service.api)


def test_the_stream_queue_shows_no_consumer_after_the_clients_leave(
    service: ServiceProcess,
) -> None:
    """Consumers are cancelled before their channel closes, so the broker's count drops."""
    routing_key = unique_key("consumers")
    response = httpx.post(f"{service.api}/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    stream_id = response.json()["location"].rsplit("/", 1)[1]
    try:
        for _ in range(3):
            result = trio.run(outcome, service, f"/event-stream/{stream_id}", True)
            check(result, Expect("open"))
        wait_no_connections(service.api)
        poll_until(
            lambda: queue_consumers(routing_key),
            lambda count: count == 0,
            5.0,
            f"rabbitmqctl list_queues consumers of {routing_key}",
        )
    finally:
        httpx.delete(f"{service.api}/event-stream/{response.json()['id']}")
