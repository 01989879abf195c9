"""Every error the internal API returns is JSON ``{"detail": ...}``.

Quart's defaults answer routing errors (404, 405), oversized bodies (413) and
crashes (500) with HTML; clients of a JSON API should never have to parse
that. A crash is a bug: its traceback goes to the log, and the client gets a
generic detail (never the traceback).
"""

from __future__ import annotations

import logging

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from web.responses import error_response

log = logging.getLogger(__name__)

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

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.error("Unhandled error in the internal API", exc_info=error)
        return error_response(500, "Internal server error")
