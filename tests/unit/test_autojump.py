"""The ``autojump`` mark (tests/unit/conftest.py): the actor suites rely on it for virtual time.

Without it their waits (``WAIT`` = 60 s, backoffs, ping timeouts) would pass in
real time: the suites would still pass, only slowly, so this is what fails.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

pytestmark = pytest.mark.autojump


async def test_a_marked_async_test_runs_under_an_autojump_mock_clock() -> None:
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, MockClock)
    assert clock.autojump_threshold == 0
    start = trio.current_time()
    await trio.sleep(3600)
    assert trio.current_time() - start >= 3600


def test_a_sync_test_of_a_marked_module_runs_as_usual() -> None:
    """Not wrapped in a Trio run (pytest-trio would refuse a sync test marked ``trio``)."""
    with pytest.raises(RuntimeError):
        trio.lowlevel.current_clock()
