"""The ceilings a scenario's figure is divided by, measured in the same run.

- :func:`bare_amqp_consume`: our own ``amqp/`` consumer reading the same stream
  queue bare: what the service would reach if websockets and actors cost nothing.
- :func:`bare_amqp_fanout`: the same, live, on every stream of the fanout
  scenario at once, with its CPU and latency over the same publishing.
- :func:`bare_ws_server`: a bare trio-websocket server (``serve_websocket``) in
  its own process, pushing the very frames the service sent, to the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiormq

from .harness import AMQP_URL, free_port, proc_cpu_seconds


async def bare_amqp_consume(
    queue: str, count: int, prefetch: int, amqp_url: str = AMQP_URL
) -> float:
    """Consume ``count`` messages from offset 0 of stream ``queue``; return seconds.

    The ceiling is our own ``amqp/`` client, bare (no actors, no websocket),
    in a process of its own like the service (``bench.bare_consumer``).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bare_consumer",
        queue,
        str(count),
        str(prefetch),
        amqp_url,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.bare_consumer failed with status {proc.returncode}")
    return float(out.decode().strip())


@contextlib.asynccontextmanager
async def bare_ws_server(frames_file: Path) -> AsyncIterator[str]:
    """Run ``bench.ws_ceiling_server`` in its own process; yield its websocket URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ws_ceiling_server", str(frames_file), str(port)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"ws ceiling server did not start: {line!r}")
        yield f"ws://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def bare_amqp_latency(
    queue: str, ready: asyncio.Event, stop: asyncio.Event, amqp_url: str = AMQP_URL
) -> list[float]:
    """Publish-to-delivery latencies (ms) seen by a bare consumer of ``queue`` until ``stop``.

    The broker's own floor for the live scenarios: it reads the ``pub_ns`` the
    driver put in each body, from the next offset on (no replay).
    """
    import json

    latencies: list[float] = []
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=1000)

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            now = time.time_ns()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                latencies.append((now - json.loads(message.body)["pub_ns"]) / 1e6)
            await channel.basic_ack(message.delivery.delivery_tag)

        await channel.basic_consume(queue, on_message, arguments={"x-stream-offset": "next"})
        ready.set()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return latencies


async def bare_amqp_fanout(
    queues: list[str],
    prefetch: int,
    publish: Callable[[], Awaitable[int]],
    *,
    pool: int = 2,
    amqp_url: str = AMQP_URL,
) -> dict[str, Any]:
    """The fanout ceiling: ``bench.bare_fanout`` consumes ``queues`` while ``publish`` runs.

    ``publish`` publishes and returns how many events it published. Measured
    as the service is: the consumer process's CPU over the publishing
    window, per event received, and its publish-to-delivery latencies.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bare_fanout",
        amqp_url,
        str(prefetch),
        str(pool),
        *queues,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"bench.bare_fanout did not start: {line!r}")
        cpu0, wall0 = proc_cpu_seconds(proc.pid), time.perf_counter()
        sent = await publish()
        cpu1, wall1 = proc_cpu_seconds(proc.pid), time.perf_counter()
        proc.stdin.write(f"{sent}\n".encode())
        await proc.stdin.drain()
        report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    received = int(report["received"])
    return {
        "sent": sent,
        "received": received,
        "cpu_fraction_of_core": round((cpu1 - cpu0) / (wall1 - wall0), 4),
        "cpu_us_per_event": round((cpu1 - cpu0) / received * 1e6, 1) if received else math.nan,
        "latency": report["latency"],
    }
