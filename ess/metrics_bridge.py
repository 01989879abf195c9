"""Feeds what the actors and the broker adapter report into the Prometheus metrics of ``web/``."""

from __future__ import annotations

from actors.adapters.rabbitmq import RabbitMQBroker
from web.metrics import ServiceMetrics


class MetricsObserver:
    """An :class:`actors.ports.observer.ActorObserver` backed by :class:`ServiceMetrics`."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._received = metrics.messages_received
        self._lag = metrics.delivery_lag
        self._frames = metrics.messages_sent
        self._bytes = metrics.bytes_sent
        self._subscriptions = metrics.consumer_subscriptions

    def event_received(self) -> None:
        self._received.inc()

    def frames_sent(self, frames: int, utf8_bytes: int, seconds_since_received: float) -> None:
        self._frames.inc(frames)
        self._bytes.inc(utf8_bytes)
        self._lag.observe(seconds_since_received, frames)

    def consumer_subscribed(self) -> None:
        self._subscriptions.inc()


def report_broker(metrics: ServiceMetrics, broker: RabbitMQBroker) -> None:
    """Export the broker connection pool's state, read at every scrape.

    ``ess_broker_reconnects_total`` and ``ess_broker_connection_attempts_total``
    from the pool's counters, ``ess_broker_connections`` from the pooled
    connections up right now (the pool drops a connection from its list the
    moment it is lost). Reading at scrape time costs nothing between scrapes.
    """
    pool = broker.pool
    metrics.read_broker_counts_from(lambda: (pool.reconnects, pool.connection_attempts))
    metrics.read_broker_connections_from(lambda: len(pool.connections))
