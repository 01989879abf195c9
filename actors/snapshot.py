"""The JSON-ready snapshot of one actor node (``GET /debug/actors``).

Every node is ``{"kind", "name", "state", "started_at", "counters",
"children"}``; each actor builds its own node from its live state and asks
its children for theirs, so the tree cannot drift from the actors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

Kind = Literal["supervisor", "stream", "connection", "consumer"]
Snapshot = dict[str, object]
#: Seconds since the epoch (``time.time``); injectable for tests.
WallClock = Callable[[], float]

#: How many characters of a uuid may appear in logs and snapshots.
SHORT_UUID = 8


def short_uuid(uuid: str) -> str:
    """The non-secret prefix of a stream's uuid (the full uuid is a credential)."""
    return uuid[:SHORT_UUID]


def iso_utc(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC with milliseconds and a ``Z``."""
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def node(
    kind: Kind,
    name: str,
    state: str,
    started_at: float,
    counters: Mapping[str, object],
    children: Sequence[Snapshot] = (),
) -> Snapshot:
    """One node of the actor tree."""
    return {
        "kind": kind,
        "name": name,
        "state": state,
        "started_at": iso_utc(started_at),
        "counters": dict(counters),
        "children": list(children),
    }
