"""Operator endpoints: health, metrics and the OpenAPI document.

Liveness answers as long as the event loop does; readiness asks the
composition root (registry open, broker connected) through a callable so
this module knows nothing about either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from web.metrics import METRICS_CONTENT_TYPE, ServiceMetrics
from web.ports import StreamDirectory
from web.responses import json_response

log = logging.getLogger(__name__)


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

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        await _refresh_stream_gauge(streams, metrics)
        return Response(metrics.render(), status=200, content_type=METRICS_CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        return json_response(openapi)


async def _refresh_stream_gauge(streams: StreamDirectory, metrics: ServiceMetrics) -> None:
    """Set ``ess_event_streams`` from the directory at scrape time.

    Scrape-time counting cannot drift from the truth. It is best effort: a
    registry hiccup must not make the metrics endpoint fail, so the gauge
    then keeps its last value.
    """
    try:
        metrics.event_streams.set(len(await streams.list_streams()))
    except Exception:
        log.warning("Could not count event streams for /metrics", exc_info=True)
