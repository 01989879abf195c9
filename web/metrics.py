"""The service's Prometheus metrics, on their own registry.

One :class:`ServiceMetrics` holds every metric object, registered on a
dedicated :class:`~prometheus_client.CollectorRegistry` rather than the
global default one, so that tests (and several apps in one process) never
collide with "Duplicated timeseries" errors. The composition root builds one
and hands it to the API, the websocket edge and whichever actor hooks
count messages; ``GET /metrics`` renders its registry.

The web edges update what they see themselves (API requests, websocket
connections, frames and bytes sent, close codes); broker-side counters
(messages received, reconnects, subscriptions, delivery lag) are for the
composition root to wire to the actors.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator

import trio.lowlevel
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["METRICS_CONTENT_TYPE", "SERVICE_CLOSE_CODES", "ServiceMetrics", "close_code_label"]

#: What :func:`generate_latest` (legacy name escaping) produces. Spelled out
#: because newer prometheus_client releases point ``CONTENT_TYPE_LATEST`` at
#: format 1.0.0, which older scrapers do not announce they accept.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Close codes the service itself ends websockets with (SPEC section 4, plus
#: 1006 for a connection dropped without a close frame, 1008 for a client
#: that stopped reading, 1009 for an oversized client message, 1011 for an
#: internal error). Each is a label value of ``ess_websocket_closes``.
SERVICE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1006, 1008, 1009, 1011, 1013, 4001})
#: The one label for every other code: a client may close with any of
#: thousands of codes, and each would otherwise become a time series.
OTHER_CLOSE_CODE = "other"


def close_code_label(code: int) -> str:
    """The ``code`` label of ``ess_websocket_closes``: bounded, whatever the client sends."""
    return str(code) if code in SERVICE_CLOSE_CODES else OTHER_CLOSE_CODE


#: Buckets of ``ess_connection_lag_events``: events behind, by powers of ten.
LAG_EVENT_BUCKETS = (0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0)

_LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class ServiceMetrics:
    """Every metric of the service, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.event_streams = Gauge(
            "ess_event_streams", "Event streams this replica holds an actor for", registry=r
        )
        self.websocket_connections = Gauge(
            "ess_websocket_connections", "Websocket connections open now", registry=r
        )
        # Updated for every frame: plain numbers, exported at scrape time.
        self.messages_received = FrameCounter(
            "ess_messages_received", "Events received from the broker"
        )
        self.messages_sent = FrameCounter(
            "ess_messages_sent", "Text frames sent to websocket clients"
        )
        self.bytes_sent = FrameCounter(
            "ess_bytes_sent", "UTF-8 bytes of text frames sent to websocket clients"
        )
        for counter in (self.messages_received, self.messages_sent, self.bytes_sent):
            r.register(counter)
        self.websocket_closes = Counter(
            "ess_websocket_closes",
            "Websockets closed, by close code (codes the service does not send: other)",
            ["code"],
            registry=r,
        )
        self._broker_counts = _BrokerCounts()
        r.register(self._broker_counts)
        self.consumer_subscriptions = Counter(
            "ess_consumer_subscriptions",
            "Broker consumers attached (incl. resubscriptions)",
            registry=r,
        )
        self.api_requests = Counter(
            "ess_api_requests",
            "Internal API requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "ess_api_request_duration_seconds",
            "Internal API request handling time",
            ["route", "method"],
            registry=r,
        )
        self.replica_info = Gauge(
            "ess_replica_info",
            "This replica's name (ESS_REPLICA_NAME), always 1",
            ["replica"],
            registry=r,
        )
        self.delivery_lag = FrameHistogram(
            "ess_delivery_lag_seconds",
            "Time from an event's receipt from the broker to its websocket send",
            _LAG_BUCKETS,
        )
        r.register(self.delivery_lag)
        self.connection_lag = Histogram(
            "ess_connection_lag_events",
            "Each connection's lag (events behind its stream's newest known offset), "
            "sampled at scrape time, at most once a second",
            buckets=LAG_EVENT_BUCKETS,
            registry=r,
        )
        self.connection_lag_max = Gauge(
            "ess_connection_lag_events_max",
            "The largest connection lag in events at the last sample (0: none behind)",
            registry=r,
        )

    def name_replica(self, name: str) -> None:
        """Set ``ess_replica_info{replica="<name>"} 1`` (one series: the last name given)."""
        self.replica_info.clear()
        self.replica_info.labels(name).set(1)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    async def render_in_parts(self) -> bytes:
        """:meth:`render`, with a checkpoint after each metric family.

        The same text, but no single stretch of event-loop time: rendering
        every family at once (about a millisecond for the service's 14 KB)
        would hold back every websocket for that long at each scrape. Each
        family is read when its turn comes, so one scrape's families may be
        a few milliseconds apart (as they may be under threads).
        """
        parts = []
        for family in self.registry.collect():
            parts.append(generate_latest(_OneFamily(family)))
            await trio.lowlevel.checkpoint()
        return b"".join(parts)

    def read_broker_counts_from(self, source: Callable[[], tuple[int, int]]) -> None:
        """Report the broker's (reconnects, connection attempts) at every scrape.

        The connection manager keeps these as plain counters of its own; a
        collector reads them when Prometheus asks instead of mirroring them.
        """
        self._broker_counts.source = source

    def read_broker_connections_from(self, source: Callable[[], int]) -> None:
        """Report ``ess_broker_connections`` (pooled connections up) at every scrape.

        Without a source the gauge is not exported at all: a 0 would say
        "the broker is down" about a service that never said so.
        """
        self._broker_counts.connections = source


class _BrokerCounts(Collector):
    """The broker pool's counters, and ``ess_broker_connections`` once it has a source."""

    def __init__(self) -> None:
        self.source: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.connections: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        reconnects, attempts = self.source()
        yield CounterMetricFamily(
            "ess_broker_reconnects",
            "Broker connections re-established after a loss",
            value=reconnects,
        )
        yield CounterMetricFamily(
            "ess_broker_connection_attempts",
            "Attempts to open a broker connection (successful or not)",
            value=attempts,
        )
        if self.connections is not None:
            yield GaugeMetricFamily(
                "ess_broker_connections",
                "Pooled broker connections up now (of ESS_AMQP_POOL_SIZE)",
                value=self.connections(),
            )


class FrameCounter(Collector):
    """A counter updated for every frame, as a plain number read at scrape time.

    prometheus_client's ``Counter`` takes a lock on every ``inc`` (the
    service updates four metrics per frame, and a fan-out to a thousand
    websockets makes that thousands of locks per event); these are only
    ever updated from the event loop's thread, so a plain integer will do.
    Exported as prometheus_client exports a counter (``_total``, ``_created``).
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self._created = time.time()
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            self._name, self._documentation, value=self.value, created=self._created
        )


class FrameHistogram(Collector):
    """A histogram updated for every frame: bucket counts kept as plain numbers.

    See :class:`FrameCounter`. ``observe`` is one bisection; the cumulative
    counts are summed when Prometheus asks.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._created = time.time()
        self._bounds = buckets
        #: Observations per bucket (not cumulative); the last is ``+Inf``.
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0

    def observe(self, amount: float, times: int = 1) -> None:
        """``times`` observations of ``amount`` (the frames of one write share their lag)."""
        self._counts[bisect.bisect_left(self._bounds, amount)] += times
        self._sum += amount * times

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation)
        cumulative = list(itertools.accumulate(self._counts))
        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        family.add_metric([], list(zip(bounds, cumulative, strict=True)), self._sum)
        family.add_sample(f"{self._name}_created", {}, self._created)
        yield family


class _OneFamily(Collector):
    """One collected metric family, as something :func:`generate_latest` can render."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family
