"""Every error the internal API returns is JSON ``{"detail": ...}``.

Quart's defaults answer routing errors (404, 405), oversized bodies (413) and
crashes (500) with HTML; clients of a JSON API should never have to parse
that. A crash is a bug: its traceback goes to the log, and the client gets a
generic detail (never the traceback).

A registry that cannot be read or written (:class:`RegistryUnavailable`:
disk full, a read-only file, the database down) is not a bug: whichever
route meets it answers 503 with the reason and ``Retry-After``, never 500
(SPEC section 3). Translated here, once, for every route.
"""

from __future__ import annotations

import logging

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from actors.ports.registry import RegistryUnavailable
from web.responses import error_response

log = logging.getLogger(__name__)

#: Seconds a client is told to wait after a 503.
RETRY_AFTER_SECONDS = 5
#: Longest reason from the registry put into a detail.
_MAX_REASON = 300

_DETAILS = {
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
}


def install_error_handlers(app: QuartTrio) -> None:
    """Make 4xx/5xx answers JSON, including those Quart raises itself."""

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        headers: dict[str, str] = {}
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return error_response(status, _DETAILS.get(status, error.name), headers)

    @app.errorhandler(RegistryUnavailable)
    async def registry_unavailable(error: RegistryUnavailable) -> Response:
        reason = str(error)[:_MAX_REASON] or type(error).__name__
        log.warning("Internal API: the registry is unavailable: %s", reason)
        return service_unavailable(f"The registry cannot be read or written now ({reason})")

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.error("Unhandled error in the internal API", exc_info=error)
        return error_response(500, "Internal server error")


def service_unavailable(detail: str) -> Response:
    """503 with ``Retry-After``: the request may succeed later, unchanged."""
    return error_response(503, detail, {"Retry-After": str(RETRY_AFTER_SECONDS)})
