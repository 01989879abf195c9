"""The internal HTTP API (SPEC section 3), a Quart-Trio app.

The app is a thin edge: it validates input, calls the stream directory (the
supervisor, through :class:`web.ports.StreamDirectory`) and renders JSON.
Every path answers with and without its trailing slash (``strict_slashes``
off: no redirects, which API clients often do not follow for POST/DELETE).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestTimeout

from actors.ports.broker import BrokerUnavailable, NotAStreamQueue
from actors.ports.registry import StreamRecord
from web.auth import bearer_token_matches
from web.debug import PUBLIC_DEBUG_ENDPOINTS, install_debug_routes
from web.errors import install_error_handlers, service_unavailable
from web.instrument import install_request_metrics
from web.metrics import ServiceMetrics
from web.openapi import build_openapi
from web.operations import install_operator_routes
from web.pacing import install_operator_pacing
from web.ports import StreamDirectory
from web.replicas import install_replica_routes
from web.responses import error_response, json_response
from web.validation import InvalidRequest, parse_create_body

#: Largest accepted request body; a create request needs a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
#: Seconds a client has to send a request's whole body (SPEC section 3: 30 s).
DEFAULT_REQUEST_TIMEOUT = 30.0
#: Ids are SQLite integers: positive and at most 2**63-1.
_MAX_STREAM_ID = 2**63 - 1
_STREAM_ID = re.compile(r"[0-9]{1,19}")
#: Endpoints that answer without the bearer token.
_PUBLIC_ENDPOINTS = frozenset({"health_live", "health_ready"}) | PUBLIC_DEBUG_ENDPOINTS


def create_app(
    streams: StreamDirectory,
    *,
    ingress_location: str,
    ingress_secure: bool,
    internal_token: str | None,
    readiness: Callable[[], str | None],
    name: str,
    version: str,
    metrics: ServiceMetrics | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    replica: str = "",
) -> QuartTrio:
    """Build the internal API app; serve it with Hypercorn's trio worker.

    ``metrics`` defaults to a fresh :class:`ServiceMetrics` (its own
    registry); pass the service-wide one so ``/metrics`` shows everything.
    ``replica`` names this process in ``/health/*``, ``/metrics`` and
    ``/debug/actors`` (``ESS_REPLICA_NAME``). An empty ``internal_token``
    counts as unset. A request body that has not
    arrived within ``request_timeout`` seconds is answered 408 (the head is
    bounded by Hypercorn: :mod:`web.http_server`).
    """
    app = QuartTrio(__name__, static_url_path="/debug/static", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = request_timeout
    app.url_map.strict_slashes = False
    metrics = metrics if metrics is not None else ServiceMetrics()
    metrics.name_replica(replica)
    locations = _Locations(ingress_location, ingress_secure)

    install_request_metrics(app, metrics)
    install_error_handlers(app)
    _install_body_first(app, request_timeout)
    if internal_token:
        _install_bearer_auth(app, internal_token)
    install_operator_pacing(app)

    @app.get("/event-stream/version/")
    async def get_version() -> Response:
        return json_response({"protocol": "WEBSOCKET", "name": name, "version": version})

    @app.post("/event-stream/")
    async def create_event_stream() -> Response:
        try:
            routing_key = parse_create_body(
                await request.get_data(cache=False, as_text=False, parse_form_data=False)
            )
        except InvalidRequest as error:
            return error_response(422, str(error))
        try:
            record = await streams.create_stream(routing_key)
        except BrokerUnavailable:
            return service_unavailable(
                "The message broker cannot be reached; nothing was recorded, try again later"
            )
        except NotAStreamQueue:
            return error_response(
                409,
                f"A queue named {routing_key[:100]!r} exists but is not a stream queue; "
                "it was not used or changed and nothing was recorded",
            )
        return json_response({"id": record.id, "location": locations.of(record)}, 201)

    @app.get("/event-stream/")
    async def list_event_streams() -> Response:
        records = sorted(await streams.list_streams(), key=lambda record: record.id)
        listed = [
            {"id": r.id, "location": locations.of(r), "routing_key": r.routing_key} for r in records
        ]
        return json_response({"event_streams": listed})

    # A string converter, not ``int``: a non-integer id must be 404, not 405.
    @app.delete("/event-stream/<stream_id>")
    async def delete_event_stream(stream_id: str) -> Response:
        parsed = _parse_stream_id(stream_id)
        if parsed is None or not await streams.delete_stream(parsed):
            return error_response(404, f"No event stream with id {stream_id[:40]!r}")
        return Response(b"", status=204)

    install_operator_routes(
        app,
        streams,
        readiness=readiness,
        metrics=metrics,
        openapi=build_openapi(name=name, version=version, secured=bool(internal_token)),
        replica=replica,
    )
    install_debug_routes(app, streams, replica=replica)
    install_replica_routes(app, streams, replica=replica)
    return app


class _Locations:
    """Builds ``ws[s]://<ingress>/event-stream/<uuid>`` for a record."""

    def __init__(self, ingress_location: str, secure: bool) -> None:
        scheme = "wss" if secure else "ws"
        self._prefix = f"{scheme}://{ingress_location.strip().rstrip('/')}/event-stream/"

    def of(self, record: StreamRecord) -> str:
        return self._prefix + record.uuid


def _parse_stream_id(text: str) -> int | None:
    """A positive 63-bit id from ASCII digits, else ``None`` (negative, float, huge, junk)."""
    if _STREAM_ID.fullmatch(text) is None:
        return None
    value = int(text)
    return value if 1 <= value <= _MAX_STREAM_ID else None


def _install_body_first(app: QuartTrio, timeout: float) -> None:
    """Read every request body to its end, within ``timeout``, before anything else runs.

    Two reasons. A client that sends half a body must not hold its
    connection (SPEC section 3): it gets 408 (Quart's ``BODY_TIMEOUT``)
    and, since its request never ended, Hypercorn closes the connection;
    reading first means nothing was done for an incomplete request (no
    DELETE half-applied behind a 408). And Hypercorn 0.18's HTTP/1.1 handler
    (trio worker) stops serving a keep-alive connection when a response
    completes before the request body has been received: answers that
    ignore the body (404, 405, 401, DELETE, GET with a body) hit that; found
    by tests/fuzz. The body is bounded by ``MAX_CONTENT_LENGTH`` (a larger
    one fails fast with 413 and is not waited for). Registered before the
    bearer check so that a 401 drains too.
    """

    @app.before_request
    async def read_whole_body() -> Response | None:
        try:
            await request.get_data(cache=True, as_text=False, parse_form_data=False)
        except RequestTimeout:
            return error_response(
                408,
                f"The request body did not arrive within {timeout:g} s",
                {"Connection": "close"},
            )
        return None


def _install_bearer_auth(app: QuartTrio, token: str) -> None:
    """Demand ``Authorization: Bearer <token>`` outside :data:`_PUBLIC_ENDPOINTS`.

    Unknown paths demand it too, so the token also hides which routes exist.
    """

    @app.before_request
    async def require_token() -> Response | None:
        if request.endpoint in _PUBLIC_ENDPOINTS:
            return None
        if bearer_token_matches(request.headers.get("Authorization"), token):
            return None
        return error_response(
            401, "A valid bearer token is required", {"WWW-Authenticate": "Bearer"}
        )
