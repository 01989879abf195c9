"""How the RabbitMQ adapter reads the broker's 404s."""

from __future__ import annotations

import amqp
from actors.adapters.rabbitmq_errors import queue_home_down


def test_a_durable_queue_whose_home_is_still_starting_is_not_missing() -> None:
    error = amqp.NotFound(
        404,
        "NOT_FOUND - home node 'rabbit@localhost' of durable queue 'q' in vhost '/' "
        "is down or inaccessible",
    )
    assert queue_home_down(error)


def test_a_queue_that_does_not_exist_is_missing() -> None:
    error = amqp.NotFound(404, "NOT_FOUND - no queue 'q' in vhost '/'")
    assert not queue_home_down(error)
