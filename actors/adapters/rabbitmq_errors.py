"""The one translation of :mod:`amqp` errors into the broker port's errors.

Every operation of the RabbitMQ adapter runs inside :func:`broker_errors`
(modelled on httpcore's ``map_exceptions``), so what a caller of the port
sees for a given broker reply is decided here and nowhere else:

==========================================  =============================================
amqp error                                  port error
==========================================  =============================================
404 "home node ... down or inaccessible"    :class:`BrokerUnavailable` (a broker starting)
other 404 ``NotFound``                      :class:`StreamNotFound`
``ConsumerCancelled`` (by the broker)       :class:`StreamNotFound` (the subscription
                                            first checks whether the queue still exists)
``ConsumerOverflow``                        :class:`SubscriptionLost`
connection errors, ``NoFreeChannels``       :class:`BrokerUnavailable`
``trio.TooSlowError`` (our own bound)       :class:`BrokerUnavailable`
406 "no replica on the local node"          :class:`BrokerUnavailable` (a stream consumer
                                            on a node without a member of the stream)
other channel closes, ``PublishNacked``     ``channel_closed`` (:class:`BrokerError`
                                            by default)
any other ``AMQPError``                     :class:`BrokerError`
==========================================  =============================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

import amqp
from actors.ports.broker import BrokerError, BrokerUnavailable, StreamNotFound, SubscriptionLost


def queue_home_down(error: amqp.NotFound) -> bool:
    """A 404 that means "not yet", not "no such queue".

    For a moment after the broker starts, RabbitMQ answers for a durable
    queue whose process is not up yet with ``404 NOT_FOUND - home node ... of
    durable queue ... is down or inaccessible``. Taking that for a missing
    queue would close live websockets with 1013 right after an outage.
    """
    return "down or inaccessible" in error.reply_text


def no_local_replica(error: amqp.PreconditionFailed) -> bool:
    """A 406 that means "not on this node now", not "never".

    RabbitMQ 3.10 serves an AMQP consumer of a stream only from a member on
    the node of its connection: ``406 PRECONDITION_FAILED - queue ... does not
    have a replica on the local node`` (a stream with fewer members than the
    cluster has nodes, or whose member there was just removed or is not back
    yet after the node restarted). Taking that for a broken stream would
    close its websockets with 1011; it is the broker not serving us now.
    """
    return "replica on the local node" in error.reply_text


@contextmanager
def broker_errors(what: str, *, channel_closed: type[BrokerError] = BrokerError) -> Iterator[None]:
    """Translate the amqp errors (and our own timeouts) raised inside into port errors.

    ``what`` names the operation in the message (``"cannot delete 'rk'"``).
    ``channel_closed`` is the error for a channel the broker closed for
    another reason than a missing queue: a management operation reports a
    plain :class:`BrokerError`, while a subscription whose channel went away
    reports :class:`BrokerUnavailable` so that its owner waits and resubscribes.
    """
    try:
        yield
    except amqp.NotFound as exc:
        if queue_home_down(exc):
            raise BrokerUnavailable(f"{what}: {exc.reply_text}") from exc
        raise StreamNotFound(f"{what}: {exc.reply_text}") from exc
    except amqp.ConsumerCancelled as exc:
        raise StreamNotFound(f"{what}: the stream queue was deleted") from exc
    except amqp.ConsumerOverflow as exc:
        raise SubscriptionLost(f"{what}: the consumer passed its buffer bound") from exc
    except (amqp.AMQPConnectionError, amqp.NoFreeChannels) as exc:
        raise BrokerUnavailable(f"{what}: {exc}") from exc
    except trio.TooSlowError as exc:
        raise BrokerUnavailable(f"{what}: the broker did not answer in time") from exc
    except amqp.PreconditionFailed as exc:
        if no_local_replica(exc):
            raise BrokerUnavailable(f"{what}: {exc.reply_text}") from exc
        raise channel_closed(f"{what}: {exc}") from exc
    except (amqp.ChannelClosed, amqp.PublishNacked) as exc:
        raise channel_closed(f"{what}: {exc}") from exc
    except amqp.AMQPError as exc:
        raise BrokerError(f"{what}: {exc}") from exc
