"""Suite-wide fixtures: the real broker must be there for anything but unit tests."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator

import pytest

from tests.support.net import reachable
from tests.support.watchdog import delay_for, watched


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop the broker run last (stable order otherwise).

    A stopped and restarted RabbitMQ 3.10 has been seen here refusing
    classic queue declarations afterwards (541 INTERNAL_ERROR, until the
    node was restarted): whatever it leaves behind must not decide the
    outcome of the tests that did not ask for an outage.
    """
    items.sort(key=lambda item: item.get_closest_marker("stops_broker") is not None)


def _timeout_of(item: pytest.Item) -> float:
    """pytest-timeout's limit for ``item``: its marker, else ``--timeout``, else the ini."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    else:
        value = item.config.getoption("timeout", None) or item.config.getini("timeout")
    return float(value or 0)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Wrap a trio test in its watchdog, before pytest-trio wraps it in its run."""
    if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
        timeout = _timeout_of(item)
        if timeout > 0 and not hasattr(item.obj, "hypothesis"):
            item.obj = watched(item.obj, delay_for(timeout), item.nodeid)
    yield


AMQP_URL = os.environ.get("ESS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The broker every integration and end-to-end test talks to.

    A missing broker is an error, not a skip: `make test` starts one, and a
    suite that silently skips its real-broker tests proves nothing.
    """
    if not reachable(5672):
        pytest.fail(
            "RabbitMQ is not reachable on 127.0.0.1:5672 (run `make test`, which starts it)"
        )
    return AMQP_URL
