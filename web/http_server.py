"""Hypercorn's settings for the internal API, and which of them bounds what.

SPEC section 3: no client may hold the port with a request it does not
finish, and idle keep-alive connections are closed after a bounded time.
Read from Hypercorn 0.18's trio worker (``hypercorn/trio/tcp_server.py``,
``protocol/h11.py``), verified by ``tests/faults/test_unfinished_clients.py``:

- ``keep_alive_timeout`` is one timer that runs from the moment a
  connection opens (or a response ends) until a whole request *head* has
  been parsed. It therefore bounds both an idle keep-alive connection and a
  head that arrives slowly or never (even byte by byte: it is not a
  per-read inactivity timer). So it is set to the smaller of the keep-alive
  and the request bound, and each bound holds.
- ``read_timeout`` is per read; a trickling client defeats it, and during a
  long request (a DELETE closing many websockets) it would cut clients that
  merely wait for their answer. Not used.
- The body is not Hypercorn's business at all: the app reads it within the
  request bound (Quart's ``BODY_TIMEOUT``, see :mod:`web.api`) and answers
  408; Hypercorn then closes the connection because the request never ended.
- ``h11_max_incomplete_size`` (16 KiB by default) bounds the size of a head.

One more trap, found by those tests: with Quart-Trio, the keep-alive timer
never started after the first response, and a connection answered early
(408) was never closed. Quart-Trio cancels its request nursery as soon as
Hypercorn reports the client "disconnected", which Hypercorn does from
*inside* the app's last ``send``, before that same ``send`` goes on to
restart the idle timer or close the socket; the cancellation kills both.
:func:`shield_sends` lets each ``send`` finish (Hypercorn already shields
its socket writes, so this adds no new wait).
"""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)

__all__ = ["hypercorn_config", "shield_sends"]


def shield_sends(app: ASGIFramework) -> ASGIFramework:
    """``app`` whose calls of Hypercorn's ``send`` are never cut by the app's own cancellation."""

    async def shielded_app(
        scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        async def shielded_send(message: ASGISendEvent) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await app(scope, receive, shielded_send)

    return shielded_app


def hypercorn_config(
    bind: str, *, request_timeout: float, keepalive_timeout: float
) -> HypercornConfig:
    """Hypercorn's config for the internal API on ``bind`` (``host:port``)."""
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    # A Logger (not "-"): Hypercorn then adds no stderr handler of its own and
    # its lines go through ours (one format, JSON included).
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = min(keepalive_timeout, request_timeout)
    return config
