"""``ess streams``: requests, output and errors, against an httpx mock transport."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from ess.tools.streams import format_table, streams_create, streams_delete, streams_list

API = "http://ess:8081"
LOCATION = "ws://localhost:8080/event-stream/abc"


def transport(
    status: int, body: object = None, seen: list[httpx.Request] | None = None
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if body is None:
            return httpx.Response(status)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def test_table() -> None:
    streams = [
        {"id": 1, "routing_key": "a", "location": LOCATION},
        {"id": 12, "routing_key": "longer.key", "location": LOCATION},
    ]
    assert format_table(streams).splitlines() == [
        "ID  ROUTING KEY  LOCATION",
        f" 1  a            {LOCATION}",
        f"12  longer.key   {LOCATION}",
    ]
    assert format_table([]) == "no event streams"


def test_list_sends_the_token_and_prints_a_table() -> None:
    seen: list[httpx.Request] = []
    body = {"event_streams": [{"id": 1, "routing_key": "k", "location": LOCATION}]}
    out = io.StringIO()
    assert streams_list(API, "t0k", out=out, transport=transport(200, body, seen)) == 0
    assert (seen[0].method, str(seen[0].url)) == ("GET", f"{API}/event-stream/")
    assert seen[0].headers["authorization"] == "Bearer t0k"
    assert "k" in out.getvalue().splitlines()[1]


def test_create_prints_the_answer_as_one_json_line() -> None:
    seen: list[httpx.Request] = []
    out = io.StringIO()
    answer = {"id": 3, "location": LOCATION}
    assert streams_create(API, None, "k", out=out, transport=transport(201, answer, seen)) == 0
    assert json.loads(seen[0].content) == {"routing_key": "k"}
    assert "authorization" not in seen[0].headers
    assert json.loads(out.getvalue()) == answer


def test_delete() -> None:
    seen: list[httpx.Request] = []
    out = io.StringIO()
    assert streams_delete(API, None, 4, out=out, transport=transport(204, None, seen)) == 0
    assert (seen[0].method, seen[0].url.path) == ("DELETE", "/event-stream/4")
    assert json.loads(out.getvalue()) == {"id": 4, "deleted": True}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"detail": "no event stream 4"}, "404 Not Found: no event stream 4"),
        (422, {"detail": [{"loc": "x"}]}, '422 Unprocessable Entity: [{"loc": "x"}]'),
        (401, {"detail": "missing token"}, "(set ESS_INTERNAL_TOKEN or pass --token)"),
        (503, None, "503 Service Unavailable: Service Unavailable"),
    ],
)
def test_errors_print_the_detail_and_exit_1(status: int, body: object, expected: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = streams_delete(API, "secret", 4, out=out, err=err, transport=transport(status, body))
    assert code == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith("ess streams delete: ")
    assert expected in err.getvalue()
    assert "secret" not in err.getvalue()


def test_unreachable_api() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    err = io.StringIO()
    assert streams_list(API, None, err=err, transport=httpx.MockTransport(refuse)) == 1
    assert (
        err.getvalue() == f"ess streams list: cannot reach the internal API at {API}: "
        "connection refused\n"
    )
