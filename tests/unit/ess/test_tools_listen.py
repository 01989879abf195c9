"""``ess listen``: frame parsing, line formatting, URLs, close policy and the reconnect loop."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from actors.backoff import Backoff
from ess.tools.listener import (
    RECONNECT_BACKOFF,
    CloseAction,
    Event,
    check_location,
    close_action,
    event_line,
    format_timestamp,
    parse_frame,
    resume_query,
    run_listener,
    start_query,
    with_query,
)

TS = 1_714_564_800_123  # 2024-05-01T12:00:00.123Z
ISO = "2024-05-01T12:00:00.123Z"


# --------------------------------------------------------------------------- #
# Frames


def test_json_event_takes_out_the_service_fields() -> None:
    frame = json.dumps({"n": 1, "ess_ordinal": 7, "ess_timestamp": TS})
    assert parse_frame(frame) == Event(type="json", ordinal=7, timestamp_ms=TS, body='{"n": 1}')


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "DatasetStatus"}, "DatasetStatus"),
        ({"message_type": "TaskEvent"}, "TaskEvent"),
        ({"type": "A", "message_type": "B"}, "A"),
        ({"type": 3}, "json"),
        ({"type": ""}, "json"),
    ],
)
def test_json_event_type(fields: dict[str, object], expected: str) -> None:
    assert parse_frame(json.dumps({**fields, "ess_ordinal": 1})).type == expected


def test_text_event_type_and_suffix() -> None:
    frame = f'DatasetProcessingStatus|status: "DONE" percent: 100|ordinal: 12|timestamp: {TS}'
    assert parse_frame(frame) == Event(
        type="DatasetProcessingStatus",
        ordinal=12,
        timestamp_ms=TS,
        body='status: "DONE" percent: 100',
    )


def test_only_the_trailing_suffix_is_the_ordinal() -> None:
    frame = f"T|note: '|ordinal: 1|timestamp: 2' x|ordinal: 3|timestamp: {TS}"
    event = parse_frame(frame)
    assert (event.ordinal, event.body) == (3, "note: '|ordinal: 1|timestamp: 2' x")


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("no bar here|ordinal: 4|timestamp: 5", Event("text", 4, 5, "no bar here")),
        ("T|body", Event("T", None, None, "body")),
        ("{not json|ordinal: 2|timestamp: 9", Event("text", 2, 9, "{not json")),
        ("[1, 2]", Event("text", None, None, "[1, 2]")),
        ('{"ess_ordinal": true}', Event("json", None, None, "{}")),
    ],
)
def test_other_frames(frame: str, expected: Event) -> None:
    assert parse_frame(frame) == expected


def test_parse_ordinal() -> None:
    assert parse_frame('{"ess_ordinal": 41, "ess_timestamp": 0}').ordinal == 41
    assert parse_frame("T|x|ordinal: 42|timestamp: 0").ordinal == 42
    assert parse_frame("T|x").ordinal is None


# --------------------------------------------------------------------------- #
# Lines


def test_format_timestamp() -> None:
    assert format_timestamp(TS) == ISO
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(None) == "-"
    assert format_timestamp(10**20) == str(10**20)  # beyond datetime: shown raw


def test_format_event_line() -> None:
    frame = json.dumps({"type": "Hello", "n": 1, "ess_ordinal": 3, "ess_timestamp": TS})
    assert event_line(parse_frame(frame)) == f'#3 {ISO} Hello {{"type": "Hello", "n": 1}}'
    assert event_line(Event("text", None, None, "x")) == "#? - text x"


def test_multiline_protobuf_text_is_one_line() -> None:
    event = Event("T", 1, TS, 'status: "DONE"\n  detail {\n    code: 3\n  }\n')
    assert event_line(event) == f'#1 {ISO} T status: "DONE" detail {{ code: 3 }}'


def test_control_characters_cannot_reach_the_terminal() -> None:
    line = event_line(Event("T", 1, TS, "red \x1b[31m bell \x07 tab\there\u2028end"))
    assert "\x1b" not in line and "\x07" not in line
    assert "\\x1b[31m" in line and "\\x07" in line and "\\t" in line and "\\u2028" in line


# --------------------------------------------------------------------------- #
# URLs


def test_start_query() -> None:
    assert start_query() == {}
    assert start_query(from_ordinal=0) == {"stream_from_ordinal": "0"}
    assert start_query(from_timestamp=5) == {"stream_from_timestamp": "5"}
    assert start_query(from_datetime="2024-05-01") == {"stream_from_datetime": "2024-05-01"}
    with pytest.raises(ValueError):
        start_query(from_ordinal=1, from_timestamp=2)


def test_resume_query_prefers_the_last_printed_ordinal() -> None:
    initial = {"stream_from_timestamp": "5"}
    assert resume_query(initial, None) == initial
    assert resume_query(initial, 9) == {"stream_from_ordinal": "9"}
    assert resume_query({}, None) == {}
    assert resume_query({}, 0) == {"stream_from_ordinal": "0"}


def test_with_query_replaces_stream_from_and_encodes() -> None:
    base = "ws://h:8080/event-stream/abc"
    assert with_query(base, {}) == base
    assert with_query(base, {"stream_from_ordinal": "3"}) == f"{base}?stream_from_ordinal=3"
    url = with_query(f"{base}?stream_from_ordinal=1&x=y", {"stream_from_ordinal": "7"})
    assert parse_qs(urlsplit(url).query) == {"x": ["y"], "stream_from_ordinal": ["7"]}
    url = with_query(base, {"stream_from_datetime": "2024-05-01T12:00:00+02:00"})
    assert url.endswith("stream_from_datetime=2024-05-01T12%3A00%3A00%2B02%3A00")


@pytest.mark.parametrize(
    ("location", "ok"),
    [
        ("ws://localhost:8080/event-stream/u", True),
        ("wss://ess.example.com/event-stream/u", True),
        ("http://localhost:8080/event-stream/u", False),
        ("localhost:8080/event-stream/u", False),
        ("ws:///event-stream/u", False),
        ("ws://h:99999/event-stream/u", False),
    ],
)
def test_check_location(location: str, ok: bool) -> None:
    assert (check_location(location) is None) == ok


# --------------------------------------------------------------------------- #
# Policy


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (1000, CloseAction.DONE),
        (1002, CloseAction.FAIL),
        (1008, CloseAction.FAIL),
        (4001, CloseAction.FAIL),
        (1001, CloseAction.RECONNECT),
        (1006, CloseAction.RECONNECT),
        (1011, CloseAction.RECONNECT),
        (1013, CloseAction.RECONNECT),
        (None, CloseAction.RECONNECT),
    ],
)
def test_close_action(code: int | None, action: CloseAction) -> None:
    assert close_action(code) is action


def test_backoff_grows_caps_and_resets() -> None:
    # The listener's schedule, capped lower, without its jitter.
    backoff = Backoff(replace(RECONNECT_BACKOFF, maximum=4.0), uniform=lambda low, high: high)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_jitter_only_shortens() -> None:
    # The listener's jitter at its largest: a fifth off the delay.
    backoff = Backoff(replace(RECONNECT_BACKOFF, initial=1.0), uniform=lambda low, high: low)
    assert backoff.next_delay() == pytest.approx(0.8)


# --------------------------------------------------------------------------- #
# The loop, against an in-process trio-websocket server

Handler = Callable[[WebSocketRequest, int], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[tuple[str, list[str]]]:
    """A websocket server on a free port; yields its location and the requested paths."""
    requests: list[str] = []

    async def on_request(request: WebSocketRequest) -> None:
        requests.append(request.path)
        await handler(request, len(requests))

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, on_request, "127.0.0.1", 0, None)
        yield f"ws://127.0.0.1:{server.port}/event-stream/u1", requests
        nursery.cancel_scope.cancel()


def event(ordinal: int) -> str:
    return json.dumps({"n": ordinal, "ess_ordinal": ordinal, "ess_timestamp": TS})


async def listen_to(location: str, query: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(10):
        code = await run_listener(
            location,
            query or {},
            out=out,
            err=err,
            backoff=Backoff(
                replace(RECONNECT_BACKOFF, initial=0.01), uniform=lambda low, high: high
            ),
            handle_signals=False,
        )
    return code, out.getvalue(), err.getvalue()


def query_of(path: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(path).query)


async def test_reconnects_after_a_drop_from_the_last_ordinal() -> None:
    async def handler(request: WebSocketRequest, attempt: int) -> None:
        ws = await request.accept()
        if attempt == 1:
            for n in (1, 2):
                await ws.send_message(event(n))
            await ws.aclose(1011, "internal error")  # not deliberate: retry
        else:
            for n in (2, 3):  # 2 again: a server may repeat, the listener must not
                await ws.send_message(event(n))
            await ws.aclose(1000, "The stream has been deleted")

    async with fake_server(handler) as (location, requests):
        code, out, err = await listen_to(location)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["#1", "#2", "#3"]
    assert len(requests) == 2
    assert query_of(requests[0]) == {}
    assert query_of(requests[1]) == {"stream_from_ordinal": ["2"]}
    assert "connection lost: 1011 internal error; reconnecting after ordinal 2" in err
    assert err.rstrip().endswith("closed by the server: 1000 The stream has been deleted")


async def test_before_any_event_a_reconnect_keeps_the_original_start() -> None:
    async def handler(request: WebSocketRequest, attempt: int) -> None:
        ws = await request.accept()
        if attempt == 1:
            await ws.aclose(1001, "going away")
        else:
            await ws.send_message(event(6))
            await ws.aclose(1000, "POISON")

    async with fake_server(handler) as (location, requests):
        code, out, _ = await listen_to(location, {"stream_from_timestamp": "5"})
    assert code == 0
    assert [query_of(path) for path in requests] == [{"stream_from_timestamp": ["5"]}] * 2
    assert out.startswith("#6 ")


@pytest.mark.parametrize(("code", "status"), [(1002, 1), (4001, 1), (1000, 0)])
async def test_deliberate_closes_end_the_listener(code: int, status: int) -> None:
    async def handler(request: WebSocketRequest, attempt: int) -> None:
        ws = await request.accept()
        await ws.aclose(code, "said the server")

    async with fake_server(handler) as (location, requests):
        result, _, err = await listen_to(location)
    assert result == status
    assert len(requests) == 1
    assert f"closed by the server: {code} said the server" in err


async def test_json_output_is_the_raw_frame() -> None:
    frames = [event(1), f"T|a: 1|ordinal: 2|timestamp: {TS}"]

    async def handler(request: WebSocketRequest, attempt: int) -> None:
        ws = await request.accept()
        for frame in frames:
            await ws.send_message(frame)
        await ws.aclose(1000, "done")

    async with fake_server(handler) as (location, _):
        out = io.StringIO()
        await run_listener(
            location, {}, as_json=True, out=out, err=io.StringIO(), handle_signals=False
        )
    assert out.getvalue().splitlines() == frames


async def test_a_rejected_handshake_is_not_retried() -> None:
    async def handler(request: WebSocketRequest, attempt: int) -> None:
        await request.reject(404)

    async with fake_server(handler) as (location, requests):
        code, _, err = await listen_to(location)
    assert code == 1
    assert len(requests) == 1
    assert "HTTP 404" in err


async def test_the_first_connection_must_succeed() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = await listen_to(f"ws://127.0.0.1:{port}/event-stream/u")
    assert code == 1
    assert out == ""
    assert "cannot connect" in err
