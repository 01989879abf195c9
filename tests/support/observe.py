"""What a test can observe of a running service from outside: broker connections, metrics.

The service is started with a connection name (``?name=<name>`` in its
AMQP URL); each of its pooled connections then announces
``<name>#<slot>`` to the broker. The broker's process id of each
connection identifies it: the same ids before and after something happened
means no connection was closed or reopened in between.
"""

from __future__ import annotations

import re

import httpx
import trio


async def rabbitmqctl(*args: str) -> str:
    result = await trio.run_process(
        ["rabbitmqctl", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')}"
        )
    return result.stdout.decode(errors="replace")


async def service_connections(connection_name: str) -> dict[str, str]:
    """``{connection name: broker pid}`` of the connections named ``<connection_name>#<slot>``."""
    out = await rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "client_properties"
    )
    found: dict[str, str] = {}
    pattern = re.compile(r'\{"connection_name","(' + re.escape(connection_name) + r'#\d+)"\}')
    for line in out.splitlines():
        match = pattern.search(line)
        if match:
            found[match.group(1)] = line.split("\t", 1)[0]
    return found


async def close_service_connections(connection_name: str, reason: str = "test: dropped") -> int:
    """``rabbitmqctl close_connection`` on every connection of the service; returns how many."""
    connections = await service_connections(connection_name)
    for pid in connections.values():
        await rabbitmqctl("close_connection", pid, reason)
    return len(connections)


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample ``name`` (0 if absent)."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def labelled_metric(text: str, name: str, labels: str) -> float:
    """The value of ``name{labels}`` (``labels`` as written, e.g. ``code="1008"``); 0 if absent."""
    match = re.search(
        rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+-]+)$", text, re.MULTILINE
    )
    return float(match.group(1)) if match else 0.0


async def broker_reconnects(api: httpx.AsyncClient) -> float:
    """``ess_broker_reconnects_total`` from the service's ``/metrics``."""
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    return metric(response.text, "ess_broker_reconnects_total")
