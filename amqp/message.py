"""Message properties and delivered messages.

Both are plain slotted classes built once per message on the hot path, so
they are kept cheap: no validation, no datetime conversion. The AMQP
``timestamp`` property is kept as integer seconds since the epoch (what is on
the wire); :attr:`Properties.timestamp_datetime` converts on demand.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

#: A decoded AMQP field table (headers). A ``bytes`` key is a field name that
#: was not UTF-8 on the wire (see :mod:`amqp.table`): no caller can match it.
FieldTable = dict[str | bytes, Any]


@dataclass(slots=True)
class Properties:
    """The ``basic`` content properties (AMQP 0-9-1 section 1.8).

    ``timestamp`` is seconds since the epoch, as on the wire (received, it
    may be beyond what a datetime holds); publishing also accepts a
    :class:`datetime.datetime` (naive means UTC).
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: FieldTable | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | datetime.datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None

    @property
    def timestamp_datetime(self) -> datetime.datetime | None:
        """The timestamp as an aware UTC datetime; ``None`` if absent or beyond year 9999."""
        ts = self.timestamp
        if ts is None or isinstance(ts, datetime.datetime):
            return ts
        try:
            return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
        except (OverflowError, OSError, ValueError):
            return None


#: Shared by messages that carry no properties at all (never mutate it).
EMPTY_PROPERTIES = Properties()


def _no_properties() -> Properties:
    """The default of a message's ``properties`` (a dataclass default must be immutable)."""
    return EMPTY_PROPERTIES


@dataclass(slots=True, eq=False, repr=False)
class DeliveredMessage:
    """One message pushed by the broker to a consumer (``basic.deliver``).

    The frame decoder creates it from the method frame and completes it with
    the content header (``properties``) and body frames, so a message costs
    one object on the hot path. Compared by identity (``eq=False``): two
    deliveries are never the same message.

    ``properties_error`` describes what of the content header could not be
    decoded (``None`` when all of it could): those fields are absent, kept as
    ``bytes`` or :class:`~amqp.table.Unusable` (see :mod:`amqp.table`). It is
    there to be logged; the message itself is delivered like any other.
    """

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: Properties = field(default_factory=_no_properties)
    body: bytes = b""
    properties_error: str | None = field(default=None, init=False)

    @property
    def headers(self) -> FieldTable:
        """The ``headers`` property, or an empty dict when absent."""
        headers = self.properties.headers
        return headers if headers is not None else {}

    def __repr__(self) -> str:
        return (
            f"<DeliveredMessage tag={self.delivery_tag} consumer={self.consumer_tag!r} "
            f"exchange={self.exchange!r} routing_key={self.routing_key!r} "
            f"body={len(self.body)} bytes>"
        )


@dataclass(slots=True, eq=False)
class ReturnedMessage:
    """A message the broker handed back (``basic.return``) or fetched (``basic.get-ok``)."""

    method: Any
    properties: Properties = field(default_factory=_no_properties)
    body: bytes = b""
