"""Every contract test runs once per broker adapter (and, later, per registry)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .brokers import KINDS, BrokerHarness, open_harness


@pytest.fixture(params=KINDS)
async def harness(request: pytest.FixtureRequest, amqp_url: str) -> AsyncIterator[BrokerHarness]:
    """The adapter under test (``amqp_url``: the real broker must be there)."""
    async with open_harness(request.param) as harness:
        yield harness
