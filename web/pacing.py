"""Operator answers are paced, so that polling them cannot take the loop from websockets.

``/metrics``, ``/debug/actors`` and ``/debug/replicas`` are cheap per answer
(no registry read, no whole tree; :mod:`web.debug`), but each request still
costs the web framework a millisecond or two of the one event loop that also
carries every websocket. Three ``curl`` loops polling as fast as the answers
come would keep that loop busy most of the time, and a live event would wait
behind them (bench ``debug_polling``). So these answers are spaced at least
:data:`OPERATOR_INTERVAL` apart, all of them together: a poller is slowed
down, never refused, and the share of the loop they can take is bounded
whatever the number of pollers. Prometheus (one scrape per 15 s) and the
debug page (one poll per 2 s) never notice.

At most :data:`MAX_WAITING` requests wait for their turn; one more is
answered 503 at once (with ``Retry-After``) rather than held, so that no
client holds a connection and a task it has not paid for. ``/health/*`` is
not paced: probes must answer at once and cost next to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio
from quart import Response, request
from quart_trio import QuartTrio

from web.responses import error_response

#: Seconds between two operator answers (40 answers a second at most).
OPERATOR_INTERVAL: Final = 0.025
#: Requests that may wait for their turn; more are answered 503.
MAX_WAITING: Final = 64
#: The endpoints paced (Quart endpoint names).
PACED_ENDPOINTS: Final = frozenset({"prometheus_metrics", "debug_actors", "debug_replicas"})


class Pacer:
    """Hands out turns at least ``interval`` seconds apart, to at most ``max_waiting`` waiters."""

    def __init__(
        self,
        interval: float = OPERATOR_INTERVAL,
        *,
        max_waiting: int = MAX_WAITING,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._interval = interval
        self._max_waiting = max_waiting
        self._clock = clock
        self._next_turn = float("-inf")
        self.waiting = 0

    async def turn(self) -> bool:
        """Wait for this caller's turn; False (at once) when too many already wait."""
        now = self._clock()
        if self._next_turn > now and self.waiting >= self._max_waiting:
            return False
        turn = max(now, self._next_turn)
        self._next_turn = turn + self._interval
        if turn <= now:
            return True
        self.waiting += 1
        try:
            await trio.sleep_until(turn)
        finally:
            self.waiting -= 1
        return True


def install_operator_pacing(app: QuartTrio, pacer: Pacer | None = None) -> None:
    """Pace :data:`PACED_ENDPOINTS`; register after authentication (a refused
    request must not take a turn from an operator)."""
    pacer = pacer if pacer is not None else Pacer()

    @app.before_request
    async def wait_for_turn() -> Response | None:
        if request.endpoint not in PACED_ENDPOINTS:
            return None
        if await pacer.turn():
            return None
        return error_response(
            503, "Too many operator requests at once; retry in a second", {"Retry-After": "1"}
        )
