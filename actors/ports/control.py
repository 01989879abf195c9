"""The control port: a broadcast channel between replicas (SPEC section 7).

Every replica has one :meth:`ControlChannel.session` at a time: while it is
open, the replica receives every message any replica publishes (its own
included), in publish order per sender. A session ends with
:class:`~actors.ports.broker.BrokerUnavailable` when the broker connection
carrying it is lost; messages published meanwhile are not delivered to it
(the receiver re-reads the registry instead: see
:mod:`actors.cluster.coordinator`). Adapters:
:mod:`actors.adapters.rabbitmq_control` (a fanout exchange, one exclusive
queue per replica) and :mod:`actors.adapters.memory_control` (unit tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class ControlChannel(Protocol):
    """Broadcast bytes to every replica's open session."""

    async def wait_available(self) -> None:
        """Return once a session can probably be opened (the broker is connected)."""
        ...

    def session(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Start receiving; the iterator ends with ``BrokerUnavailable`` when cut off.

        Entering raises ``BrokerUnavailable`` if the broker cannot be used now.
        """
        ...

    async def publish(self, body: bytes) -> None:
        """Send ``body`` to every open session; raises ``BrokerUnavailable``."""
        ...
