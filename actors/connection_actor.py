"""The connection actor: one websocket, its own cursor, a consumer (own or shared).

Lifecycle (SPEC section 4, DESIGN "The actor tree"):

1. Subscribe first (the consumer is attached before the handshake completes,
   so a live tail misses nothing published after it), then accept. It
   subscribes through its stream actor, which hands a live tail (``FromNext``)
   a member of the stream's shared :class:`~actors.hub.LiveTail` consumer and
   any other position a broker consumer of its own. Both are a
   :class:`~actors.ports.broker.Subscription`: the pump is one code path.
2. Run three things concurrently: the *pump* (event -> frame -> ack), a
   *reader* that drains and discards client frames (trio-websocket's inbound
   queue holds one message; an undrained one stops its ping answers), and a
   *keepalive* that pings and aborts a peer that stops answering.
3. Broker outage: the websocket stays open; wait for the broker, resubscribe
   from ``cursor + 1`` (the last processed offset): no gap, no duplicate.
   (On the shared consumer the hub does that for all its members.) A member
   the hub drops (too slow, or the hub failed) drains what it buffered, then
   resubscribes on a consumer of its own from ``cursor + 1``, at once.
4. Whoever ends the actor (the pump, the reader, the keepalive, the stream
   actor, the supervisor) first records an :data:`~actors.close.Outcome` and
   then cancels the actor's scope; the ``finally`` closes the websocket with
   it inside a shielded, time-bounded scope (abort if the close cannot
   complete). An unexpected exception is logged and closes with 1011.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
from collections.abc import Callable
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
from actors.formatting import EventClock, Poison, Skip, Text, format_event
from actors.hub import RESUBSCRIBE_BACKOFF_INITIAL as RESUBSCRIBE_BACKOFF_INITIAL
from actors.hub import RESUBSCRIBE_BACKOFF_MAX as RESUBSCRIBE_BACKOFF_MAX
from actors.hub import RESUBSCRIBE_PAUSE as RESUBSCRIBE_PAUSE
from actors.hub import HubMember, LeftHub
from actors.ports.broker import (
    BrokerUnavailable,
    FromNext,
    FromOffset,
    FromTimestamp,
    StartPosition,
    StreamNotFound,
    Subscription,
)
from actors.ports.websocket import PendingWebSocket, WebSocket, WebSocketClosed
from actors.snapshot import Snapshot, node
from actors.start import AfterOrdinal, AtOrAfterTime, ClientStart, LiveTail

log = logging.getLogger(__name__)

#: Most frames written to a websocket with one socket write.
SEND_BATCH = 64

#: Attaches a consumer of the connection's stream at a position with a
#: prefetch (``Broker.subscribe`` with the routing key bound). The stream
#: actor supplies one that routes ``FromNext`` to its shared live tail.
Subscriber = Callable[[StartPosition, int], AbstractAsyncContextManager[Subscription]]


def start_position(start: ClientStart) -> StartPosition:
    """Where the broker consumer starts for what the client asked (SPEC section 4).

    ``stream_from_ordinal=N`` wants ordinal N+1 first, which is offset N.
    ``stream_from_timestamp`` starts one (whole) second early, because the
    broker positions by seconds; the actor then skips what is too early.
    """
    match start:
        case LiveTail():
            return FromNext()
        case AfterOrdinal(ordinal):
            return FromOffset(ordinal)
        case AtOrAfterTime(timestamp_ms):
            return FromTimestamp(timestamp_ms // 1000 - 1)
    raise TypeError(f"not a client start: {start!r}")  # pragma: no cover


def describe_position(position: StartPosition) -> str:
    match position:
        case FromNext():
            return "next"
        case FromOffset(offset):
            return f"offset {offset}"
        case FromTimestamp(seconds):
            return f"timestamp {seconds}s"
    raise TypeError(f"not a start position: {position!r}")  # pragma: no cover


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

    def snapshot(self, name: str) -> Snapshot:
        return node(
            "consumer",
            name,
            self.state,
            self.started_at,
            {
                "start": describe_position(self.position),
                "prefetch": self.prefetch,
                "subscriptions": self.subscriptions,
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
        self.messages_received = 0
        self.messages_sent = 0
        self.messages_skipped = 0
        self.bytes_sent = 0
        self.last_ordinal: int | None = None
        #: Set once the actor has completely finished (websocket closed).
        self.finished = trio.Event()
        self._context = context
        self._settings = context.settings
        self._pending = websocket
        self._channel: WebSocket | None = None
        self._on_exit = on_exit
        self._subscribe = subscribe
        #: Set once the shared consumer dropped this connection: from then on
        #: it always has a consumer of its own.
        self._own_consumer = False
        self._scope = trio.CancelScope()
        self._outcome: Outcome | None = None
        self._initial = start_position(start)
        self._consumer = ConsumerNode(self._initial, self._settings.prefetch, self.started_at)
        #: Offset of the last event processed (sent, or skipped and acked).
        self._cursor: int | None = None
        #: Events below this offset are never delivered (``stream_from_ordinal``).
        self._min_offset = start.ordinal if isinstance(start, AfterOrdinal) else 0
        #: Until the first event at or after it, skip events stamped before this.
        self._not_before_ms = start.timestamp_ms if isinstance(start, AtOrAfterTime) else None
        self._clock = EventClock()

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

    async def _stop(self, reason: Outcome) -> NoReturn:
        self.cancel(reason)
        await trio.lowlevel.checkpoint()  # raises Cancelled: our own scope is cancelled
        raise AssertionError("unreachable: the connection scope was cancelled")

    # -- the actor -------------------------------------------------------

    async def run(self) -> None:
        """Serve the websocket until the connection ends; never raises (but Cancelled)."""
        log.info(
            "stream=%d conn=%s opening peer=%s start=%s",
            self.stream_id,
            self.id,
            self.peer,
            describe_position(self._initial),
        )
        try:
            with self._scope:
                await self._serve()
        except* Exception:
            # Outside the scope: its own Cancelled is already filtered out, and
            # any other Cancelled (the stream actor's) is re-raised by except*.
            log.exception("stream=%d conn=%s crashed", self.stream_id, self.id)
            self.cancel(INTERNAL_ERROR)
        finally:
            with trio.CancelScope(shield=True):
                await self._close()
            self._log_stats("closed")
            self.finished.set()
            if self._on_exit is not None:
                self._on_exit(self)

    def _attach(self, position: StartPosition) -> AbstractAsyncContextManager[Subscription]:
        prefetch = self._settings.prefetch
        if self._subscribe is not None and not self._own_consumer:
            return self._subscribe(position, prefetch)
        return self._context.broker.subscribe(self.routing_key, position, prefetch=prefetch)

    async def _serve(self) -> None:
        broker = self._context.broker
        position = self._initial
        backoff = RESUBSCRIBE_BACKOFF_INITIAL
        async with trio.open_nursery() as helpers:
            while True:
                try:
                    async with self._attach(position) as subscription:
                        if isinstance(subscription, HubMember):
                            # The hub's consumer is counted (and reported) by the hub.
                            self._consumer.state = "shared"
                        else:
                            self._consumer.state = "attached"
                            self._context.observer.consumer_subscribed()
                        self._consumer.subscriptions += 1
                        backoff = RESUBSCRIBE_BACKOFF_INITIAL
                        if self._channel is None:
                            await self._accept(helpers)
                        self.state = "open"
                        await self._pump(subscription)
                    # The broker ended the consumer without an error: attach again.
                    self._consumer.state = "reconnecting"
                    await trio.sleep(RESUBSCRIBE_PAUSE)
                except LeftHub as left:
                    # Dropped by the shared consumer after draining what it
                    # buffered for us: continue at once on a consumer of our own.
                    self._own_consumer = True
                    self._consumer.state = "reconnecting"
                    position = self._resume_position(left.resume_offset)
                    self._consumer.position = position
                    log.info(
                        "stream=%d conn=%s left the shared consumer (%s); own consumer from %s",
                        self.stream_id,
                        self.id,
                        left.reason,
                        describe_position(position),
                    )
                    continue
                except StreamNotFound:
                    self._consumer.state = "detached"
                    log.warning(
                        "stream=%d conn=%s the stream queue does not exist",
                        self.stream_id,
                        self.id,
                    )
                    await self._stop(QUEUE_MISSING)
                except BrokerUnavailable:
                    self._consumer.state = "reconnecting"
                    if self._channel is None:
                        await self._accept(helpers)
                    self.state = "waiting"
                    log.warning(
                        "stream=%d conn=%s broker unavailable; waiting (last_ordinal=%s)",
                        self.stream_id,
                        self.id,
                        self.last_ordinal,
                    )
                    await broker.wait_available()
                    # Jittered, growing pause: many connections resubscribing
                    # at once after an outage must not stampede the broker,
                    # and a failure the broker keeps repeating must not spin.
                    await trio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, RESUBSCRIBE_BACKOFF_MAX)
                position = self._resume_position()
                self._consumer.position = position
                log.info(
                    "stream=%d conn=%s resubscribing from %s",
                    self.stream_id,
                    self.id,
                    describe_position(position),
                )

    def _resume_position(self, fallback_offset: int | None = None) -> StartPosition:
        if self._cursor is not None:
            return FromOffset(self._cursor + 1)
        if fallback_offset is not None:
            return FromOffset(fallback_offset)
        return self._initial

    async def _accept(self, helpers: trio.Nursery) -> None:
        try:
            channel = await self._pending.accept()
        except WebSocketClosed:
            await self._stop(Ending.PEER_GONE)
        self._channel = channel
        self.state = "open"
        log.info("stream=%d conn=%s accepted", self.stream_id, self.id)
        helpers.start_soon(self._read, channel)
        helpers.start_soon(self._keepalive, channel)

    async def _pump(self, subscription: Subscription) -> None:
        """Format and send events; acknowledge them only once they are sent.

        Events the subscription already holds are written together (at most
        :data:`SEND_BATCH`), so a replay costs one socket write per burst
        instead of one per frame; a live event is sent on its own at once.
        """
        channel = self._channel
        assert channel is not None
        clock = self._context.clock
        observer = self._context.observer
        stats_interval = self._settings.stats_interval  # 0: only at close
        next_stats = (
            (self.messages_received // stats_interval + 1) * stats_interval
            if stats_interval > 0
            else 0
        )
        batch: list[str] = []
        batch_ordinal = self.last_ordinal
        received_at = 0.0
        async for event in subscription:
            if not batch:
                received_at = trio.current_time()
            self.messages_received += 1
            observer.event_received()
            offset = event.offset
            if offset >= self._min_offset and not self._too_early(event.timestamp_ms):
                own_ms = event.timestamp_ms
                received_ms = int(clock() * 1000) if own_ms is None else 0
                stamp = self._clock.peek(own_ms, received_ms)
                ordinal = offset + 1
                result = format_event(event.body, ordinal, stamp)
                if isinstance(result, Text):
                    batch.append(result.text)
                    # Committed before the send: a failed send ends the
                    # connection, so no later frame can see this stamp.
                    self._clock.commit(stamp)
                    batch_ordinal = ordinal
                elif isinstance(result, Skip):
                    self.messages_skipped += 1
                    log.warning(
                        "stream=%d conn=%s skipped ordinal=%d: %s",
                        self.stream_id,
                        self.id,
                        ordinal,
                        result.reason,
                    )
                else:
                    assert isinstance(result, Poison)
                    if batch:  # what came before the POISON is delivered
                        await self._send(channel, batch, received_at)
                        self.last_ordinal = batch_ordinal
                    log.info(
                        "stream=%d conn=%s POISON at ordinal=%d", self.stream_id, self.id, ordinal
                    )
                    await self._stop(POISONED)
            if len(batch) < SEND_BATCH and subscription.buffered > 0:
                continue
            if batch:
                await self._send(channel, batch, received_at)
                batch = []
                self.last_ordinal = batch_ordinal
            self._cursor = offset
            await subscription.ack(offset)
            if stats_interval > 0 and self.messages_received >= next_stats:
                self._log_stats("stats")
                next_stats = (self.messages_received // stats_interval + 1) * stats_interval

    def _too_early(self, own_ms: int | None) -> bool:
        """``stream_from_timestamp``: skip events stamped before it, until the first one."""
        if self._not_before_ms is None:
            return False
        if own_ms is not None and own_ms < self._not_before_ms:
            return True
        self._not_before_ms = None  # positioned: deliver everything from here on
        return False

    async def _send(self, channel: WebSocket, texts: list[str], received_at: float) -> None:
        timeout = self._settings.send_timeout
        with trio.move_on_after(timeout) as sending:
            try:
                await channel.send_texts(texts)
            except WebSocketClosed:
                await self._stop(Ending.PEER_GONE)
        if sending.cancelled_caught:
            log.warning(
                "stream=%d conn=%s client did not read for %gs", self.stream_id, self.id, timeout
            )
            await self._stop(slow_client(timeout))
        lag = trio.current_time() - received_at
        observer = self._context.observer
        for text in texts:
            observer.event_sent(lag)
            self.bytes_sent += len(text) if text.isascii() else len(text.encode("utf-8"))
        self.messages_sent += len(texts)

    async def _read(self, channel: WebSocket) -> None:
        """Drain and discard whatever the client sends."""
        try:
            while True:
                await channel.receive()
        except WebSocketClosed:
            self.cancel(Ending.PEER_GONE)

    async def _keepalive(self, channel: WebSocket) -> None:
        interval = self._settings.ping_interval
        timeout = self._settings.ping_timeout
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(timeout) as waiting:
                try:
                    await channel.ping()
                except WebSocketClosed:
                    self.cancel(Ending.PEER_GONE)
                    return
            if waiting.cancelled_caught:
                log.warning(
                    "stream=%d conn=%s no pong within %gs: dropping the connection",
                    self.stream_id,
                    self.id,
                    timeout,
                )
                self.cancel(Ending.ABORT)
                return

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
                log.warning(
                    "stream=%d conn=%s close did not complete within %gs: aborting",
                    self.stream_id,
                    self.id,
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
        log.info(
            "stream=%d conn=%s %s%s received=%d sent=%d skipped=%d bytes=%d last_ordinal=%s",
            self.stream_id,
            self.id,
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
            [self._consumer.snapshot(f"{self.id}/consumer")],
        )
