"""Trio helpers of the tests: a bounded read of an async iterator; a runner in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import TypeVar

import trio
from trio.abc import Clock, Instrument
from trio.testing import MockClock

T = TypeVar("T")


async def take(items: AsyncIterable[T], count: int, timeout: float) -> list[T]:
    """The next ``count`` items of ``items``; fails (``trio.TooSlowError``) after ``timeout``.

    Fewer come back only if ``items`` ends first.
    """
    received: list[T] = []
    with trio.fail_after(timeout):
        async for item in items:
            received.append(item)
            if len(received) == count:
                break
    return received


def run_with_autojump(
    fn: Callable[[], Awaitable[object]],
    *,
    clock: Clock | None = None,
    instruments: Sequence[Instrument] = (),
) -> object:
    """``trio.run`` for pytest-trio, under an autojump :class:`MockClock` unless given a clock.

    pytest-trio hands its runner the clock a test asks for by argument
    (``None`` when it asks for none); this one makes the test's time virtual
    as pytest-trio's ``autojump_clock`` fixture does. The unit tests' mark
    ``pytest.mark.autojump`` (``tests/unit/conftest.py``) runs a module's tests with it.
    """
    return trio.run(fn, clock=clock or MockClock(autojump_threshold=0), instruments=instruments)


async def turns_of_another_task(work: Callable[[], Awaitable[T]]) -> tuple[int, T]:
    """How often another task ran while ``work`` ran (it first runs at work's first checkpoint)."""
    turns = 0
    done = trio.Event()

    async def other_task() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        result = await work()
        during = turns
        done.set()
    return during, result
