"""Feeds what the actors report into the Prometheus metrics of ``web/``."""

from __future__ import annotations

from web.metrics import ServiceMetrics


class MetricsObserver:
    """An :class:`actors.ports.observer.ActorObserver` backed by :class:`ServiceMetrics`."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._received = metrics.messages_received
        self._lag = metrics.delivery_lag
        self._subscriptions = metrics.consumer_subscriptions

    def event_received(self) -> None:
        self._received.inc()

    def event_sent(self, seconds_since_received: float) -> None:
        self._lag.observe(seconds_since_received)

    def consumer_subscribed(self) -> None:
        self._subscriptions.inc()
