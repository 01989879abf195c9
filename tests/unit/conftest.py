"""Unit-test wide hooks: the ``autojump`` mark (virtual time for a whole module)."""

from __future__ import annotations

import pytest

from tests.support.aio import run_with_autojump


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "autojump: run the async tests under an autojump MockClock (virtual time)"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the async tests marked ``autojump`` a runner with virtual time.

    pytest-trio takes the clock from a test's own arguments only, and its trio
    mode marks each async test ``trio(run=trio.run)`` on the test itself; a
    ``trio`` mark with our runner put before that one (hence ``trylast``) is
    the one it uses. Sync tests of a marked module are left alone.
    """
    for item in items:
        if item.get_closest_marker("autojump") and item.get_closest_marker("trio"):
            item.add_marker(pytest.mark.trio(run=run_with_autojump), append=False)
