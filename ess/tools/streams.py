"""``ess streams list|create|delete``: the internal API (SPEC section 3) from a shell.

Synchronous httpx: three one-shot requests need no event loop. The output is
meant for both people and scripts: ``create`` prints the API's JSON on one
line (``ess streams create k | jq -r .location``), ``list`` a table, and any
failure prints the API's ``detail`` on stderr and exits 1, so a script can
rely on the exit status alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypedDict, Unpack

import httpx

__all__ = ["format_table", "streams_create", "streams_delete", "streams_list"]

PROG = "ess streams"
TIMEOUT = 10.0


class _Failed(Exception):
    """A request that did not succeed; ``str()`` is the one line to print."""


def _detail(response: httpx.Response) -> str:
    """The API's ``{"detail": ...}`` text, or whatever the body says."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    text = response.text.strip()
    return text[:500] if text else response.reason_phrase


def _request(
    api: str,
    token: str | None,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(
            base_url=api, headers=headers, timeout=TIMEOUT, transport=transport
        ) as client:
            response = client.request(method, path, json=body)
    except httpx.InvalidURL as exc:
        raise _Failed(f"invalid API URL {api!r}: {exc}") from None
    except httpx.HTTPError as exc:
        # Never the token: it is only in the request headers, not in these messages.
        raise _Failed(f"cannot reach the internal API at {api}: {exc}") from None
    if response.status_code >= 400:
        message = f"{response.status_code} {response.reason_phrase}: {_detail(response)}"
        if response.status_code == 401:
            message += " (set ESS_INTERNAL_TOKEN or pass --token)"
        raise _Failed(message)
    return response


class Plumbing(TypedDict, total=False):
    """Where a command prints (stdout, stderr unless given) and how it reaches the API."""

    out: TextIO | None
    err: TextIO | None
    #: An httpx transport in place of the network (tests use a mock one).
    transport: httpx.BaseTransport | None


def _command(
    action: str,
    api: str,
    token: str | None,
    method: str,
    path: str,
    show: Callable[[httpx.Response], str],
    io: Plumbing,
    *,
    body: dict[str, Any] | None = None,
) -> int:
    """Make one request and print what ``show`` makes of the answer: exit status 0.

    A failure (an error answer, an unreachable API, an answer ``show`` cannot
    read) prints ``ess streams <action>: <why>`` on stderr: exit status 1.
    """
    try:
        response = _request(api, token, method, path, body=body, transport=io.get("transport"))
        text = show(response)
    except _Failed as exc:
        print(f"{PROG} {action}: {exc}", file=io.get("err") or sys.stderr)
        return 1
    print(text, file=io.get("out") or sys.stdout)
    return 0


def _unexpected(response: httpx.Response) -> _Failed:
    return _Failed(f"unexpected answer: {response.text[:200]!r}")


def format_table(streams: Sequence[dict[str, Any]]) -> str:
    """The event streams as aligned columns ``ID  ROUTING KEY  LOCATION``."""
    if not streams:
        return "no event streams"
    rows = [("ID", "ROUTING KEY", "LOCATION")]
    rows += [
        (str(s.get("id", "")), str(s.get("routing_key", "")), str(s.get("location", "")))
        for s in streams
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return "\n".join(
        f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip() for row in rows
    )


def streams_list(api: str, token: str | None, **io: Unpack[Plumbing]) -> int:
    """``GET /event-stream/`` and print the streams as a table."""

    def show(response: httpx.Response) -> str:
        try:
            streams = response.json()["event_streams"]
        except (ValueError, KeyError, TypeError):
            raise _unexpected(response) from None
        return format_table(streams)

    return _command("list", api, token, "GET", "/event-stream/", show, io)


def streams_create(api: str, token: str | None, routing_key: str, **io: Unpack[Plumbing]) -> int:
    """``POST /event-stream/`` and print the new ``{"id", "location"}`` as one JSON line."""

    def show(response: httpx.Response) -> str:
        try:
            created = response.json()
        except ValueError:
            raise _unexpected(response) from None
        return json.dumps(created)

    body = {"routing_key": routing_key}
    return _command("create", api, token, "POST", "/event-stream/", show, io, body=body)


def streams_delete(api: str, token: str | None, stream_id: int, **io: Unpack[Plumbing]) -> int:
    """``DELETE /event-stream/{id}``; prints ``{"id": N, "deleted": true}``.

    The API answers only once every websocket of the stream is closed, so
    when this returns its listeners have been told.
    """

    def show(response: httpx.Response) -> str:
        return json.dumps({"id": stream_id, "deleted": True})

    return _command("delete", api, token, "DELETE", f"/event-stream/{stream_id}", show, io)
