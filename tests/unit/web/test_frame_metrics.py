"""The per-frame metrics export exactly what prometheus_client's own classes would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from web.metrics import FrameCounter, FrameHistogram

BUCKETS = (0.0001, 0.001, 0.01, 0.1, 1.0, 5.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The rendered lines, without the ``_created`` timestamps (which differ by construction)."""
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


@pytest.mark.parametrize("seed", range(5))
def test_the_histogram_renders_as_prometheus_clients(seed: int) -> None:
    rng = random.Random(seed)
    # Values on the bucket bounds too: a bound belongs to its own bucket (le).
    values = [rng.choice([*BUCKETS, rng.expovariate(10.0)]) for _ in range(500)]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_lag_seconds", "lag", buckets=BUCKETS, registry=theirs)
    histogram = FrameHistogram("x_lag_seconds", "lag", BUCKETS)
    ours.register(histogram)
    for value in values:
        reference.observe(value)
        histogram.observe(value)
    assert exposition(ours) == exposition(theirs)


def test_the_counter_renders_as_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("x_frames", "frames", registry=theirs)
    counter = FrameCounter("x_frames", "frames")
    ours.register(counter)
    for amount in (1, 5, 0, 12):
        reference.inc(amount)
        counter.inc(amount)
    assert exposition(ours) == exposition(theirs)
    assert "x_frames_created" in generate_latest(ours).decode()


def test_observing_several_frames_at_once_is_observing_each() -> None:
    """The frames of one write share their lag: observed once with a count."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("x_lag_seconds", "lag", buckets=BUCKETS, registry=theirs)
    histogram = FrameHistogram("x_lag_seconds", "lag", BUCKETS)
    ours.register(histogram)
    for value, times in [(0.0005, 3), (0.01, 1), (2.0, 7), (9.0, 2)]:
        for _ in range(times):
            reference.observe(value)
        histogram.observe(value, times)
    assert exposition(ours) == exposition(theirs)
