"""Clients that begin a request or handshake and never finish cannot hold a port.

SPEC section 3: "Neither port can be held by a client that does not finish
what it began: a request whose headers or body are not complete within 30 s
is answered (408) or closed, and so is a websocket handshake; idle
keep-alive connections are closed after a bounded time."

The real ``ess serve`` runs with small bounds (``ESS_REQUEST_TIMEOUT``,
``ESS_KEEPALIVE_TIMEOUT``); each test is a raw TCP client that sends half of
something (or nothing) and waits, with a deadline of its own, for the server
to answer 408 or to close the connection. Plain blocking sockets: the
deadline is the socket timeout, there is nothing else to wait on.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.service import ServiceProcess

#: The bound the service runs with in these tests, seconds.
BOUND = 1.0
#: How long past the bound a test waits before it calls the port held.
#: Well below the defaults the bounds replace (5 s keep-alive, 10 s
#: handshake, 60 s body), so each test fails on a service that ignores them.
SLACK = 2.5


def _service(tmp: Path, amqp_url: str, **env: str) -> Iterator[ServiceProcess]:
    service = ServiceProcess(workdir=tmp, amqp_url=amqp_url, extra_env=env)
    service.start()
    try:
        yield service
    finally:
        service.clean_up()


@pytest.fixture(scope="module")
def strict_requests(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str
) -> Iterator[ServiceProcess]:
    """Requests and handshakes bounded by BOUND; idle keep-alive allowed far longer."""
    yield from _service(
        tmp_path_factory.mktemp("strict-requests"),
        amqp_url,
        ESS_REQUEST_TIMEOUT=str(BOUND),
        ESS_KEEPALIVE_TIMEOUT="60",
    )


@pytest.fixture(scope="module")
def short_keepalive(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str
) -> Iterator[ServiceProcess]:
    """Idle keep-alive bounded by BOUND; requests keep the default bound."""
    yield from _service(
        tmp_path_factory.mktemp("short-keepalive"), amqp_url, ESS_KEEPALIVE_TIMEOUT=str(BOUND)
    )


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(BOUND + SLACK)
    return sock


def _until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; raises if it holds on past the deadline.

    Returns the bytes and the seconds it took.
    """
    started = time.monotonic()
    received = b""
    deadline = started + BOUND + SLACK
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"the server still holds the connection after {BOUND + SLACK}s "
                f"(received {received[:200]!r})"
            ) from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic() - started
        received += chunk


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole response body"
        body += chunk
    return head + b"\r\n\r\n" + body


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


# --------------------------------------------------------------------------- #
# Internal API (Hypercorn)


def test_a_connection_that_sends_nothing_is_closed(strict_requests: ServiceProcess) -> None:
    with _connect(strict_requests.internal_port) as sock:
        answer, _ = _until_closed(sock)
    assert _status(answer) in (None, 408)


def test_half_a_request_head_is_closed(strict_requests: ServiceProcess) -> None:
    with _connect(strict_requests.internal_port) as sock:
        sock.sendall(b"GET /event-stream/ HTTP/1.1\r\nHost: x\r\nX-Half: ")
        answer, _ = _until_closed(sock)
    assert _status(answer) in (None, 408)


def test_a_head_trickled_byte_by_byte_is_still_bounded(strict_requests: ServiceProcess) -> None:
    """A per-read inactivity timer would never fire here; the bound is on the whole head."""
    head = b"GET /event-stream/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with _connect(strict_requests.internal_port) as sock:
        started = time.monotonic()
        closed = False
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if time.monotonic() - started > BOUND + SLACK:
                break
            time.sleep(0.05)  # the trickle itself, not a synchronisation
        if not closed:
            _until_closed(sock)
        assert time.monotonic() - started < BOUND + SLACK + 0.5


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/event-stream/"),
        ("DELETE", "/event-stream/987654321"),
        ("GET", "/event-stream/"),
        ("GET", "/no-such-path"),
    ],
)
def test_half_a_body_is_answered_408_or_closed(
    strict_requests: ServiceProcess, method: str, path: str
) -> None:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode()
    with _connect(strict_requests.internal_port) as sock:
        sock.sendall(head + b'{"routing_key": "half')
        answer, _ = _until_closed(sock)
    assert _status(answer) in (None, 408), answer[:300]
    if _status(answer) == 408:
        assert b'"detail"' in answer


def test_a_half_body_post_records_nothing(strict_requests: ServiceProcess) -> None:
    before = httpx.get(f"{strict_requests.api}/event-stream/", timeout=10).json()
    head = b"POST /event-stream/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    with _connect(strict_requests.internal_port) as sock:
        sock.sendall(head + b'{"routing_key": "x"}')
        _until_closed(sock)
    assert httpx.get(f"{strict_requests.api}/event-stream/", timeout=10).json() == before


def test_complete_requests_are_unaffected_by_the_bound(strict_requests: ServiceProcess) -> None:
    """Keep-alive still works within the bound: two requests on one connection."""
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(strict_requests.internal_port) as sock:
        for _ in range(2):
            sock.sendall(request)
            answer = _read_response(sock)
            assert _status(answer) == 200, answer


def test_an_idle_keep_alive_connection_is_closed(short_keepalive: ServiceProcess) -> None:
    with _connect(short_keepalive.internal_port) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, took = _until_closed(sock)
    assert _status(answer) == 200
    assert took < BOUND + SLACK


# --------------------------------------------------------------------------- #
# Public websockets (trio-websocket)


def test_a_websocket_connection_that_sends_nothing_is_closed(
    strict_requests: ServiceProcess,
) -> None:
    with _connect(strict_requests.public_port) as sock:
        _until_closed(sock)


def test_half_a_websocket_handshake_is_closed(strict_requests: ServiceProcess) -> None:
    with _connect(strict_requests.public_port) as sock:
        sock.sendall(
            b"GET /event-stream/0f3c HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        )
        answer, _ = _until_closed(sock)
    assert not answer.startswith(b"HTTP/1.1 101")


def test_a_plain_http_request_on_the_websocket_port_is_answered_or_closed(
    strict_requests: ServiceProcess,
) -> None:
    with _connect(strict_requests.public_port) as sock:
        sock.sendall(b"GET /event-stream/x HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, _ = _until_closed(sock)
    assert not answer.startswith(b"HTTP/1.1 101")
