"""The stream actor: one event stream and its connection actors.

An idle stream actor is a plain object of a few hundred bytes: no task, no
consumer, no nursery. When its first websocket arrives it starts one task
in the supervisor's nursery; that task owns a cancel scope and a nursery in
which the connection actors run, and it ends when the last connection has
finished. So ten thousand idle streams cost ten thousand small objects.

Live-tail connections (``FromNext``) share one broker consumer: the first
one starts a :class:`~actors.hub.LiveTailHub` hub in the actor's nursery, the
others join it, and the last one to leave stops it. Every other position
(``stream_from_ordinal``/``timestamp``, a resubscription from a cursor) gets
a broker consumer of its own. Connection actors subscribe through
:meth:`StreamActor._subscribe`, which does this routing.

Cancellation is structured: :meth:`StreamActor.begin_close` records the
close reason on every connection actor and cancels the task's scope; the
connection actors close their websockets in their ``finally``;
:meth:`StreamActor.wait_closed` returns once all of them (and the task)
have exited.

If the task itself fails (a bug in the stream actor, not in a connection:
connection actors contain their own crashes), its connections are closed
with 1011 and the actor restarts after a pause from the shared
:class:`~actors.backoff.Backoff` (the settings' restart policy, reset by a
run that ends without a crash); websockets that arrive meanwhile wait for
the restart. Every line it logs carries ``stream=`` (its log context).

Across replicas (SPEC section 7) every admitted connection is reported to
``on_admit`` (the supervisor announces it to the other replicas), and
:meth:`StreamActor.take_over` closes the connections older than one
admitted on another replica with 4001.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import trio

from actors.backoff import Backoff
from actors.close import INTERNAL_ERROR, SHUTDOWN, TAKEOVER, CloseReason
from actors.cluster.messages import ConnectionKey
from actors.connection_actor import ConnectionActor
from actors.context import ActorContext
from actors.hub import LiveTailHub, OnWaiting
from actors.keepalive import KeepaliveSchedule
from actors.logcontext import LogContext
from actors.ports.broker import FromNext, StartPosition, Subscription
from actors.ports.registry import StreamRecord
from actors.ports.websocket import PendingWebSocket, WebSocket, WebSocketClosed
from actors.snapshot import Snapshot, node, short_uuid
from actors.start import ClientStart

log = logging.getLogger(__name__)

#: Starts a task in the supervisor's nursery and returns what it passed to
#: ``task_status.started`` (``Nursery.start``); raises ``RuntimeError`` once
#: the supervisor has stopped.
Spawner = Callable[[Callable[..., Awaitable[object]]], Awaitable[trio.Nursery]]

#: Told of every admitted connection: (stream id, the connection's start time, its id).
AdmitListener = Callable[[int, float, str], None]

#: Extra time, beyond the close timeout, allowed for a connection to finish.
CLOSE_MARGIN = 1.0


class _Run:
    """One run of a stream actor's task: its scope and an event set when it has exited."""

    __slots__ = ("exited", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.exited = trio.Event()


class StreamActor:
    """The actor of one event stream; see the module documentation."""

    __slots__ = (
        "_changed",
        "_closing",
        "_connections",
        "_context",
        "_keepalive",
        "_nursery",
        "_on_admit",
        "_restart_backoff",
        "_restarting",
        "_run",
        "_spawn",
        "_spawning",
        "_tail",
        "log",
        "record",
        "restarts",
        "started_at",
    )

    def __init__(
        self,
        record: StreamRecord,
        context: ActorContext,
        spawn: Spawner,
        *,
        on_admit: AdmitListener | None = None,
    ) -> None:
        self.record = record
        self._on_admit = on_admit
        self.started_at = context.clock()
        #: Times the actor's task crashed and was restarted.
        self.restarts = 0
        self._context = context
        self._spawn = spawn
        self._connections: list[ConnectionActor] = []
        self._closing: CloseReason | None = None
        self._nursery: trio.Nursery | None = None
        self._run: _Run | None = None
        self._spawning: trio.Event | None = None
        self._restarting: trio.Event | None = None
        self._changed: trio.Event | None = None
        self._restart_backoff = Backoff(context.settings.restart_policy)
        #: Every line this actor logs says which stream it is about.
        self.log = LogContext(log, stream=record.id)
        #: The shared live-tail consumer, while it runs.
        self._tail: LiveTailHub | None = None
        #: When each websocket is pinged next: served by the actor's task.
        self._keepalive = KeepaliveSchedule(context.settings.ping_interval, self._notify)

    # -- observation -----------------------------------------------------

    @property
    def connections(self) -> list[ConnectionActor]:
        """The live connection actors, oldest first."""
        return list(self._connections)

    @property
    def state(self) -> str:
        if self._closing is not None:
            return "closing" if self._connections or self._run is not None else "closed"
        if self._restarting is not None:
            return "restarting"
        return "active" if self._connections else "idle"

    @property
    def running(self) -> bool:
        """Whether the actor currently has a task (it has none while idle)."""
        return self._run is not None

    @property
    def live_tail(self) -> LiveTailHub | None:
        """The shared live-tail consumer, if one is running."""
        return self._tail

    def snapshot(self) -> Snapshot:
        children = [connection.snapshot() for connection in self._connections]
        if self._tail is not None:
            children.append(self._tail.snapshot())
        return node(
            "stream",
            short_uuid(self.record.uuid),
            self.state,
            self.started_at,
            {
                "id": self.record.id,
                "routing_key": self.record.routing_key,
                "connections": len(self._connections),
                "restarts": self.restarts,
            },
            children,
        )

    # -- serving websockets ----------------------------------------------

    async def serve(self, websocket: PendingWebSocket, start: ClientStart) -> None:
        """Start a connection actor for ``websocket`` in this actor; return once it holds it.

        The caller (the websocket edge's handler) does not wait for the
        connection: once the actor runs in this actor's nursery it owns the
        websocket (``PendingWebSocket.on_stop``), so an idle websocket costs
        no waiting handler task. A websocket this actor cannot take (it is
        closing, or its task cannot start) is refused before this returns.
        """
        while self._restarting is not None and self._closing is None:
            await self._restarting.wait()
        if self._closing is not None:
            await refuse(websocket, self._closing, self._context.settings.close_timeout)
            return
        record = self.record
        connection = ConnectionActor(
            record.id,
            record.routing_key,
            websocket,
            start,
            self._context,
            self._connection_exited,
            self._subscribe,
            keepalive=self._keepalive,
        )
        self._admit(connection)
        try:
            nursery = await self._running_nursery()
            nursery.start_soon(connection.run)
        except RuntimeError:
            # The supervisor (or this actor's task) is gone: close at once.
            connection.cancel(self._closing or SHUTDOWN)
            await connection.run()
            return
        except BaseException:
            # Our caller (the websocket handler) is cancelled before the hand-over.
            connection.cancel(self._closing or SHUTDOWN)
            self._connection_exited(connection)
            raise
        websocket.on_stop(connection.edge_stopped)

    def _admit(self, connection: ConnectionActor) -> None:
        """Add a connection; the oldest ones beyond the policy are replaced (4001)."""
        self._connections.append(connection)
        if self._on_admit is not None:
            self._on_admit(self.record.id, connection.started_at, connection.id)
        limit = self._context.settings.max_connections_per_stream
        if limit <= 0:
            return
        live = [c for c in self._connections if not c.ending]
        for old in live[:-limit]:
            old.log.info("replaced by conn=%s", connection.id)
            old.cancel(TAKEOVER)

    def take_over(self, newer: ConnectionKey, replica: str) -> None:
        """A connection was admitted on another replica: close the older ones here (4001).

        Only with the default policy of one connection per stream: a larger
        limit is enforced per replica (replicas do not count each other's
        connections). ``replica`` is this replica's id, for the comparison.
        """
        if self._context.settings.max_connections_per_stream != 1:
            return
        for old in self._connections:
            if not old.ending and ConnectionKey(old.started_at, replica, old.id) < newer:
                old.log.info("replaced by conn=%s on replica %s", newer.connection, newer.replica)
                old.cancel(TAKEOVER)

    def _subscribe(
        self, position: StartPosition, prefetch: int, on_waiting: OnWaiting
    ) -> AbstractAsyncContextManager[Subscription]:
        """A consumer for a connection: the shared live tail for ``FromNext``, else its own."""
        if isinstance(position, FromNext):
            hub = self._live_tail()
            if hub is not None:
                return hub.membership(prefetch, on_waiting)
        return self._context.broker.subscribe(self.record.routing_key, position, prefetch=prefetch)

    def _live_tail(self) -> LiveTailHub | None:
        """The running hub, started in the actor's nursery if there is none."""
        hub = self._tail
        if hub is not None and not hub.stopping:
            return hub
        nursery = self._nursery
        if nursery is None or self._closing is not None:
            return None  # going down: the connection is being cancelled anyway
        record = self.record
        hub = LiveTailHub(record.id, record.routing_key, self._context, self._tail_stopped)
        self._tail = hub
        nursery.start_soon(hub.run)
        return hub

    def _tail_stopped(self, hub: LiveTailHub) -> None:
        if self._tail is hub:
            self._tail = None

    def _connection_exited(self, connection: ConnectionActor) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
            self._notify()

    async def _running_nursery(self) -> trio.Nursery:
        """The nursery of this actor's task, starting the task if it is not running."""
        while True:
            if self._nursery is not None:
                return self._nursery
            if self._spawning is not None:
                await self._spawning.wait()
                continue
            spawning = self._spawning = trio.Event()
            try:
                return await self._spawn(self._lifetime)
            finally:
                self._spawning = None
                spawning.set()

    async def _lifetime(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        """The actor's task: hosts the connections, restarts after a crash."""
        run = self._run = _Run()
        if self._closing is not None:
            run.scope.cancel()
        try:
            with run.scope:
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        task_status.started(nursery)
                        try:
                            await self._host()
                        except Exception:
                            # From now on new websockets wait for the restart.
                            self._restarting = trio.Event()
                            for connection in self._connections:
                                connection.cancel(INTERNAL_ERROR)
                            raise
                        finally:
                            if self._nursery is nursery:
                                self._nursery = None
                            if self._tail is not None:
                                self._tail.stop()
                except* Exception:
                    await self._after_crash()
                else:
                    self._restart_backoff.reset()
        finally:
            run.exited.set()
            if self._run is run:
                self._run = None
            self._notify()

    async def _host(self) -> None:
        """Keep the task (and its nursery) alive while it has connections; ping them.

        The connections' keepalive is served here (one schedule per stream,
        not a sleeping task per websocket): each due ping is a short task in
        this actor's nursery, which its connection cancels if it ends first.
        """
        keepalive = self._keepalive
        nursery = self._nursery
        assert nursery is not None
        while self._connections:
            with trio.move_on_at(keepalive.next_due):
                await self._wait_changed()
            keepalive.fire_due(nursery.start_soon)

    async def _after_crash(self) -> None:
        self.restarts += 1
        delay = self._restart_backoff.next_delay()
        self.log.exception("crashed; restarting in %.3gs", delay)
        restarting = self._restarting
        if restarting is None:
            restarting = self._restarting = trio.Event()
        try:
            await trio.sleep(delay)
        finally:
            self._restarting = None
            restarting.set()
        self.log.info("restarted")

    # -- closing ---------------------------------------------------------

    def begin_close(self, reason: CloseReason) -> None:
        """Close every websocket of this stream with ``reason``, now and from now on."""
        if self._closing is None:
            self._closing = reason
        for connection in self._connections:
            connection.cancel(reason)
        if self._run is not None:
            self._run.scope.cancel()

    async def wait_closed(self) -> None:
        """Return once every connection actor and the actor's task have exited."""
        while self._connections or self._run is not None:
            await self._wait_changed()

    async def close(self, reason: CloseReason) -> None:
        """:meth:`begin_close`, then :meth:`wait_closed`."""
        self.begin_close(reason)
        await self.wait_closed()

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def _wait_changed(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()


async def refuse(websocket: PendingWebSocket, reason: CloseReason, close_timeout: float) -> None:
    """Accept a websocket only to close it at once with ``reason`` (bounded in time)."""
    channel: WebSocket | None = None
    with trio.move_on_after(close_timeout) as closing:
        try:
            channel = await websocket.accept()
        except WebSocketClosed:
            return
        await channel.close(reason.code, reason.reason)
    if closing.cancelled_caught and channel is not None:
        with trio.move_on_after(close_timeout):
            await channel.abort()
