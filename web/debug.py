"""The actor tree for people and programs: ``/debug/actors`` and ``/debug/``.

The page and its static files hold no data (only markup and code), so they
are served without the bearer token; the data endpoint requires it. The
page's script takes the token from the URL fragment (``#token=...``, which
the browser never sends to the server, so it stays out of access logs), from
``?token=...``, or from a field on the page, and sends it as ``Authorization:
Bearer``.
"""

from __future__ import annotations

from importlib import resources

from quart import Response
from quart_trio import QuartTrio

from web.ports import StreamDirectory
from web.responses import json_response

#: Endpoints reachable without the bearer token (besides ``/health/*``).
PUBLIC_DEBUG_ENDPOINTS = frozenset({"debug_page", "static"})


def install_debug_routes(app: QuartTrio, streams: StreamDirectory, *, replica: str) -> None:
    """``GET /debug/actors`` (JSON, the root names the replica) and ``GET /debug/`` (HTML)."""
    page = resources.files("web").joinpath("static", "debug.html").read_text(encoding="utf-8")

    @app.get("/debug/actors")
    async def debug_actors() -> Response:
        return json_response({**streams.snapshot(), "replica": replica})

    @app.get("/debug/")
    async def debug_page() -> Response:
        return Response(
            page,
            status=200,
            content_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )
