"""An in-process control channel for unit tests: several replicas on one bus.

:class:`MemoryControlBus` stands for the broker's control exchange; each
:meth:`~MemoryControlBus.endpoint` is one replica's
:class:`~actors.ports.control.ControlChannel`. :meth:`MemoryControl.cut` and
:meth:`MemoryControl.restore` simulate a replica losing the broker and
getting it back: its open session ends with ``BrokerUnavailable`` and it
misses what is published meanwhile, as with the real exclusive queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from actors.ports.broker import BrokerUnavailable
from actors.ports.control import ControlChannel

_CUT = object()


class MemoryControlBus:
    """The shared exchange of the endpoints made by :meth:`endpoint`."""

    def __init__(self) -> None:
        self._endpoints: list[MemoryControl] = []
        #: Every body published on the bus, in order (for assertions).
        self.published: list[bytes] = []

    def endpoint(self) -> MemoryControl:
        endpoint = MemoryControl(self)
        self._endpoints.append(endpoint)
        return endpoint

    def _broadcast(self, body: bytes) -> None:
        self.published.append(body)
        for endpoint in self._endpoints:
            endpoint._deliver(body)


class MemoryControl:
    """One replica's view of the bus; see the module documentation."""

    def __init__(self, bus: MemoryControlBus) -> None:
        self._bus = bus
        self._inbox: trio.MemorySendChannel[object] | None = None
        self._up = True
        self._restored = trio.Event()
        self._restored.set()
        #: Sessions opened so far.
        self.sessions = 0

    def cut(self) -> None:
        """Lose the broker: the open session ends, publishing fails, until :meth:`restore`."""
        self._up = False
        self._restored = trio.Event()
        if self._inbox is not None:
            self._inbox.send_nowait(_CUT)
            self._inbox = None

    def restore(self) -> None:
        self._up = True
        self._restored.set()

    def _deliver(self, body: bytes) -> None:
        if self._inbox is not None:
            self._inbox.send_nowait(body)

    async def wait_available(self) -> None:
        await self._restored.wait()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncIterator[bytes]]:
        if not self._up:
            raise BrokerUnavailable("cut off from the control bus")
        send, receive = trio.open_memory_channel[object](1000)
        self._inbox = send
        self.sessions += 1

        async def messages() -> AsyncIterator[bytes]:
            async for item in receive:
                if item is _CUT:
                    raise BrokerUnavailable("cut off from the control bus")
                assert isinstance(item, bytes)
                yield item

        try:
            yield messages()
        finally:
            if self._inbox is send:
                self._inbox = None

    async def publish(self, body: bytes) -> None:
        if not self._up:
            raise BrokerUnavailable("cut off from the control bus")
        await trio.lowlevel.checkpoint()
        self._bus._broadcast(body)


def _conforms(control: MemoryControl) -> ControlChannel:
    """Static check (mypy): the fake implements the port."""
    return control
