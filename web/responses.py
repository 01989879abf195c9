"""JSON responses, the only kind of body the internal API sends (bar metrics/HTML)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from quart import Response

JSON_CONTENT_TYPE = "application/json"


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``body`` as compact JSON; values JSON cannot hold are rendered with ``str``.

    The ``str`` fallback keeps ``/debug/actors`` answering even if a snapshot
    carries, say, a datetime: a debug view must never fail on its subject.
    """
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
    return Response(
        text, status=status, headers=dict(headers or {}), content_type=JSON_CONTENT_TYPE
    )


def error_response(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """The uniform error body ``{"detail": "..."}``."""
    return json_response({"detail": detail}, status, headers)
