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
from typing import Final, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
#: The query options :func:`parse_url` knows (``connection_name`` is ``name``'s alias).
OPTIONS: Final = ("heartbeat", "connection_timeout", "frame_max", "channel_max", "name")

#: Which part of a URL :func:`parse_url` refused (``text``: the URL as a whole).
Problem = Literal["text", "scheme", "host", "port", "path", "option", "value"]


class InvalidURL(ValueError):
    """A URL :func:`parse_url` refuses.

    ``problem`` says which part is wrong, so a caller (the configuration)
    can word the refusal its own way without parsing the URL a second time;
    ``option`` is the unknown option's name when ``problem`` is ``"option"``.
    """

    def __init__(self, message: str, problem: Problem, option: str | None = None) -> None:
        super().__init__(message)
        self.problem: Problem = problem
        self.option = option


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
        raise InvalidURL(f"URL option {name}={value!r} is not a number", "value") from None
    if not math.isfinite(number) or number < 0:
        raise InvalidURL(f"URL option {name}={value!r} must be a finite number >= 0", "value")
    return number


def _bounded_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidURL(f"URL option {name}={value!r} is not an integer", "value") from None
    if not low <= number <= high:
        raise InvalidURL(f"URL option {name}={value!r} must be between {low} and {high}", "value")
    return number


def parse_url(url: str, *, require_host: bool = False) -> ConnectionParameters:
    """Parse an AMQP URL; raise :class:`InvalidURL` naming what is wrong.

    Query options: ``heartbeat`` (seconds, 0 disables), ``connection_timeout``
    (seconds), ``frame_max`` (bytes, at least 4096), ``channel_max``, and
    ``name`` (the connection name shown by the broker's management tools).
    Refused: another scheme than ``amqp``/``amqps``, no ``//`` authority, a
    port that is not a number from 1 to 65535, a path of more than one
    segment, an unknown option, a bad option value, an ``@`` after the host
    (the sign of a password with an unencoded ``/``, ``?`` or ``#``), a tab
    or line break. With ``require_host``, a URL without a host (``amqp://``,
    which means ``localhost``) is refused too.

    The error message never contains the password: the parts a misplaced
    password can end up in (port, path) are never quoted back, and the
    password itself is masked in whatever the message quotes.
    """
    try:
        return _parse(url, require_host)
    except InvalidURL as exc:
        raise InvalidURL(_mask_password(str(exc), url), exc.problem, exc.option) from None


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
        raise InvalidURL(
            "AMQP URL port must be a number from 1 to 65535 (percent-encode any '/', '?', "
            "'#' or '@' in the user name or password)",
            "port",
        )
    return port


def _parse(url: str, require_host: bool) -> ConnectionParameters:
    if any(char in url for char in "\t\r\n"):
        # urlsplit silently deletes them (WHATWG rule), which could change a password.
        raise InvalidURL("AMQP URL contains a tab or line break", "text")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidURL("AMQP URL is malformed (host or brackets)", "text") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURL(f"AMQP URL scheme must be amqp or amqps, not {parts.scheme!r}", "scheme")
    if not url[len(parts.scheme) + 1 :].startswith("//"):
        raise InvalidURL(f"AMQP URL must start with {scheme}:// (the host part is missing)", "host")
    if "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        # An unencoded '/', '?' or '#' in a password ends the host part early
        # and leaves the rest of the password in the path or query.
        raise InvalidURL(
            "AMQP URL has an '@' after the host: percent-encode '/', '?', '#' and '@' "
            "in the user name or password (and '@' in the vhost as %40)",
            "text",
        )
    port = _port(parts, scheme)
    if require_host and not parts.hostname:
        raise InvalidURL("AMQP URL has no host", "host")
    host = parts.hostname or "localhost"

    path = parts.path
    if path in ("", "/"):
        vhost = "/"
    else:
        raw = path[1:]
        if "/" in raw:
            raise InvalidURL(
                "AMQP URL path must be one segment, the vhost (write '/' in it as %2F)", "path"
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
            raise InvalidURL(
                f"unknown AMQP URL option {key!r} (known: {', '.join(OPTIONS)})", "option", key
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
