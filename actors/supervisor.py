"""The supervisor: one stream actor per event stream, and the stream lifecycle.

It restores a stream actor per registry record at start-up, creates and
deletes event streams (broker queue, registry record, actor) for the
internal API, hands websockets to their stream actor (:meth:`find_stream`),
retries queue deletions the broker could not do, and shuts everything down
with 1001.

Queue ownership (SPEC section 2): the stream that made the broker create its
queue owns it. Deleting the owner hands ownership to the oldest remaining
stream of the same routing key; the last one deletes the queue (or records
a pending deletion, retried whenever the broker is available). Creation and
the ownership part of deletion are serialised by one lock, so a queue is
never deleted under a stream being created for the same routing key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from actors.close import DELETED, SHUTDOWN
from actors.context import ActorContext
from actors.ports.broker import Broker, BrokerError
from actors.ports.observer import ActorObserver, NullObserver
from actors.ports.registry import Registry, StreamRecord
from actors.settings import ActorSettings
from actors.snapshot import Snapshot, WallClock, node
from actors.stream import CLOSE_MARGIN, StreamActor

log = logging.getLogger(__name__)


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
        self._deleting: dict[int, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._pending_wakeup = trio.Event()
        self._pending_count = 0
        self._shutting_down = False
        self._state = "starting"
        self._started_at = clock()

    # -- running ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Restore the stream actors, report started, then run until cancelled."""
        records = await self._registry.list()
        for record in records:
            self._add(record)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._retry_pending_deletions)
                self._state = "running"
                log.info("supervisor running: %d event streams restored", len(records))
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
                    self._state = "stopping"
        finally:
            self._state = "stopped"

    async def _spawn(self, async_fn: Callable[..., Awaitable[object]]) -> trio.Nursery:
        """Start a stream actor's task (``Nursery.start``); ``RuntimeError`` if stopped."""
        if self._nursery is None:
            raise RuntimeError("the supervisor is not running")
        nursery: trio.Nursery = await self._nursery.start(async_fn)
        return nursery

    def _add(self, record: StreamRecord) -> StreamActor:
        actor = StreamActor(record, self._context, self._spawn)
        self._streams[record.id] = actor
        self._by_uuid[record.uuid] = actor
        if self._shutting_down:
            actor.begin_close(SHUTDOWN)
        return actor

    # -- the internal API ------------------------------------------------

    async def create_stream(self, routing_key: str) -> StreamRecord:
        """Ensure the queue, record the stream, add its actor. Raises ``BrokerUnavailable``."""
        async with self._lock:
            created = await self._broker.ensure_stream(routing_key)
            owns_queue = created
            if not created and routing_key in await self._registry.pending_queue_deletions():
                # We own this queue and failed to delete it earlier: keep it.
                await self._registry.remove_pending_queue_deletion(routing_key)
                owns_queue = True
            try:
                record = await self._registry.create(routing_key, owns_queue=owns_queue)
            except BaseException:
                if created:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        try:
                            await self._broker.delete_stream(routing_key)
                        except BrokerError:
                            log.warning("could not delete the queue of %r", routing_key)
                raise
            self._add(record)
        log.info(
            "stream=%d created routing_key=%r owns_queue=%s",
            record.id,
            record.routing_key,
            record.owns_queue,
        )
        return record

    async def delete_stream(self, stream_id: int) -> bool:
        """Close the stream's websockets (1000), then remove it; ``False`` if unknown.

        Shielded: once started, a deletion completes even if the caller goes away.
        """
        in_progress = self._deleting.get(stream_id)
        if in_progress is not None:
            await in_progress.wait()
            return True
        actor = self._streams.get(stream_id)
        if actor is None:
            return False
        done = self._deleting[stream_id] = trio.Event()
        try:
            with trio.CancelScope(shield=True):
                await self._delete(actor)
        finally:
            del self._deleting[stream_id]
            done.set()
        return True

    async def _delete(self, actor: StreamActor) -> None:
        record = actor.record
        # New websockets now find no stream; the existing ones are closed.
        self._by_uuid.pop(record.uuid, None)
        actor.begin_close(DELETED)
        with trio.move_on_after(self._settings.close_timeout * 2 + CLOSE_MARGIN) as waiting:
            await actor.wait_closed()
        if waiting.cancelled_caught:
            log.warning("stream=%d some connections did not close in time", record.id)
        async with self._lock:
            removed = await self._registry.delete(record.id)
            self._streams.pop(record.id, None)
            if removed is not None and removed.owns_queue:
                await self._release_queue(removed.routing_key)
        log.info("stream=%d deleted", record.id)

    async def _release_queue(self, routing_key: str) -> None:
        """The owner of ``routing_key``'s queue is gone: hand it over, or delete it."""
        heirs = sorted(
            (a for a in self._streams.values() if a.record.routing_key == routing_key),
            key=lambda a: a.record.id,
        )
        if heirs:
            heir = heirs[0]
            await self._registry.set_owns_queue(heir.record.id, True)
            heir.record = replace(heir.record, owns_queue=True)
            log.info("stream=%d now owns the queue of %r", heir.record.id, routing_key)
            return
        try:
            await self._broker.delete_stream(routing_key)
        except BrokerError as error:
            log.warning("queue %r not deleted (%s): will retry", routing_key, error)
            await self._registry.add_pending_queue_deletion(routing_key)
            self._pending_wakeup.set()
        else:
            log.info("deleted the queue of %r", routing_key)

    async def list_streams(self) -> list[StreamRecord]:
        return await self._registry.list()

    def find_stream(self, uuid: str) -> StreamActor | None:
        return self._by_uuid.get(uuid)

    # -- pending queue deletions -----------------------------------------

    async def _retry_pending_deletions(self) -> None:
        initial = max(self._settings.restart_backoff_initial, 0.01)
        delay = initial
        while True:
            self._pending_wakeup = trio.Event()
            pending = await self._registry.pending_queue_deletions()
            self._pending_count = len(pending)
            if not pending:
                await self._pending_wakeup.wait()
                continue
            await self._broker.wait_available()
            if await self._delete_pending(pending):
                delay = initial
                continue
            with trio.move_on_after(delay):
                await self._pending_wakeup.wait()
            delay = min(delay * 2, max(self._settings.restart_backoff_max, initial))

    async def _delete_pending(self, routing_keys: list[str]) -> bool:
        """Try the pending deletions; ``False`` if the broker failed us."""
        for routing_key in routing_keys:
            async with self._lock:
                if any(a.record.routing_key == routing_key for a in self._streams.values()):
                    # A stream of this key was created since: it keeps (owns) the queue.
                    await self._release_queue(routing_key)
                    await self._registry.remove_pending_queue_deletion(routing_key)
                    continue
                try:
                    await self._broker.delete_stream(routing_key)
                except BrokerError as error:
                    log.info("pending deletion of queue %r failed: %s", routing_key, error)
                    return False
                await self._registry.remove_pending_queue_deletion(routing_key)
                log.info("deleted the queue of %r (pending deletion)", routing_key)
        return True

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
        """The stream actors, by id."""
        return [self._streams[key] for key in sorted(self._streams)]

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
