"""Parsing of ``amqp://`` and ``amqps://`` URLs into connection parameters.

The URL is the one configuration value operators set (``ESS_AMQP_URL``), so
it must follow the RabbitMQ URI specification exactly: the path is the
virtual host with ``%2F`` decoding (``/`` alone and no path both mean the
default vhost ``/``), user name and password are percent-decoded, and a few
query options tune the connection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True, slots=True)
class ConnectionParameters:
    """Everything needed to open one connection.

    ``heartbeat`` is ``None`` to accept the broker's proposal, ``0`` to
    disable heartbeats, or seconds. ``frame_max`` and ``channel_max`` of
    ``0`` accept the broker's limits. ``connection_timeout`` (seconds) bounds
    the TCP connect plus the AMQP handshake.
    """

    host: str = "localhost"
    port: int = 5672
    username: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    ssl: bool = False
    heartbeat: int | None = None
    connection_timeout: float = 10.0
    frame_max: int = 0
    channel_max: int = 0
    connection_name: str | None = None

    def __repr__(self) -> str:
        # Never print the password (this ends up in logs).
        scheme = "amqps" if self.ssl else "amqp"
        return f"<ConnectionParameters {scheme}://{self.username}@{self.host}:{self.port}/{self.vhost!r}>"


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"URL option {name}={value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"URL option {name}={value!r} must be a finite number >= 0")
    return number


def _bounded_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"URL option {name}={value!r} is not an integer") from None
    if not low <= number <= high:
        raise ValueError(f"URL option {name}={value!r} must be between {low} and {high}")
    return number


def parse_url(url: str) -> ConnectionParameters:
    """Parse an AMQP URL; raise :class:`ValueError` naming what is wrong.

    Query options: ``heartbeat`` (seconds, 0 disables), ``connection_timeout``
    (seconds), ``frame_max`` (bytes, at least 4096), ``channel_max``, and
    ``name`` (the connection name shown by the broker's management tools).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"AMQP URL scheme must be amqp or amqps, not {parts.scheme!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("AMQP URL has an invalid port") from None
    host = parts.hostname or "localhost"

    path = parts.path
    if path in ("", "/"):
        vhost = "/"
    else:
        raw = path[1:]
        if "/" in raw:
            raise ValueError("AMQP URL path must be one segment: the vhost (write '/' as %2F)")
        vhost = unquote(raw)

    username = unquote(parts.username) if parts.username is not None else "guest"
    password = unquote(parts.password) if parts.password is not None else "guest"

    heartbeat: int | None = None
    connection_timeout = 10.0
    frame_max = 0
    channel_max = 0
    name: str | None = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "heartbeat":
            heartbeat = _bounded_int(key, value, 0, 65535)
        elif key == "connection_timeout":
            connection_timeout = _positive_float(key, value)
        elif key == "frame_max":
            frame_max = _bounded_int(key, value, 4096, 2**31 - 1)
        elif key == "channel_max":
            channel_max = _bounded_int(key, value, 1, 65535)
        elif key in ("name", "connection_name"):
            name = value
        else:
            raise ValueError(f"unknown AMQP URL option {key!r}")

    return ConnectionParameters(
        host=host,
        port=port,
        username=username,
        password=password,
        vhost=vhost,
        ssl=scheme == "amqps",
        heartbeat=heartbeat,
        connection_timeout=connection_timeout,
        frame_max=frame_max,
        channel_max=channel_max,
        connection_name=name,
    )
