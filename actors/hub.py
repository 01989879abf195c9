"""The live-tail hub: one broker consumer shared by a stream's live-tail websockets.

Broker consumers are counted per *cursor*, not per websocket: every
connection that asked for the live tail (no ``stream_from_*`` parameter)
reads the same events, so a stream actor runs
at most one :class:`LiveTailHub`, holding one ``broker.subscribe(routing_key,
FromNext())``, and fans each event out to its members. RabbitMQ then opens
one set of stream segment files per stream instead of one per websocket.

- The hub is started lazily (in the stream actor's nursery, so DELETE and
  shutdown cancel it with the connections) by the first member and stops
  when its last member leaves, releasing the broker consumer.
- Joining an attached hub is synchronous: the member is registered without a
  checkpoint, so every event the hub receives afterwards reaches it (SPEC
  section 4: the consumer is attached before the handshake completes). A
  member joining a hub that is still attaching waits until it is attached.
- A member whose connection waits for its next event with nothing
  buffered is written to from the hub's own task: the hub hands the event
  to the member's :data:`DirectDelivery` (the connection actor's fast path,
  which never blocks), so a live event costs no wake-up of the
  connection's task. What the fast path could not finish (a socket that
  did not take every byte) it returns as a :data:`Completion`, which the
  connection's task runs before its next event.
- While the hub's task waits for its next event, a consumer that can push
  (:class:`~actors.ports.broker.PushingSubscription`) hands each event to
  the hub in the task that received it (the AMQP connection's reader), and
  the hub fans it out there if no member's buffer is full: a live event
  then costs no wake-up of the hub's task either. An event some member has
  no room for goes through the hub's task, which gives that member its
  grace (below).
- Each member has a bounded buffer (``prefetch`` events). The hub acks the
  broker right after an event is fanned out (every member buffered it), so
  memory per stream is bounded by members x prefetch events.
- A member whose buffer is full is given :data:`DEMOTE_GRACE` seconds to
  catch up (empty its buffer) while the hub holds the event (and, not
  acking, the broker). A burst that a healthy client absorbs in a moment
  thus demotes nobody, and a slow client stalls the others at most once.
  One still behind is *demoted*: it leaves the hub, drains what it
  buffered, then its iteration raises :class:`LeftHub`; the connection
  actor resubscribes on a consumer of its own from its cursor + 1 (no gap,
  no duplicate, and the slow client is backpressured by the broker again;
  its send timeout still applies).
- Broker outage or a lost consumer: the hub resubscribes through the one
  resubscription loop (:func:`~actors.resubscription.keep_subscribed`) from
  its last offset + 1; members only see a pause, and joiners wait in the
  hub (each accepts its websocket meanwhile, :data:`OnWaiting`), so a
  stream's live clients share one retrying consumer however long the broker
  refuses it. A hub that has received nothing yet resumes from the time of
  its first attempt
  (:func:`~actors.resubscription.position_at`), and from then on gives each
  member only the events not stamped (own timestamp) before that member
  joined: nothing published during the outage is lost, and a member that
  joined later receives nothing stamped before its handshake. Events without
  a timestamp of their own are positioned by the broker (whole seconds).
  :class:`~actors.ports.broker.StreamNotFound` ends every member with that error.
  Any other failure (a bug) ends every member with :class:`LeftHub`, so
  connections fall back to consumers of their own instead of crashing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import trio

from actors.context import ActorContext
from actors.logcontext import LogContext
from actors.ports.broker import (
    FromNext,
    FromOffset,
    FromTimestamp,
    PushingSubscription,
    StartPosition,
    StreamEvent,
    StreamNotFound,
    Subscription,
)
from actors.resubscription import Detached, keep_subscribed, position_at
from actors.snapshot import Snapshot, node

log = logging.getLogger(__name__)

#: Seconds a member with a full buffer has to empty it before it is demoted
#: (counted from when the hub first found it full since it was last empty).
DEMOTE_GRACE = 0.5

#: The name of the hub's node in the debug tree.
NAME = "live-tail"

#: What a member's fast path leaves for its connection's task to finish, if anything.
Completion = Callable[[], Awaitable[None]]
#: A connection's fast path: take ``event`` (received from the broker at trio
#: time ``received_at``) now, from the hub's task, without blocking; return
#: what is left to do in the connection's own task, if anything.
DirectDelivery = Callable[[StreamEvent, float], Completion | None]
#: What a joiner does, in its own task, once the hub it waits for is waiting
#: for the broker (the connection accepts its websocket and says so).
OnWaiting = Callable[[], Awaitable[None]]


class LeftHub(Exception):
    """A member no longer receives events from the hub: continue on a consumer of its own.

    Raised by the member's iteration once it has yielded everything it had
    buffered. ``resume_offset`` is the offset of the first event the member
    has not received (``None`` if the hub never saw one); a member that
    processed events resumes from its cursor + 1, which is the same offset.
    ``not_before_ms`` is set when the hub was filtering the member's events
    by time (it resumed by time): the member goes on filtering them.
    """

    def __init__(
        self, reason: str, resume_offset: int | None, not_before_ms: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.resume_offset = resume_offset
        self.not_before_ms = not_before_ms


class HubMember:
    """One connection's share of the hub: a :class:`~actors.ports.broker.Subscription`.

    Iteration yields the events the hub fanned out to it, in stream order;
    :meth:`ack` is a no-op (the hub acknowledges the broker itself).
    """

    __slots__ = (
        "_buffer",
        "_capacity",
        "_completion",
        "_end",
        "_room",
        "_waiter",
        "behind_since",
        "direct",
        "next_offset",
        "not_before_ms",
        "since_ms",
    )

    def __init__(self, capacity: int, next_offset: int | None, since_ms: int) -> None:
        #: A list, not a deque: it is almost always empty, and an empty deque
        #: holds a 64-slot block (~700 B per member). At most ``capacity`` long.
        self._buffer: list[StreamEvent] = []
        self._capacity = max(capacity, 1)
        #: Raised once the buffer is drained: the member's iteration is over.
        self._end: BaseException | None = None
        #: The connection's task while it waits in ``__anext__`` (parked
        #: without an Event: one fewer object and frame per idle member).
        self._waiter: trio.lowlevel.Task | None = None
        #: Set when the hub waits for this member's buffer to have room.
        self._room: trio.Event | None = None
        #: The offset of the next event this member expects (``None``: unknown yet).
        self.next_offset = next_offset
        #: When the hub found the buffer full (trio time), until it is empty again.
        self.behind_since: float | None = None
        #: Wall time (ms) the member joined: its handshake, as far as the hub knows.
        self.since_ms = since_ms
        #: Set once the hub resumed by time: events stamped before it are not offered.
        self.not_before_ms: int | None = None
        #: The connection's fast path, used while it waits with nothing buffered.
        self.direct: DirectDelivery | None = None
        #: What the fast path left to finish; run by the member's iteration first.
        self._completion: Completion | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def ended(self) -> bool:
        return self._end is not None

    @property
    def full(self) -> bool:
        """Whether an event offered now might find no room (see :meth:`_offer`)."""
        return len(self._buffer) >= self._capacity

    def _offer(self, event: StreamEvent, received_at: float) -> bool:
        """Buffer ``event``; ``False`` (nothing buffered) if the buffer is full.

        An event stamped before :attr:`not_before_ms` is passed over (and
        counts as offered): it was published before the member joined.
        """
        own_ms = event.timestamp_ms
        if self.not_before_ms is not None and own_ms is not None and own_ms < self.not_before_ms:
            self.next_offset = event.offset + 1
            return True
        if len(self._buffer) >= self._capacity:
            return False
        self.next_offset = event.offset + 1
        direct = self.direct
        if (
            direct is not None
            and self._waiter is not None  # the connection waits in __anext__ ...
            and not self._buffer  # ... with nothing before this event
            and self._completion is None
        ):
            completion = direct(event, received_at)
            if completion is not None:
                self._completion = completion
                self._wake()
            return True
        self._buffer.append(event)
        self._wake()
        return True

    def _finish(self, end: BaseException) -> None:
        """End the iteration with ``end`` once the buffer is drained (first end wins)."""
        if self._end is None:
            self._end = end
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def _abort_wait(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake_hub(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    async def _wait_room(self) -> None:
        """Until the buffer has room (or the member is gone: see :meth:`LiveTailHub.leave`)."""
        room = self._room = trio.Event()
        await room.wait()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        # A checkpoint on every call, but only one: a member that is about
        # to wait for its next event checkpoints in ``wait_task_rescheduled``, so a
        # live event costs the connection's pump one wake-up, not two.
        if self._buffer or self._end is not None or self._completion is not None:
            await trio.lowlevel.checkpoint()
        while True:
            completion = self._completion
            if completion is not None:
                self._completion = None
                await completion()
                continue
            if self._buffer:
                event = self._buffer.pop(0)
                if self._room is not None:
                    self._wake_hub()
                if not self._buffer:
                    self.behind_since = None  # caught up
                return event
            if self._end is not None:
                raise self._end
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    async def ack(self, offset: int) -> None:
        """Nothing to do: the hub acknowledged the event when it fanned it out."""


class _Membership:
    """:meth:`LiveTailHub.membership`: a class, not a generator, held for a member's life."""

    __slots__ = ("_capacity", "_hub", "_member", "_on_waiting")

    def __init__(self, hub: LiveTailHub, capacity: int, on_waiting: OnWaiting | None) -> None:
        self._hub = hub
        self._capacity = capacity
        self._on_waiting = on_waiting
        self._member: HubMember | None = None

    async def __aenter__(self) -> HubMember:
        member = self._member = await self._hub.join(self._capacity, self._on_waiting)
        return member

    async def __aexit__(self, *exc_info: object) -> None:
        if self._member is not None:
            self._hub.leave(self._member)


class LiveTailHub:
    """The shared live-tail consumer of one stream actor; see the module documentation."""

    def __init__(
        self,
        stream_id: int,
        routing_key: str,
        context: ActorContext,
        on_stopped: Callable[[LiveTailHub], None] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.routing_key = routing_key
        self.started_at = context.clock()
        #: ``starting``, ``attaching``, ``attached``, ``reconnecting``, ``stopping``,
        #: ``stopped`` or ``failed``.
        self.state = "starting"
        #: Events received from the broker (each fanned out to every member).
        self.received = 0
        #: Offset of the last event received (the hub's cursor).
        self.last_offset: int | None = None
        #: Times the broker consumer was attached (1 + resubscriptions).
        self.subscriptions = 0
        #: Members that were too slow and moved to a consumer of their own.
        self.demoted = 0
        self.log = LogContext(log, stream=stream_id)
        #: Wall time (ms) of the first attempt: where a hub that received nothing resumes.
        self._since_ms: int | None = None
        #: Set while the broker refuses the consumer (until the next attach).
        self._waiting = False
        #: Whether the hub resumed by time (members then filter by their join time).
        self._by_time = False
        self._context = context
        self._prefetch = context.settings.prefetch
        self._on_stopped = on_stopped
        self._members: dict[HubMember, None] = {}
        #: Members waiting for the hub to attach (they receive nothing yet).
        self._joining: dict[HubMember, None] = {}
        self._attached = False
        #: Set (and replaced) whenever the hub attaches or an attempt fails.
        self._changed = trio.Event()
        self._scope = trio.CancelScope()
        #: Once set, the hub accepts no member and is (or will be) gone.
        self._stopping = False
        #: Set while the hub's task handles an event: nothing is pushed meanwhile.
        self._busy = False

    # -- observation -----------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether the broker consumer is attached right now."""
        return self._attached

    @property
    def members(self) -> int:
        return len(self._members) + len(self._joining)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def snapshot(self) -> Snapshot:
        return node(
            "consumer",
            NAME,
            self.state,
            self.started_at,
            {
                "members": self.members,
                "received": self.received,
                "last_offset": self.last_offset,
                "subscriptions": self.subscriptions,
                "demoted": self.demoted,
                "prefetch": self._prefetch,
            },
        )

    # -- members ---------------------------------------------------------

    def membership(
        self, capacity: int, on_waiting: OnWaiting | None = None
    ) -> AbstractAsyncContextManager[HubMember]:
        """:meth:`join` on entry, :meth:`leave` on exit: a ``Broker.subscribe`` look-alike."""
        return _Membership(self, capacity, on_waiting)

    async def join(self, capacity: int, on_waiting: OnWaiting | None = None) -> HubMember:
        """Become a member; on return, every event the hub receives from now on is buffered.

        Synchronous (no checkpoint) when the hub is attached. Otherwise waits
        until it is, however long the broker refuses the hub's consumer (the
        hub retries for all its joiners; ``on_waiting`` runs once, in the
        joiner's task, when it starts waiting for the broker). Raises
        :class:`~actors.ports.broker.StreamNotFound` if the queue is missing,
        :class:`LeftHub` if the hub is gone.
        """
        if self._stopping:
            raise LeftHub("the shared consumer has stopped", None)
        next_offset = None if self.last_offset is None else self.last_offset + 1
        member = HubMember(capacity, next_offset, int(self._context.clock() * 1000))
        if self._by_time:
            member.not_before_ms = member.since_ms
        if self._attached:
            self._members[member] = None
            return member
        self._joining[member] = None
        told = False
        try:
            while not self._attached:
                if member._end is not None:
                    raise member._end  # the hub ended (nothing was buffered)
                if self._waiting and on_waiting is not None and not told:
                    told = True
                    await on_waiting()
                    continue
                await self._changed.wait()
        except BaseException:
            self.leave(member)
            raise
        return member

    def leave(self, member: HubMember) -> None:
        """``member`` is done (idempotent); the last one to leave stops the hub."""
        self._members.pop(member, None)
        self._joining.pop(member, None)
        member._wake_hub()
        self._stop_if_empty()

    def stop(self) -> None:
        """Stop the hub (releasing its consumer); members fall back to their own."""
        if not self._stopping:
            self._stopping = True
            self.state = "stopping"
            if self._on_stopped is not None:
                self._on_stopped(self)
        self._scope.cancel()

    def _stop_if_empty(self) -> None:
        if not self._members and not self._joining:
            self.stop()

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def _end_all(self, end: Callable[[HubMember], BaseException]) -> None:
        """End every member and joiner (they drain their buffers first)."""
        everyone = [*self._members, *self._joining]
        self._members.clear()
        self._joining.clear()
        for member in everyone:
            member._finish(end(member))
        self._notify()

    # -- the hub's task --------------------------------------------------

    async def run(self) -> None:
        """Consume the stream and fan out until stopped; never raises (but Cancelled)."""
        self.log.info("live-tail starting")
        try:
            with self._scope:
                self._stop_if_empty()  # its first member could not join
                await self._consume()
        except Exception:
            self.log.exception(
                "live-tail crashed: %d members fall back to their own consumers", self.members
            )
            self.state = "failed"
        finally:
            self._attached = False
            if self.state != "failed":
                self.state = "stopped"
            self._stopping = True
            # Whoever is left (a crash, or the stream actor being cancelled)
            # continues on a consumer of its own.
            self._end_all(
                lambda m: LeftHub("the shared consumer stopped", m.next_offset, m.not_before_ms)
            )
            if self._on_stopped is not None:
                self._on_stopped(self)
            self.log.info(
                "live-tail %s received=%d last_offset=%s subscriptions=%d demoted=%d",
                self.state,
                self.received,
                self.last_offset,
                self.subscriptions,
                self.demoted,
            )

    async def _consume(self) -> None:
        try:
            await keep_subscribed(self, self._context.broker, self.log)
        except StreamNotFound:
            self.log.warning("live-tail: the stream queue does not exist")
            self.state = "failed"
            self._attached = False
            self._end_all(lambda m: StreamNotFound(self.routing_key))

    # -- the resubscription loop's owner ---------------------------------

    def position(self) -> StartPosition:
        """After the last event received; by time if none was; else the next one."""
        if self.last_offset is not None:
            return FromOffset(self.last_offset + 1)
        if self._since_ms is not None:
            return position_at(self._since_ms)
        return FromNext()

    def subscribe(self, position: StartPosition) -> AbstractAsyncContextManager[Subscription]:
        self.state = "attaching"
        if self._since_ms is None:
            self._since_ms = int(self._context.clock() * 1000)
        return self._context.broker.subscribe(self.routing_key, position, prefetch=self._prefetch)

    async def consume(self, subscription: Subscription, position: StartPosition) -> None:
        self._attach(position)
        pushing = subscription if isinstance(subscription, PushingSubscription) else None
        if pushing is not None:
            pushing.listen(self._take_pushed)
        try:
            # Only what was not pushed: every event without a pushing
            # consumer, and those a full member had no room for.
            async for event in subscription:
                self._busy = True
                try:
                    received_at = trio.current_time()
                    slow = self._fan_out(event, received_at)
                    if slow:
                        await self._fan_out_slow(event, received_at, slow)
                    await subscription.ack(event.offset)
                finally:
                    self._busy = False
        finally:
            if pushing is not None:
                pushing.listen(None)

    def _take_pushed(self, event: StreamEvent) -> bool:
        """The consumer's listener: fan ``event`` out now if nobody needs a grace for it."""
        if self._busy:
            return False  # the hub's task holds an earlier event
        for member in self._members:
            if member.full:
                return False
        slow = self._fan_out(event, trio.current_time())
        assert not slow, "a member with room refused an event"
        return True

    async def detached(self, why: Detached) -> None:
        """The consumer is gone or refused: members and joiners stay and wait."""
        self._attached = False
        self.state = "reconnecting"
        if why is Detached.UNAVAILABLE:
            self.log.warning(
                "live-tail: broker unavailable; %d members wait (last_offset=%s)",
                self.members,
                self.last_offset,
            )
            self._waiting = True  # joiners accept their websockets (OnWaiting)
        self._notify()
        self._stop_if_empty()

    def _attach(self, position: StartPosition) -> None:
        self._attached = True
        self._waiting = False
        self.state = "attached"
        self.subscriptions += 1
        self._context.observer.consumer_subscribed()
        if isinstance(position, FromTimestamp) and not self._by_time:
            # By time, having received nothing since its first attempt (see
            # position): from now on nobody gets what was stamped before it
            # joined (the broker's window starts a second before the first).
            self._by_time = True
            for member in [*self._members, *self._joining]:
                member.not_before_ms = member.since_ms
        # Joiners become members without a checkpoint: from the first event on.
        for member in self._joining:
            self._members[member] = None
        self._joining.clear()
        self._notify()
        self._stop_if_empty()  # everyone left (or could not join) meanwhile

    def _fan_out(self, event: StreamEvent, received_at: float) -> list[HubMember]:
        """Buffer ``event`` for every member; return those whose buffer is full."""
        self.received += 1
        self.last_offset = event.offset
        slow: list[HubMember] = []
        for member in self._members:
            if not member._offer(event, received_at):
                slow.append(member)
        return slow

    async def _fan_out_slow(
        self, event: StreamEvent, received_at: float, slow: list[HubMember]
    ) -> None:
        """Give each full member its grace to make room for ``event``, else demote it.

        The graces run concurrently (all start now at the latest), so however
        many members fall behind at once, the others wait at most one grace.
        """
        now = trio.current_time()
        for member in slow:
            if member.behind_since is None:
                member.behind_since = now
        for member in slow:
            assert member.behind_since is not None
            offered = False
            with trio.move_on_at(member.behind_since + DEMOTE_GRACE):
                while member in self._members:
                    if member._offer(event, received_at):
                        offered = True
                        break
                    await member._wait_room()
            if not offered and member in self._members:
                self._demote(member)

    def _demote(self, member: HubMember) -> None:
        del self._members[member]
        self.demoted += 1
        self.log.info(
            "live-tail: a member is %d events behind; it moves to its own consumer at offset %s",
            member.buffered,
            member.next_offset,
        )
        member._finish(
            LeftHub("too slow for the shared consumer", member.next_offset, member.not_before_ms)
        )
        self._stop_if_empty()
