"""The connection actor: one websocket, its own cursor, a consumer (own or shared).

A thin I/O shell around its :class:`~actors.delivery.Delivery` core, which
holds the cursor and makes every decision about events (filter, skip,
format, poison, where to resume). Lifecycle (SPEC section 4):

1. Subscribe first (the consumer is attached before the handshake completes,
   so a live tail misses nothing published after it), then accept. It
   subscribes through its stream actor, which hands a live tail (``FromNext``)
   a member of the stream's shared :class:`~actors.hub.LiveTailHub` consumer and
   any other position a broker consumer of its own. Both are a
   :class:`~actors.ports.broker.Subscription`: the pump is one code path.
2. Run the *pump* (event -> core -> frames -> ack; while it waits with
   nothing buffered, the stream's hub hands a live event to
   :meth:`ConnectionActor._deliver_now`, which runs the same step in the
   hub's task and writes the frame without waiting); learn that the peer
   went from the websocket's ``on_gone`` callback (the adapter discards
   client frames itself, so no task per websocket reads them); and, when
   the stream's keepalive schedule
   (:mod:`actors.keepalive`, one per stream actor instead of a sleeping task
   per websocket) says so, a short *ping* that aborts a peer that stops
   answering.
3. A lost consumer (broker outage, or a consumer the adapter gave up or the
   broker cancelled) is replaced by the one resubscription loop
   (:func:`~actors.resubscription.keep_subscribed`) from the core's resume
   position: the websocket stays open, no gap, no duplicate. (On the shared
   consumer the hub does that for all its members.) A member the hub drops
   (too slow, or the hub failed) drains what it buffered, then resubscribes
   on a consumer of its own from where the hub left it, at once.
4. Whoever ends the actor (the pump, the peer leaving, a ping, the stream
   actor, the supervisor) first records an :data:`~actors.close.Outcome` and
   then cancels the actor's scope; the ``finally`` closes the websocket with
   it inside a shielded, time-bounded scope (abort if the close cannot
   complete). An unexpected exception is logged and closes with 1011.

Every line it logs carries ``stream=`` and ``conn=`` (:class:`~actors.logcontext.LogContext`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import NoReturn

import trio

from actors.close import (
    INTERNAL_ERROR,
    POISONED,
    QUEUE_MISSING,
    SHUTDOWN,
    CloseReason,
    Ending,
    Outcome,
    slow_client,
)
from actors.context import ActorContext
from actors.delivery import Delivery, Poisoned, Skipped
from actors.hub import Completion, HubMember, LeftHub, OnWaiting
from actors.keepalive import KeepaliveSchedule
from actors.logcontext import LogContext
from actors.ports.broker import StartPosition, StreamEvent, StreamNotFound, Subscription
from actors.ports.websocket import PendingWebSocket, WebSocket, WebSocketClosed
from actors.resubscription import Detached, describe_position, keep_subscribed
from actors.snapshot import Snapshot, node
from actors.start import ClientStart

log = logging.getLogger(__name__)

#: Attaches a consumer of the connection's stream at a position with a
#: prefetch (``Broker.subscribe`` with the routing key bound). The stream
#: actor supplies one that routes ``FromNext`` to its shared live tail,
#: whose joiner runs the third argument (in its own task) if the hub waits
#: for the broker before it attaches (:data:`actors.hub.OnWaiting`).
Subscriber = Callable[[StartPosition, int, OnWaiting], AbstractAsyncContextManager[Subscription]]


class ConsumerNode:
    """The connection actor's broker consumer, as the debug tree shows it."""

    __slots__ = ("position", "prefetch", "started_at", "state", "subscriptions")

    def __init__(self, position: StartPosition, prefetch: int, started_at: float) -> None:
        self.position = position
        self.prefetch = prefetch
        self.started_at = started_at
        #: ``attaching``, ``attached``, ``shared`` (a member of the stream's
        #: live-tail consumer), ``reconnecting`` or ``detached``.
        self.state = "attaching"
        #: How many times the consumer has been attached (1 + resubscriptions).
        self.subscriptions = 0

    def snapshot(self, name: str, last_offset: int | None) -> Snapshot:
        """Its node; ``last_offset`` is the highest offset the connection received."""
        return node(
            "consumer",
            name,
            self.state,
            self.started_at,
            {
                "start": describe_position(self.position),
                "prefetch": self.prefetch,
                "subscriptions": self.subscriptions,
                "last_offset": last_offset,
            },
        )


class ConnectionActor:
    """Serves one websocket of one event stream until it ends; see the module doc."""

    def __init__(
        self,
        stream_id: int,
        routing_key: str,
        websocket: PendingWebSocket,
        start: ClientStart,
        context: ActorContext,
        on_exit: Callable[[ConnectionActor], None] | None = None,
        subscribe: Subscriber | None = None,
        *,
        keepalive: KeepaliveSchedule,
    ) -> None:
        #: Short random id for logs and the debug tree (never the stream uuid).
        self.id = secrets.token_hex(3)
        self.stream_id = stream_id
        self.routing_key = routing_key
        self.start = start
        self.peer = websocket.peer
        self.started_at = context.clock()
        #: ``opening``, ``open``, ``waiting`` (for the broker), ``closing`` or ``closed``.
        self.state = "opening"
        self.messages_sent = 0
        self.bytes_sent = 0
        #: Every line this connection logs says which one it is.
        self.log = LogContext(log, stream=stream_id, conn=self.id)
        self._context = context
        self._settings = context.settings
        self._pending = websocket
        self._channel: WebSocket | None = None
        #: The scope of the ping under way (a task in the stream actor's nursery), if any.
        self._pinging: trio.CancelScope | None = None
        self._on_exit = on_exit
        self._subscribe = subscribe
        self._keepalive = keepalive
        #: Set once the shared consumer dropped this connection: from then on
        #: it always has a consumer of its own.
        self._own_consumer = False
        self._scope = trio.CancelScope()
        self._outcome: Outcome | None = None
        self._core = Delivery(start)
        #: When the first event of the batch being formed arrived (trio time, for lag).
        self._received_at = 0.0
        #: Set when the core met a POISON: the connection ends once the batch is written.
        self._poisoned = False
        #: How many received events the next ``stats`` line waits for.
        self._next_stats = self._settings.stats_interval
        self._consumer = ConsumerNode(self._core.initial, self._settings.prefetch, self.started_at)

    # -- what the core knows ---------------------------------------------

    @property
    def messages_received(self) -> int:
        return self._core.received

    @property
    def messages_skipped(self) -> int:
        return self._core.skipped

    @property
    def last_ordinal(self) -> int | None:
        return self._core.last_ordinal

    # -- control ---------------------------------------------------------

    @property
    def ending(self) -> bool:
        """Whether the actor has been told (or decided) to end."""
        return self._outcome is not None

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    def cancel(self, reason: Outcome) -> None:
        """End this connection with ``reason`` (the first reason given wins)."""
        if self._outcome is None:
            self._outcome = reason
        self._scope.cancel()

    def edge_stopped(self) -> None:
        """The websocket's edge stops serving (the listener shuts down): close with 1001."""
        self.cancel(SHUTDOWN)

    async def _stop(self, reason: Outcome) -> NoReturn:
        self.cancel(reason)
        await trio.lowlevel.checkpoint()  # raises Cancelled: our own scope is cancelled
        raise AssertionError("unreachable: the connection scope was cancelled")

    # -- the actor -------------------------------------------------------

    async def run(self) -> None:
        """Serve the websocket until the connection ends; never raises (but Cancelled)."""
        self.log.info("opening peer=%s start=%s", self.peer, describe_position(self._core.initial))
        try:
            # The loop is here, not in a method of its own: one frame fewer per idle websocket.
            with self._scope:
                while True:
                    try:
                        await keep_subscribed(self, self._context.broker, self.log)
                    except LeftHub as left:
                        # Dropped by the shared consumer after draining what it
                        # buffered for us: continue at once on a consumer of our own.
                        self._own_consumer = True
                        self._consumer.state = "reconnecting"
                        self._core.handed_over(left.resume_offset, left.not_before_ms)
                        self.log.info(
                            "left the shared consumer (%s); own consumer from %s",
                            left.reason,
                            describe_position(self._core.position()),
                        )
                    except StreamNotFound:
                        self._consumer.state = "detached"
                        self.log.warning("the stream queue does not exist")
                        await self._stop(QUEUE_MISSING)
        except* Exception:
            # Outside the scope: its own Cancelled is already filtered out, and
            # any other Cancelled (the stream actor's) is re-raised by except*.
            self.log.exception("crashed")
            self.cancel(INTERNAL_ERROR)
        finally:
            if self._pinging is not None:
                self._pinging.cancel()
            with trio.CancelScope(shield=True):
                await self._close()
            self._log_stats("closed")
            if self._on_exit is not None:
                self._on_exit(self)

    # -- the resubscription loop's owner ---------------------------------

    def position(self) -> StartPosition:
        position = self._core.position()
        self._consumer.position = position
        return position

    def subscribe(self, position: StartPosition) -> AbstractAsyncContextManager[Subscription]:
        prefetch = self._settings.prefetch
        if self._subscribe is not None and not self._own_consumer:
            return self._subscribe(position, prefetch, self._wait_in_hub)
        return self._context.broker.subscribe(self.routing_key, position, prefetch=prefetch)

    async def consume(self, subscription: Subscription, position: StartPosition) -> None:
        if isinstance(subscription, HubMember):
            # The hub's consumer is counted (and reported) by the hub.
            self._consumer.state = "shared"
        else:
            self._consumer.state = "attached"
            self._context.observer.consumer_subscribed()
        self._consumer.subscriptions += 1
        self._core.attached(position, self._now_ms())
        channel = self._channel or await self._accept()
        self.state = "open"
        # The pump (here rather than in a method: one frame fewer per idle
        # websocket): feed events to the core, send what it batches,
        # acknowledge what it processed. Events are acknowledged only once
        # their frames are written, so a client that stops reading stops the
        # broker (backpressure). While it waits with nothing buffered, a
        # member of the live-tail hub is written to from the hub's task
        # instead (:meth:`_deliver_now`).
        if isinstance(subscription, HubMember):
            subscription.direct = self._deliver_now
        async for event in subscription:
            if not self._core.batch:  # this event starts a batch
                self._received_at = trio.current_time()
            if self._take(event, subscription.buffered):
                await self._write_batch(channel)
                self._processed(event.offset)
                await subscription.ack(event.offset)

    async def detached(self, why: Detached) -> None:
        self._attach_failed()
        if why is Detached.UNAVAILABLE:
            await self._wait_for_broker()

    async def _wait_in_hub(self) -> None:
        """The shared consumer we are joining waits for the broker: so do we, accepted.

        As refused as a consumer of our own: should the hub end before it
        attaches, our own resumes from the handshake too.
        """
        self._attach_failed()
        await self._wait_for_broker()

    def _attach_failed(self) -> None:
        self._consumer.state = "reconnecting"
        self._core.attach_failed(int(self.started_at * 1000))  # a no-op once attached

    async def _wait_for_broker(self) -> None:
        if self._channel is None:
            await self._accept()
        self.state = "waiting"
        self.log.warning("broker unavailable; waiting (last_ordinal=%s)", self.last_ordinal)

    # -- I/O -------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._context.clock() * 1000)

    async def _accept(self) -> WebSocket:
        try:
            channel = await self._pending.accept()
        except WebSocketClosed:
            await self._stop(Ending.PEER_GONE)
        self._channel = channel
        self.state = "open"
        self.log.info("accepted")
        channel.on_gone(self._peer_gone)
        self._keepalive.schedule(self)
        return channel

    def _deliver_now(self, event: StreamEvent, received_at: float) -> Completion | None:
        """The hub's fast path (:data:`~actors.hub.DirectDelivery`): one event, never blocking.

        Runs in the hub's task while this connection's pump waits with
        nothing buffered (so its batch is empty): the same steps as the pump,
        with the frame handed to the socket at once. What the socket did not
        take is written by :meth:`_flush_held` in the pump's task, with the
        send timeout. A failure ends this connection only, never the hub.
        """
        channel = self._channel
        if channel is None or self.ending:
            return None  # the member is about to leave
        try:
            self._received_at = received_at  # the batch is empty: this event starts it
            self._take(event, 0)
            core = self._core
            complete = True
            if core.batch:
                complete = channel.send_now(core.batch)
                self._sent(core.batch)
                core.batch_sent()
            if self._poisoned and complete:
                self.cancel(POISONED)
                return None
            self._processed(event.offset)
        except WebSocketClosed:
            self.cancel(Ending.PEER_GONE)
            return None
        except Exception:
            self.log.exception("crashed")
            self.cancel(INTERNAL_ERROR)
            return None
        return None if complete else self._flush_held

    def _take(self, event: StreamEvent, buffered: int) -> bool:
        """Feed ``event`` to the core and log what it decided; whether to write the batch now.

        A POISON is only recorded here: what came before it is written first.
        """
        core = self._core
        self._context.observer.event_received()
        step = core.receive(event, self._now_ms())
        if isinstance(step, Skipped):
            self.log.warning("skipped ordinal=%d: %s", step.ordinal, step.reason)
        elif isinstance(step, Poisoned):
            self.log.info("POISON at ordinal=%d", step.ordinal)
            self._poisoned = True
            return True
        return core.flush_due(buffered)

    async def _write_batch(self, channel: WebSocket) -> None:
        """Send the core's batch (if any); after a POISON, end the connection."""
        core = self._core
        if core.batch:
            await self._bounded(channel.send_texts(core.batch))
            self._sent(core.batch)
            core.batch_sent()
        if self._poisoned:
            await self._stop(POISONED)

    async def _flush_held(self) -> None:
        """Write what the fast path handed to the socket but it did not take yet."""
        channel = self._channel
        assert channel is not None
        await self._bounded(channel.flush())
        if self._poisoned:
            await self._stop(POISONED)

    async def _bounded(self, write: Awaitable[None]) -> None:
        """Await a write to the websocket; a client that does not read ends the connection."""
        timeout = self._settings.send_timeout
        with trio.move_on_after(timeout) as sending:
            try:
                await write
            except WebSocketClosed:
                await self._stop(Ending.PEER_GONE)
        if sending.cancelled_caught:
            self.log.warning("client did not read for %gs", timeout)
            await self._stop(slow_client(timeout))

    def _sent(self, texts: list[str]) -> None:
        """Count frames handed to the socket; their lag runs from the batch's first event."""
        lag = trio.current_time() - self._received_at
        size = 0
        for text in texts:
            size += len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        self.bytes_sent += size
        self.messages_sent += len(texts)
        self._context.observer.frames_sent(len(texts), size, lag)

    def _processed(self, offset: int) -> None:
        """Everything up to ``offset`` is done with; log the stats when they are due."""
        core = self._core
        core.processed(offset)
        interval = self._settings.stats_interval  # 0: only at close
        if interval > 0 and core.received >= self._next_stats:
            self._log_stats("stats")
            self._next_stats = (core.received // interval + 1) * interval

    def _peer_gone(self) -> None:
        """The websocket's reader ended: the client left (or the socket was closed)."""
        self.cancel(Ending.PEER_GONE)

    def ping_due(self) -> Callable[[], Awaitable[None]] | None:
        """The stream's keepalive schedule says it is time to ping (see :mod:`actors.keepalive`)."""
        if self._channel is None or self.ending or self._pinging is not None:
            return None
        return self._ping

    async def _ping(self) -> None:
        """One ping: a pong within the timeout schedules the next, else the peer is dropped.

        A task in the stream actor's nursery: the connection cancels it when
        it ends, and an unexpected failure ends this connection only.
        """
        channel = self._channel
        if channel is None or self.ending:
            return
        timeout = self._settings.ping_timeout
        pinging = self._pinging = trio.CancelScope()
        try:
            with pinging:
                with trio.move_on_after(timeout) as waiting:
                    await channel.ping()
                if waiting.cancelled_caught:
                    self.log.warning(
                        "no pong within %gs: dropping the connection",
                        timeout,
                    )
                    self.cancel(Ending.ABORT)
                elif not self.ending:
                    self._keepalive.schedule(self)
        except WebSocketClosed:
            self.cancel(Ending.PEER_GONE)
        except Exception:
            self.log.exception("crashed")
            self.cancel(INTERNAL_ERROR)
        finally:
            self._pinging = None

    async def _close(self) -> None:
        """Close the websocket for the recorded outcome (shielded by the caller)."""
        self.state = "closing"
        self._consumer.state = "detached"
        if self._outcome is None:  # cancelled from above without a reason: the service stops
            self._outcome = SHUTDOWN
        outcome = self._outcome
        if outcome is Ending.PEER_GONE:
            self.state = "closed"
            return
        timeout = self._settings.close_timeout
        channel = self._channel
        if channel is None:
            if not isinstance(outcome, CloseReason):
                self.state = "closed"
                return
            # Never accepted: complete the handshake to be able to send the code.
            with trio.move_on_after(timeout):
                with contextlib.suppress(WebSocketClosed):
                    channel = await self._pending.accept()
            if channel is None:
                self.state = "closed"
                return
        if isinstance(outcome, CloseReason):
            with trio.move_on_after(timeout) as closing:
                await channel.close(outcome.code, outcome.reason)
            if closing.cancelled_caught:
                self.log.warning(
                    "close did not complete within %gs: aborting",
                    timeout,
                )
                await self._abort(channel)
        else:
            await self._abort(channel)
        self.state = "closed"

    async def _abort(self, channel: WebSocket) -> None:
        with trio.move_on_after(self._settings.close_timeout):
            await channel.abort()

    # -- observation -----------------------------------------------------

    def _log_stats(self, what: str) -> None:
        outcome = self._outcome
        how = ""
        if what == "closed" and outcome is not None:
            how = (
                f" code={outcome.code} reason={outcome.reason!r}"
                if isinstance(outcome, CloseReason)
                else f" ({outcome.value})"
            )
        self.log.info(
            "%s%s received=%d sent=%d skipped=%d bytes=%d last_ordinal=%s",
            what,
            how,
            self.messages_received,
            self.messages_sent,
            self.messages_skipped,
            self.bytes_sent,
            self.last_ordinal,
        )

    def snapshot(self) -> Snapshot:
        return node(
            "connection",
            self.id,
            self.state,
            self.started_at,
            {
                "messages_received": self.messages_received,
                "messages_sent": self.messages_sent,
                "messages_skipped": self.messages_skipped,
                "bytes_sent": self.bytes_sent,
                "last_ordinal": self.last_ordinal,
                "peer": self.peer,
            },
            [self._consumer.snapshot(f"{self.id}/consumer", self._core.newest_offset)],
        )
