"""The service's configuration, read once at start-up from the environment.

SPEC section 1 lists the variables; the upstream (FastAPI) service's names are
honoured so an existing deployment can switch images without edits:

=================================  ==================================  =========================
variable                           default                             field
=================================  ==================================  =========================
``ESS_AMQP_URL`` [#a]_             ``amqp://guest:guest@localhost:5672/``  ``amqp_url``
``ESS_INGRESS_LOCATION``           ``localhost:8080``                  ``ingress_location``
``ESS_INGRESS_SECURE``             ``no``                              ``ingress_secure``
``ESS_DATABASE`` [#d]_             ``./data/event-streams.db``         ``database``
``ESS_EXCHANGE``                   ``event-streams``                   ``exchange``
``ESS_STREAM_MAX_AGE``             ``7D``                              ``stream_max_age``
``ESS_STREAM_MAX_LENGTH_BYTES``    ``1000000000``                      ``stream_max_length_bytes``
``ESS_MESSAGE_STATS_INTERVAL``     ``800``                             ``message_stats_interval``
``ESS_INTERNAL_TOKEN``             unset                               ``internal_token``
``ESS_PUBLIC_PORT``                ``8080``                            ``public_port``
``ESS_INTERNAL_PORT``              ``8081``                            ``internal_port``
``ESS_HOST``                       ``0.0.0.0``                         ``host``
``ESS_LOG_LEVEL``                  ``INFO``                            ``log_level``
``ESS_LOG_FORMAT``                 ``text``                            ``log_format``
=================================  ==================================  =========================

.. [#a] Also read: ``ESS_AMPQ_URL`` (the upstream's spelling), used only when
   ``ESS_AMQP_URL`` is unset or empty. Either may list several URLs separated
   by commas (the nodes of a cluster, tried in turn: SPEC section 7); each is
   validated with :func:`amqp.parse_url` and kept, in order, in
   ``amqp_urls``.
.. [#d] A SQLite file path, or a ``postgresql://`` (or ``postgres://``) URL
   (SPEC section 7): a :class:`~pathlib.Path` for a file, the URL text (a
   ``str``) for PostgreSQL.

Variables of our own, the actor tunables (:class:`actors.settings.ActorSettings`):

====================================  =======  ====================================================
variable                              default  meaning
====================================  =======  ====================================================
``ESS_MAX_CONNECTIONS_PER_STREAM``    ``1``    websockets per event stream, the newest wins
                                               (older ones are closed with 4001); ``0`` = unlimited
``ESS_PREFETCH``                      ``200``  unacked events per connection (1-65535, the
                                               ``basic.qos`` field is 16 bits)
``ESS_SEND_TIMEOUT``                  ``30``   seconds a client may not read before it is closed
``ESS_PING_INTERVAL``                 ``20``   seconds between keepalive pings
``ESS_PING_TIMEOUT``                  ``20``   seconds to wait for the pong
``ESS_CLOSE_TIMEOUT``                 ``2``    seconds a closing handshake may take
``ESS_SHUTDOWN_GRACE``                ``10``   seconds SIGTERM/SIGINT waits for connections to drain
``ESS_AMQP_POOL_SIZE``                ``2``    AMQP connections shared by all consumers
``ESS_REQUEST_TIMEOUT``               ``30``   seconds a client has to send a whole HTTP request
                                               (head and body) or websocket handshake
``ESS_KEEPALIVE_TIMEOUT``             ``5``    seconds an idle keep-alive HTTP connection is kept
``ESS_REPLICA_NAME``                  [#r]_    how this replica names itself (health, metrics)
``ESS_WORKERS``                       ``1``    worker processes sharing both ports (1-64); 1 is
                                               today's single process, no parent (SPEC section 7)
====================================  =======  ====================================================

.. [#r] Default: the host name and the process id, ``<host>-<pid>``.

Rules shared by every variable: surrounding whitespace is ignored and an empty
value counts as unset (so ``ESS_X=`` in a compose file means "the default").
A bad value raises :class:`ConfigError`, whose text is one line naming the
variable, the value (never a secret: the token and URL passwords are masked)
and what was expected; the service refuses to start rather than run
half-configured (SPEC section 1).

CLI flags override the environment through ``overrides``, keyed by field name;
an override's error names the flag (``--public-port``) instead of a variable.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, TypeVar, cast
from urllib.parse import urlsplit

from actors.settings import ActorSettings
from amqp import InvalidURL, parse_url
from amqp.url import OPTIONS as AMQP_URL_OPTIONS

_ACTOR_DEFAULTS = ActorSettings()

__all__ = [
    "Config",
    "ConfigError",
    "default_replica_name",
    "load_config",
    "redact_passwords",
    "redact_url",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LogFormat = Literal["text", "json"]
DATABASE_URL_SCHEMES = ("postgresql", "postgres")
#: More worker processes than this on one host is a typo, not a deployment.
MAX_WORKERS = 64

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration value is unusable; ``str()`` is one line for the operator."""


@dataclass(frozen=True, slots=True, repr=False)
class Config:
    """Everything ``ess serve`` needs, validated; build it with :func:`load_config`."""

    amqp_urls: tuple[str, ...] = (DEFAULT_AMQP_URL,)
    ingress_location: str = "localhost:8080"
    ingress_secure: bool = False
    #: A SQLite file (a :class:`Path`) or a ``postgresql://`` URL (the text given).
    database: Path | str = Path("./data/event-streams.db")
    exchange: str = "event-streams"
    stream_max_age: str = "7D"
    stream_max_length_bytes: int = 1_000_000_000
    message_stats_interval: int = _ACTOR_DEFAULTS.stats_interval
    internal_token: str | None = None
    public_port: int = 8080
    internal_port: int = 8081
    host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    # Actor tunables (variables of our own, see the module docstring); their
    # defaults are ActorSettings' own, written down once.
    max_connections_per_stream: int = _ACTOR_DEFAULTS.max_connections_per_stream
    prefetch: int = _ACTOR_DEFAULTS.prefetch
    send_timeout: float = _ACTOR_DEFAULTS.send_timeout
    ping_interval: float = _ACTOR_DEFAULTS.ping_interval
    ping_timeout: float = _ACTOR_DEFAULTS.ping_timeout
    close_timeout: float = _ACTOR_DEFAULTS.close_timeout
    shutdown_grace: float = 10.0
    amqp_pool_size: int = 2
    request_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    replica_name: str = field(default_factory=lambda: default_replica_name())
    #: Processes serving both ports (:mod:`ess.workers`); 1 = one process, no parent.
    workers: int = 1

    def __repr__(self) -> str:
        # The default repr would print the token and the broker password into
        # any log line or traceback that shows the config.
        shown: list[str] = []
        for f in fields(self):
            value: object = getattr(self, f.name)
            if f.name == "internal_token" and value is not None:
                value = "***"
            elif f.name == "amqp_urls":
                value = tuple(redact_url(url) for url in self.amqp_urls)
            elif f.name == "database":
                value = redact_url(str(self.database))
            shown.append(f"{f.name}={value!r}")
        return f"Config({', '.join(shown)})"

    @property
    def amqp_url(self) -> str:
        """The first broker URL: the one tools (``ess publish``) and a single broker use."""
        return self.amqp_urls[0]

    def actor_settings(self) -> ActorSettings:
        """The actor tree's tunables; backoff keeps ActorSettings' defaults."""
        return ActorSettings(
            max_connections_per_stream=self.max_connections_per_stream,
            prefetch=self.prefetch,
            send_timeout=self.send_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            stats_interval=self.message_stats_interval,
        )


def default_replica_name() -> str:
    """``<host name>-<pid>``: unique among the replicas of one host, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- #
# Redaction


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to log or print.

    Deliberately not built on ``urlsplit``: it must also mask URLs too broken
    to parse, and it errs on the side of masking (everything between ``:``
    after the user name and the *last* ``@``).
    """
    scheme_end = url.find("://")
    if scheme_end < 0:
        return url
    start = scheme_end + 3
    at = url.rfind("@", start)
    if at < 0:
        return url
    userinfo = url[start:at]
    colon = userinfo.find(":")
    if colon < 0:
        return url
    return f"{url[: start + colon + 1]}***{url[at:]}"


_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@")


def redact_passwords(text: str) -> str:
    """``text`` (say, a driver's error message) with the password of every URL in it masked."""
    return _URL_PASSWORD.sub(r"\1***@", text)


# --------------------------------------------------------------------------- #
# Parsers: each takes the stripped text and returns the value or raises
# _Invalid(reason, expected). The caller adds the variable name and value.


class _Invalid(Exception):
    def __init__(self, reason: str, expected: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected


_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_MAX_AGE_RE = re.compile(r"([0-9]+)([YMDhms])", re.ASCII)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_BOOLS = {
    "yes": True,
    "true": True,
    "1": True,
    "on": True,
    "no": False,
    "false": False,
    "0": False,
    "off": False,
}


def _int_in(low: int, high: int | None, what: str, expected: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        # int() alone would also take "1_000", " 5" or non-ASCII digits.
        if not _INT_RE.fullmatch(text):
            raise _Invalid(f"is not a valid {what}", expected)
        value = int(text)
        if value < low or (high is not None and value > high):
            raise _Invalid(f"is out of range for a {what}", expected)
        return value

    return parse


def _positive_seconds(text: str) -> float:
    expected = "a number of seconds greater than 0, e.g. 30 or 2.5"
    try:
        value = float(text)
    except ValueError:
        raise _Invalid("is not a valid duration", expected) from None
    if not math.isfinite(value) or value <= 0:
        raise _Invalid("is not a valid duration", expected)
    return value


def _bool(text: str) -> bool:
    try:
        return _BOOLS[text.lower()]
    except KeyError:
        raise _Invalid("is not a valid boolean", "yes/no, true/false, on/off or 1/0") from None


def _amqp_urls(text: str) -> tuple[str, ...]:
    """One URL or several separated by commas (tried in turn), each validated."""
    urls = tuple(part.strip() for part in text.split(","))
    if not all(urls):
        raise _Invalid("has an empty entry in its list", "comma-separated amqp[s]:// URLs")
    for url in urls:
        _one_amqp_url(url)
    return urls


_AMQP_URL_FORM = "amqp://user:password@host:port/vhost or amqps://..."
#: How each kind of refusal by :func:`amqp.parse_url` is worded here: (reason, expected).
_AMQP_URL_REFUSALS: dict[str, tuple[str, str]] = {
    "scheme": ("is not an AMQP URL (the scheme must be amqp or amqps)", _AMQP_URL_FORM),
    "host": ("is not a valid AMQP URL (it has no host)", _AMQP_URL_FORM),
    "port": ("has an invalid port", "a port 1-65535"),
    "path": ("has a path of more than one segment", "one segment, the vhost (write '/' as %2F)"),
}


def _one_amqp_url(url: str) -> None:
    """Validate with :func:`amqp.parse_url`, the parser the broker adapter uses.

    A host is required here (``amqp://`` alone would mean localhost), so a
    bad value stops start-up rather than the first connection. Messages never
    contain the URL (the caller prints it redacted; parse_url masks the password).
    """
    try:
        parse_url(url, require_host=True)
    except InvalidURL as error:
        if error.problem == "option":
            raise _Invalid(
                f"has an unknown option {error.option!r}",
                "options among " + ", ".join(AMQP_URL_OPTIONS),
            ) from None
        reason, expected = _AMQP_URL_REFUSALS.get(
            error.problem, (f"is not a valid AMQP URL ({error})", _AMQP_URL_FORM)
        )
        raise _Invalid(reason, expected) from None


def _ingress_location(text: str) -> str:
    expected = "host[:port], e.g. ess.example.com or localhost:8080 (no scheme)"
    if "://" in text:
        raise _Invalid("must not include a scheme (ESS_INGRESS_SECURE chooses ws or wss)", expected)
    if any(c in text for c in "?# ") or _CONTROL_RE.search(text):
        raise _Invalid("is not a valid host[:port]", expected)
    # A path prefix (host/prefix) is tolerated for ingresses that route by path.
    return text.rstrip("/")


def _exchange(text: str) -> str:
    expected = "a name of 1-255 UTF-8 bytes without control characters, not starting with amq."
    if len(text.encode("utf-8", "surrogatepass")) > 255:
        raise _Invalid("is too long for an exchange name", expected)
    if _CONTROL_RE.search(text):
        raise _Invalid("contains control characters", expected)
    if text.startswith("amq."):
        raise _Invalid("is reserved by RabbitMQ (amq. prefix)", expected)
    return text


def _max_age(text: str) -> str:
    # RabbitMQ's x-max-age: an integer and a unit, case-sensitive (M is months,
    # m is minutes). RabbitMQ would reject anything else when we declare the
    # first stream, long after start-up; catch it here instead.
    match = _MAX_AGE_RE.fullmatch(text)
    if not match or int(match.group(1)) == 0:
        raise _Invalid(
            "is not a valid stream max age",
            "a positive integer followed by one of Y M D h m s, e.g. 7D or 12h",
        )
    return text


def _host(text: str) -> str:
    if any(c.isspace() for c in text) or _CONTROL_RE.search(text):
        raise _Invalid("is not a valid bind address", "a host name or IP address, e.g. 0.0.0.0")
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise _Invalid("is not a valid log level", "one of " + ", ".join(LOG_LEVELS))
    return level


def _log_format(text: str) -> LogFormat:
    fmt = text.lower()
    if fmt not in ("text", "json"):
        raise _Invalid("is not a valid log format", "text or json")
    return cast(LogFormat, fmt)


def _database(text: str) -> Path | str:
    """A SQLite path, or a PostgreSQL URL whose shape (scheme, host, port) is checked.

    Only the shape: whether the server answers is the registry's business at
    open. Reasons never include the URL (the caller prints it redacted).
    """
    if "\x00" in text:
        raise _Invalid("is not a valid file path", "a path to the registry SQLite file")
    scheme, sep, _ = text.partition("://")
    if not sep:
        return Path(text)
    expected = "a SQLite file path or postgresql://user:password@host:port/database"
    if scheme.lower() not in DATABASE_URL_SCHEMES:
        raise _Invalid("is not a PostgreSQL URL (the scheme must be postgresql)", expected)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise _Invalid("has an invalid port", expected) from None
    if not parts.hostname:
        raise _Invalid("is not a valid PostgreSQL URL (it has no host)", expected)
    if port == 0:
        raise _Invalid("has an invalid port", expected)
    return text


def _replica_name(text: str) -> str:
    # It goes into Prometheus label values and log lines: keep it printable.
    if len(text) > 200 or _CONTROL_RE.search(text):
        raise _Invalid(
            "is not a valid replica name", "up to 200 characters without control characters"
        )
    return text


def _token(text: str) -> str:
    # It travels in "Authorization: Bearer <token>"; whitespace or control
    # characters there would make it impossible to present.
    if any(c.isspace() for c in text) or _CONTROL_RE.search(text):
        raise _Invalid(
            "contains whitespace or control characters",
            "a token usable in an 'Authorization: Bearer' header",
        )
    return text


_port = _int_in(1, 65535, "port", "an integer 1-65535")
_positive_int = _int_in(1, None, "positive integer", "an integer greater than 0")
_connection_limit = _int_in(0, None, "connection limit", "an integer >= 0 (0 = unlimited)")
_prefetch = _int_in(1, 65535, "prefetch count", "an integer 1-65535")
_pool_size = _int_in(1, 1000, "pool size", "an integer 1-1000")

#: How to read each field: its variable(s), its parser, whether it is secret.
_SPEC: dict[str, tuple[tuple[str, ...], Callable[[str], object], bool]] = {
    "amqp_urls": (("ESS_AMQP_URL", "ESS_AMPQ_URL"), _amqp_urls, False),
    "ingress_location": (("ESS_INGRESS_LOCATION",), _ingress_location, False),
    "ingress_secure": (("ESS_INGRESS_SECURE",), _bool, False),
    "database": (("ESS_DATABASE",), _database, False),
    "exchange": (("ESS_EXCHANGE",), _exchange, False),
    "stream_max_age": (("ESS_STREAM_MAX_AGE",), _max_age, False),
    "stream_max_length_bytes": (("ESS_STREAM_MAX_LENGTH_BYTES",), _positive_int, False),
    "message_stats_interval": (("ESS_MESSAGE_STATS_INTERVAL",), _positive_int, False),
    "internal_token": (("ESS_INTERNAL_TOKEN",), _token, True),
    "public_port": (("ESS_PUBLIC_PORT",), _port, False),
    "internal_port": (("ESS_INTERNAL_PORT",), _port, False),
    "host": (("ESS_HOST",), _host, False),
    "log_level": (("ESS_LOG_LEVEL",), _log_level, False),
    "log_format": (("ESS_LOG_FORMAT",), _log_format, False),
    "max_connections_per_stream": (("ESS_MAX_CONNECTIONS_PER_STREAM",), _connection_limit, False),
    "prefetch": (("ESS_PREFETCH",), _prefetch, False),
    "send_timeout": (("ESS_SEND_TIMEOUT",), _positive_seconds, False),
    "ping_interval": (("ESS_PING_INTERVAL",), _positive_seconds, False),
    "ping_timeout": (("ESS_PING_TIMEOUT",), _positive_seconds, False),
    "close_timeout": (("ESS_CLOSE_TIMEOUT",), _positive_seconds, False),
    "shutdown_grace": (("ESS_SHUTDOWN_GRACE",), _positive_seconds, False),
    "amqp_pool_size": (("ESS_AMQP_POOL_SIZE",), _pool_size, False),
    "request_timeout": (("ESS_REQUEST_TIMEOUT",), _positive_seconds, False),
    "keepalive_timeout": (("ESS_KEEPALIVE_TIMEOUT",), _positive_seconds, False),
    "replica_name": (("ESS_REPLICA_NAME",), _replica_name, False),
    "workers": (
        ("ESS_WORKERS",),
        _int_in(1, MAX_WORKERS, "worker count", f"an integer 1-{MAX_WORKERS}"),
        False,
    ),
}
#: Flags whose name is not ``--`` + the field name.
_FLAGS = {"amqp_urls": "--amqp-url"}


def _shown(name: str, text: str, secret: bool) -> str:
    if secret:
        return "<redacted>"
    if name in ("amqp_urls", "database"):
        return repr(redact_url(text))
    return repr(text)  # repr keeps the message on one line whatever the value


def _parse(field_name: str, source: str, text: str) -> object:
    _, parser, secret = _SPEC[field_name]
    try:
        return parser(text)
    except _Invalid as exc:
        raise ConfigError(
            f"{source}={_shown(field_name, text, secret)} {exc.reason} (expected {exc.expected})"
        ) from None


def _from_environ(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-blank value, as (name, stripped value)."""
    for name in names:
        text = environ.get(name, "").strip()
        if text:
            return name, text
    return None


def load_config(
    environ: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Read and validate the whole configuration, or raise :class:`ConfigError`.

    ``overrides`` maps field names to values from CLI flags; ``None`` values
    are ignored (an unset flag), others go through the same validation as the
    environment (via ``str()``), so ``--public-port 0`` fails like
    ``ESS_PUBLIC_PORT=0`` would.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_SPEC))
    if unknown:
        raise TypeError(f"unknown configuration field(s): {', '.join(unknown)}")

    values: dict[str, object] = {}
    for field_name, (names, _, _) in _SPEC.items():
        override = overrides.get(field_name)
        if override is not None:
            source = _FLAGS.get(field_name, "--" + field_name.replace("_", "-"))
            text = str(override).strip()
            if not text and field_name != "internal_token":
                raise ConfigError(f"{source} must not be empty")
            if text:
                values[field_name] = _parse(field_name, source, text)
            else:
                values[field_name] = None
            continue
        found = _from_environ(environ, names)
        if found is not None:
            values[field_name] = _parse(field_name, *found)
    return Config(**values)  # type: ignore[arg-type]
