"""Fixtures shared by the actor tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .actor_fakes import Harness, running


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    """A running supervisor with the default test settings (see :func:`running`).

    A test that wants other settings, or its own broker or registry, opens
    :func:`running` itself. Each test still asks for ``autojump_clock``:
    pytest-trio takes the clock from the test's own arguments only.
    """
    async with running() as harness:
        yield harness
