"""The replica's side of coordination: the control session, alive beats, answers.

One :class:`Coordinator` per replica, wired between the control port and
the supervisor (:class:`LocalReplica`). It

* keeps a control session open (reopened with backoff when the broker
  connection carrying it is lost). Each time a session opens, *before*
  handling any message, it has the supervisor re-read the registry
  (:meth:`LocalReplica.resync`): streams deleted while this replica was cut
  off are closed then. Until that is done :attr:`synced` is false, and the
  supervisor checks the registry before serving any websocket;
* publishes :class:`~actors.cluster.messages.ReplicaAlive` every
  ``alive_interval`` seconds (and at once when a session opens), and keeps
  the :class:`~actors.cluster.membership.Membership` of the others;
* on :meth:`stream_deleted` (the supervisor answering a DELETE) publishes
  :class:`~actors.cluster.messages.StreamDeleted` and waits until every
  replica live at that moment answered :class:`~actors.cluster.messages.Closed`,
  at most ``confirm_timeout`` seconds (SPEC section 7: 5 s); a replica that
  did not answer is presumed gone and dropped from the table;
* answers a :class:`~actors.cluster.messages.StreamDeleted` of another
  replica once the supervisor closed that stream here;
* publishes :class:`~actors.cluster.messages.TakenOver` for every websocket
  the supervisor admits, and hands those of others to the supervisor, which
  closes its older connections of that stream with 4001.

Messages from this replica come back to it (the exchange is a fanout) and
are ignored; the table never lists this replica (:meth:`Coordinator.replicas`
adds it first).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from actors.backoff import Backoff, BackoffPolicy
from actors.cluster.membership import Membership
from actors.cluster.messages import (
    BadMessage,
    Closed,
    ConnectionKey,
    Message,
    ReplicaAlive,
    ReplicaGone,
    StreamDeleted,
    TakenOver,
    decode,
    encode,
)
from actors.ports.broker import BrokerUnavailable
from actors.ports.control import ControlChannel
from actors.ports.registry import RegistryUnavailable

log = logging.getLogger(__name__)

#: SPEC section 7: a replica that does not confirm a deletion within 5 s is presumed gone.
CONFIRM_TIMEOUT = 5.0
#: How often a replica says it is alive.
ALIVE_INTERVAL = 2.0
#: Takeover announcements waiting to be published; beyond this they are dropped (logged).
_OUTBOX_SIZE = 1024
#: Bound on saying goodbye at shutdown.
_LEAVE_TIMEOUT = 1.0


class LocalReplica(Protocol):
    """What the coordinator needs from this replica's supervisor."""

    @property
    def websocket_count(self) -> int: ...

    async def close_deleted(self, stream_id: int) -> None:
        """Close the stream's websockets here (1000) because another replica deleted it."""
        ...

    def take_over(self, stream_id: int, newer: ConnectionKey) -> None:
        """Close this replica's connections of the stream older than ``newer`` (4001)."""
        ...

    async def resync(self) -> None:
        """Re-read the registry; close what it no longer has. Raises ``RegistryUnavailable``."""
        ...


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """One live replica, as ``GET /debug/replicas`` shows it."""

    id: str
    name: str
    started_at: float
    websockets: int
    this: bool

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "started_at": self.started_at,
            "websockets": self.websockets,
            "this": self.this,
        }


class _Confirmations:
    """The replicas a deletion still waits for."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.done = trio.Event()
        if not expected:
            self.done.set()

    def confirmed(self, replica: str) -> None:
        self.expected.discard(replica)
        if not self.expected:
            self.done.set()


class Coordinator:
    """Coordinates this replica with the others; see the module documentation."""

    def __init__(
        self,
        control: ControlChannel,
        replica_id: str,
        name: str,
        *,
        clock: Callable[[], float] = time.time,
        alive_interval: float = ALIVE_INTERVAL,
        confirm_timeout: float = CONFIRM_TIMEOUT,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.name = name
        self._control = control
        self._clock = clock
        self.started_at = clock()
        self._alive_interval = alive_interval
        self._confirm_timeout = confirm_timeout
        self._backoff = backoff or BackoffPolicy(0.2, 5.0)
        self.membership = Membership(expiry=3 * alive_interval + 1.0)
        self._local: LocalReplica | None = None
        self._waiting: dict[str, _Confirmations] = {}
        self._outbox_send, self._outbox = trio.open_memory_channel[Message](_OUTBOX_SIZE)
        self._beat_now = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: Whether a control session is open and the registry was re-read since it opened.
        self.synced = False
        #: Control sessions opened so far (each one re-read the registry).
        self.sessions = 0
        self._session_open = False
        #: Takeover announcements dropped since the outbox last had room.
        self.dropped_takeovers = 0

    def attach(self, local: LocalReplica) -> None:
        self._local = local

    # -- running ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the session, the beats and the outbox going until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._beats)
            nursery.start_soon(self._send_outbox)
            nursery.start_soon(self._sessions)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _sessions(self) -> None:
        """Open a session, re-read the registry, handle messages; again when cut off.

        Until a session is open (also at start-up, with the broker down) the
        replica serves anyway, checking each websocket in the registry.
        """
        backoff = Backoff(self._backoff)
        while True:
            await self._control.wait_available()
            try:
                async with self._control.session() as messages:
                    self._session_open = True
                    await self._resync()
                    self.synced = True
                    self.sessions += 1
                    backoff.reset()
                    self._beat_now.set()
                    log.info("control session open: replica %s", self.replica_id)
                    async for body in messages:
                        self._receive(body)
            except BrokerUnavailable as error:
                log.warning("control session lost (%s): reconnecting", error)
            finally:
                self.synced = self._session_open = False
            await backoff.sleep()

    async def _resync(self) -> None:
        """Have the supervisor re-read the registry, retrying while it is unavailable."""
        assert self._local is not None, "attach() the supervisor before run()"
        backoff = Backoff(self._backoff)
        while True:
            try:
                await self._local.resync()
                return
            except RegistryUnavailable as error:
                if backoff.attempts == 0:
                    log.warning("cannot re-read the registry yet (%s): retrying", error)
                await backoff.sleep()

    async def _beats(self) -> None:
        while True:
            with trio.move_on_after(self._alive_interval):
                await self._beat_now.wait()
            self._beat_now = trio.Event()
            count = self._local.websocket_count if self._local is not None else 0
            await self._publish(ReplicaAlive(self.replica_id, self.name, self.started_at, count))

    async def _send_outbox(self) -> None:
        async for message in self._outbox:
            await self._publish(message)

    async def _publish(self, message: Message) -> bool:
        """Publish while a session is open (see :mod:`actors.adapters.rabbitmq_control`)."""
        if not self._session_open:
            log.debug("control message not sent (no session): %r", message)
            return False
        try:
            await self._control.publish(encode(message))
        except BrokerUnavailable as error:
            log.debug("control message not sent (%s): %r", error, message)
            return False
        return True

    # -- receiving -------------------------------------------------------

    def _receive(self, body: bytes) -> None:
        try:
            message = decode(body)
        except BadMessage as error:
            log.debug("ignored a control message: %s", error)
            return
        now = trio.current_time()
        match message:
            case ReplicaAlive():
                if message.sender != self.replica_id and self.membership.heard(message, now):
                    log.info("replica %s (%s) is live", message.sender, message.name)
            case ReplicaGone():
                self._gone(message.sender)
            case StreamDeleted():
                if message.sender != self.replica_id and self._nursery is not None:
                    self._nursery.start_soon(self._close_and_answer, message)
            case Closed():
                if message.to == self.replica_id:
                    waiting = self._waiting.get(message.request)
                    if waiting is not None:
                        waiting.confirmed(message.sender)
            case TakenOver():
                if message.sender != self.replica_id and self._local is not None:
                    self._local.take_over(message.stream, message.key)

    def _gone(self, replica: str) -> None:
        self.membership.forget(replica)
        for waiting in self._waiting.values():
            waiting.confirmed(replica)

    async def _close_and_answer(self, message: StreamDeleted) -> None:
        assert self._local is not None
        await self._local.close_deleted(message.stream)
        await self._publish(
            Closed(self.replica_id, message.sender, message.stream, message.request)
        )

    # -- for the supervisor ----------------------------------------------

    async def stream_deleted(self, stream_id: int) -> None:
        """Tell every replica; return once each live one closed it, or after the bound."""
        now = trio.current_time()
        expected = {m.id for m in self.membership.live(now) if m.id != self.replica_id}
        request = secrets.token_hex(8)
        waiting = self._waiting[request] = _Confirmations(expected)
        try:
            if not await self._publish(StreamDeleted(self.replica_id, stream_id, request)):
                log.warning(
                    "stream=%d deletion not announced (the broker is down): the other "
                    "replicas close it when they re-read the registry",
                    stream_id,
                )
                return
            with trio.move_on_after(self._confirm_timeout):
                await waiting.done.wait()
            for replica in sorted(waiting.expected):
                log.warning(
                    "stream=%d replica %s did not confirm the deletion within %gs: presumed gone",
                    stream_id,
                    replica,
                    self._confirm_timeout,
                )
                self.membership.forget(replica)
        finally:
            del self._waiting[request]

    def connection_admitted(self, stream_id: int, started_at: float, connection: str) -> None:
        """Announce a new websocket of the stream (fire and forget; never blocks).

        Not announced while no other replica is live (a single process sends
        nothing per websocket). Under a burst beyond the outbox, the excess is
        dropped: those older connections elsewhere stay until the next
        takeover of their stream (one warning per burst).
        """
        if not any(m.id != self.replica_id for m in self.membership.live(trio.current_time())):
            return
        key = ConnectionKey(started_at, self.replica_id, connection)
        try:
            self._outbox_send.send_nowait(TakenOver(self.replica_id, stream_id, key))
        except trio.WouldBlock:
            if self.dropped_takeovers == 0:
                log.warning(
                    "stream=%d takeover not announced: the control outbox is full", stream_id
                )
            self.dropped_takeovers += 1
        else:
            self.dropped_takeovers = 0

    async def leave(self) -> None:
        """Say goodbye (bounded), so that no replica waits for this one."""
        with trio.move_on_after(_LEAVE_TIMEOUT):
            await self._publish(ReplicaGone(self.replica_id))

    def replicas(self) -> list[ReplicaInfo]:
        """The live replicas, this one first."""
        count = self._local.websocket_count if self._local is not None else 0
        this = ReplicaInfo(self.replica_id, self.name, self.started_at, count, this=True)
        others = [
            ReplicaInfo(m.id, m.name, m.started_at, m.websockets, this=False)
            for m in self.membership.live(trio.current_time())
            if m.id != self.replica_id
        ]
        return [this, *others]
