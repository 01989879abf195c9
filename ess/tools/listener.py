"""``ess listen``: print the events of one event stream's websocket, surviving drops.

The listener is a person's window on a stream, so it has two jobs beyond
printing: it must never show an event twice or silently skip one when the
network hiccups, and it must stop for good when the *server* says the stream
is over. SPEC section 4 gives it what it needs for both: every event carries
its ordinal (``ess_ordinal`` in JSON, ``|ordinal: N|timestamp: T`` appended
to text), and reconnecting with ``stream_from_ordinal=<last seen>`` resumes
right after it; deliberate closes have codes of their own.

The pure parts (frame parsing, line formatting, URLs, close policy) are
plain functions so they can be tested without sockets; :func:`run_listener`
is the loop that connects, prints and reconnects, pausing between attempts
with the service's one retry schedule (:class:`actors.backoff.Backoff`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import unicodedata
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import partial
from typing import Any, Protocol, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from actors.backoff import Backoff, BackoffPolicy

__all__ = [
    "RECONNECT_BACKOFF",
    "CloseAction",
    "Event",
    "close_action",
    "event_line",
    "format_timestamp",
    "listen",
    "parse_frame",
    "resume_query",
    "run_listener",
    "start_query",
    "with_query",
]

#: Read from the socket in large chunks: a replay can deliver tens of
#: thousands of events a second, and trio-websocket's 4 KiB default would
#: cost one system call per small event.
RECEIVE_BUFFER_SIZE = 256 * 1024
#: Events are whatever the Account Server publishes; do not close on big ones
#: (trio-websocket's default limit is 1 MiB, after which it closes with 1009).
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
#: A closing handshake on a dead connection must not hold up the reconnect.
DISCONNECT_TIMEOUT = 2.0
#: Client-side keepalive: a connection whose peer vanished without a FIN (a
#: dropped NAT entry, a suspended laptop) is otherwise never noticed by a
#: client that only reads.
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
#: Reconnect pauses: growing to 10 s, shortened by up to a fifth at random so
#: the listeners that lost their connection in the same restart of the
#: service spread out. Reset after a connection that printed something.
RECONNECT_BACKOFF = BackoffPolicy(initial=0.5, maximum=10.0, jitter=0.2)

#: The ``stream_from_*`` query parameters of SPEC section 4; a reconnect
#: replaces whichever the location or the options carried.
STREAM_FROM_PARAMETERS = ("stream_from_ordinal", "stream_from_timestamp", "stream_from_datetime")

_TEXT_SUFFIX_RE = re.compile(r"\|ordinal: ([0-9]+)\|timestamp: (-?[0-9]+)\Z")
_LINE_BREAKS_RE = re.compile(r"[ \t]*[\r\n]+[ \t]*")

PROG = "ess listen"


# --------------------------------------------------------------------------- #
# Frames and lines


@dataclass(frozen=True, slots=True)
class Event:
    """One websocket frame as the listener understands it.

    ``body`` is what remains for a person to read once the service's own
    additions (ordinal, timestamp) and, for text events, the type are taken
    out, since those are shown in columns of their own.
    """

    type: str
    ordinal: int | None
    timestamp_ms: int | None
    body: str


def _int_field(value: object) -> int | None:
    # bool is an int subclass; a JSON ``true`` is not an ordinal.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_frame(text: str) -> Event:
    """Split a frame into type, ordinal, timestamp and body (SPEC section 4).

    A frame starting with ``{`` that parses as a JSON object is a JSON event
    (ordinal in ``ess_ordinal``, timestamp in ``ess_timestamp``); its type is
    its ``type`` or ``message_type`` string field if it has one, else
    ``json``. Anything else is a text event, normally ``<type>|<protobuf
    text>`` with ``|ordinal: N|timestamp: T`` appended. A frame without an
    ordinal (not from this service, or not in its format) is still shown,
    with ``ordinal`` ``None``.
    """
    if text.startswith("{"):
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            ordinal = _int_field(parsed.pop("ess_ordinal", None))
            timestamp = _int_field(parsed.pop("ess_timestamp", None))
            kind = next(
                (
                    value
                    for key in ("type", "message_type")
                    if isinstance(value := parsed.get(key), str) and value
                ),
                "json",
            )
            body = json.dumps(parsed, ensure_ascii=False)
            return Event(type=kind, ordinal=ordinal, timestamp_ms=timestamp, body=body)

    ordinal = timestamp = None
    match = _TEXT_SUFFIX_RE.search(text)
    if match:
        ordinal, timestamp = int(match.group(1)), int(match.group(2))
        text = text[: match.start()]
    kind, bar, rest = text.partition("|")
    if not bar:
        kind, rest = "text", text
    return Event(type=kind or "text", ordinal=ordinal, timestamp_ms=timestamp, body=rest)


def format_timestamp(timestamp_ms: int | None) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC (``2024-05-01T12:00:00.123Z``)."""
    if timestamp_ms is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):  # far outside what datetime can hold
        return str(timestamp_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _printable(text: str) -> str:
    """``text`` with control characters escaped.

    Event bodies come from elsewhere; printed raw, an escape sequence in one
    could rewrite the user's terminal (or hide lines). Escaping also keeps
    every event on exactly one line.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch == "\t":
        return "\\t"
    if unicodedata.category(ch) == "Zs":  # unusual spaces (NBSP...) are harmless
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def event_line(event: Event) -> str:
    """One readable line: ``#<ordinal> <ISO time> <type> <body>``.

    Multi-line protobuf text is folded onto one line (in the protobuf text
    format a line break is only whitespace between fields), so one event is
    always one line for ``grep`` and friends.
    """
    ordinal = "?" if event.ordinal is None else str(event.ordinal)
    body = _LINE_BREAKS_RE.sub(" ", event.body).strip()
    line = f"#{ordinal} {format_timestamp(event.timestamp_ms)} {event.type} {body}"
    return _printable(line.rstrip())


# --------------------------------------------------------------------------- #
# URLs


def start_query(
    *,
    from_ordinal: int | None = None,
    from_timestamp: int | None = None,
    from_datetime: str | None = None,
) -> dict[str, str]:
    """The ``stream_from_*`` parameter for the chosen start (empty: live tail).

    Values are passed through unvalidated: the service is the authority on
    what it accepts and closes with 1002 naming the parameter otherwise.
    """
    chosen = {
        name: str(value)
        for name, value in zip(
            STREAM_FROM_PARAMETERS, (from_ordinal, from_timestamp, from_datetime), strict=True
        )
        if value is not None
    }
    if len(chosen) > 1:
        raise ValueError("at most one of from_ordinal, from_timestamp, from_datetime")
    return chosen


def resume_query(initial: Mapping[str, str], last_ordinal: int | None) -> dict[str, str]:
    """Where a (re)connection starts: after the last printed ordinal if any.

    Before anything was printed, the original start still applies (a live
    tail stays a live tail: with no ordinal seen there is nothing to resume
    from).
    """
    if last_ordinal is None:
        return dict(initial)
    return {"stream_from_ordinal": str(last_ordinal)}


def with_query(location: str, query: Mapping[str, str]) -> str:
    """``location`` with its ``stream_from_*`` parameters replaced by ``query``.

    Other parameters of the location are kept; values are percent-encoded
    (an ISO date/time with ``+01:00`` would otherwise arrive as a space).
    """
    parts = urlsplit(location)
    kept = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name not in STREAM_FROM_PARAMETERS
    ]
    return urlunsplit(parts._replace(query=urlencode([*kept, *query.items()])))


def check_location(location: str) -> str | None:
    """Why ``location`` cannot be a websocket location, or ``None`` if it can."""
    parts = urlsplit(location)
    if parts.scheme not in ("ws", "wss"):
        return "the location must start with ws:// or wss://"
    if not parts.hostname:
        return "the location has no host"
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not 0-65535
    except ValueError:
        return "the location has an invalid port"
    return None


# --------------------------------------------------------------------------- #
# Policy


class CloseAction(Enum):
    """What the listener does when the server closes the connection."""

    DONE = "done"  # a deliberate, normal end: exit 0
    FAIL = "fail"  # a deliberate refusal: exit non-zero, reconnecting would not help
    RECONNECT = "reconnect"


#: Closes that mean "this request is wrong": retrying it would get the same.
_REFUSALS = frozenset({1002, 1003, 1007, 1008, 1009, 1010})


def close_action(code: int | None) -> CloseAction:
    """Map a close code to the listener's reaction (SPEC section 4).

    1000 is the service's deliberate end (stream deleted, unknown stream,
    ``POISON``); 1002 a bad parameter and 4xxx the service's own codes (4001:
    a newer connection took over; reconnecting would take it back, and the
    two would evict each other forever). Everything else (1001 shutting
    down, 1006 dropped, 1011, 1012, 1013 try again later, no code) is a
    connection problem worth retrying.
    """
    if code == 1000:
        return CloseAction.DONE
    if code is not None and (code in _REFUSALS or 4000 <= code <= 4999):
        return CloseAction.FAIL
    return CloseAction.RECONNECT


# --------------------------------------------------------------------------- #
# The loop


class Connect(Protocol):
    """How to open a websocket: :func:`trio_websocket.open_websocket_url` in real use."""

    def __call__(self, url: str) -> AbstractAsyncContextManager[WebSocketConnection]: ...


def _open(url: str) -> AbstractAsyncContextManager[WebSocketConnection]:
    return open_websocket_url(
        url,
        receive_buffer_size=RECEIVE_BUFFER_SIZE,
        max_message_size=MAX_MESSAGE_SIZE,
        connect_timeout=CONNECT_TIMEOUT,
        disconnect_timeout=DISCONNECT_TIMEOUT,
    )


@dataclass
class _State:
    last_ordinal: int | None = None
    printed: int = 0
    interrupted: bool = False
    websocket: WebSocketConnection | None = None


@dataclass(frozen=True, slots=True)
class _Closed:
    code: int | None
    reason: str


class _Printer:
    """Writes lines to ``out`` and remembers the last ordinal it printed."""

    def __init__(self, out: TextIO, state: _State, as_json: bool) -> None:
        self._out = out
        self._state = state
        self._as_json = as_json

    def frame(self, message: str | bytes) -> None:
        if isinstance(message, bytes):  # the service only sends text; show, never crash
            message = message.decode("utf-8", errors="replace")
        event = parse_frame(message)
        last = self._state.last_ordinal
        if event.ordinal is not None and last is not None and event.ordinal <= last:
            return  # already printed before a reconnect: never twice
        line = _printable(message) if self._as_json else event_line(event)
        self._out.write(line + "\n")
        self._out.flush()  # a pipe reader (tee, grep, a test) sees each event now
        self._state.printed += 1
        if event.ordinal is not None:
            self._state.last_ordinal = event.ordinal


async def _keepalive(ws: WebSocketConnection, stalled: trio.CancelScope) -> None:
    """Ping the server; cancel ``stalled`` if a pong does not come back in time."""
    while True:
        await trio.sleep(PING_INTERVAL)
        try:
            with trio.move_on_after(PING_TIMEOUT) as waited:
                await ws.ping()
        except ConnectionClosed:
            return  # the reader sees the close and reports it
        if waited.cancelled_caught:
            stalled.cancel()
            return


async def _session(ws: WebSocketConnection, printer: _Printer) -> _Closed:
    """Print frames until the connection closes; returns how it closed."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_keepalive, ws, nursery.cancel_scope)
        try:
            while True:
                printer.frame(await ws.get_message())
        except ConnectionClosed as closed:
            nursery.cancel_scope.cancel()
            reason = closed.reason
            if reason is None:
                return _Closed(None, "")
            return _Closed(reason.code, reason.reason or "")
    # Only the keepalive cancels the scope without returning above.
    return _Closed(None, f"no answer to a ping within {PING_TIMEOUT:g} s")


def _describe(closed: _Closed) -> str:
    code = "no close code" if closed.code is None else str(closed.code)
    return f"{code} {closed.reason}".rstrip()


def _handshake_problem(exc: HandshakeError) -> str:
    if isinstance(exc, ConnectionRejected):
        return f"the server refused the websocket (HTTP {exc.status_code})"
    cause = exc.__cause__
    if cause is not None:
        return f"cannot connect: {cause}"
    return f"cannot connect: {type(exc).__name__}"


async def _watch_signals(state: _State, scope: trio.CancelScope) -> None:
    """Ctrl-C (or SIGTERM): close the websocket properly, then stop quietly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            state.interrupted = True
            ws = state.websocket
            if ws is not None:
                with trio.move_on_after(DISCONNECT_TIMEOUT):
                    await ws.aclose()
            scope.cancel()
            return


async def run_listener(
    location: str,
    initial_query: Mapping[str, str],
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    connect: Connect = _open,
    backoff: Backoff | None = None,
    handle_signals: bool = True,
) -> int:
    """Connect, print every event, reconnect after drops; returns the exit status.

    The first connection must succeed (a typo in the location should fail at
    once, not retry forever); after that, every drop is retried, after a
    pause of ``backoff`` (default :data:`RECONNECT_BACKOFF`), from the last
    ordinal printed, until the server closes deliberately (:func:`close_action`)
    or the user interrupts.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    backoff = Backoff(RECONNECT_BACKOFF) if backoff is None else backoff
    state = _State()
    printer = _Printer(out, state, as_json)
    connected_once = False

    def say(text: str) -> None:
        err.write(f"{PROG}: {text}\n")
        err.flush()

    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_watch_signals, state, nursery.cancel_scope)
        code = 0
        while not state.interrupted:
            url = with_query(location, resume_query(initial_query, state.last_ordinal))
            closed: _Closed | None = None
            problem = ""
            try:
                async with connect(url) as ws:
                    state.websocket = ws
                    connected_once = True
                    say(f"connected to {url}")
                    before = state.printed
                    try:
                        closed = await _session(ws, printer)
                    finally:
                        state.websocket = None
                    if state.printed > before:
                        backoff.reset()
            except ConnectionRejected as exc:
                if 400 <= exc.status_code < 500:  # wrong path or not a websocket endpoint
                    say(_handshake_problem(exc))
                    code = 1
                    break
                problem = _handshake_problem(exc)
            except HandshakeError as exc:
                problem = _handshake_problem(exc)
            if state.interrupted:
                break
            if closed is not None:
                action = close_action(closed.code)
                if action is not CloseAction.RECONNECT:
                    say(f"closed by the server: {_describe(closed)}")
                    code = 0 if action is CloseAction.DONE else 1
                    break
                problem = f"connection lost: {_describe(closed)}"
            if not connected_once:
                say(problem)
                code = 1
                break
            delay = backoff.next_delay()
            resume = state.last_ordinal
            after = "" if resume is None else f" after ordinal {resume}"
            say(f"{problem}; reconnecting{after} in {delay:.1f} s")
            await trio.sleep(delay)
        nursery.cancel_scope.cancel()
    return 0 if state.interrupted else code


def listen(
    location: str,
    *,
    from_ordinal: int | None = None,
    from_timestamp: int | None = None,
    from_datetime: str | None = None,
    as_json: bool = False,
) -> int:
    """``ess listen``: run :func:`run_listener` on a fresh Trio loop."""
    problem = check_location(location)
    if problem is not None:
        print(f"{PROG}: {problem}: {location!r}", file=sys.stderr)
        return 2
    query = start_query(
        from_ordinal=from_ordinal, from_timestamp=from_timestamp, from_datetime=from_datetime
    )
    try:
        return trio.run(partial(run_listener, location, query, as_json=as_json))
    except BrokenPipeError:
        return _stdout_gone()
    except BaseExceptionGroup as group:
        if group.subgroup(BrokenPipeError) is not None:
            return _stdout_gone()
        raise


def _stdout_gone() -> int:
    """The reader of our output went away (``ess listen ... | head``): stop quietly.

    Pointing stdout at /dev/null keeps the interpreter from complaining when
    it flushes stdout on exit.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0
