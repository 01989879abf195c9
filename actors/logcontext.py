"""Each actor is its own log context: ``stream=`` and ``conn=`` on every line it logs.

Modelled on trio-websocket, whose connection's ``__str__`` is passed to every
log call: an actor holds a :class:`LogContext` (a logger bound to its
fields) and logs only through it, so no line of a stream or a connection can
forget to say which one it is about. The fields go twice into each record:

- as the message's prefix (``stream=3 conn=4f2a1c opening ...``), so a text
  line and a JSON ``message`` read alike and a ``grep 'conn=4f2a1c'`` follows
  one connection;
- as ``extra=`` fields, which :mod:`ess.logging` writes as structured JSON
  fields (``"stream": 3, "conn": "4f2a1c"``) and does not repeat in a text
  line that already shows them.

Fields are short, non-secret ids (the registry id, a random connection id):
never a stream's uuid, which is a client's credential.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

#: What a field may hold: ids, never free text from a client.
Field = int | str


class LogContext(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one actor's fields (``LogContext(log, stream=3, conn="4f2a1c")``)."""

    def __init__(self, logger: logging.Logger, **fields: Field) -> None:
        super().__init__(logger, fields)
        # The adapter's ``extra`` is this very dict (``**fields`` is a fresh
        # one): one per connection instead of two.
        self.fields: dict[str, Field] = fields
        self.prefix = " ".join(f"{key}={value}" for key, value in fields.items())

    def bind(self, logger: logging.Logger | None = None, **fields: Field) -> LogContext:
        """A context with more fields (a connection inside its stream), maybe another logger."""
        return LogContext(logger or self.logger, **{**self.fields, **fields})

    def __str__(self) -> str:
        return self.prefix

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**self.fields, **extra} if extra else dict(self.fields)
        return f"{self.prefix} {msg}", kwargs
