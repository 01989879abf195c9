"""Websocket clients for the driver (``websockets`` on asyncio), with timing hooks."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from .harness import proc_cpu_seconds

if TYPE_CHECKING:
    from .latency import Reader

__all__ = ["ConnectionClosed", "PoolTake", "ReaderPool", "TimedClient", "open_ws", "wait_close"]


class TimedClient(ClientConnection):
    """Records when the server's close frame arrives (``recv`` only raises after TCP closes)."""

    close_frame_ns: int | None = None
    close_frame_wall_ns: int | None = None

    def process_event(self, event: Any) -> None:
        if (
            self.close_frame_ns is None
            and isinstance(event, Frame)
            and event.opcode is Opcode.CLOSE
        ):
            self.close_frame_ns = time.perf_counter_ns()
            self.close_frame_wall_ns = time.time_ns()
        super().process_event(event)


async def open_ws(
    url: str, *, max_queue: int | None = 64, open_timeout: float = 30.0
) -> TimedClient:
    ws = await connect(
        url,
        create_connection=TimedClient,
        compression=None,
        max_size=None,
        max_queue=max_queue,
        ping_interval=None,  # the service pings; websockets answers automatically
        open_timeout=open_timeout,
        close_timeout=5,
    )
    assert isinstance(ws, TimedClient)
    return ws


async def wait_close(ws: TimedClient, timeout: float = 10.0) -> tuple[int | None, str | None]:
    """Discard frames until the server closes; return (code, reason)."""

    async def drain() -> None:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            return

    await asyncio.wait_for(drain(), timeout)
    return ws.close_code, ws.close_reason


# --------------------------------------------------------------------------- #
# Readers in several processes


@dataclass
class PoolTake:
    """What a :class:`ReaderPool` received since the previous take."""

    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    closed: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, other: PoolTake) -> None:
        self.received += other.received
        self.duplicates += other.duplicates
        self.out_of_order += other.out_of_order
        self.closed += other.closed
        self.latencies_ms.extend(other.latencies_ms)


class ReaderPool:
    """:class:`bench.latency.Reader` websockets spread over several processes.

    One asyncio loop with ``websockets`` reads some thousands of frames per
    second before it saturates its core; at capacity rates the driver would
    then measure itself. Each process (spawned, one loop each) holds a share
    of the websockets and answers the driver over a pipe; the driver reads
    each process's CPU from ``/proc`` (:meth:`cpu_seconds`) to show whether a
    reader process still was the bottleneck.
    """

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # the driver runs an event loop: no fork
        self.pipes: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for _ in range(max(1, processes)):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_pool_process, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(proc)

    async def _ask(self, pipe: Connection, command: str, arg: Any = None) -> Any:
        pipe.send((command, arg))
        return await asyncio.to_thread(pipe.recv)

    async def _ask_all(self, command: str, args: Sequence[Any] | None = None) -> list[Any]:
        return await asyncio.gather(
            *(
                self._ask(pipe, command, args[i] if args is not None else None)
                for i, pipe in enumerate(self.pipes)
            )
        )

    async def open(self, urls: Sequence[str], in_flight: int = 50) -> tuple[int, list[str]]:
        """Open one reader per URL, round-robin over the processes: (opened, error samples)."""
        shares = [list(urls[i :: len(self.pipes)]) for i in range(len(self.pipes))]
        per_process = max(1, in_flight // len(self.pipes))
        replies = await self._ask_all("open", [(share, per_process) for share in shares])
        errors = [e for _, errs in replies for e in errs]
        return sum(opened for opened, _ in replies), errors

    async def received(self) -> int:
        """Distinct events received by all readers since the previous :meth:`take`."""
        return sum(await self._ask_all("count"))

    async def wait_received(self, expected: int, grace: float) -> int:
        """Wait until ``expected`` events arrived (at most ``grace`` s); return how many did."""
        deadline = time.perf_counter() + grace
        while (got := await self.received()) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return got

    async def take(self) -> PoolTake:
        """Everything received since the previous take (the readers start afresh)."""
        total = PoolTake()
        for part in await self._ask_all("take"):
            total.add(part)
        return total

    def cpu_seconds(self) -> list[float]:
        """utime + stime of each reader process."""
        return [proc_cpu_seconds(p.pid) for p in self.processes if p.pid is not None]

    async def close(self) -> None:
        """Close every websocket and end the processes."""
        with contextlib.suppress(TimeoutError, EOFError, OSError):
            await asyncio.wait_for(self._ask_all("close"), 60)
        for proc in self.processes:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()


def _pool_process(pipe: Connection) -> None:
    asyncio.run(_serve_pool(pipe))


async def _open_readers(readers: list[Reader], urls: list[str], in_flight: int) -> list[str]:
    """Open a reader per URL, ``in_flight`` at a time, into ``readers``; error samples."""
    from . import latency  # latency imports this module

    slots = asyncio.Semaphore(in_flight)
    errors: list[str] = []

    async def open_one(url: str) -> None:
        async with slots:
            try:
                readers.append(latency.Reader(await open_ws(url)).start())
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(open_one(url) for url in urls))
    return sorted(set(errors))[:5]


async def _serve_pool(pipe: Connection) -> None:
    """One reader process: its websockets and the commands of :class:`ReaderPool`."""
    readers: list[Reader] = []
    while True:
        command, arg = await asyncio.to_thread(pipe.recv)
        if command == "open":
            errors = await _open_readers(readers, *arg)
            pipe.send((len(readers), errors))
        elif command == "count":
            pipe.send(sum(len(r.seqs) for r in readers))
        elif command == "take":
            part = PoolTake(closed=sum(1 for r in readers if r.closed is not None))
            for r in readers:
                part.received += len(r.seqs)
                part.duplicates += r.duplicates
                part.out_of_order += r.out_of_order
                part.latencies_ms.extend(r.latencies_ms)
                r.seqs.clear()
                r.latencies_ms.clear()
                r.duplicates = r.out_of_order = 0
                r.last_seq = -1
            pipe.send(part)
        elif command == "close":
            await asyncio.gather(*(r.stop() for r in readers), return_exceptions=True)
            pipe.send(None)
            return
