"""Paced publishing and latency-recording readers, shared by live and fanout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

from .client import ConnectionClosed, TimedClient
from .harness import Publisher, event_body


class Reader:
    """Reads one websocket; latency = receive time - the ``pub_ns`` in the body."""

    def __init__(self, ws: TimedClient) -> None:
        self.ws = ws
        self.latencies_ms: list[float] = []
        self.seqs: set[int] = set()
        self.duplicates = 0
        self.out_of_order = 0
        self.last_seq = -1
        self.closed: tuple[int | None, str | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.received = asyncio.Event()  # set at every frame

    def start(self) -> Reader:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.ws.recv()
                now = time.time_ns()
                event = json.loads(frame)
                seq = event["seq"]
                self.latencies_ms.append((now - event["pub_ns"]) / 1e6)
                if seq in self.seqs:
                    self.duplicates += 1
                self.seqs.add(seq)
                if seq < self.last_seq:
                    self.out_of_order += 1
                self.last_seq = seq
                self.received.set()
        except ConnectionClosed:
            self.closed = (self.ws.close_code, self.ws.close_reason)

    async def stop(self) -> None:
        await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def paced_publish(
    publisher: Publisher, keys: Sequence[str], rate: float, duration: float, size: int
) -> tuple[int, float]:
    """Publish ``rate`` msg/s round-robin over ``keys`` for ``duration`` s (confirms collected
    in the background). Returns (count, achieved rate)."""
    total = int(rate * duration)
    start = time.perf_counter()
    for k in range(total):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        publisher.publish_nowait(keys[k % len(keys)], event_body(k, size))
    achieved = total / (time.perf_counter() - start)
    await publisher.drain()
    return total, achieved


async def wait_all_received(readers: Sequence[Reader], expected: int, grace: float) -> None:
    """Wait until the readers saw ``expected`` distinct events in total, at most ``grace`` s."""
    deadline = time.perf_counter() + grace
    while sum(len(r.seqs) for r in readers) < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
