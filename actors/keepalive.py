"""One keepalive schedule for all the websockets of a stream actor.

Every accepted websocket is pinged ``ping_interval`` seconds after it was
accepted, and again ``ping_interval`` seconds after each pong (SPEC section
4). A sleeping task per connection would cost a task, its coroutine stack and
a timer per idle websocket; this schedule is a queue of ``(due, pinger)``
that the stream actor's own task serves (:meth:`fire_due`, woken at
:attr:`next_due`). When an entry is due, its pinger hands back one
short-lived ping, which the stream actor starts as a task in its nursery
(the connection cancels it if it ends first; a nursery per connection only
for its pings would cost more than the pings), and which schedules the next
ping after the pong.

Every entry is due ``interval`` after it was added and the clock only moves
forward, so entries are added in the order they fall due: a FIFO queue is the
heap. An entry of a connection that ended meanwhile is dropped when due.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio


class Pinger(Protocol):
    """What the schedule pings: a connection actor."""

    def ping_due(self) -> Callable[[], Awaitable[None]] | None:
        """The ping to run now, if any (it schedules the next once answered); must not block."""
        ...


class KeepaliveSchedule:
    """The due pings of one stream actor's websockets, in the order they fall due."""

    __slots__ = ("_due", "_interval", "_wake")

    def __init__(self, interval: float, wake: Callable[[], None]) -> None:
        self._interval = interval
        #: Called when an entry is added to an empty schedule (its server sleeps forever).
        self._wake = wake
        self._due: deque[tuple[float, Pinger]] = deque()

    def __len__(self) -> int:
        return len(self._due)

    @property
    def next_due(self) -> float:
        """Trio time of the first due ping (``inf`` when none is scheduled)."""
        return self._due[0][0] if self._due else math.inf

    def schedule(self, pinger: Pinger) -> None:
        """Ping ``pinger`` ``interval`` seconds from now."""
        was_empty = not self._due
        self._due.append((trio.current_time() + self._interval, pinger))
        if was_empty:
            self._wake()

    def fire_due(self, start: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
        """Start (with ``start``: a nursery's ``start_soon``) every ping that is due now."""
        due = self._due
        now = trio.current_time()
        while due and due[0][0] <= now:
            ping = due.popleft()[1].ping_due()
            if ping is not None:
                start(ping)
