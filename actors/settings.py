"""Tunables of the actor tree, filled in by :mod:`ess.config`."""

from __future__ import annotations

from dataclasses import dataclass

from actors.backoff import BackoffPolicy


@dataclass(frozen=True, slots=True)
class ActorSettings:
    """Bounds and timings that keep every connection's resources finite.

    Defaults are the production defaults; tests shrink the timings.
    """

    #: Websockets allowed per event stream; the newest wins (the oldest is
    #: closed with 4001). 0 means unlimited.
    max_connections_per_stream: int = 1
    #: Unacknowledged events the broker may push to one connection: the only
    #: buffer between the broker and a websocket, so memory per connection
    #: is bounded by ``prefetch`` times the event size.
    prefetch: int = 200
    #: A client whose socket accepts no data for this long is closed (1008).
    send_timeout: float = 30.0
    #: Keepalive: a ping every ``ping_interval`` seconds; no pong within
    #: ``ping_timeout`` seconds and the connection is dropped.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: Upper bound on a closing handshake, so DELETE and shutdown are bounded.
    close_timeout: float = 2.0
    #: Log per-connection statistics every this many messages (and at close).
    stats_interval: int = 800
    #: Restart backoff of a crashed stream actor, doubling up to the maximum.
    restart_backoff_initial: float = 0.5
    restart_backoff_max: float = 30.0

    @property
    def restart_policy(self) -> BackoffPolicy:
        """The pauses before a crashed stream actor restarts.

        Without jitter: a restart concerns one stream, not a crowd, and an
        operator reading the log sees the doubling as configured.
        """
        return BackoffPolicy(self.restart_backoff_initial, self.restart_backoff_max, jitter=0.0)
