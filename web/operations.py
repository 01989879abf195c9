"""Operator endpoints: health, metrics and the OpenAPI document.

Liveness answers as long as the event loop does; readiness asks the
composition root (registry open, broker connected) through a callable so
this module knows nothing about either.

A scrape of ``/metrics`` costs what the busy streams cost, never what all
streams cost: the stream count is the supervisor's own (O(1)), and the
connections' lag is sampled from the streams with a running task only
(:class:`LagSampler`), at most once per :data:`LAG_SAMPLE_INTERVAL`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio
import trio.lowlevel
from quart import Response
from quart_trio import QuartTrio

from web.debug_query import connection_lags
from web.metrics import METRICS_CONTENT_TYPE, ServiceMetrics
from web.ports import StreamDirectory, StreamView
from web.responses import json_response

#: The fewest seconds between two samples of the connections' lag: however
#: often ``/metrics`` is polled, the sampling costs at most this much.
LAG_SAMPLE_INTERVAL = 1.0
#: Busy streams snapshotted between two checkpoints while sampling.
LAG_BATCH = 200


def install_operator_routes(
    app: QuartTrio,
    streams: StreamDirectory,
    *,
    readiness: Callable[[], str | None],
    metrics: ServiceMetrics,
    openapi: dict[str, Any],
    replica: str,
) -> None:
    """``/health/live``, ``/health/ready``, ``/metrics`` and ``/openapi.json``.

    Both health answers name the replica, so an operator behind a load
    balancer sees which process answered.
    """

    @app.get("/health/live")
    async def health_live() -> Response:
        return json_response({"status": "ok", "replica": replica})

    @app.get("/health/ready")
    async def health_ready() -> Response:
        reason = readiness()
        if reason is None:
            return json_response({"status": "ready", "replica": replica})
        return json_response({"detail": reason, "replica": replica}, 503)

    lags = LagSampler(streams, metrics)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        metrics.event_streams.set(streams.stream_count)
        await lags.sample()
        body = await metrics.render_in_parts()
        return Response(body, status=200, content_type=METRICS_CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        return json_response(openapi)


class BusyStreams(Protocol):
    """Where the lag sampler finds the streams with connections (the supervisor)."""

    @property
    def busy_streams(self) -> Sequence[StreamView]: ...


class LagSampler:
    """Samples every connection's lag into ``ess_connection_lag_events`` at scrape time.

    Each sample observes the lag (events behind the stream's newest known
    offset, :func:`web.debug_query.connection_lags`) of every connection that
    has sent something into the histogram, and sets
    ``ess_connection_lag_events_max`` to the largest (0 if none). A scrape
    sooner than :data:`LAG_SAMPLE_INTERVAL` after the last sample reuses it,
    so the histogram's count grows with time, not with the number of
    scrapers. Only :attr:`BusyStreams.busy_streams` are visited, in batches
    of :data:`LAG_BATCH` with a checkpoint between them.
    """

    def __init__(
        self,
        streams: BusyStreams,
        metrics: ServiceMetrics,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._streams = streams
        self._histogram = metrics.connection_lag
        self._max = metrics.connection_lag_max
        self._clock = clock
        self._sampled_at = -math.inf

    async def sample(self) -> None:
        """Take a sample unless the last one is recent enough."""
        now = self._clock()
        if now - self._sampled_at < LAG_SAMPLE_INTERVAL:
            return
        self._sampled_at = now  # concurrent scrapes reuse this sample
        worst = 0
        for at, stream in enumerate(self._streams.busy_streams):
            if at % LAG_BATCH == LAG_BATCH - 1:
                await trio.lowlevel.checkpoint()
            for lag in connection_lags(stream.snapshot()):
                self._histogram.observe(lag)
                worst = max(worst, lag)
        self._max.set(worst)
