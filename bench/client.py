"""Websocket clients for the driver (``websockets`` on asyncio), with timing hooks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

__all__ = ["ConnectionClosed", "TimedClient", "open_ws", "wait_close"]


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
