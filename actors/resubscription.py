"""The one resubscription loop: attach at a position, consume, and attach again after a loss.

Both owners of a broker consumer run it: a connection actor (for its own
consumer, or its membership of the stream's live-tail hub) and the
live-tail hub (for the consumer it shares). What differs between them is
behind :class:`SubscriptionOwner`; how a lost consumer is replaced is here,
once:

- :class:`~actors.ports.broker.BrokerUnavailable` (the connection dropped,
  or the broker refuses us now): tell the owner, wait until the broker is
  available, then pause with the shared jittered :class:`~actors.backoff.Backoff`
  (ten thousand consumers that lost the same connection must not resubscribe
  in the same millisecond, and a failure the broker keeps repeating must not
  spin). A successful attach resets the backoff.
- :class:`~actors.ports.broker.SubscriptionLost` (the adapter gave the
  consumer up because its buffer passed its bound, or the broker cancelled
  it while the queue still exists): resubscribe at once. Nothing is lost and
  the broker is not refusing us, so a pause would only delay the client. If
  it happens again before the owner made any progress (its resume position
  did not move), the backoff applies: never a busy loop.
- the consumer ended without an error (the broker closed it): pause
  :data:`RESUBSCRIBE_PAUSE`, then attach again.

Before every attach the owner is asked where to resume
(:meth:`SubscriptionOwner.position`): its cursor + 1, so no gap and no
duplicate. :class:`~actors.ports.broker.StreamNotFound`, and anything else,
is the owner's to handle: the loop lets it through.
"""

from __future__ import annotations

import enum
from contextlib import AbstractAsyncContextManager
from typing import NoReturn, Protocol

import trio

from actors.backoff import Backoff, BackoffPolicy
from actors.logcontext import LogContext
from actors.ports.broker import (
    Broker,
    BrokerUnavailable,
    FromNext,
    FromOffset,
    FromTimestamp,
    StartPosition,
    Subscription,
    SubscriptionLost,
)

#: Pause before resubscribing when the broker ended a consumer without an error.
RESUBSCRIBE_PAUSE = 1.0
#: Pauses between resubscriptions that keep failing (the broker is down, or
#: says it is up but refuses the consumer, e.g. channels exhausted).
RESUBSCRIBE_BACKOFF = BackoffPolicy(initial=0.1, maximum=5.0)


class Detached(enum.Enum):
    """Why a consumer is gone (and so how the loop replaces it)."""

    UNAVAILABLE = "the broker is unavailable"
    LOST = "the subscription was lost"
    ENDED = "the broker ended the consumer"


class SubscriptionOwner(Protocol):
    """What the loop needs from whoever owns the consumer."""

    def position(self) -> StartPosition:
        """Where to attach now: asked before every attach (the first one too)."""
        ...

    def subscribe(self, position: StartPosition) -> AbstractAsyncContextManager[Subscription]:
        """Attach a consumer at ``position`` (``Broker.subscribe`` or a hub membership)."""
        ...

    async def consume(self, subscription: Subscription, position: StartPosition) -> None:
        """Use the attached ``subscription`` until its iteration ends."""
        ...

    async def detached(self, why: Detached) -> None:
        """The consumer is gone; called before the loop waits or pauses."""
        ...


def position_at(timestamp_ms: int) -> FromTimestamp:
    """Where to attach to see every event stamped at or after ``timestamp_ms``.

    The broker positions by whole seconds (its chunks' timestamps), and a
    chunk stamped in the second before may hold messages of this one: so one
    whole second early. The owner filters what is too early by the events'
    own timestamps.
    """
    return FromTimestamp(timestamp_ms // 1000 - 1)


def describe_position(position: StartPosition) -> str:
    """A start position for logs and the debug tree."""
    match position:
        case FromNext():
            return "next"
        case FromOffset(offset):
            return f"offset {offset}"
        case FromTimestamp(seconds):
            return f"timestamp {seconds}s"
    raise TypeError(f"not a start position: {position!r}")  # pragma: no cover


async def keep_subscribed(
    owner: SubscriptionOwner,
    broker: Broker,
    log: LogContext,
    policy: BackoffPolicy = RESUBSCRIBE_BACKOFF,
) -> NoReturn:
    """Keep ``owner`` attached to its stream forever; see the module documentation."""
    # Made at the first failure, dropped at each attach (a reset): an attached
    # owner (ten thousand idle websockets) keeps no schedule.
    backoff: Backoff | None = None
    while True:
        position = owner.position()
        try:
            async with owner.subscribe(position) as subscription:
                backoff = None
                await owner.consume(subscription, position)
            why = Detached.ENDED
        except SubscriptionLost:
            why = Detached.LOST
        except BrokerUnavailable:
            why = Detached.UNAVAILABLE
        await owner.detached(why)
        match why:
            case Detached.UNAVAILABLE:
                await broker.wait_available()
                backoff = backoff or Backoff(policy)
                await backoff.sleep()
            case Detached.ENDED:
                await trio.sleep(RESUBSCRIBE_PAUSE)
            case Detached.LOST if owner.position() == position:
                backoff = backoff or Backoff(policy)
                await backoff.sleep()  # lost again without progress: do not spin
        log.info("%s; resubscribing from %s", why.value, describe_position(owner.position()))
