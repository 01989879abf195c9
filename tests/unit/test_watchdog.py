"""The suite's watchdog: a hung test fails with its stacks, a finished one is left alone."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.support.watchdog import TestHung, delay_for, watchdog


async def _waits_forever_here(ready: trio.Event) -> None:
    ready.set()
    await trio.Event().wait()


async def test_a_hung_block_is_cancelled_and_reports_where_each_task_waits() -> None:
    with trio.fail_after(10), pytest.raises(TestHung) as hung, watchdog(0.2, "the test"):
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(_waits_forever_here, ready)
            await ready.wait()
            await trio.sleep_forever()
    report = str(hung.value)
    assert report.startswith("the test still running after 0 s")
    assert "in _waits_forever_here" in report
    assert "in test_a_hung_block_is_cancelled" in report
    assert "_core" not in report  # trio's own frames are left out


async def test_a_block_that_ends_in_time_is_left_alone() -> None:
    with watchdog(0.2, "the test"):
        await trio.sleep(0)
    # The timer is called off: waiting past its delay raises nothing.
    with trio.move_on_after(0.4) as waited:
        await trio.sleep_forever()
    assert waited.cancelled_caught


async def test_its_delay_is_real_time_even_under_an_autojump_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with watchdog(30.0, "the test"):
        await trio.sleep(3600)  # an hour of virtual time, at once


def test_it_barks_a_margin_before_pytest_timeout() -> None:
    assert delay_for(120) == 100
    assert delay_for(10) == 8
