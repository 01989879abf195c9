"""``/metrics`` at scale: O(1) in the streams, the connections' lag, the broker pool.

A scrape counts the streams with the directory's own count and samples lag
from the busy streams only: the fakes here fail the test if a scrape reads
the registry or visits every stream.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from actors.adapters.rabbitmq import RabbitMQBroker
from ess.metrics_bridge import report_broker
from tests.support.aio import turns_of_another_task
from web.metrics import ServiceMetrics
from web.operations import LAG_BATCH, LAG_SAMPLE_INTERVAL, LagSampler

from .web_fakes import FakeActor, FakeDirectory
from .web_servers import make_app

Json = dict[str, object]


class ScrapeOnlyDirectory(FakeDirectory):
    """Fails on what a scrape must never do: read the registry, or walk every stream."""

    walks = 0

    async def list_streams(self) -> Any:
        raise AssertionError("a scrape read the registry")

    @property
    def all_streams(self) -> list[FakeActor]:
        return super().streams

    @property
    def streams(self) -> list[FakeActor]:
        self.walks += 1
        return super().streams


def connection(name: str, last_ordinal: int | None, last_offset: int | None = None) -> Json:
    consumer = {"kind": "consumer", "counters": {"last_offset": last_offset}, "children": []}
    return {
        "kind": "connection",
        "name": name,
        "counters": {"messages_received": 0, "messages_sent": 0, "last_ordinal": last_ordinal},
        "children": [consumer],
    }


def live_tail(last_offset: int) -> Json:
    return {"kind": "consumer", "name": "live-tail", "counters": {"last_offset": last_offset}}


def replica_app(directory: FakeDirectory, metrics: ServiceMetrics | None = None) -> Any:
    """The app of replica ``ess-a`` over ``directory``; fresh metrics unless given ``metrics``."""
    return make_app(
        directory, metrics=metrics or ServiceMetrics(CollectorRegistry()), replica="ess-a"
    )


async def scrape(app: Any) -> dict[str, dict[str, float]]:
    """``/metrics`` as {family: {sample name + labels: value}}."""
    response = await app.test_client().get("/metrics")
    assert response.status_code == 200
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(await response.get_data(as_text=True)):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found.setdefault(family.name, {})[f"{sample.name}{{{labels}}}"] = sample.value
    return found


async def test_a_scrape_counts_streams_without_the_registry_or_a_walk() -> None:
    directory = ScrapeOnlyDirectory()
    for key in ("a", "b", "c"):
        await FakeDirectory.create_stream(directory, key)
    metrics = ServiceMetrics(CollectorRegistry())
    found = await scrape(replica_app(directory, metrics))
    assert found["ess_event_streams"] == {"ess_event_streams{}": 3.0}
    assert directory.walks == 0
    assert found["ess_replica_info"] == {"ess_replica_info{replica=ess-a}": 1.0}


async def test_lag_is_sampled_from_the_busy_streams_into_a_histogram_and_a_max() -> None:
    directory = ScrapeOnlyDirectory()
    for key in ("a", "b", "c"):
        await FakeDirectory.create_stream(directory, key)
    a, b, _idle = directory.all_streams
    # Stream a: the live tail has seen offset 99 (ordinal 100); one client is at 100, one at 40.
    a.connections = [connection("c1", 100), connection("c2", 40), live_tail(99)]
    # Stream b: its own consumer received offset 1004 but sent only up to ordinal 5;
    # a second connection has sent nothing yet (no lag known).
    b.connections = [connection("c3", 5, last_offset=1004), connection("c4", None)]
    found = await scrape(replica_app(directory))
    lag = found["ess_connection_lag_events"]
    assert lag["ess_connection_lag_events_count{}"] == 3  # 0, 60 and 1000 events behind
    assert lag["ess_connection_lag_events_sum{}"] == 1060
    assert lag["ess_connection_lag_events_bucket{le=0.0}"] == 1
    assert lag["ess_connection_lag_events_bucket{le=100.0}"] == 2
    assert lag["ess_connection_lag_events_bucket{le=1000.0}"] == 3
    assert found["ess_connection_lag_events_max"] == {"ess_connection_lag_events_max{}": 1000}
    assert directory.walks == 0


async def test_without_busy_streams_the_max_is_zero_and_nothing_is_observed() -> None:
    directory = ScrapeOnlyDirectory()
    await FakeDirectory.create_stream(directory, "a")
    found = await scrape(replica_app(directory))
    assert found["ess_connection_lag_events"]["ess_connection_lag_events_count{}"] == 0
    assert found["ess_connection_lag_events_max"] == {"ess_connection_lag_events_max{}": 0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_scrapes_within_the_interval_reuse_the_last_sample() -> None:
    directory = FakeDirectory()
    await directory.create_stream("a")
    [actor] = directory.streams
    actor.connections = [connection("c1", 10), live_tail(19)]
    metrics = ServiceMetrics(CollectorRegistry())
    clock = Clock()
    sampler = LagSampler(directory, metrics, clock=clock)
    await sampler.sample()
    actor.connections = [connection("c1", 10), live_tail(49)]
    clock.now += LAG_SAMPLE_INTERVAL / 2
    await sampler.sample()
    assert metrics.connection_lag_max._value.get() == 10  # not sampled again yet
    clock.now += LAG_SAMPLE_INTERVAL / 2
    await sampler.sample()
    assert metrics.connection_lag_max._value.get() == 40
    assert metrics.connection_lag._sum.get() == 50  # two samples, however many scrapes


async def test_sampling_many_busy_streams_lets_other_tasks_run() -> None:
    directory = FakeDirectory()
    for n in range(LAG_BATCH * 3):
        await directory.create_stream(f"k{n}")
    for actor in directory.streams:
        actor.connections = [connection("c", 1), live_tail(1)]
    sampler = LagSampler(directory, ServiceMetrics(CollectorRegistry()))
    turns, _ = await turns_of_another_task(sampler.sample)
    assert turns >= 2  # a turn at every batch boundary


async def test_a_render_in_parts_is_the_same_text_and_lets_other_tasks_run() -> None:
    """A scrape yields between metric families, so its render is no single long loop step."""
    metrics = ServiceMetrics(CollectorRegistry())
    metrics.name_replica("r")
    metrics.api_requests.labels("/metrics", "GET", "200").inc()
    metrics.api_request_duration.labels("/metrics", "GET").observe(0.01)
    metrics.websocket_closes.labels("1000").inc()
    during, parts = await turns_of_another_task(metrics.render_in_parts)
    # The registry's text minus each family's _created timestamp (taken anew at each render).
    created = re.compile(rb"^ess_\w+_created(\{[^}]*\})? .*$", re.M)
    assert created.sub(b"", parts) == created.sub(b"", metrics.render())
    families = len(list(metrics.registry.collect()))
    assert families > 10
    assert during >= families - 1  # a turn between every two families


@pytest.mark.parametrize("up", [0, 1, 2])
async def test_the_broker_pool_is_reported_at_scrape_time(up: int) -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    broker = RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/", "ess.test", pool_size=2)
    report_broker(metrics, broker)
    broker.pool.connections.extend([object()] * up)  # type: ignore[list-item]
    broker.pool.reconnects, broker.pool.connection_attempts = 4, 7
    found = await scrape(replica_app(FakeDirectory(), metrics))
    assert found["ess_broker_connections"] == {"ess_broker_connections{}": up}
    assert found["ess_broker_reconnects"] == {"ess_broker_reconnects_total{}": 4}
    assert found["ess_broker_connection_attempts"] == {"ess_broker_connection_attempts_total{}": 7}


async def test_without_a_pool_the_connections_gauge_is_not_exported() -> None:
    found = await scrape(replica_app(FakeDirectory()))
    assert "ess_broker_connections" not in found
    assert "ess_broker_reconnects" in found
