"""Typed exceptions of the AMQP client.

Callers decide what to do from the *class* of an error, never by parsing a
message: a connection manager reconnects on :class:`AMQPConnectionError`, a
stream adapter maps :class:`NotFound` to "no such stream", a start-up check
turns :class:`AuthenticationError` into one clear line. Server-side closes
keep the broker's ``reply_code`` and ``reply_text`` so nothing is lost.

The hierarchy::

    AMQPError
    ├── AMQPConnectionError          the connection is gone; reconnect
    │   ├── CannotConnect            TCP/TLS connect or handshake timed out / refused
    │   ├── ConnectionLost           the socket ended without a close handshake
    │   │   └── HeartbeatTimeout     nothing received for two heartbeat intervals
    │   ├── ProtocolError            the peer sent bytes that are not valid AMQP
    │   ├── ConnectionClosedByServer the broker sent connection.close
    │   │   ├── ConnectionForced     320 (e.g. ``rabbitmqctl close_connection``)
    │   │   ├── AuthenticationError  403 during the handshake (bad credentials)
    │   │   └── ConnectionNotAllowed 530 (e.g. unknown or stopped vhost)
    │   └── ConnectionClosedByClient this side closed it
    ├── ChannelClosed                the channel is gone, the connection is fine
    │   ├── AccessRefused            403
    │   ├── NotFound                 404
    │   ├── ResourceLocked           405
    │   └── PreconditionFailed       406
    ├── NoFreeChannels               every channel number up to channel_max is in use
    ├── ConsumerCancelled            the broker cancelled a consumer (queue deleted)
    └── PublishNacked                the broker refused a confirmed publish
"""

from __future__ import annotations

import copy
from typing import Final


class AMQPError(Exception):
    """Base class of every error this package raises."""


# --------------------------------------------------------------------------- connection


class _BrokerReply(AMQPError):
    """A close the broker explained: its reply code and text, and the method it refused."""

    def __init__(self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0):
        super().__init__(reply_code, reply_text, class_id, method_id)
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id


class AMQPConnectionError(AMQPError):
    """The connection cannot be used any more; open a new one to continue."""


class CannotConnect(AMQPConnectionError):
    """Opening the connection failed before it was established (refused, timeout)."""


class ConnectionLost(AMQPConnectionError):
    """The transport ended (EOF, reset) without an AMQP close handshake."""


class HeartbeatTimeout(ConnectionLost):
    """The peer sent nothing for two heartbeat intervals: presumed dead."""


class ProtocolError(AMQPConnectionError):
    """The peer sent something that is not valid AMQP 0-9-1 framing."""


class ConnectionClosedByServer(_BrokerReply, AMQPConnectionError):
    """The broker closed the connection with ``connection.close``."""

    def __str__(self) -> str:
        return f"connection closed by the broker: {self.reply_code} {self.reply_text}"


class ConnectionForced(ConnectionClosedByServer):
    """320 CONNECTION_FORCED: an operator or a broker shutdown closed the connection."""


class AuthenticationError(ConnectionClosedByServer):
    """403 ACCESS_REFUSED during the handshake: wrong user name or password."""


class ConnectionNotAllowed(ConnectionClosedByServer):
    """530 NOT_ALLOWED: typically the virtual host does not exist or is down."""


class ConnectionClosedByClient(AMQPConnectionError):
    """This side closed the connection (``close()`` or leaving ``connect()``)."""


_CONNECTION_ERRORS: Final[dict[int, type[ConnectionClosedByServer]]] = {
    320: ConnectionForced,
    403: AuthenticationError,
    530: ConnectionNotAllowed,
}


def connection_closed(
    reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
) -> ConnectionClosedByServer:
    """Map a server ``connection.close`` to its typed exception."""
    cls = _CONNECTION_ERRORS.get(reply_code, ConnectionClosedByServer)
    return cls(reply_code, reply_text, class_id, method_id)


# --------------------------------------------------------------------------- channel


class ChannelClosed(_BrokerReply):
    """The channel was closed; the connection (and its other channels) live on.

    ``reply_code`` 200 means this side closed it; any other code is the
    broker's reason (see the subclasses for the common ones).
    """

    def __str__(self) -> str:
        return f"channel closed: {self.reply_code} {self.reply_text}"


class AccessRefused(ChannelClosed):
    """403 ACCESS_REFUSED, e.g. declaring a queue whose name starts with ``amq.``."""


class NotFound(ChannelClosed):
    """404 NOT_FOUND, e.g. a passive declare of a missing queue."""


class ResourceLocked(ChannelClosed):
    """405 RESOURCE_LOCKED, e.g. an exclusive queue owned by another connection."""


class PreconditionFailed(ChannelClosed):
    """406 PRECONDITION_FAILED, e.g. redeclaring a queue with other arguments."""


_CHANNEL_ERRORS: Final[dict[int, type[ChannelClosed]]] = {
    403: AccessRefused,
    404: NotFound,
    405: ResourceLocked,
    406: PreconditionFailed,
}


def channel_closed(
    reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
) -> ChannelClosed:
    """Map a server ``channel.close`` to its typed exception."""
    cls = _CHANNEL_ERRORS.get(reply_code, ChannelClosed)
    return cls(reply_code, reply_text, class_id, method_id)


# --------------------------------------------------------------------------- misc


class NoFreeChannels(AMQPError):
    """All channel numbers up to the negotiated ``channel_max`` are in use."""


class ConsumerCancelled(AMQPError):
    """The broker cancelled the consumer (``basic.cancel``), e.g. its queue was deleted."""


class ConsumerOverflow(AMQPError):
    """The consumer's buffer passed its bound: the client gave it up and cancelled it.

    Raised by iteration after every message buffered before the overflow has
    been yielded. The connection's reader never waits for one consumer, so a
    consumer that is not iterated fast enough is cancelled instead; its
    unacknowledged messages return to the queue when its channel closes.
    """


class PublishNacked(AMQPError):
    """The broker answered a confirmed publish with ``basic.nack``."""


class EndState:
    """How a connection or a channel ends: once, with a reason, or by this side closing it.

    ``_error`` is the reason, set once by whatever ended it first;
    ``_closing`` is true while this side's close handshake runs. Subclasses
    say what a use while closing raises (:meth:`_closing_error`).
    """

    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._closing = False

    @property
    def is_closed(self) -> bool:
        """Whether it has ended or is closing: it can no longer be used."""
        return self._error is not None or self._closing

    @property
    def close_reason(self) -> BaseException | None:
        """Why it ended (``None`` while open; a channel closed by this side:
        ``ChannelClosed`` with code 200)."""
        return self._error

    def _raise_if_over(self) -> None:
        """Raise why it cannot be used: its end reason, or that it is closing."""
        if self._error is not None:
            raise fresh(self._error)
        if self._closing:
            raise self._closing_error()

    def _closing_error(self) -> BaseException:
        raise NotImplementedError


def fresh(exc: BaseException) -> BaseException:
    """A copy of ``exc`` to raise in one more place.

    One stored error (say, the connection's close reason) is raised to many
    waiters; raising the same instance again and again would keep growing
    its traceback. The copy keeps the class, the args and the cause.
    """
    clone = copy.copy(exc)
    clone.__cause__ = exc.__cause__
    clone.__traceback__ = None
    return clone
