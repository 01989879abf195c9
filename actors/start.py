"""Where a websocket client asked its stream to start (SPEC section 4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LiveTail:
    """No parameter: the first event published after the handshake."""


@dataclass(frozen=True, slots=True)
class AfterOrdinal:
    """``stream_from_ordinal=N``: ordinal N+1 first (stream offset N)."""

    ordinal: int


@dataclass(frozen=True, slots=True)
class AtOrAfterTime:
    """``stream_from_timestamp`` / ``stream_from_datetime``, in ms since the epoch."""

    timestamp_ms: int


ClientStart = LiveTail | AfterOrdinal | AtOrAfterTime
