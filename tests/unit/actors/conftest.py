"""Fixtures shared by the actor tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .actor_fakes import Harness, running


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    """A running supervisor with the default test settings (see :func:`running`).

    A test that wants other settings, or its own broker or registry, opens
    :func:`running` itself. The modules that use it run in virtual time
    (``pytestmark = pytest.mark.autojump``, see ``tests/unit/conftest.py``).
    """
    async with running() as harness:
        yield harness
