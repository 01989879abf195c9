"""The table of live replicas, with expiry (sans-IO: the caller passes the time).

A replica is live while its last :class:`~actors.cluster.messages.ReplicaAlive`
is younger than ``expiry`` seconds (a few alive intervals, so one or two
lost messages do not drop it) and it has not said it is gone. Times are the
receiver's monotonic clock, never the sender's: replicas' clocks need not
agree for membership.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.cluster.messages import ReplicaAlive


@dataclass(frozen=True, slots=True)
class Member:
    """One replica as the table knows it."""

    id: str
    name: str
    started_at: float
    websockets: int
    #: When its last alive message was received (the receiver's monotonic clock).
    heard_at: float


class Membership:
    """Live replicas by id; see the module documentation."""

    def __init__(self, expiry: float) -> None:
        if expiry <= 0:
            raise ValueError("expiry must be positive")
        self.expiry = expiry
        self._members: dict[str, Member] = {}

    def heard(self, message: ReplicaAlive, now: float) -> bool:
        """Record an alive message; ``True`` if the replica was not live before."""
        known = self._members.get(message.sender)
        new = known is None or now - known.heard_at > self.expiry
        self._members[message.sender] = Member(
            message.sender, message.name, message.started_at, message.websockets, now
        )
        return new

    def forget(self, replica: str) -> None:
        """The replica said it is gone (idempotent)."""
        self._members.pop(replica, None)

    def live(self, now: float) -> list[Member]:
        """The live replicas, by name then id; expired entries are dropped."""
        for replica, member in list(self._members.items()):
            if now - member.heard_at > self.expiry:
                del self._members[replica]
        return sorted(self._members.values(), key=lambda m: (m.name, m.id))

    def is_live(self, replica: str, now: float) -> bool:
        member = self._members.get(replica)
        return member is not None and now - member.heard_at <= self.expiry
