"""Why a websocket is closed: the codes and reasons of SPEC section 4.

Whoever ends a connection actor sets its :class:`CloseReason` *before*
cancelling its scope; the connection actor's ``finally`` then closes the
websocket with it. The first reason set wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class CloseReason:
    """A websocket close frame to send: ``code`` and a human-readable ``reason``."""

    code: int
    reason: str


class Ending(enum.Enum):
    """Ways a connection ends without sending a close frame."""

    #: The client closed or vanished; nothing left to send.
    PEER_GONE = "peer gone"
    #: The peer stopped answering pings: drop the TCP connection.
    ABORT = "aborted"


Outcome = CloseReason | Ending

DELETED: Final = CloseReason(1000, "The stream has been deleted")
TAKEOVER: Final = CloseReason(4001, "Replaced by a newer connection to this event stream")
SHUTDOWN: Final = CloseReason(1001, "The service is shutting down")
POISONED: Final = CloseReason(1000, "POISON received")
QUEUE_MISSING: Final = CloseReason(1013, "The stream queue does not exist")
RESTARTING: Final = CloseReason(1013, "The event stream is restarting, try again later")
INTERNAL_ERROR: Final = CloseReason(1011, "Internal error")


def slow_client(send_timeout: float) -> CloseReason:
    """1008 for a client that did not read for ``send_timeout`` seconds."""
    return CloseReason(1008, f"The client did not read for {send_timeout:g} seconds")
