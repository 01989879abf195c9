"""A hung trio test fails with its tasks' stacks, before pytest-timeout kills the run.

pytest-timeout ends a hung test from outside trio: its traceback shows only
trio's ``epoll`` wait, and the trio run it interrupts leaves state behind
that fails the tests after it. The watchdog runs inside the test's own
trio run: a real-time timer (a thread, so trio's ``MockClock`` cannot jump
it) fires a margin before pytest-timeout would, takes where every task is
waiting, cancels the test and raises :class:`TestHung` with those stacks,
so the test fails alone and says where it hung. (It wraps the test
function, not a fixture: pytest-trio runs only the fixtures a test names.)
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import trio

#: Seconds before pytest-timeout's deadline; at most a fifth of the timeout.
MARGIN = 20.0


_TRIO_CORE = os.path.join("trio", "_core", "")


class TestHung(AssertionError):
    """The test was still running near its timeout; the message has every task's stack."""

    __test__ = False  # not a test class, despite its name


def delay_for(timeout: float) -> float:
    """When to bark for a test that pytest-timeout ends after ``timeout`` seconds."""
    return timeout - min(MARGIN, timeout / 5)


def watched(
    test: Callable[..., Awaitable[object]], delay: float, name: str
) -> Callable[..., Awaitable[object]]:
    """``test``, failing with :class:`TestHung` if it still runs after ``delay`` real seconds."""

    @functools.wraps(test)
    async def watched_test(*args: Any, **kwargs: Any) -> object:
        with watchdog(delay, name):
            return await test(*args, **kwargs)

    return watched_test


@contextmanager
def watchdog(delay: float, name: str) -> Iterator[None]:
    """Cancel the block after ``delay`` real seconds and raise :class:`TestHung` instead.

    The stacks are taken when the timer fires, before the cancellation
    unwinds them, and printed at once too, in case the block cannot even
    be cancelled (then pytest-timeout still ends it).
    """
    token = trio.lowlevel.current_trio_token()
    scope = trio.CancelScope()
    reports: list[str] = []

    def bark_in_trio() -> None:
        stacks = "\n".join(task_stacks())
        report = f"{name} still running after {delay:.0f} s; its tasks:\n{stacks}"
        print(report, file=sys.__stderr__, flush=True)
        reports.append(report)
        scope.cancel()

    def bark() -> None:
        with suppress(trio.RunFinishedError):  # the test ended meanwhile
            token.run_sync_soon(bark_in_trio)

    timer = threading.Timer(delay, bark)
    timer.daemon = True
    timer.start()
    try:
        with scope:
            yield
    except BaseException as exc:
        if reports:
            raise TestHung(reports[0]) from exc
        raise
    finally:
        timer.cancel()
    if reports:
        raise TestHung(reports[0])


def task_stacks() -> Iterator[str]:
    """Every task of this trio run, indented by nursery, each with where it awaits."""
    root = trio.lowlevel.current_root_task()
    if root is not None:
        yield from _describe(root, 0)


def _describe(task: trio.lowlevel.Task, depth: int) -> Iterator[str]:
    indent = "  " * depth
    yield f"{indent}task {task.name}"
    for frame, lineno in task.iter_await_frames():
        code = frame.f_code
        if _TRIO_CORE not in code.co_filename:  # trio's own machinery says nothing here
            yield f"{indent}  {code.co_filename}:{lineno} in {code.co_name}"
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _describe(child, depth + 1)
