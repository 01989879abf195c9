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
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

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
    Refused: another scheme than ``amqp``/``amqps``, no ``//`` authority, a
    port that is not a number from 1 to 65535, a path of more than one
    segment, an unknown option, a bad option value, an ``@`` after the host
    (the sign of a password with an unencoded ``/``, ``?`` or ``#``), a tab
    or line break.

    The error message never contains the password: the parts a misplaced
    password can end up in (port, path) are never quoted back, and the
    password itself is masked in whatever the message quotes.
    """
    try:
        return _parse(url)
    except ValueError as exc:
        raise ValueError(_mask_password(str(exc), url)) from None


def _mask_password(message: str, url: str) -> str:
    try:
        raw = urlsplit(url).password
    except ValueError:
        raw = None
    for secret in {raw, unquote(raw)} if raw else ():
        message = message.replace(secret, "***")
    return message


def _port(parts: SplitResult, scheme: str) -> int:
    try:
        port = parts.port
    except ValueError:
        port = -1  # not a number, or out of range: never quote it (a password may be in it)
    if port is None:
        return DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise ValueError(
            "AMQP URL port must be a number from 1 to 65535 (percent-encode any '/', '?', "
            "'#' or '@' in the user name or password)"
        )
    return port


def _parse(url: str) -> ConnectionParameters:
    if any(char in url for char in "\t\r\n"):
        # urlsplit silently deletes them (WHATWG rule), which could change a password.
        raise ValueError("AMQP URL contains a tab or line break")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("AMQP URL is malformed (host or brackets)") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"AMQP URL scheme must be amqp or amqps, not {parts.scheme!r}")
    if not url[len(parts.scheme) + 1 :].startswith("//"):
        raise ValueError(f"AMQP URL must start with {scheme}:// (the host part is missing)")
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # An unencoded '/', '?' or '#' in a password ends the host part early
        # and leaves the rest of the password in the path or query.
        raise ValueError(
            "AMQP URL has an '@' after the host: percent-encode '/', '?', '#' and '@' "
            "in the user name or password (and '@' in the vhost as %40)"
        )
    port = _port(parts, scheme)
    host = parts.hostname or "localhost"

    path = parts.path
    if path in ("", "/"):
        vhost = "/"
    else:
        raw = path[1:]
        if "/" in raw:
            raise ValueError(
                "AMQP URL path must be one segment, the vhost (write '/' in it as %2F)"
            )
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
            raise ValueError(
                f"unknown AMQP URL option {key!r} (known: heartbeat, connection_timeout, "
                "frame_max, channel_max, name)"
            )

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
