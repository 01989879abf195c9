"""What every actor of one supervisor shares: the broker, the settings, a wall clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from actors.ports.broker import Broker
from actors.ports.observer import ActorObserver, NullObserver
from actors.settings import ActorSettings
from actors.snapshot import WallClock


@dataclass(frozen=True, slots=True)
class ActorContext:
    """Shared, immutable dependencies of the actor tree."""

    broker: Broker
    settings: ActorSettings
    #: Wall-clock seconds since the epoch: receive times and start times.
    clock: WallClock = field(default=time.time)
    #: Where counters and latencies are reported (metrics).
    observer: ActorObserver = field(default_factory=NullObserver)
