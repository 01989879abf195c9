"""The supervisor: one stream actor per event stream, and the stream lifecycle.

It restores a stream actor per registry record at start-up, creates and
deletes event streams (broker queue, registry record, actor) for the
internal API, hands websockets to their stream actor (:meth:`find_stream`),
retries queue deletions the broker could not do, and shuts everything down
with 1001.

Queue ownership (SPEC sections 2 and 7): the stream that made the broker
create its queue owns it. The registry decides every step of it in one
transaction (see :mod:`actors.ports.registry`): the intent to own is
recorded (a pending deletion) before the declare and claimed by the stream's
record; deleting the owner hands ownership to the oldest remaining stream of
the routing key, or records the pending deletion of the queue; the
pending-deletion retry asks the registry again before the broker deletes the
queue. Within this process, creation and queue deletion are also serialised
by one lock, so a queue is never deleted under a stream being created here
for the same routing key.

Replicas (SPEC section 7): after :meth:`Supervisor.join`, the supervisor
works with a :class:`~actors.cluster.coordinator.Coordinator`. A DELETE
here returns only once every live replica closed the stream's websockets
(or the confirm bound passed), also for a stream this replica never served;
a deletion announced by another replica closes the stream here
(:meth:`close_deleted`); a websocket admitted here is announced, and one
admitted elsewhere closes the older ones here with 4001 (:meth:`take_over`).
A websocket for a uuid this replica does not know is looked up in the
registry (the stream may have been created on another replica); while the
control session is not synced (cut off from the broker, or not yet
re-read), every websocket is checked in the registry before it is served,
and a stream the registry no longer has is closed then. Deleted ids are
remembered for a while (tombstones), so that a lookup that raced with a
deletion cannot bring the stream back.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid as uuid_module
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from actors.backoff import Backoff, BackoffPolicy
from actors.close import DELETED, SHUTDOWN, CloseReason
from actors.cluster.coordinator import Coordinator
from actors.cluster.messages import ConnectionKey
from actors.context import ActorContext
from actors.ports.broker import Broker, BrokerError, NotAStreamQueue
from actors.ports.observer import ActorObserver, NullObserver
from actors.ports.registry import QueueFate, Registry, RegistryUnavailable, StreamRecord
from actors.ports.websocket import PendingWebSocket
from actors.settings import ActorSettings
from actors.snapshot import Snapshot, WallClock, node
from actors.start import ClientStart
from actors.stream import CLOSE_MARGIN, StreamActor, refuse

log = logging.getLogger(__name__)

#: Bound on deleting again a queue whose POST failed; the retry does the rest.
_UNDO_TIMEOUT = 5.0
#: Deleted stream ids remembered, so that a racing registry lookup cannot revive one.
_TOMBSTONES = 10_000
#: The close of a websocket this replica cannot check in the registry now.
REGISTRY_UNAVAILABLE = CloseReason(1013, "The registry is unavailable, try again later")
#: The close of a websocket for a uuid no stream has (as the websocket edge answers it).
UNKNOWN_STREAM = CloseReason(1000, "Unknown event stream")


class Supervisor:
    """Owns every stream actor; see the module documentation."""

    def __init__(
        self,
        broker: Broker,
        registry: Registry,
        settings: ActorSettings,
        *,
        clock: WallClock = time.time,
        observer: ActorObserver | None = None,
    ) -> None:
        self._broker = broker
        self._registry = registry
        self._settings = settings
        self._context = ActorContext(broker, settings, clock, observer or NullObserver())
        self._streams: dict[int, StreamActor] = {}
        self._by_uuid: dict[str, StreamActor] = {}
        #: Stream id -> how many tasks of that stream actor run (a stream with
        #: connections has one): what :attr:`busy_streams` reads in O(busy).
        self._busy: dict[int, int] = {}
        #: Set when a stream was added below the highest id (restored after a
        #: create, or learnt from another replica): :attr:`streams` re-sorts once.
        self._unordered = False
        self._deleting: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._pending_wakeup = trio.Event()
        self._pending_count = 0
        self._shutting_down = False
        self._state = "starting"
        self._started_at = clock()
        self._peers: Coordinator | None = None
        self._tombstones: OrderedDict[int, None] = OrderedDict()

    # -- running ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore the stream actors, report started, then run until cancelled.

        If the registry cannot be read yet (PostgreSQL down at start), the
        supervisor reports started anyway and restores once it can.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._restore)
                nursery.start_soon(self._retry_pending_deletions)
                self._state = "running"
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
                    self._state = "stopping"
        finally:
            self._state = "stopped"

    async def _restore(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Add a stream actor per record; reports started after the first attempt.

        While the registry is unavailable, retries with backoff: the service
        runs (not ready) and serves these streams once they are restored.
        """
        backoff = self._registry_backoff()
        while True:
            try:
                async with self._lock:
                    records = await self._registry.list()
                    for record in records:
                        if record.id not in self._streams and record.id not in self._tombstones:
                            self._add(record)
            except RegistryUnavailable as error:
                if backoff.attempts == 0:
                    log.warning("cannot restore the event streams yet (%s): retrying", error)
                    task_status.started()
                await backoff.sleep()
            else:
                log.info("supervisor running: %d event streams restored", len(records))
                if backoff.attempts == 0:
                    task_status.started()
                return

    async def _spawn(self, async_fn: Callable[..., Awaitable[object]]) -> trio.Nursery:
        """Start a stream actor's task (``Nursery.start``); ``RuntimeError`` if stopped."""
        if self._nursery is None:
            raise RuntimeError("the supervisor is not running")
        nursery: trio.Nursery = await self._nursery.start(async_fn)
        return nursery

    async def _spawn_busy(
        self, stream_id: int, async_fn: Callable[..., Awaitable[object]]
    ) -> trio.Nursery:
        """:meth:`_spawn` for a stream actor's task; the stream is busy while it runs.

        An idle stream has no task, so the busy ones are known without
        looking at every stream.
        """

        async def busy(*, task_status: trio.TaskStatus[object]) -> None:
            self._busy[stream_id] = self._busy.get(stream_id, 0) + 1
            try:
                await async_fn(task_status=task_status)
            finally:
                if self._busy[stream_id] > 1:
                    self._busy[stream_id] -= 1
                else:
                    del self._busy[stream_id]

        return await self._spawn(busy)

    def _add(self, record: StreamRecord) -> StreamActor:
        actor = StreamActor(
            record,
            self._context,
            functools.partial(self._spawn_busy, record.id),
            on_admit=self._announce,
        )
        if self._streams and record.id < next(reversed(self._streams)):
            self._unordered = True
        self._streams[record.id] = actor
        self._by_uuid[record.uuid] = actor
        if self._shutting_down:
            actor.begin_close(SHUTDOWN)
        return actor

    # -- the internal API ------------------------------------------------

    async def create_stream(self, routing_key: str) -> StreamRecord:
        """Ensure the queue, record the stream, add its actor.

        Raises ``BrokerUnavailable``, ``NotAStreamQueue`` (nothing recorded)
        and ``RegistryUnavailable``. A queue this call declares is never
        orphaned (SPEC section 2): its pending deletion is recorded before
        the declare (``on_declare``) and removed by the registry in the
        transaction that records the stream; if anything fails or is
        cancelled in between, the queue is deleted again here, or by the
        pending-deletion retry (also after a crash).
        """
        intent = False

        async def record_intent() -> None:
            nonlocal intent
            await self._registry.add_pending_queue_deletion(routing_key)
            intent = True

        async with self._lock:
            try:
                created = await self._broker.ensure_stream(routing_key, on_declare=record_intent)
            except NotAStreamQueue:
                if intent:  # someone else's queue appeared meanwhile: never ours to delete
                    await self._registry.remove_pending_queue_deletion(routing_key)
                raise
            except BaseException:
                if intent:  # the declare may have happened before the failure
                    await self._undo_declare(routing_key)
                raise
            try:
                if intent and not created:
                    # Declared meanwhile with other arguments: not ours after all.
                    await self._registry.remove_pending_queue_deletion(routing_key)
                record = await self._registry.create(routing_key, owns_queue=created)
            except BaseException:
                if created:
                    await self._undo_declare(routing_key)
                raise
            self._add(record)
            if created:
                await self._ensure_again(routing_key)
        log.info(
            "stream=%d created routing_key=%r owns_queue=%s",
            record.id,
            record.routing_key,
            record.owns_queue,
        )
        return record

    async def _ensure_again(self, routing_key: str) -> None:
        """Make sure the queue this call declared still exists, now that the stream owns it.

        Another replica's pending-deletion retry may have taken our intent
        for a crashed POST and deleted the queue before our record claimed
        it (see :mod:`actors.ports.registry`); declaring it again closes that
        window. The stream is recorded already: a failure here is logged, and
        the queue is declared again by the next POST of the key.
        """
        try:
            await self._broker.ensure_stream(routing_key)
        except BrokerError as error:
            log.warning("could not check the queue of %r again: %s", routing_key, error)

    async def _undo_declare(self, routing_key: str) -> None:
        """The queue this call declared is not recorded: delete it again, shielded, bounded.

        Whatever is not done in time is left to the pending-deletion retry:
        the intent is still recorded.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(_UNDO_TIMEOUT) as undo:
            await self._release_queue(routing_key)
        if undo.cancelled_caught:
            self._pending_wakeup.set()

    async def delete_stream(self, stream_id: int) -> bool:
        """Close the stream's websockets (1000) on every replica, then remove it.

        ``False`` if no such stream is recorded (nor served here). Raises
        ``RegistryUnavailable`` (nothing changed then). Shielded: once
        started, a deletion completes even if the caller goes away.
        """
        in_progress = self._deleting.get(stream_id)
        if in_progress is not None:
            await in_progress.wait()
            if stream_id not in self._streams:
                return True
            # That deletion failed (registry unavailable): try ourselves.
        if stream_id not in self._streams and self._peers is None:
            return False
        done = self._deleting[stream_id] = trio.Event()
        deleted = False
        try:
            with trio.CancelScope(shield=True):
                deleted = await self._delete(stream_id)
        finally:
            del self._deleting[stream_id]
            done.set()
        return deleted

    async def _delete(self, stream_id: int) -> bool:
        """Remove the record (one transaction settles the queue), close, then delete the queue.

        The registry first: if it cannot be written, nothing has changed and
        the caller gets ``RegistryUnavailable``. A queue left without a
        stream is recorded as a pending deletion in that same transaction, so
        its deletion survives a crash at any later point. The websockets
        here and on the other replicas are closed concurrently.
        """
        async with self._lock:
            deletion = await self._registry.delete(stream_id)
            actor = self._forget(stream_id)
            if actor is None and deletion is None:
                return False
            if deletion is not None:
                self._adopt(deletion.queue)
        async with trio.open_nursery() as nursery:
            if actor is not None:
                actor.begin_close(DELETED)
                nursery.start_soon(self._wait_closed, actor)
            if self._peers is not None:
                nursery.start_soon(self._peers.stream_deleted, stream_id)
        if deletion is not None and deletion.queue.delete:
            async with self._lock:
                await self._release_queue(deletion.record.routing_key)
        log.info("stream=%d deleted", stream_id)
        return True

    def _forget(self, stream_id: int) -> StreamActor | None:
        """Drop the stream's actor from the tables: new websockets no longer find it."""
        self._tombstones[stream_id] = None
        if len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)
        actor = self._streams.pop(stream_id, None)
        if actor is not None:
            self._by_uuid.pop(actor.record.uuid, None)
        return actor

    async def _wait_closed(self, actor: StreamActor) -> None:
        with trio.move_on_after(self._settings.close_timeout * 2 + CLOSE_MARGIN) as waiting:
            await actor.wait_closed()
        if waiting.cancelled_caught:
            log.warning("stream=%d some connections did not close in time", actor.record.id)

    async def _release_queue(self, routing_key: str) -> None:
        """Delete the queue whose last stream went, or leave it to the retry (lock held)."""
        if not await self._delete_pending(routing_key):
            self._pending_wakeup.set()

    def _adopt(self, fate: QueueFate) -> None:
        """Show a hand-over of queue ownership on the heir's actor, if it lives here."""
        if fate.heir is None:
            return
        heir = self._streams.get(fate.heir.id)
        if heir is not None:
            heir.record = replace(heir.record, owns_queue=True)
        log.info("stream=%d now owns the queue of %r", fate.heir.id, fate.heir.routing_key)

    async def list_streams(self) -> list[StreamRecord]:
        return await self._registry.list()

    def find_stream(self, uuid: str) -> StreamActor | RegistryLookup | None:
        """The actor for a websocket uuid, or a lookup in the registry first (replicas).

        Without replicas: the actor, or ``None``. With them, a uuid this
        replica does not know, or any uuid while the control session is not
        synced, is checked in the registry when the websocket is served.
        """
        actor = self._by_uuid.get(uuid)
        if self._peers is None or (actor is not None and self._peers.synced):
            return actor
        if actor is None and not _is_uuid(uuid):
            return None  # never a stream's: spare the registry the question
        return RegistryLookup(self, uuid, actor)

    async def _look_up(self, uuid: str, known: StreamActor | None) -> StreamActor | CloseReason:
        """The stream's actor after asking the registry, or why the websocket is refused."""
        try:
            record = await self._registry.find(uuid)
        except RegistryUnavailable:
            if known is not None:
                return known  # cut off from both: serve what we know, as before
            return REGISTRY_UNAVAILABLE
        # No lock (it may be held across broker calls): from here on nothing
        # awaits, so a deletion lands wholly before (tombstone) or after (it
        # closes the actor added here).
        if record is None:
            if known is not None and self._streams.get(known.record.id) is known:
                self._forget(known.record.id)
                known.log.info("closed: the registry no longer has this stream")
                known.begin_close(DELETED)
            return UNKNOWN_STREAM
        if record.id in self._tombstones:
            return UNKNOWN_STREAM
        actor = self._streams.get(record.id)
        return actor if actor is not None else self._add(record)

    # -- replicas ----------------------------------------------------------

    def join(self, peers: Coordinator) -> None:
        """Work with the other replicas through ``peers`` (before :meth:`run`)."""
        self._peers = peers
        peers.attach(self)

    @property
    def websocket_count(self) -> int:
        """Websockets open here, in O(busy streams): an idle stream has none."""
        streams = self._streams
        return sum(len(streams[key].connections) for key in self._busy if key in streams)

    def _announce(self, stream_id: int, started_at: float, connection: str) -> None:
        if self._peers is not None:
            self._peers.connection_admitted(stream_id, started_at, connection)

    async def close_deleted(self, stream_id: int) -> None:
        """Another replica deleted the stream: close its websockets here (idempotent)."""
        actor = self._forget(stream_id)  # no lock: the answer must not wait for a POST
        if actor is not None:
            actor.log.info("deleted on another replica: closing")
            actor.begin_close(DELETED)
            await self._wait_closed(actor)

    def take_over(self, stream_id: int, newer: ConnectionKey) -> None:
        """A websocket was admitted on another replica: replace the older ones here."""
        actor = self._streams.get(stream_id)
        if actor is not None and self._peers is not None:
            actor.take_over(newer, self._peers.replica_id)

    async def resync(self) -> None:
        """Re-read the registry: close the streams it no longer has, add the new ones."""
        closing: list[StreamActor] = []
        async with self._lock:
            records = await self._registry.list()
            present = {record.id for record in records}
            for stream_id in list(self._streams):
                if stream_id not in present and stream_id not in self._deleting:
                    actor = self._forget(stream_id)
                    if actor is not None:
                        closing.append(actor)
            for record in records:
                if record.id not in self._streams and record.id not in self._tombstones:
                    self._add(record)
        for actor in closing:
            actor.log.info("deleted while this replica was cut off: closing")
            actor.begin_close(DELETED)
        for actor in closing:
            await self._wait_closed(actor)

    def replicas(self) -> list[dict[str, object]]:
        """The live replicas, this one first (``GET /debug/replicas``)."""
        if self._peers is None:
            return [
                {
                    "id": "",
                    "name": "",
                    "started_at": self._started_at,
                    "websockets": self.websocket_count,
                    "this": True,
                }
            ]
        return [replica.as_json() for replica in self._peers.replicas()]

    # -- pending queue deletions -----------------------------------------

    async def _retry_pending_deletions(self) -> None:
        """Delete the queues of the registry's pending deletions, with backoff.

        The list comes from the registry, not from this process: a pending
        deletion left by a crash (of any replica) is found at start-up.
        """
        backoff = self._registry_backoff()
        while True:
            self._pending_wakeup = trio.Event()
            try:
                pending = await self._registry.pending_queue_deletions()
            except RegistryUnavailable as error:
                if backoff.attempts == 0:
                    log.info("pending queue deletions wait for the registry: %s", error)
            else:
                self._pending_count = len(pending)
                if not pending:
                    backoff.reset()
                    await self._pending_wakeup.wait()
                    continue
                await self._broker.wait_available()
                if await self._delete_all_pending(pending):
                    backoff.reset()
                    continue
            with trio.move_on_after(backoff.next_delay()):
                await self._pending_wakeup.wait()

    async def _delete_all_pending(self, routing_keys: list[str]) -> bool:
        """Try each pending deletion; ``False`` as soon as one failed."""
        for routing_key in routing_keys:
            async with self._lock:
                if not await self._delete_pending(routing_key):
                    return False
        return True

    async def _delete_pending(self, routing_key: str) -> bool:
        """Settle one pending deletion (lock held); ``False`` if the broker or registry failed.

        The registry decides, in one transaction, whether a stream of the key
        exists (it then keeps and owns the queue) or the queue goes; only
        then the broker deletes it, and only after that the pending deletion
        is forgotten. If another replica recorded a stream of the key while
        the broker was deleting, the queue is declared again for it.
        """
        try:
            fate = await self._registry.decide_pending_deletion(routing_key)
            self._adopt(fate)
            if fate.delete:
                await self._broker.delete_stream(routing_key)
                if await self._registry.complete_pending_deletion(routing_key):
                    # Another replica recorded a stream of the key meanwhile.
                    await self._broker.ensure_stream(routing_key)
                    log.info(
                        "queue of %r declared again for a stream created meanwhile", routing_key
                    )
                else:
                    log.info("deleted the queue of %r", routing_key)
        except (BrokerError, RegistryUnavailable) as error:
            log.warning("queue of %r not deleted yet (%s): will retry", routing_key, error)
            return False
        return True

    def _registry_backoff(self) -> Backoff:
        """The pauses of the loops that wait for the registry or the broker."""
        initial = max(self._settings.restart_backoff_initial, 0.01)
        maximum = max(self._settings.restart_backoff_max, initial)
        return Backoff(BackoffPolicy(initial, maximum))

    # -- shutdown and observation ----------------------------------------

    async def shutdown(self) -> None:
        """Close every websocket with 1001 and wait (bounded) for every actor to exit."""
        self._shutting_down = True
        self._state = "shutting down"
        actors = list(self._streams.values())
        for actor in actors:
            actor.begin_close(SHUTDOWN)
        with trio.move_on_after(self._settings.close_timeout * 2 + CLOSE_MARGIN) as waiting:
            for actor in actors:
                await actor.wait_closed()
        if waiting.cancelled_caught:
            log.warning("shutdown: some connections did not close in time")
        log.info("supervisor: every websocket closed")

    @property
    def streams(self) -> list[StreamActor]:
        """The stream actors, by id.

        The dict is kept in id order (restored in id order, ids only grow; it
        is re-sorted once after a stream was added out of order), so this is
        a plain copy: a sorted copy of 50,000 was the longest loop step of
        ``/debug/actors``.
        """
        if self._unordered:
            self._streams = dict(sorted(self._streams.items()))
            self._unordered = False
        return list(self._streams.values())

    @property
    def stream_count(self) -> int:
        """How many stream actors there are, in O(1) (``/metrics``)."""
        return len(self._streams)

    @property
    def busy_streams(self) -> list[StreamActor]:
        """The stream actors whose task runs (every stream with connections), by id.

        O(busy streams): idle streams are never visited.
        """
        streams = self._streams
        return [streams[key] for key in sorted(self._busy) if key in streams]

    def snapshot(self) -> Snapshot:
        children = [actor.snapshot() for actor in self.streams]
        connections = sum(len(actor.connections) for actor in self._streams.values())
        return node(
            "supervisor",
            "supervisor",
            self._state,
            self._started_at,
            {
                "streams": len(self._streams),
                "connections": connections,
                "pending_queue_deletions": self._pending_count,
            },
            children,
        )


class RegistryLookup:
    """A websocket for a stream this replica must check in the registry before serving."""

    __slots__ = ("_known", "_supervisor", "_uuid")

    def __init__(self, supervisor: Supervisor, uuid: str, known: StreamActor | None) -> None:
        self._supervisor = supervisor
        self._uuid = uuid
        self._known = known

    @property
    def record(self) -> StreamRecord:
        """The record of the stream this replica knows (only the websocket edge uses this)."""
        if self._known is None:
            raise LookupError("not looked up yet")
        return self._known.record

    async def serve(self, websocket: PendingWebSocket, start: ClientStart) -> None:
        found = await self._supervisor._look_up(self._uuid, self._known)
        if isinstance(found, CloseReason):
            await refuse(websocket, found, self._supervisor._settings.close_timeout)
            return
        await found.serve(websocket, start)


def _is_uuid(text: str) -> bool:
    try:
        uuid_module.UUID(text)
    except ValueError:
        return False
    return True
