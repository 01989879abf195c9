"""What the fuzz tests measure on the running service, from the outside.

Everything here reads public surfaces only: the internal API
(``/debug/actors``, ``/health/ready``), ``/proc/<pid>`` of the service
process, and ``rabbitmqctl`` for what the broker holds on the service's
behalf. Waits poll with short sleeps under a deadline (there is no event to
wait on for "the broker forgot a consumer").
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
AMQP_PORT = 5672
POLL_INTERVAL = 0.1


def iter_nodes(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield tree
    for child in tree.get("children", []):
        yield from iter_nodes(child)


def connection_nodes(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every connection (and consumer) node in an actor tree snapshot."""
    return [node for node in iter_nodes(tree) if node["kind"] in ("connection", "consumer")]


def actor_tree(api: str) -> dict[str, Any]:
    """``GET /debug/actors``; asserts it answers 200 (a crashed actor tree would not)."""
    response = httpx.get(f"{api}/debug/actors", timeout=10.0)
    assert response.status_code == 200, response.text
    tree: dict[str, Any] = response.json()
    assert tree["kind"] == "supervisor" and tree["state"] == "running", tree
    return tree


def is_ready(api: str) -> bool:
    return httpx.get(f"{api}/health/ready", timeout=10.0).status_code == 200


def poll_until(measure: Callable[[], T], good: Callable[[T], bool], timeout: float, what: str) -> T:
    """Re-measure until ``good`` holds; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = measure()
        if good(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout}s")
        time.sleep(POLL_INTERVAL)


def wait_no_connections(api: str, timeout: float = 15.0) -> None:
    poll_until(
        lambda: connection_nodes(actor_tree(api)),
        lambda nodes: not nodes,
        timeout,
        "connection nodes left in /debug/actors",
    )


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def amqp_local_ports(pid: int) -> set[int]:
    """Local ports of the process's TCP connections to the broker port."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    local, remote, inode = fields[1], fields[2], fields[9]
                    if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == AMQP_PORT:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            continue
    return ports


def rabbitmqctl(*args: str) -> list[list[str]]:
    """Rows of a quiet ``rabbitmqctl`` listing (header dropped), split on tabs."""
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    rows = [line.split("\t") for line in result.stdout.splitlines() if line]
    return rows[1:] if rows and rows[0][0] in ("name", "pid", "queue_name") else rows


@dataclass(frozen=True)
class BrokerUsage:
    """What the broker holds for one service process."""

    connections: int
    channels: int
    consumers: int


def broker_usage(pid: int) -> BrokerUsage:
    """Channels and consumers on the service's own AMQP connections.

    The service's connections are found by their local ports (from
    ``/proc``), so other processes using the same broker do not count.
    """
    ports = amqp_local_ports(pid)
    prefixes = tuple(f"127.0.0.1:{port} -> " for port in ports) + tuple(
        f"[::1]:{port} -> " for port in ports
    )
    channels = consumers = 0
    for name, count in rabbitmqctl("list_channels", "name", "consumer_count"):
        if name.startswith(prefixes):
            channels += 1
            consumers += int(count)
    return BrokerUsage(len(ports), channels, consumers)


def queue_consumers(queue: str) -> int | None:
    """The broker's consumer count of one queue (``None``: no such queue)."""
    for name, count in rabbitmqctl("list_queues", "name", "consumers"):
        if name == queue:
            return int(count)
    return None


def known_failure(reason: str, attempt: Callable[[], object]) -> None:
    """A strict, imperative xfail: ``attempt`` must fail (xfail) until the bug is fixed.

    Imperative rather than ``@pytest.mark.xfail`` so pytest never has to
    format the expected failure's traceback.
    """
    import pytest

    try:
        attempt()
    except Exception as error:
        pytest.xfail(f"{reason}: {error!r}"[:500])
    pytest.fail(f"Fixed? This was expected to fail ({reason}); drop the expectation.")
