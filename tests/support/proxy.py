"""A TCP proxy that can stop forwarding without closing anything: a dead peer.

Used wherever a test needs the other end to vanish silently (no FIN, no
RST), as when a NAT or a laptop lid drops a connection: the AMQP client's
heartbeats, the broker adapter's bounded leave, the service's pool after
missed heartbeats, a websocket client that stops answering.
"""

from __future__ import annotations

import trio


class FreezableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>`` until frozen.

    After :meth:`freeze` the connections open at that moment stay open and
    the kernel keeps acknowledging what fits in the buffers: to either end,
    the other has vanished. Connections opened afterwards are forwarded
    normally, so a peer that reconnects gets through.
    """

    def __init__(self, target_port: int = 5672) -> None:
        self.target_port = target_port
        self.port = 0
        self._links: list[_Link] = []
        self._refusing = False

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self._refusing:
            await trio.aclose_forcefully(client)  # closed at once: the broker is unreachable
            return
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        link = _Link(client, upstream)
        self._links.append(link)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(link.pump, client, upstream)
            nursery.start_soon(link.pump, upstream, client)

    def freeze(self) -> int:
        """Freeze every connection open now; returns how many."""
        for link in self._links:
            link.frozen = True
        return len(self._links)

    async def close_all(self) -> None:
        for link in self._links:
            await trio.aclose_forcefully(link.client)
            await trio.aclose_forcefully(link.upstream)

    async def refuse(self) -> None:
        """Cut the target off: close every connection, and each new one at once."""
        self._refusing = True
        await self.close_all()
        self._links.clear()

    def accept(self) -> None:
        """Forward new connections again (after :meth:`refuse`)."""
        self._refusing = False


class _Link:
    """One proxied connection; once frozen it swallows what it reads and never reads again."""

    def __init__(self, client: trio.SocketStream, upstream: trio.SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = False

    async def pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if self.frozen:
                    await trio.sleep_forever()
                if not data:
                    await sink.send_eof()
                    return
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
