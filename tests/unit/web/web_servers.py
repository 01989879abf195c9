"""Run the web edges on real loopback sockets for the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from hypercorn.trio import serve
from quart_trio import QuartTrio

from web.api import create_app
from web.http_server import hypercorn_config, shield_sends
from web.ports import StreamDirectory
from web.websocket import serve_public_websockets


def make_app(directory: StreamDirectory, **overrides: Any) -> QuartTrio:
    """The internal API app over ``directory``, with test defaults for what ``overrides`` omits."""
    options: dict[str, Any] = {
        "ingress_location": "events.example.com",
        "ingress_secure": False,
        "internal_token": None,
        "readiness": lambda: None,
        "name": "ess-test",
        "version": "1.2.3",
    }
    options.update(overrides)
    return create_app(directory, **options)


@asynccontextmanager
async def running_api(app: QuartTrio) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` as the service does (Hypercorn, trio worker) on 127.0.0.1:0; yield a client."""
    config = hypercorn_config("127.0.0.1:0", request_timeout=30.0, keepalive_timeout=5.0)
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                shield_sends(app),
                config,
                shutdown_trigger=trio.sleep_forever,
                task_status=task_status,
            )
        )
        async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
            yield client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_websockets(streams: StreamDirectory, **options: Any) -> AsyncIterator[int]:
    """Serve the public websocket edge on 127.0.0.1:0; yield its port."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_public_websockets(
                streams, host="127.0.0.1", port=0, task_status=task_status, **options
            )
        )
        yield port
        nursery.cancel_scope.cancel()
