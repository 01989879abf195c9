"""The one translation of amqp errors into the broker port's errors."""

from __future__ import annotations

import pytest
import trio

import amqp
from actors.adapters.rabbitmq_errors import broker_errors, queue_home_down
from actors.ports.broker import (
    BrokerError,
    BrokerUnavailable,
    StreamNotFound,
    SubscriptionLost,
)

HOME_DOWN = amqp.NotFound(
    404,
    "NOT_FOUND - home node 'rabbit@localhost' of durable queue 'q' in vhost '/' "
    "is down or inaccessible",
)
MISSING = amqp.NotFound(404, "NOT_FOUND - no queue 'q' in vhost '/'")


def test_a_durable_queue_whose_home_is_still_starting_is_not_missing() -> None:
    assert queue_home_down(HOME_DOWN)


def test_a_queue_that_does_not_exist_is_missing() -> None:
    assert not queue_home_down(MISSING)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (HOME_DOWN, BrokerUnavailable),
        (MISSING, StreamNotFound),
        (amqp.ConsumerCancelled("cancelled"), StreamNotFound),
        (amqp.ConsumerOverflow("overflow"), SubscriptionLost),
        (amqp.ConnectionForced(320, "CONNECTION_FORCED - closed by test"), BrokerUnavailable),
        (amqp.ConnectionLost("eof"), BrokerUnavailable),
        (amqp.HeartbeatTimeout("silent"), BrokerUnavailable),
        (amqp.NoFreeChannels("2047 in use"), BrokerUnavailable),
        (trio.TooSlowError(), BrokerUnavailable),
        (amqp.PreconditionFailed(406, "PRECONDITION_FAILED - inequivalent arg"), BrokerError),
        (amqp.AccessRefused(403, "ACCESS_REFUSED"), BrokerError),
        (amqp.PublishNacked("nack"), BrokerError),
        (amqp.AMQPError("anything else"), BrokerError),
    ],
)
def test_each_amqp_error_has_one_port_error(error: Exception, expected: type[Exception]) -> None:
    with pytest.raises(BrokerError) as caught, broker_errors("doing it"):
        raise error
    assert type(caught.value) is expected
    assert caught.value.__cause__ is error
    assert str(caught.value).startswith("doing it: ")


def test_a_subscription_reports_a_closed_channel_as_unavailable() -> None:
    with pytest.raises(BrokerUnavailable), broker_errors("x", channel_closed=BrokerUnavailable):
        raise amqp.ChannelClosed(541, "INTERNAL_ERROR")


def test_port_errors_and_other_exceptions_pass_through() -> None:
    lost = SubscriptionLost("already translated")
    with pytest.raises(SubscriptionLost) as caught, broker_errors("x"):
        raise lost
    assert caught.value is lost
    with pytest.raises(KeyError), broker_errors("x"):
        raise KeyError("not ours")
