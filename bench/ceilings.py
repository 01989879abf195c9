"""The ceilings a scenario's figure is divided by, measured in the same run.

- :func:`bare_amqp_consume`: our own ``amqp/`` consumer reading the same stream
  queue bare: what the service would reach if websockets and actors cost nothing.
- :func:`bare_ws_server`: a bare trio-websocket server (``serve_websocket``) in
  its own process, pushing the very frames the service sent, to the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiormq

from .harness import AMQP_URL, free_port


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
