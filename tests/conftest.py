"""Suite-wide fixtures: the real broker must be there for anything but unit tests."""

from __future__ import annotations

import os

import pytest

from tests.support.net import reachable


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop the broker run last (stable order otherwise).

    A stopped and restarted RabbitMQ 3.10 has been seen here refusing
    classic queue declarations afterwards (541 INTERNAL_ERROR, until the
    node was restarted): whatever it leaves behind must not decide the
    outcome of the tests that did not ask for an outage.
    """
    items.sort(key=lambda item: item.get_closest_marker("stops_broker") is not None)


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
