"""Reading a bounded number of items from an async iterator, within a bound."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import TypeVar

import trio

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
