"""What the actor tree reports as it works, for metrics.

Actors call an :class:`ActorObserver`; the composition root supplies one that
feeds Prometheus (``ess/metrics_bridge.py``). Keeping it a protocol keeps
``prometheus_client`` out of ``actors/`` and the unit tests free of globals.
"""

from __future__ import annotations

from typing import Protocol


class ActorObserver(Protocol):
    def event_received(self) -> None:
        """One event arrived from the broker for one connection."""

    def frames_sent(self, frames: int, utf8_bytes: int, seconds_since_received: float) -> None:
        """Text frames went out on one websocket, the first event of them received this long ago.

        The one report of what was sent: the websocket layer counts nothing
        itself, so a frame is counted once, in one place, with its lag.
        """

    def consumer_subscribed(self) -> None:
        """A connection attached a broker consumer (first time or resubscription)."""


class NullObserver:
    """Reports nowhere: the default, and what unit tests use."""

    def event_received(self) -> None:
        pass

    def frames_sent(self, frames: int, utf8_bytes: int, seconds_since_received: float) -> None:
        pass

    def consumer_subscribed(self) -> None:
        pass
