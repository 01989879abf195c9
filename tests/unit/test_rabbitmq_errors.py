"""The one translation of amqp errors into the broker port's errors."""

from __future__ import annotations

import pytest
import trio

import amqp
from actors.adapters.rabbitmq_errors import broker_errors, queue_home_down
from actors.adapters.rabbitmq_queue_type import read_refusal
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
#: RabbitMQ 3.10's answer to a stream consumer on a node without a member (seen in
#: tests/faults/test_rabbitmq_cluster.py).
NO_LOCAL_REPLICA = amqp.PreconditionFailed(
    406,
    "PRECONDITION_FAILED - queue 'queue 's' in vhost '/'' "
    "does not have a replica on the local node",
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
        (NO_LOCAL_REPLICA, BrokerUnavailable),  # a cluster node without a member: not now
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


# --------------------------------------------------------------------------- 406 to the type probe

PREFIX = "PRECONDITION_FAILED - inequivalent arg"
SENT = {"x-queue-type": "stream"}


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        (
            f"{PREFIX} 'x-queue-type' for queue 'q' in vhost '/': received the value 'stream' "
            "of type 'longstr' but current is none",
            False,
        ),
        (
            f"{PREFIX} 'x-queue-type' for queue 'q' in vhost '/': received 'stream' but "
            "current is 'quorum'",
            False,
        ),
        (
            f"{PREFIX} 'durable' for queue 'q' in vhost '/': received 'true' but current is "
            "'false'",
            False,
        ),
        (
            f"{PREFIX} 'x-max-length' for queue 'q' in vhost '/': received none but current "
            "is the value '3' of type 'signedint'",
            False,
        ),
        (
            f"{PREFIX} 'x-max-age' for queue 'q' in vhost '/': received none but current is "
            "the value '1h' of type 'longstr'",
            True,
        ),
        (
            f"{PREFIX} 'x-max-length-bytes' for queue 'q' in vhost '/': received none but "
            "current is the value '1000000' of type 'signedint'",
            ("x-max-length-bytes", 1000000),
        ),
        # Cut off at 255 bytes before the value: cannot tell, so not a stream.
        (f"{PREFIX} 'x-max-length-bytes' for queue '{'q' * 200}' in vh", False),
        ("PRECONDITION_FAILED - something else entirely", False),
    ],
)
def test_what_a_refused_type_probe_says(text: str, verdict: object) -> None:
    assert read_refusal(text, dict(SENT)) == verdict


def test_a_length_limit_that_still_differs_after_the_retry_is_not_a_stream() -> None:
    text = (
        f"{PREFIX} 'x-max-length-bytes' for queue 'q' in vhost '/': received '5' but current is '6'"
    )
    assert read_refusal(text, {**SENT, "x-max-length-bytes": 5}) is False
