"""A websocket client for end-to-end tests, with the waits they need."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

RECEIVE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Closed:
    code: int | None
    reason: str | None


@asynccontextmanager
async def connect(location: str, query: str = "") -> AsyncIterator[WebSocketConnection]:
    url = f"{location}?{query}" if query else location
    async with open_websocket_url(
        url, receive_buffer_size=65536, connect_timeout=RECEIVE_TIMEOUT, disconnect_timeout=5
    ) as ws:
        yield ws


async def receive(ws: WebSocketConnection, timeout: float = RECEIVE_TIMEOUT) -> str:
    with trio.fail_after(timeout):
        message = await ws.get_message()
    assert isinstance(message, str), f"expected a text frame, got {message!r}"
    return message


async def receive_json(ws: WebSocketConnection, timeout: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
    event = json.loads(await receive(ws, timeout))
    assert isinstance(event, dict)
    return event


async def receive_many_json(ws: WebSocketConnection, count: int) -> list[dict[str, Any]]:
    return [await receive_json(ws) for _ in range(count)]


async def wait_closed(ws: WebSocketConnection, timeout: float = RECEIVE_TIMEOUT) -> Closed:
    """Wait for the server's close; frames still in flight are discarded."""
    with trio.fail_after(timeout):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            return Closed(closed.reason.code, closed.reason.reason)


async def expect_no_message(ws: WebSocketConnection, within: float = 0.5) -> None:
    """Assert nothing arrives for ``within`` seconds (the only timed negative check)."""
    with trio.move_on_after(within):
        message = await ws.get_message()
        raise AssertionError(f"unexpected message {message!r}")
