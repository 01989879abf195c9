"""The one retry schedule of the service: exponential backoff with jitter.

Every loop that retries something the world may refuse for a while (a pool
slot reconnecting, a consumer resubscribing after an outage, a crashed
stream actor restarting, a pending queue deletion, ``ess listen``
reconnecting) takes its pauses from a :class:`Backoff`, so an outage fix is
made once. Modelled on httpcore's ``exponential_backoff`` generator consumed
by its connect loop: the schedule is a plain iterator of delays, the loop
decides when to sleep and when it succeeded (:meth:`Backoff.reset`).

Jitter keeps ten thousand consumers that lost the same connection from
resubscribing in the same millisecond; the cap keeps a failure the broker
repeats forever from turning into a busy loop or an hour-long silence.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio


def exponential_backoff(initial: float, maximum: float, *, factor: float = 2.0) -> Iterator[float]:
    """``initial``, ``initial * factor``, ... capped at ``maximum``, forever (no jitter)."""
    if not 0 < initial <= maximum:
        raise ValueError("backoff must satisfy 0 < initial <= maximum")
    delay = initial
    while True:
        yield delay
        delay = min(delay * factor, maximum)


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How a retry loop pauses: growing from ``initial`` to ``maximum``, jittered.

    ``jitter`` is the fraction of each delay that is random: a delay ``d`` is
    drawn uniformly from ``[d * (1 - jitter), d]``. 0 gives the bare schedule.
    """

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff must satisfy 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def delays(self, uniform: Callable[[float, float], float] = random.uniform) -> Iterator[float]:
        for delay in exponential_backoff(self.initial, self.maximum, factor=self.factor):
            yield uniform(delay * (1 - self.jitter), delay) if self.jitter else delay


class Backoff:
    """One retry loop's position in its :class:`BackoffPolicy`.

    ::

        backoff = Backoff(policy)
        while True:
            try:
                await attempt()
            except Refused:
                await backoff.sleep()
            else:
                backoff.reset()
    """

    __slots__ = ("_delays", "_uniform", "attempts", "policy")

    def __init__(
        self,
        policy: BackoffPolicy,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.policy = policy
        #: Where the jitter comes from; tests pin it to an end of the range.
        self._uniform = uniform
        self._delays = policy.delays(uniform)
        #: Failures since the last :meth:`reset`.
        self.attempts = 0

    def reset(self) -> None:
        """The attempt succeeded: the next failure pauses ``initial`` again."""
        self._delays = self.policy.delays(self._uniform)
        self.attempts = 0

    def next_delay(self) -> float:
        """The pause before the next attempt (and count one more failure)."""
        self.attempts += 1
        return next(self._delays)

    async def sleep(self) -> None:
        """Pause for :meth:`next_delay` seconds."""
        await trio.sleep(self.next_delay())
