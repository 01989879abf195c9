"""The ``ess`` tools as a person runs them: subprocesses against the real service.

``ess streams``, ``ess publish`` and ``ess listen`` run as real processes
(``python -m ess``) against the ``ess serve`` of the ``service`` fixture over
real HTTP, websockets and RabbitMQ. The reconnect test puts an in-process
trio-websocket server behind a TCP proxy that it can cut, because killing the
real service to drop a connection is slow and also tests the service. Every
wait is for an expected line, with a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from .service import ServiceProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0
TS = 1_714_564_800_123


def ess_env(service: ServiceProcess | None = None) -> dict[str, str]:
    """The environment of a tool run: only the ESS_* variables the test chooses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESS_")}
    if service is not None:
        env.update(
            {
                "ESS_AMQP_URL": service.amqp_url,
                "ESS_EXCHANGE": service.exchange,
                "ESS_INTERNAL_PORT": str(service.internal_port),
            }
        )
    return env


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


async def ess(*args: str, env: dict[str, str]) -> Result:
    """Run ``ess <args>`` to completion."""
    with trio.fail_after(TIMEOUT * 2):
        done = await trio.run_process(
            [sys.executable, "-m", "ess", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


class Lines:
    """Lines of one pipe of a running process, awaited one at a time with a timeout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.seen: list[str] = []

    async def next(self, timeout: float = TIMEOUT) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self._stream.receive_some()
                if not chunk:
                    raise EOFError(f"the pipe closed; lines so far: {self.seen}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        text = line.decode()
        self.seen.append(text)
        return text

    async def until(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """Skip lines until one matches ``pattern`` (a regular expression)."""
        with trio.fail_after(timeout):
            while True:
                line = await self.next()
                if re.search(pattern, line):
                    return line

    async def rest(self, timeout: float = TIMEOUT) -> str:
        """Everything until the pipe closes."""
        with trio.fail_after(timeout):
            while chunk := await self._stream.receive_some():
                self._buffer += chunk
        return self._buffer.decode()


@dataclass
class Listener:
    process: trio.Process
    stdout: Lines
    stderr: Lines

    async def wait(self, timeout: float = TIMEOUT) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def listening(*args: str, env: dict[str, str]) -> AsyncIterator[Listener]:
    """``ess listen <args>`` running, once it says it is connected."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ess", "listen", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    listener = Listener(process, Lines(process.stdout), Lines(process.stderr))
    try:
        await listener.stderr.until("connected to ")
        yield listener
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()


def ordinals(lines: Sequence[str]) -> list[int]:
    return [int(line.split()[0].lstrip("#")) for line in lines]


# --------------------------------------------------------------------------- #
# Against the real service


async def test_create_listen_publish_delete(service: ServiceProcess, routing_key: str) -> None:
    env = ess_env(service)
    created = await ess("streams", "create", routing_key, env=env)
    assert created.code == 0, created.stderr
    stream = json.loads(created.stdout)
    assert stream["location"].startswith("ws://127.0.0.1:")

    listed = await ess("streams", "list", env=env)
    assert listed.code == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["ID", "ROUTING", "KEY", "LOCATION"]
    row = next(line for line in listed.stdout.splitlines() if routing_key in line)
    assert row.split() == [str(stream["id"]), routing_key, stream["location"]]

    async with listening(stream["location"], env=env) as listener:
        published = await ess("publish", routing_key, "--count", "3", env=env)
        assert published.code == 0, published.stderr
        assert published.stdout.startswith("published 3 events to exchange")
        assert re.search(r"in [0-9.]+ s \([0-9.]+ msg/s\)$", published.stdout.strip())

        lines = [await listener.stdout.next() for _ in range(3)]
        assert ordinals(lines) == [1, 2, 3]
        for n, line in enumerate(lines, start=1):
            _, moment, kind, body = line.split(" ", 3)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", moment)
            assert kind == "json"
            assert json.loads(body)["n"] == n

        deleted = await ess("streams", "delete", str(stream["id"]), env=env)
        assert deleted.code == 0, deleted.stderr
        assert json.loads(deleted.stdout) == {"id": stream["id"], "deleted": True}

        await listener.stderr.until("closed by the server: 1000 The stream has been deleted")
        assert await listener.wait() == 0
        assert await listener.stdout.rest() == ""

    listed = await ess("streams", "list", env=env)
    assert routing_key not in listed.stdout


async def test_replay_text_events_as_json_then_ctrl_c(
    service: ServiceProcess, routing_key: str
) -> None:
    env = ess_env(service)
    stream = json.loads((await ess("streams", "create", routing_key, env=env)).stdout)
    published = await ess(
        "publish", routing_key, 'Status|step: {n} note: "x"', "--count", "2", "--to-queue",
        env=env,
    )  # fmt: skip
    assert published.code == 0, published.stderr
    assert "to stream queue" in published.stdout

    async with listening(stream["location"], "--from-ordinal", "0", "--json", env=env) as listener:
        first, second = await listener.stdout.next(), await listener.stdout.next()
        assert re.fullmatch(r'Status\|step: 1 note: "x"\|ordinal: 1\|timestamp: \d+', first)
        assert second.startswith('Status|step: 2 note: "x"|ordinal: 2|')
        listener.process.send_signal(signal.SIGINT)
        assert await listener.wait() == 0
        assert "Traceback" not in await listener.stderr.rest()


async def test_from_ordinal_resumes_after_it(service: ServiceProcess, routing_key: str) -> None:
    env = ess_env(service)
    stream = json.loads((await ess("streams", "create", routing_key, env=env)).stdout)
    assert (await ess("publish", routing_key, "--count", "5", env=env)).code == 0
    async with listening(stream["location"], "--from-ordinal", "3", env=env) as listener:
        assert ordinals([await listener.stdout.next() for _ in range(2)]) == [4, 5]


async def test_streams_errors_print_the_detail(service: ServiceProcess) -> None:
    env = ess_env(service)
    missing = await ess("streams", "delete", "987654321", env=env)
    assert missing.code == 1
    assert missing.stderr.startswith("ess streams delete: 404 ")
    assert missing.stdout == ""
    invalid = await ess("streams", "create", "amq.reserved", env=env)
    assert invalid.code == 1
    assert invalid.stderr.startswith("ess streams create: 422 ")


async def test_listen_to_an_unknown_stream_ends_with_its_close(service: ServiceProcess) -> None:
    async with listening(f"{service.ws_base}/event-stream/nope", env=ess_env()) as listener:
        line = await listener.stderr.until("closed by the server")
        assert "1000" in line
        assert await listener.wait() == 0


async def test_streams_unreachable_api() -> None:
    result = await ess("streams", "list", "--api", "http://127.0.0.1:9", env=ess_env())
    assert result.code == 1
    assert "cannot reach the internal API at http://127.0.0.1:9" in result.stderr


# --------------------------------------------------------------------------- #
# Reconnect: an in-process server behind a proxy that can drop the connection


@dataclass
class DropProxy:
    """Forwards TCP to ``backend_port``; :meth:`drop` cuts every connection (no close frame)."""

    backend_port: int
    port: int = 0
    _scopes: list[trio.CancelScope] = field(default_factory=list)

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.backend_port) as server:
            with trio.CancelScope() as scope:
                self._scopes.append(scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server)
                    nursery.start_soon(self._pump, server, client)

    @staticmethod
    async def _pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while data := await source.receive_some():
            await sink.send_all(data)
        await sink.send_eof()

    def drop(self) -> None:
        for scope in self._scopes:
            scope.cancel()


def json_event(ordinal: int) -> str:
    return json.dumps({"n": ordinal, "ess_ordinal": ordinal, "ess_timestamp": TS})


async def test_listen_reconnects_after_a_drop_from_the_last_ordinal() -> None:
    requests: list[str] = []
    dropped_side_closed = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        requests.append(request.path)
        ws = await request.accept()
        if len(requests) == 1:
            await ws.send_message(json_event(1))
            await ws.send_message(json_event(2))
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed:
                dropped_side_closed.set()
        else:
            await ws.send_message(json_event(2))  # a repeat the listener must not print
            await ws.send_message(json_event(3))
            await ws.aclose(1000, "The stream has been deleted")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        proxy = DropProxy(server.port)
        await nursery.start(proxy.run)
        location = f"ws://127.0.0.1:{proxy.port}/event-stream/u1"

        async with listening(location, env=ess_env()) as listener:
            assert ordinals([await listener.stdout.next() for _ in range(2)]) == [1, 2]
            proxy.drop()
            with trio.fail_after(TIMEOUT):
                await dropped_side_closed.wait()
            await listener.stderr.until(r"connection lost: .*reconnecting after ordinal 2")
            await listener.stderr.until("connected to ")
            assert ordinals([await listener.stdout.next()]) == [3]
            await listener.stderr.until("closed by the server: 1000 The stream has been deleted")
            assert await listener.wait() == 0
            assert await listener.stdout.rest() == ""
        nursery.cancel_scope.cancel()

    assert [parse_qs(urlsplit(path).query) for path in requests] == [
        {},
        {"stream_from_ordinal": ["2"]},
    ]


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["listen"], ["--from-ordinal", "--json"]),
        (["publish"], ["--count", "--rate", "--to-queue"]),
        (["streams", "list"], ["--api", "--token"]),
    ],
)
async def test_help(command: list[str], words: list[str]) -> None:
    result = await ess(*command, "--help", env=ess_env())
    assert result.code == 0
    for word in words:
        assert word in result.stdout
