"""The actors' reports become the frame metrics: counted once, where the actor counts them."""

from __future__ import annotations

from ess.metrics_bridge import MetricsObserver
from web.metrics import ServiceMetrics


def test_frames_sent_count_frames_bytes_and_one_lag_per_frame() -> None:
    metrics = ServiceMetrics()
    observer = MetricsObserver(metrics)
    observer.frames_sent(3, 120, 0.002)
    observer.frames_sent(1, 7, 0.5)
    registry = metrics.registry
    assert registry.get_sample_value("ess_messages_sent_total") == 4
    assert registry.get_sample_value("ess_bytes_sent_total") == 127
    assert registry.get_sample_value("ess_delivery_lag_seconds_count") == 4
    assert registry.get_sample_value("ess_delivery_lag_seconds_sum") == 3 * 0.002 + 0.5


def test_events_received_and_subscriptions_are_counted() -> None:
    metrics = ServiceMetrics()
    observer = MetricsObserver(metrics)
    observer.event_received()
    observer.event_received()
    observer.consumer_subscribed()
    registry = metrics.registry
    assert registry.get_sample_value("ess_messages_received_total") == 2
    assert registry.get_sample_value("ess_consumer_subscriptions_total") == 1
