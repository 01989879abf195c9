"""The public websocket edge over real loopback sockets."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from actors.ports.websocket import PendingWebSocket, WebSocketClosed
from actors.start import AfterOrdinal, AtOrAfterTime, ClientStart, LiveTail
from web.client_socket import TrioWebSocket
from web.metrics import ServiceMetrics, close_code_label
from web.websocket import REFUSAL_LOG_BURST, serve_public_websockets

from .web_fakes import Behaviour, FakeActor, FakeDirectory
from .web_servers import running_websockets


async def make_stream(directory: FakeDirectory) -> str:
    record = await directory.create_stream("rk")
    return record.uuid


async def read_until_closed(ws: WebSocketConnection) -> tuple[list[str | bytes], Any]:
    """Every frame, then the close reason (code and reason)."""
    frames: list[str | bytes] = []
    with trio.fail_after(5):
        while True:
            try:
                frames.append(await ws.get_message())
            except ConnectionClosed as closed:
                return frames, closed.reason


@asynccontextmanager
async def client_of(behaviour: Behaviour, **options: Any) -> AsyncIterator[WebSocketConnection]:
    """A new stream whose actor does ``behaviour``, served with ``options``; a client of it."""
    directory = FakeDirectory()
    directory.behaviour = behaviour
    uuid = await make_stream(directory)
    async with (
        running_websockets(directory, **options) as port,
        open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{uuid}") as ws,
    ):
        yield ws


async def read_once(directory: FakeDirectory, path: str) -> tuple[list[str | bytes], Any]:
    """Serve ``directory``, open one websocket at ``path`` and read it until it closes."""
    async with (
        running_websockets(directory) as port,
        open_websocket_url(f"ws://127.0.0.1:{port}{path}") as ws,
    ):
        return await read_until_closed(ws)


@pytest.mark.parametrize(
    ("suffix", "start"),
    [
        ("", LiveTail()),
        ("/", LiveTail()),
        ("?stream_from_ordinal=5", AfterOrdinal(5)),
        ("/?stream_from_timestamp=1700000000000&x=1", AtOrAfterTime(1_700_000_000_000)),
        ("?stream_from_datetime=1970-01-01T00:00:01Z", AtOrAfterTime(1000)),
    ],
)
async def test_frames_arrive_and_start_is_passed(suffix: str, start: ClientStart) -> None:
    directory = FakeDirectory()
    uuid = await make_stream(directory)
    frames, reason = await read_once(directory, f"/event-stream/{uuid}{suffix}")
    assert frames == [f"first {start!r}", "second from rk"]
    assert (reason.code, reason.reason) == (1000, "done")
    actor = directory.actors[1]
    assert actor.served == [start]
    host, _, client_port = actor.peers[0].rpartition(":")
    assert host == "127.0.0.1" and int(client_port) > 0


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("stream_from_ordinal=-1", "stream_from_ordinal"),
        ("stream_from_ordinal=abc", "stream_from_ordinal"),
        ("stream_from_ordinal=", "stream_from_ordinal"),
        ("stream_from_ordinal=1.5", "stream_from_ordinal"),
        ("stream_from_ordinal=99999999999999999999", "stream_from_ordinal"),
        ("stream_from_timestamp=soon", "stream_from_timestamp"),
        ("stream_from_timestamp=-1", "stream_from_timestamp"),
        ("stream_from_datetime=not-a-date", "stream_from_datetime"),
        ("stream_from_datetime=2024-02-30", "stream_from_datetime"),
        ("stream_from_ordinal=1&stream_from_timestamp=2", "stream_from_timestamp"),
        ("stream_from_ordinal=1&stream_from_ordinal=1", "stream_from_ordinal"),
    ],
)
async def test_bad_parameters_close_with_1002(query: str, parameter: str) -> None:
    directory = FakeDirectory()
    uuid = await make_stream(directory)
    frames, reason = await read_once(directory, f"/event-stream/{uuid}?{query}")
    assert frames == []
    assert reason.code == 1002
    assert parameter in reason.reason
    assert directory.actors[1].served == []


async def test_unknown_stream_closes_with_1000() -> None:
    directory = FakeDirectory()
    await make_stream(directory)
    frames, reason = await read_once(directory, "/event-stream/not-a-stream")
    assert frames == []
    assert (reason.code, reason.reason) == (1000, "Unknown event stream")


@pytest.mark.parametrize(
    "path", ["/", "/event-stream", "/event-stream/", "/other/x", "/event-stream/a/b", "/x?y=1"]
)
async def test_other_paths_are_rejected_with_404(path: str) -> None:
    directory = FakeDirectory()
    async with running_websockets(directory) as port:
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"ws://127.0.0.1:{port}{path}"):
                pass  # pragma: no cover
    assert rejected.value.status_code == 404


async def test_a_crashing_actor_closes_1011_and_the_server_survives() -> None:
    directory = FakeDirectory()

    async def crash(actor: FakeActor, websocket: PendingWebSocket, start: ClientStart) -> None:
        await websocket.accept()
        raise RuntimeError("bug")

    directory.behaviour = crash
    uuid = await make_stream(directory)
    async with running_websockets(directory) as port:
        url = f"ws://127.0.0.1:{port}/event-stream/{uuid}"
        async with open_websocket_url(url) as ws:
            _, reason = await read_until_closed(ws)
        assert reason.code == 1011
        async with open_websocket_url(url) as ws:
            _, reason = await read_until_closed(ws)
        assert reason.code == 1011


async def test_actor_that_returns_without_closing_gets_a_normal_close() -> None:
    directory = FakeDirectory()

    async def forgetful(actor: FakeActor, websocket: PendingWebSocket, start: ClientStart) -> None:
        channel = await websocket.accept()
        await channel.send_texts(["only"])

    directory.behaviour = forgetful
    uuid = await make_stream(directory)
    frames, reason = await read_once(directory, f"/event-stream/{uuid}")
    assert frames == ["only"] and reason.code == 1000


async def test_shutdown_closes_open_connections_with_1001() -> None:
    directory = FakeDirectory()

    async def hold(actor: FakeActor, websocket: PendingWebSocket, start: ClientStart) -> None:
        channel = await websocket.accept()
        await channel.send_texts(["hello"])
        await trio.sleep_forever()

    directory.behaviour = hold
    uuid = await make_stream(directory)
    server_scope = trio.CancelScope()

    async def server(task_status: trio.TaskStatus[int]) -> None:
        with server_scope:
            await serve_public_websockets(
                directory, host="127.0.0.1", port=0, task_status=task_status
            )

    async with trio.open_nursery() as nursery:
        port = await nursery.start(server)
        async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{uuid}") as ws:
            assert await ws.get_message() == "hello"
            server_scope.cancel()
            frames, reason = await read_until_closed(ws)
    assert frames == [] and reason.code == 1001


async def test_metrics_count_connections_and_closes() -> None:
    directory = FakeDirectory()
    metrics = ServiceMetrics()
    uuid = await make_stream(directory)
    async with running_websockets(directory, metrics=metrics) as port:
        async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{uuid}") as ws:
            await read_until_closed(ws)
        async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/nope") as ws:
            await read_until_closed(ws)
        registry = metrics.registry
        with trio.fail_after(5):  # until the handlers' finally blocks have counted both
            while registry.get_sample_value("ess_websocket_closes_total", {"code": "1000"}) != 2:
                await trio.sleep(0.01)
    # Frames are counted by the connection actor's observer, not here
    # (tests/unit/ess/test_metrics_bridge.py): this layer counts none.
    assert registry.get_sample_value("ess_messages_sent_total") == 0
    assert registry.get_sample_value("ess_websocket_closes_total", {"code": "1000"}) == 2
    assert registry.get_sample_value("ess_websocket_connections") == 0


async def test_oversized_client_messages_close_with_1009() -> None:

    async def drain(actor: FakeActor, websocket: PendingWebSocket, start: ClientStart) -> None:
        channel = await websocket.accept()
        gone = trio.Event()
        channel.on_gone(gone.set)
        await gone.wait()
        await channel.close(1000, "bye")

    async with client_of(drain, max_message_size=1024) as ws:
        await ws.send_message("small")
        await ws.send_message("x" * 2048)
        _, reason = await read_until_closed(ws)
    assert reason.code == 1009


# --- the channel adapter against clients that misbehave ------------------------------

HANDSHAKE = (
    b"GET /event-stream/%s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


async def raw_handshake(port: int, uuid: str) -> trio.SocketStream:
    """A client that completes the handshake and then never answers anything."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(HANDSHAKE % uuid.encode())
    response = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in response:
            response += await stream.receive_some(4096)
    assert response.startswith(b"HTTP/1.1 101")
    return stream


async def receive_until_eof(stream: trio.SocketStream) -> bytes:
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            received += chunk
    return received


async def test_close_is_bounded_when_the_peer_never_answers() -> None:
    directory = FakeDirectory()
    timings: list[float] = []

    async def close_fast(actor: FakeActor, websocket: PendingWebSocket, start: ClientStart) -> None:
        channel = await websocket.accept()
        started = time.monotonic()
        with trio.CancelScope() as scope:
            scope.cancel()  # even inside a cancelled scope the close handshake is attempted
            await channel.close(4001, "x" * 500)  # over-long reason: truncated, not an error
        timings.append(time.monotonic() - started)
        await channel.close(1000, "again")  # idempotent

    directory.behaviour = close_fast
    uuid = await make_stream(directory)
    async with running_websockets(directory, close_timeout=0.3) as port:
        stream = await raw_handshake(port, uuid)
        received = await receive_until_eof(stream)
    assert 0.25 <= timings[0] < 2
    assert received[:1] == b"\x88"  # a close frame was sent before the socket was dropped
    assert received[2:4] == (4001).to_bytes(2, "big")
    assert len(received) == 2 + 2 + 123


async def test_ping_waits_for_the_pong() -> None:
    outcomes: list[str] = []

    async def ping_twice(actor: FakeActor, websocket: PendingWebSocket, start: ClientStart) -> None:
        channel = await websocket.accept()
        with trio.fail_after(5):
            await channel.ping()
            await channel.ping()
        outcomes.append("pong")
        await channel.close(1000, "")

    async with client_of(ping_twice) as ws:
        await read_until_closed(ws)
    assert outcomes == ["pong"]


async def test_ping_fails_when_the_connection_goes_instead_of_hanging() -> None:
    directory = FakeDirectory()
    outcomes: list[str] = []
    done = trio.Event()

    async def ping_then_abort(
        actor: FakeActor, websocket: PendingWebSocket, start: ClientStart
    ) -> None:
        channel = await websocket.accept()
        assert isinstance(channel, TrioWebSocket)
        async with trio.open_nursery() as nursery:

            async def abort_soon() -> None:
                await trio.sleep(0.1)
                await channel.abort()

            nursery.start_soon(abort_soon)
            with trio.fail_after(5):
                try:
                    await channel.ping()
                except WebSocketClosed:
                    outcomes.append("closed")
        with pytest.raises(WebSocketClosed):
            await channel.send_texts(["late"])
        with pytest.raises(WebSocketClosed):
            await channel.ping()
        done.set()

    directory.behaviour = ping_then_abort
    uuid = await make_stream(directory)
    async with running_websockets(directory) as port:
        stream = await raw_handshake(port, uuid)  # never answers the ping
        received = await receive_until_eof(stream)
        with trio.fail_after(5):
            await done.wait()
    assert outcomes == ["closed"]
    assert received[:1] == b"\x89"  # the ping, then EOF without a close frame


async def test_a_client_that_never_completes_its_handshake_is_dropped() -> None:
    directory = FakeDirectory()
    async with running_websockets(directory, handshake_timeout=0.2) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /event-stream/x HTTP/1.1\r\nHost: a\r\n")  # never finished
        started = time.monotonic()
        assert await receive_until_eof(stream) == b""
    assert time.monotonic() - started < 2


# --- what a client without a credential can cost: log lines and metric labels --------


async def test_refused_handshakes_cannot_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Unknown uuids and bad queries in a loop: at most a burst of INFO lines per window."""
    caplog.set_level(logging.DEBUG, logger="web.websocket")
    directory = FakeDirectory()
    uuid = await make_stream(directory)
    attempts = REFUSAL_LOG_BURST + 15
    async with running_websockets(directory) as port:
        for n in range(attempts):
            target = f"nope-{n}" if n % 2 else f"{uuid}?stream_from_ordinal=bad"
            async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{target}") as ws:
                await read_until_closed(ws)
    refusals = [
        r
        for r in caplog.records
        if r.name == "web.websocket" and r.getMessage().startswith("Websocket ")
    ]
    assert len(refusals) >= attempts  # every refusal is still seen at DEBUG
    assert len([r for r in refusals if r.levelno >= logging.INFO]) == REFUSAL_LOG_BURST
    assert all("nope" not in r.getMessage() for r in refusals)  # the uuid tried is not logged


async def test_client_chosen_close_codes_share_one_metric_label() -> None:
    directory = FakeDirectory()

    async def wait_for_client_close(
        actor: FakeActor, websocket: PendingWebSocket, start: ClientStart
    ) -> None:
        channel = await websocket.accept()
        gone = trio.Event()
        channel.on_gone(gone.set)
        await gone.wait()

    directory.behaviour = wait_for_client_close
    metrics = ServiceMetrics()
    uuid = await make_stream(directory)
    async with running_websockets(directory, metrics=metrics) as port:
        for code in (4999, 3000, 4002):
            async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{uuid}") as ws:
                await ws.aclose(code, "client's choice")
        with trio.fail_after(5):
            while metrics.registry.get_sample_value("ess_websocket_connections") != 0:
                await trio.sleep(0.01)  # the handlers' finally blocks: no event to wait on
    rendered = metrics.render().decode()
    assert 'ess_websocket_closes_total{code="other"} 3.0' in rendered
    for code in ("4999", "3000", "4002"):
        assert f'code="{code}"' not in rendered


SERVICE_CODES = [1000, 1001, 1002, 1006, 1008, 1009, 1011, 1013, 4001]
CLIENT_CODES = [1003, 1005, 3000, 4000, 4002, 4999]


@pytest.mark.parametrize(
    ("code", "label"),
    [(code, str(code)) for code in SERVICE_CODES] + [(code, "other") for code in CLIENT_CODES],
)
def test_close_code_label(code: int, label: str) -> None:
    assert close_code_label(code) == label


# --- client frames are discarded by the reader; the owner is told when it ends ---------


async def test_client_chatter_is_discarded_and_pings_still_answered() -> None:
    """Nobody reads the socket: messages are dropped in the reader, pings and pongs flow."""
    chatted = trio.Event()
    seen: list[object] = []

    async def ping_after_chatter(
        actor: FakeActor, websocket: PendingWebSocket, start: ClientStart
    ) -> None:
        channel = await websocket.accept()
        assert isinstance(channel, TrioWebSocket)
        connection = channel._ws
        with trio.fail_after(5):
            await chatted.wait()
            await channel.ping()  # answered although nobody drained the chatter
        # No inbound queue and no handshake state kept for the connection's life.
        seen.append(type(connection._recv_channel).__name__)
        seen.append("handshake" in vars(connection._wsproto))
        seen.append(str(connection._wsproto.state))
        await channel.close(1000, "")

    async with client_of(ping_after_chatter, max_message_size=1024) as ws:
        for index in range(50):  # far more than trio-websocket's queue would hold undrained
            await ws.send_message(f"chatter {index:02}" * 10)
            await ws.send_message(b"\x00" * 1000)
        await ws.ping()  # the server's reader has handled all the chatter before this pong
        chatted.set()
        _, reason = await read_until_closed(ws)
    assert reason.code == 1000
    assert seen == ["_NoQueue", False, "ConnectionState.OPEN"]


@pytest.mark.parametrize("how", ["close frame", "tcp drop"])
async def test_on_gone_fires_when_the_client_leaves(how: str) -> None:
    directory = FakeDirectory()
    gone = trio.Event()
    accepted = trio.Event()

    async def wait_for_the_client(
        actor: FakeActor, websocket: PendingWebSocket, start: ClientStart
    ) -> None:
        channel = await websocket.accept()
        channel.on_gone(gone.set)
        accepted.set()
        with trio.fail_after(5):
            await gone.wait()
        late: list[str] = []
        channel.on_gone(lambda: late.append("at once"))  # already gone: called right away
        assert late == ["at once"]
        await channel.close(1000, "")

    directory.behaviour = wait_for_the_client
    uuid = await make_stream(directory)
    async with running_websockets(directory) as port:
        stream = await raw_handshake(port, uuid)
        with trio.fail_after(5):
            await accepted.wait()
        if how == "close frame":
            # A masked close frame with code 1000 (mask 0: payload as is).
            await stream.send_all(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
            await receive_until_eof(stream)
        else:
            await stream.aclose()
        with trio.fail_after(5):
            await gone.wait()


# --- a websocket handed over to its owner: the handler task does not wait for it --------


class Owner:
    """A stream actor's stand-in that takes the websocket over, as ``StreamActor.serve`` does.

    Its "connection actor" runs in ``nursery`` (not in the handler): it
    accepts, sends ``hello``, and closes with 1001 when the edge stops, or
    with ``close`` when ``release`` is set; it leaves a websocket whose
    client went without closing it (as the connection actor does).
    """

    def __init__(self, nursery: trio.Nursery, close: tuple[int, str] = (1000, "done")) -> None:
        self.nursery = nursery
        self.close = close
        self.stopped = trio.Event()
        self.release = trio.Event()
        self.gone = trio.Event()
        self.accepted = trio.Event()
        self.ended = trio.Event()
        self.close_seconds: float | None = None
        self.served_returned = 0

    async def serve(
        self, actor: FakeActor, websocket: PendingWebSocket, start: ClientStart
    ) -> None:
        websocket.on_stop(self.stopped.set)
        self.nursery.start_soon(self._run, websocket)
        self.served_returned += 1

    async def _run(self, websocket: PendingWebSocket) -> None:
        try:
            channel = await websocket.accept()
            channel.on_gone(self.gone.set)
            await channel.send_texts(["hello"])
            self.accepted.set()
            async with trio.open_nursery() as waits:
                for event in (self.stopped, self.release, self.gone):
                    waits.start_soon(_cancel_when, event, waits.cancel_scope)
            if self.gone.is_set() and not self.stopped.is_set():
                return
            code, reason = (1001, "shutting down") if self.stopped.is_set() else self.close
            started = time.monotonic()
            await channel.close(code, reason)
            self.close_seconds = time.monotonic() - started
        finally:
            self.ended.set()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def wait_for_gauge(metrics: ServiceMetrics, value: float) -> None:
    registry = metrics.registry
    with trio.fail_after(5):
        while registry.get_sample_value("ess_websocket_connections") != value:
            await trio.sleep(0.01)


async def test_a_handed_over_websocket_is_served_and_counted_after_its_handler_returned() -> None:
    directory = FakeDirectory()
    metrics = ServiceMetrics()
    async with trio.open_nursery() as actors:
        owner = Owner(actors)
        directory.behaviour = owner.serve
        uuid = await make_stream(directory)
        async with running_websockets(directory, metrics=metrics) as port:
            async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{uuid}") as ws:
                assert await ws.get_message() == "hello"
                assert owner.served_returned == 1  # the handler is done; the websocket lives on
                await wait_for_gauge(metrics, 1)
                await ws.ping()  # the edge still reads and answers
                owner.release.set()
                frames, reason = await read_until_closed(ws)
            assert frames == [] and (reason.code, reason.reason) == (1000, "done")
            await wait_for_gauge(metrics, 0)
    closes = metrics.registry.get_sample_value("ess_websocket_closes_total", {"code": "1000"})
    assert closes == 1
    assert owner.close_seconds is not None and owner.close_seconds < 1  # the reply was read


async def test_shutdown_closes_a_handed_over_websocket_with_1001_and_reads_the_reply() -> None:
    directory = FakeDirectory()
    metrics = ServiceMetrics()
    server_scope = trio.CancelScope()

    async def server(task_status: trio.TaskStatus[int]) -> None:
        with server_scope:
            await serve_public_websockets(
                directory,
                host="127.0.0.1",
                port=0,
                metrics=metrics,
                close_timeout=5.0,
                task_status=task_status,
            )

    async with trio.open_nursery() as nursery:
        owner = Owner(nursery)
        directory.behaviour = owner.serve
        uuid = await make_stream(directory)
        port = await nursery.start(server)
        async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{uuid}") as ws:
            assert await ws.get_message() == "hello"
            server_scope.cancel()
            frames, reason = await read_until_closed(ws)
        with trio.fail_after(5):
            await owner.ended.wait()
    assert frames == [] and reason.code == 1001
    assert owner.stopped.is_set()
    # The edge kept reading after it was cancelled: the close handshake completed
    # at once instead of running into the 5 s close timeout.
    assert owner.close_seconds is not None and owner.close_seconds < 1
    registry = metrics.registry
    assert registry.get_sample_value("ess_websocket_closes_total", {"code": "1001"}) == 1
    assert registry.get_sample_value("ess_websocket_connections") == 0


async def test_a_client_leaving_a_handed_over_websocket_is_counted_with_its_code() -> None:
    directory = FakeDirectory()
    metrics = ServiceMetrics()
    async with trio.open_nursery() as actors:
        owner = Owner(actors)
        directory.behaviour = owner.serve
        uuid = await make_stream(directory)
        async with running_websockets(directory, metrics=metrics) as port:
            async with open_websocket_url(f"ws://127.0.0.1:{port}/event-stream/{uuid}") as ws:
                assert await ws.get_message() == "hello"
                await ws.aclose(4321, "bye")
            with trio.fail_after(5):
                await owner.gone.wait()
            await wait_for_gauge(metrics, 0)
    registry = metrics.registry
    assert registry.get_sample_value("ess_websocket_closes_total", {"code": "other"}) == 1


async def test_a_client_gone_before_the_owner_accepts_is_never_counted() -> None:
    directory = FakeDirectory()
    metrics = ServiceMetrics()
    outcome: list[str] = []
    release = trio.Event()

    async def late_accept(websocket: PendingWebSocket) -> None:
        await release.wait()
        try:
            await websocket.accept()
            outcome.append("accepted")
        except WebSocketClosed:
            outcome.append("closed")

    async with trio.open_nursery() as actors:

        async def take_over(
            actor: FakeActor, websocket: PendingWebSocket, start: ClientStart
        ) -> None:
            websocket.on_stop(lambda: None)
            actors.start_soon(late_accept, websocket)

        directory.behaviour = take_over
        uuid = await make_stream(directory)
        async with running_websockets(directory, metrics=metrics) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(HANDSHAKE % uuid.encode())
            with trio.fail_after(5):
                while not directory.actors[1].served:
                    await trio.sleep(0.01)
            await stream.send_eof()  # the client half-closes before the 101
            await receive_until_eof(stream)  # the edge dropped the connection
            await stream.aclose()
            release.set()
            with trio.fail_after(5):
                while not outcome:
                    await trio.sleep(0.01)
    assert outcome == ["closed"]
    assert metrics.registry.get_sample_value("ess_websocket_connections") == 0
