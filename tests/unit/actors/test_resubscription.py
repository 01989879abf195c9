"""The one resubscription loop, driven by a scripted owner under the autojump MockClock."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from actors.backoff import BackoffPolicy
from actors.logcontext import LogContext
from actors.ports.broker import (
    BrokerUnavailable,
    FromOffset,
    StartPosition,
    StreamNotFound,
    Subscription,
    SubscriptionLost,
)
from actors.resubscription import RESUBSCRIBE_PAUSE, Detached, keep_subscribed

pytestmark = pytest.mark.autojump

#: No jitter, so the pauses can be asserted exactly.
POLICY = BackoffPolicy(initial=0.1, maximum=0.4, jitter=0.0)


class Broker:
    """Just the availability part of the broker port."""

    def __init__(self) -> None:
        self.up = trio.Event()
        self.up.set()

    @property
    def available(self) -> bool:
        return self.up.is_set()

    async def wait_available(self) -> None:
        await self.up.wait()


class Owner:
    """Plays one script entry per attach: how that consumer ends.

    ``refused``: the attach raises BrokerUnavailable; ``dropped``: the
    consumer ends with BrokerUnavailable; ``lost``: SubscriptionLost after
    one event of progress; ``lost-idle``: SubscriptionLost with no progress;
    ``ended``: the iteration ends without error; ``missing``: StreamNotFound.
    """

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.cursor = 9
        self.attaches: list[tuple[float, StartPosition]] = []
        self.detaches: list[Detached] = []

    def position(self) -> StartPosition:
        return FromOffset(self.cursor + 1)

    @asynccontextmanager
    async def subscribe(self, position: StartPosition) -> AsyncIterator[Subscription]:
        await trio.lowlevel.checkpoint()
        self.attaches.append((trio.current_time(), position))
        if self.script[0] == "refused":
            self.script.pop(0)
            raise BrokerUnavailable("refused")
        yield None  # type: ignore[misc]  # the owner never looks at it

    async def consume(self, subscription: Subscription, position: StartPosition) -> None:
        await trio.lowlevel.checkpoint()
        what = self.script.pop(0)
        if what == "lost":
            self.cursor += 1
            raise SubscriptionLost("gave up")
        if what == "lost-idle":
            raise SubscriptionLost("gave up")
        if what == "dropped":
            raise BrokerUnavailable("dropped")
        if what == "missing":
            raise StreamNotFound("rk")
        assert what == "ended"

    async def detached(self, why: Detached) -> None:
        self.detaches.append(why)


async def run(owner: Owner, broker: Broker | None = None) -> None:
    log = LogContext(logging.getLogger("test"), stream=1)
    with pytest.raises(StreamNotFound):
        await keep_subscribed(owner, broker or Broker(), log, POLICY)  # type: ignore[arg-type]


def gaps(owner: Owner) -> list[float]:
    times = [t for t, _ in owner.attaches]
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


async def test_a_lost_subscription_is_replaced_at_once_from_the_owners_position() -> None:
    owner = Owner(["lost", "lost", "lost", "missing"])
    await run(owner)
    assert gaps(owner) == [0, 0, 0]
    assert [p for _, p in owner.attaches] == [FromOffset(n) for n in (10, 11, 12, 13)]
    assert owner.detaches == [Detached.LOST] * 3


async def test_lost_again_without_progress_pauses() -> None:
    owner = Owner(["lost-idle", "lost-idle", "missing"])
    await run(owner)
    assert gaps(owner) == [0.1, 0.1]  # never a busy loop


async def test_unavailable_waits_for_the_broker_then_backs_off() -> None:
    broker = Broker()
    owner = Owner(["dropped", "refused", "refused", "refused", "ended", "missing"])
    broker.up = trio.Event()  # down until set below

    async def come_back() -> None:
        await trio.sleep(30)
        broker.up.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(come_back)
        await run(owner, broker)
    # 30 s down: waited for the broker, then the growing pauses; an attach
    # that works resets them; a consumer the broker ended pauses a second.
    assert gaps(owner) == [30.1, 0.2, 0.4, 0.4, RESUBSCRIBE_PAUSE]
    assert owner.detaches == [Detached.UNAVAILABLE] * 4 + [Detached.ENDED]
