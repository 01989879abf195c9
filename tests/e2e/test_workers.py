"""``ess serve --workers 2`` for real: two processes on both ports under one parent.

SPEC section 7 (``ESS_WORKERS``): N replicas on one host, one process each,
sharing the two ports. Which worker answers is told by the replica name in
``/health/*`` and ``/metrics`` (``<ESS_REPLICA_NAME>-w<i>``); the workers
are found as the parent's child processes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import psutil
import pytest
import trio
from trio_websocket import WebSocketConnection

from tests.support.net import free_ports

from .client import connect, wait_closed
from .service import STARTUP_TIMEOUT, ServiceProcess

NAME = "e2e"
WORKERS = {f"{NAME}-w1", f"{NAME}-w2"}
STREAMS = 16  # all on one worker by chance: 2 * 2**-16
GRACE = 5.0
_GAUGE = re.compile(r"^ess_websocket_connections (\S+)$", re.MULTILINE)
_REPLICA = re.compile(r'^ess_replica_info\{replica="([^"]+)"\} 1\.0$', re.MULTILINE)


@pytest.fixture
def workers_service(fresh_service: ServiceProcess) -> Iterator[ServiceProcess]:
    """A service of the test's own to start with two workers (after seeding it, maybe)."""
    fresh_service.extra_env.update(
        {
            "ESS_REPLICA_NAME": NAME,
            "ESS_SHUTDOWN_GRACE": str(GRACE),
            "ESS_LOG_LEVEL": "INFO",
        }
    )
    yield fresh_service


def start_workers(service: ServiceProcess) -> None:
    """Start ``--workers 2`` (via ESS_WORKERS) and wait until each worker is ready."""
    service.extra_env["ESS_WORKERS"] = "2"
    service.start()
    wait_until_every_worker_answers(service, "/health/ready")


def answering_replica(client: httpx.Client, url: str) -> str | None:
    """The replica that answered 200 on a new connection (the kernel picks one), or None."""
    try:
        response = client.get(url, headers={"Connection": "close"})
    except httpx.TransportError:
        return None
    return str(response.json()["replica"]) if response.status_code == 200 else None


def wait_until_every_worker_answers(
    service: ServiceProcess, probe: str, timeout: float = STARTUP_TIMEOUT
) -> None:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while seen != WORKERS:
            assert time.monotonic() < deadline, f"only {seen} answered:\n{service.log()}"
            assert service.process is not None and service.process.poll() is None, service.log()
            name = answering_replica(client, f"{service.api}{probe}")
            if name is not None:
                seen.add(name)
            time.sleep(0.02)  # polling the probe on new connections, the event we wait on


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``."""
    return {
        child.pid
        for child in psutil.Process(pid).children()
        if child.status() != psutil.STATUS_ZOMBIE
    }


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling process state, which has no event to wait on


def websockets_per_worker(service: ServiceProcess) -> dict[str, int]:
    """``ess_websocket_connections`` of each worker, asking on new connections until both told."""
    counts: dict[str, int] = {}
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx.Client(timeout=5.0) as client:
        while set(counts) != WORKERS:
            assert time.monotonic() < deadline, f"only {set(counts)} answered /metrics"
            response = client.get(f"{service.api}/metrics", headers={"Connection": "close"})
            replica = _REPLICA.search(response.text)
            gauge = _GAUGE.search(response.text)
            assert replica is not None and gauge is not None, response.text[:2000]
            counts[replica.group(1)] = int(float(gauge.group(1)))
    return counts


def seed_streams(service: ServiceProcess, count: int) -> list[str]:
    """Create ``count`` streams with one process, stopped after: every worker loads them.

    (A stream created on one worker reaches the others through the replica
    coordination of the broker; seeding keeps this test about the workers.)
    """
    service.start()
    locations: list[str] = []
    with httpx.Client(base_url=service.api, timeout=10.0) as client:
        for i in range(count):
            response = client.post(
                "/event-stream/", json={"routing_key": f"ess.e2e.workers.{i}.{os.getpid()}"}
            )
            assert response.status_code == 201, response.text
            locations.append(response.json()["location"])
    assert service.stop() == 0, service.log()
    return locations


def test_a_port_in_use_stops_start_up_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ)
        env.update(
            {
                "ESS_HOST": "127.0.0.1",
                "ESS_PUBLIC_PORT": str(port),
                "ESS_DATABASE": str(tmp_path / "registry.db"),
            }
        )
        result = subprocess.run(
            [sys.executable, "-m", "ess", "serve", "--workers", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ess:")]
    expected = f"ess: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert lines == [expected]
    assert "Traceback" not in result.stderr
    assert "worker" not in result.stderr  # refused before any worker started


async def test_two_workers_share_both_ports_and_sigterm_closes_every_websocket_with_1001(
    workers_service: ServiceProcess,
) -> None:
    locations = seed_streams(workers_service, STREAMS)
    start_workers(workers_service)
    assert workers_service.process is not None
    worker_pids = children(workers_service.process.pid)
    assert len(worker_pids) == 2

    async with AsyncExitStack() as stack:
        sockets: list[WebSocketConnection] = [
            await stack.enter_async_context(connect(location)) for location in locations
        ]

        def all_counted() -> bool:
            return sum(websockets_per_worker(workers_service).values()) == STREAMS

        await trio.to_thread.run_sync(wait_for, all_counted, "every websocket counted")
        counts = await trio.to_thread.run_sync(websockets_per_worker, workers_service)
        assert all(counts[name] > 0 for name in WORKERS), counts

        workers_service.signal(signal.SIGTERM)
        closes = [await wait_closed(ws, timeout=GRACE + 10) for ws in sockets]
        assert {close.code for close in closes} == {1001}, closes

    code = await trio.to_thread.run_sync(workers_service.wait_exit, GRACE + 20)
    assert code == 0, workers_service.log()
    assert not any(alive(pid) for pid in worker_pids)
    assert "all workers stopped" in workers_service.log()


async def test_a_killed_worker_is_restarted_and_the_ports_keep_answering(
    workers_service: ServiceProcess,
) -> None:
    locations = seed_streams(workers_service, 2)
    start_workers(workers_service)
    assert workers_service.process is not None
    parent = workers_service.process.pid
    before = children(parent)
    victim = min(before)

    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not alive(victim), "the killed worker to be gone")
    # Both ports keep answering, from the survivor, while the parent restarts the other.
    with httpx.Client(timeout=5.0) as client:
        for _ in range(20):
            assert answering_replica(client, f"{workers_service.api}/health/live") in WORKERS
    for location in locations:
        async with connect(location) as ws:
            assert not ws.closed

    wait_for(lambda: len(children(parent)) == 2, "the parent to restart the worker")
    restarted = children(parent) - before
    assert len(restarted) == 1, (before, children(parent))
    wait_until_every_worker_answers(workers_service, "/health/ready")
    log = workers_service.log()
    assert re.search(r"worker e2e-w\d ended with signal SIGKILL: restarting it in", log), log
    assert workers_service.stop() == 0, workers_service.log()


def test_workers_stop_when_the_parent_is_killed(workers_service: ServiceProcess) -> None:
    start_workers(workers_service)
    assert workers_service.process is not None
    worker_pids = children(workers_service.process.pid)
    assert len(worker_pids) == 2

    workers_service.kill()  # SIGKILL the parent: no chance to forward anything
    try:
        wait_for(
            lambda: not any(alive(pid) for pid in worker_pids),
            "the orphaned workers to stop",
            timeout=GRACE + 20,
        )
    finally:  # never leave orphans serving on the test's ports
        for pid in filter(alive, worker_pids):
            os.kill(pid, signal.SIGKILL)
    with socket.socket() as probe:  # and they let go of the port
        probe.bind(("127.0.0.1", workers_service.public_port))


# --------------------------------------------------------------------------- #
# The parent with stand-in workers (a line of Python each): its I/O half.

_PARENT = """
import os, sys
from ess.config import load_config
from ess.workers import WorkerCommand, run_parent
config = load_config()
command = WorkerCommand([sys.executable, "-c", sys.argv[1]], dict(os.environ))
sys.exit(run_parent(config, command))
"""


def start_parent(worker_code: str, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """``run_parent`` with two workers that each run ``worker_code``."""
    public_port, internal_port = free_ports(2)
    environ = dict(os.environ)
    environ.update(
        {
            "ESS_WORKERS": "2",
            "ESS_HOST": "127.0.0.1",
            "ESS_PUBLIC_PORT": str(public_port),
            "ESS_INTERNAL_PORT": str(internal_port),
            "ESS_DATABASE": str(tmp_path / "unused.db"),
            "ESS_SHUTDOWN_GRACE": "0.5",
            "ESS_REPLICA_NAME": "t",
            **env,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-c", _PARENT, worker_code],
        env=environ,
        stderr=subprocess.PIPE,
        text=True,
    )


def ess_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ess:")]


def test_a_worker_with_a_configuration_error_stops_the_parent_with_status_2(
    tmp_path: Path,
) -> None:
    parent = start_parent("import sys; sys.exit(2)", tmp_path)
    _, stderr = parent.communicate(timeout=60)
    assert parent.returncode == 2, stderr
    [line] = ess_lines(stderr)
    assert re.fullmatch(
        r"ess: worker t-w\d exited with status 2 \(a configuration error\): stopping", line
    ), stderr


def test_a_worker_that_cannot_start_is_retried_with_backoff_then_given_up(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    parent = start_parent("import sys; sys.exit(1)", tmp_path)
    _, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 1, stderr
    [line] = ess_lines(stderr)
    assert re.fullmatch(
        r"ess: worker t-w\d failed 5 times in a row, each within 30s of starting "
        r"\(last: status 1\): stopping",
        line,
    ), stderr
    # Four pauses of the backoff (0.5, 1, 2, 4 s, each at least half that): not a spin.
    assert time.monotonic() - started >= 3.75
    assert len(re.findall(r"ended with status 1: restarting it in", stderr)) >= 4


def test_the_parent_forwards_sigterm_and_kills_a_worker_that_ignores_it(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    ready.mkdir()
    # One worker stops on SIGTERM (status 0), the other ignores it.
    worker = (
        "import os, signal, sys, time, pathlib\n"
        "stubborn = os.environ['ESS_REPLICA_NAME'] == 't-w2'\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN if stubborn else lambda *_: sys.exit(0))\n"
        f"pathlib.Path({str(ready)!r}, str(os.getpid())).touch()\n"
        "while True: time.sleep(1)\n"
    )
    parent = start_parent(worker, tmp_path)
    wait_for(lambda: len(list(ready.iterdir())) == 2, "both workers to start")
    workers = {int(path.name) for path in ready.iterdir()}
    stop_sent = time.monotonic()
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=60)
    took = time.monotonic() - stop_sent
    assert parent.returncode == 1, stderr  # a worker had to be killed
    assert "worker t-w2 did not stop within 5.5s: killing it" in stderr
    assert 5.5 <= took < 30, took
    assert not any(alive(pid) for pid in workers)
