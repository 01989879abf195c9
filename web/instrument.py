"""Prometheus instrumentation of the internal API's requests.

Labels use the matched route *rule* (``/event-stream/<stream_id>``), never
the raw path, and a fixed set of methods, so a client cannot create
unbounded label values (and memory) by requesting random URLs.
"""

from __future__ import annotations

import time

from quart import Response, g, request
from quart_trio import QuartTrio

from web.metrics import ServiceMetrics

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"


def install_request_metrics(app: QuartTrio, metrics: ServiceMetrics) -> None:
    """Count and time every request, registered before any other hook.

    Registering first matters: a later ``before_request`` that answers early
    (the bearer-token check) still leaves the start time in place.
    """

    @app.before_request
    async def start_timer() -> None:
        g.ess_request_started = time.perf_counter()

    @app.after_request
    async def observe(response: Response) -> Response:
        started: float | None = g.get("ess_request_started")
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.api_requests.labels(route, method, str(response.status_code)).inc()
        if started is not None:
            elapsed = time.perf_counter() - started
            metrics.api_request_duration.labels(route, method).observe(elapsed)
        return response
