"""Logging, configured in one place for the whole process.

Two formats (``ESS_LOG_FORMAT``):

* ``text``: one compact line for people,
  ``2024-05-01T12:00:00.123Z INFO actors.hub: stream=3 live-tail starting``,
  with every ``extra=`` field as ``key=value`` after the message unless the
  message already shows it;
* ``json``: one JSON object per line for log pipelines, with ``time``
  (ISO 8601, UTC), ``level``, ``logger``, ``message``, every ``extra=`` field
  as a structured field and ``exc_info`` as a string when present.

The actors log through their :class:`~actors.logcontext.LogContext`, which
starts each message with the actor's ``stream=3 conn=4f2a1c`` and passes the
same fields as ``extra=``: a text line shows them once, at the start of the
message, and a JSON line has them both in ``message`` and as ``"stream": 3,
"conn": "4f2a1c"`` for a pipeline to filter on.

Both go to stderr, so stdout stays free for the tools' output (``ess listen``).
Libraries' chatter (Hypercorn, Quart, trio-websocket) is kept at WARNING
unless the level is DEBUG.

Never log a stream's full uuid: it is the websocket client's only credential
(SPEC section 3). Log the stream's id; where a uuid must be shown, its
prefix (:func:`actors.snapshot.short_uuid`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Literal

__all__ = ["NOISY_LOGGERS", "JsonFormatter", "TextFormatter", "configure_logging"]

#: Third-party loggers held at WARNING unless the level is DEBUG.
NOISY_LOGGERS = ("hypercorn", "quart", "trio-websocket", "trio_websocket")

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}

#: Marks the handler we install, so a second configure_logging() replaces it.
_HANDLER_NAME = "ess"


def _utc_iso(created: float) -> str:
    stamp = datetime.fromtimestamp(created, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never emits a raw newline."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)  # an extra cannot shadow the core fields
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot encode still gets logged.
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...`` plus any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line = f"{_utc_iso(record.created)} {record.levelname} {record.name}: {message}"
        # A field the message already shows (an actor's log context) is not repeated.
        pairs = [f"{key}={value}" for key, value in _extras(record).items()]
        shown = set(message.split())
        extras = [pair for pair in pairs if pair not in shown]
        if extras:
            line += " " + " ".join(extras)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _ReplicaField(logging.Filter):
    """Puts ``replica=<name>`` on every record: several replicas may share one log."""

    def __init__(self, replica: str) -> None:
        super().__init__()
        self._replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        record.replica = self._replica
        return True


def configure_logging(
    level: str,
    fmt: Literal["text", "json"],
    *,
    stream: IO[str] | None = None,
    replica: str | None = None,
) -> None:
    """Send every logger's records to ``stream`` (stderr) in format ``fmt``.

    Idempotent: calling it again replaces the handler it installed before.
    ``level`` is a name such as ``INFO`` (already validated by ess.config).
    With ``replica``, every line names the replica (SPEC section 7): the
    workers of ``ess serve --workers N`` share one stderr.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if replica is not None:
        handler.addFilter(_ReplicaField(replica))

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)

    # At DEBUG they inherit the root level; otherwise WARNING (or higher, if
    # the root is higher) so an access log cannot drown our own records.
    library_level = logging.NOTSET if numeric <= logging.DEBUG else max(logging.WARNING, numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(True)
