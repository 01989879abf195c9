"""The ``ess`` command: ``serve`` runs the service, the rest are tools (SPEC section 5).

Exit codes: 0 success, 1 runtime failure (e.g. the registry cannot be
opened), 2 usage or configuration error. Configuration errors print exactly
one line, ``ess: configuration error: <message>``, and nothing starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata

import trio

from ess.config import Config, ConfigError, load_config, redact_passwords
from ess.errors import StartupError
from ess.logging import configure_logging
from ess.tools.epilogs import LISTEN_EPILOG, PUBLISH_EPILOG, STREAMS_EPILOG

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
Event Stream Service: serves RabbitMQ stream queues to websocket clients,
managed by the Account Server over an internal HTTP API.

Configuration comes from ESS_* environment variables (see `ess serve --help`);
command-line flags override them."""

_SERVE_EPILOG = """\
environment variables (flags above override them):
  ESS_AMQP_URL (or ESS_AMPQ_URL)   broker URL(s), comma-separated for a cluster, default
                                   amqp://guest:guest@localhost:5672/
  ESS_INGRESS_LOCATION             host[:port] put into websocket locations (localhost:8080)
  ESS_INGRESS_SECURE               yes: locations use wss:// (no)
  ESS_DATABASE                     registry: a SQLite file (./data/event-streams.db)
                                   or a postgresql://user:password@host:port/db URL
  ESS_EXCHANGE                     direct exchange the Account Server publishes to
                                   (event-streams)
  ESS_STREAM_MAX_AGE               retention of created stream queues, e.g. 7D, 12h (7D)
  ESS_STREAM_MAX_LENGTH_BYTES      retention by size (1000000000)
  ESS_MESSAGE_STATS_INTERVAL       log connection stats every N messages (800)
  ESS_INTERNAL_TOKEN               if set, the internal API requires
                                   'Authorization: Bearer <token>'
  ESS_HOST, ESS_PUBLIC_PORT, ESS_INTERNAL_PORT   binds (0.0.0.0, 8080, 8081)
  ESS_LOG_LEVEL, ESS_LOG_FORMAT    DEBUG..CRITICAL (INFO); text or json (text)
  ESS_MAX_CONNECTIONS_PER_STREAM   websockets per stream, newest wins; 0 = unlimited (1)
  ESS_PREFETCH                     unacked events per connection (200)
  ESS_SEND_TIMEOUT                 close a client that reads nothing for N s (30)
  ESS_PING_INTERVAL, ESS_PING_TIMEOUT   websocket keepalive, seconds (20, 20)
  ESS_CLOSE_TIMEOUT                bound on a closing handshake, seconds (2)
  ESS_SHUTDOWN_GRACE               drain time on SIGTERM/SIGINT, seconds (10)
  ESS_AMQP_POOL_SIZE               AMQP connections shared by all consumers (2)
  ESS_REQUEST_TIMEOUT              seconds a client has to send a whole HTTP request or
                                   websocket handshake; then 408 or closed (30)
  ESS_KEEPALIVE_TIMEOUT            idle keep-alive HTTP connections are closed after N s (5)
  ESS_REPLICA_NAME                 this replica's name in /health, /metrics (<host>-<pid>)
  ESS_WORKERS                      worker processes sharing both ports (1: one process)

exit status: 0 after a clean shutdown, 1 if start-up fails, 2 for a bad
configuration value (reported on one line naming the variable)."""


def _version() -> str:
    try:
        return metadata.version("event-stream-service")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


@dataclass(frozen=True)
class _ServeFlag:
    """A ``serve`` flag: it overrides one config field, and workers get it again."""

    flag: str
    metavar: str
    help: str
    #: The :class:`~ess.config.Config` field it overrides, when not the flag's own name.
    field: str = ""

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def overrides(self) -> str:
        """The :class:`~ess.config.Config` field it overrides."""
        return self.field or self.dest


_SERVE_FLAGS = (
    _ServeFlag("--host", "ADDR", "bind address (ESS_HOST)"),
    _ServeFlag("--public-port", "PORT", "websocket port (ESS_PUBLIC_PORT)"),
    _ServeFlag("--internal-port", "PORT", "internal API port (ESS_INTERNAL_PORT)"),
    _ServeFlag(
        "--database", "PATH_OR_URL", "registry SQLite file or postgresql:// URL (ESS_DATABASE)"
    ),
    _ServeFlag(
        "--amqp-url",
        "URL",
        "broker URL, amqp[s]://user:password@host:port/vhost (ESS_AMQP_URL)",
        field="amqp_urls",
    ),
    _ServeFlag("--log-level", "LEVEL", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    _ServeFlag("--log-format", "FORMAT", "text or json (ESS_LOG_FORMAT)"),
    _ServeFlag(
        "--workers",
        "N",
        "N worker processes sharing both ports, under a parent that restarts them "
        "(ESS_WORKERS; default 1: one process, no parent)",
    ),
)


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the service (public websockets and internal API)",
        description="Run the service: public websockets on --public-port, the internal "
        "HTTP API on --internal-port, until SIGTERM or SIGINT.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Plain strings: ess.config validates them, so a bad flag gets the same
    # one-line message as a bad variable.
    for flag in _SERVE_FLAGS:
        serve.add_argument(flag.flag, dest=flag.dest, metavar=flag.metavar, help=flag.help)
    # Set by the parent of --workers N on the processes it starts (ess.workers).
    serve.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve)


def _add_listen(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listen = commands.add_parser(
        "listen",
        help="print the events of an event stream's websocket",
        description="Connect to an event stream's websocket and print its events, one per "
        "line, until the server closes the connection or you press Ctrl-C. Without a "
        "--from-* option, only events published after connecting are shown.",
        epilog=LISTEN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument(
        "location",
        help="the websocket location returned by POST /event-stream/, "
        "e.g. ws://localhost:8080/event-stream/<uuid>",
    )
    start = listen.add_mutually_exclusive_group()
    start.add_argument(
        "--from-ordinal",
        type=int,
        metavar="N",
        help="start after ordinal N (N=0: from the oldest event retained)",
    )
    start.add_argument(
        "--from-timestamp",
        type=int,
        metavar="MS",
        help="start at the first event at or after MS milliseconds since the epoch",
    )
    start.add_argument(
        "--from-datetime",
        metavar="ISO",
        help="start at an ISO 8601 date/time, e.g. 2024-05-01T12:00:00 (no zone = UTC)",
    )
    listen.add_argument(
        "--json", action="store_true", help="print each event as one JSON object per line"
    )
    listen.set_defaults(handler=_listen)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive integer"  # shown by argparse in its error
_positive_float.__name__ = "positive number"


def _add_publish(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        "publish",
        help="publish test events to the exchange (or a stream queue)",
        description="Publish test events as the Account Server would: to ESS_EXCHANGE with "
        "ROUTING_KEY (version 1 style) or, with --to-queue, straight into the stream "
        "queue named ROUTING_KEY (versions 2 and 3 style).",
        epilog=PUBLISH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    publish.add_argument("routing_key", metavar="ROUTING_KEY", help="the event stream's key")
    publish.add_argument(
        "message",
        nargs="?",
        metavar="MESSAGE",
        help="the event body, a JSON object or '<type>|<text>' (default: a generated "
        "JSON test event)",
    )
    publish.add_argument(
        "--count", type=_positive_int, default=1, metavar="N", help="events to send (1)"
    )
    publish.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="events per second (default: as fast as the broker confirms)",
    )
    publish.add_argument(
        "--to-queue",
        action="store_true",
        help="publish into the stream queue named ROUTING_KEY instead of the exchange",
    )
    publish.add_argument("--amqp-url", metavar="URL", help="broker URL (ESS_AMQP_URL)")
    publish.add_argument(
        "--exchange", metavar="NAME", help="the exchange to publish to (ESS_EXCHANGE)"
    )
    publish.set_defaults(handler=_publish)


def _add_streams(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--api",
        metavar="URL",
        help="internal API base URL (default: http://localhost:$ESS_INTERNAL_PORT)",
    )
    client.add_argument(
        "--token",
        metavar="T",
        help="bearer token (default: $ESS_INTERNAL_TOKEN; prefer the variable, "
        "arguments are visible to other users in ps)",
    )
    streams = commands.add_parser(
        "streams",
        help="list, create or delete event streams through the internal API",
        description="Manage event streams through a running service's internal API, "
        "as the Account Server does.",
        epilog=STREAMS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = streams.add_subparsers(title="actions", dest="action", metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[client], help="list every event stream (id, routing key, location)"
    )
    listing.set_defaults(handler=_streams)
    create = actions.add_parser(
        "create", parents=[client], help="create an event stream; prints its id and location"
    )
    create.add_argument(
        "routing_key", metavar="ROUTING_KEY", help="the key the Account Server publishes with"
    )
    create.set_defaults(handler=_streams)
    delete = actions.add_parser(
        "delete", parents=[client], help="delete an event stream, closing its websockets"
    )
    delete.add_argument("id", type=int, metavar="ID", help="the event stream's id")
    delete.set_defaults(handler=_streams)
    streams.set_defaults(handler=lambda args, environ: _usage(streams))


def build_parser() -> argparse.ArgumentParser:
    """The whole ``ess`` command line (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="ess",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    _add_serve(commands)
    _add_listen(commands)
    _add_publish(commands)
    _add_streams(commands)
    parser.set_defaults(handler=lambda args, environ: _usage(parser))
    return parser


# --------------------------------------------------------------------------- #
# Handlers: (args, environ) -> exit code


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _config_error(exc: ConfigError) -> int:
    print(f"ess: configuration error: {exc}", file=sys.stderr)
    return 2


def _find_startup_error(exc: BaseException) -> StartupError | None:
    """A StartupError, possibly inside (nested) exception groups from nurseries."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_startup_error(inner)
            if found is not None:
                return found
    return None


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line of a worker: this ``serve`` with the same flags, as a worker."""
    argv = [sys.executable, "-m", "ess", "serve"]
    for flag in _SERVE_FLAGS:
        value = getattr(args, flag.dest)
        if value is not None:
            argv += [flag.flag, value]
    return [*argv, "--as-worker"]


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    overrides = {flag.overrides: getattr(args, flag.dest) for flag in _SERVE_FLAGS}
    try:
        config = load_config(environ, overrides)
    except ConfigError as exc:
        return _config_error(exc)
    # JSON lines always name the replica; text lines when several share a log.
    shared = config.log_format == "json" or config.workers > 1 or args.as_worker
    configure_logging(
        config.log_level, config.log_format, replica=config.replica_name if shared else None
    )

    if config.workers > 1 and not args.as_worker:
        from ess import workers

        command = workers.WorkerCommand(_worker_argv(args), environ)
        return workers.run_parent(config, command)

    # Imported here: it pulls in the whole service (Quart, Hypercorn, the actors),
    # which the tools and --help do not need.
    from ess import service, workers

    try:
        if args.as_worker:
            code = trio.run(workers.serve_as_worker, config)
        else:
            code = trio.run(service.serve, config)
    except KeyboardInterrupt:  # the service handles SIGINT itself; belt and braces
        return 130
    except BaseException as exc:
        startup = _find_startup_error(exc)
        if startup is None:
            raise
        # One line whatever the adapter said (database drivers like
        # multi-line messages), and never a URL's password.
        line = " ".join(redact_passwords(str(startup)).split())
        print(f"ess: cannot start: {line}", file=sys.stderr)
        return 1
    return code


def _tool_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    return load_config(
        environ,
        {
            "amqp_urls": getattr(args, "amqp_url", None),
            "exchange": getattr(args, "exchange", None),
        },
    )


def _listen(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ess import tools

    return tools.listen(
        args.location,
        from_ordinal=args.from_ordinal,
        from_timestamp=args.from_timestamp,
        from_datetime=args.from_datetime,
        as_json=args.json,
    )


def _publish(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ess import tools

    try:
        config = _tool_config(args, environ)
    except ConfigError as exc:
        return _config_error(exc)
    return tools.publish(
        config,
        args.routing_key,
        args.message,
        count=args.count,
        rate=args.rate,
        to_queue=args.to_queue,
    )


def _api_and_token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str | None]:
    config = _tool_config(args, environ)
    api = args.api or f"http://localhost:{config.internal_port}"
    token = args.token or config.internal_token
    return api.rstrip("/"), token


def _streams(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``ess streams ACTION``: resolve the API and token once, then call the action."""
    from ess import tools

    try:
        api, token = _api_and_token(args, environ)
    except ConfigError as exc:
        return _config_error(exc)
    match args.action:
        case "create":
            return tools.streams_create(api, token, args.routing_key)
        case "delete":
            return tools.streams_delete(api, token, args.id)
        case _:
            return tools.streams_list(api, token)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``ess`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args, os.environ if environ is None else environ)
    return code
