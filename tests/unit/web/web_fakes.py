"""Fakes of the stream directory (the supervisor) for the web edge tests.

They implement exactly the methods the real ``Supervisor``/``StreamActor``
will have, so the edges are tested against the same contract.
"""

from __future__ import annotations

import copy
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable

from actors.ports.broker import BrokerUnavailable, NotAStreamQueue
from actors.ports.registry import RegistryUnavailable, StreamRecord
from actors.ports.websocket import PendingWebSocket
from actors.start import ClientStart


async def send_two_frames(
    actor: FakeActor, websocket: PendingWebSocket, start: ClientStart
) -> None:
    """The default connection: accept, two frames, close normally."""
    channel = await websocket.accept()
    await channel.send_texts([f"first {start!r}"])
    await channel.send_texts([f"second from {actor.record.routing_key}"])
    await channel.close(1000, "done")


Behaviour = Callable[["FakeActor", PendingWebSocket, ClientStart], Awaitable[None]]


class FakeActor:
    def __init__(self, record: StreamRecord, behaviour: Behaviour = send_two_frames) -> None:
        self.record = record
        self.behaviour = behaviour
        self.served: list[ClientStart] = []
        self.peers: list[str] = []
        self.restarts = 0
        #: Connection nodes of the actor tree; ``active`` while there are any,
        #: like the real actor.
        self.connections: list[dict[str, object]] = []

    @property
    def state(self) -> str:
        return "active" if self.connections else "idle"

    def snapshot(self) -> dict[str, object]:
        return {
            "kind": "stream",
            "name": str(self.record.id),
            "state": self.state,
            "counters": {
                "id": self.record.id,
                "routing_key": self.record.routing_key,
                "connections": len(self.connections),
                "restarts": self.restarts,
            },
            "children": copy.deepcopy(self.connections),  # fresh, as the actor's are
        }

    async def serve(self, websocket: PendingWebSocket, start: ClientStart) -> None:
        self.served.append(start)
        self.peers.append(websocket.peer)
        await self.behaviour(self, websocket, start)


class FakeDirectory:
    """An in-memory supervisor: records, actors, an on/off broker and registry."""

    def __init__(self) -> None:
        self.actors: dict[int, FakeActor] = {}
        self.broker_up = True
        #: ``None``: the registry works; else the reason RegistryUnavailable gives.
        self.registry_down: str | None = None
        #: Routing keys whose queue exists but is a classic (non-stream) queue.
        self.classic_queues: set[str] = set()
        self.behaviour: Behaviour = send_two_frames
        self.deleted: list[int] = []
        self._ids = itertools.count(1)

    async def create_stream(self, routing_key: str) -> StreamRecord:
        if not self.broker_up:
            raise BrokerUnavailable("broker down")
        if routing_key in self.classic_queues:
            raise NotAStreamQueue(f"queue {routing_key!r} is a classic queue")
        self._check_registry()
        record = StreamRecord(
            id=next(self._ids),
            uuid=str(uuid.uuid4()),
            routing_key=routing_key,
            owns_queue=True,
            created_at=time.time(),
        )
        self.actors[record.id] = FakeActor(record, self.behaviour)
        return record

    def _check_registry(self) -> None:
        if self.registry_down is not None:
            raise RegistryUnavailable(self.registry_down)

    async def delete_stream(self, stream_id: int) -> bool:
        self._check_registry()
        self.deleted.append(stream_id)
        return self.actors.pop(stream_id, None) is not None

    async def list_streams(self) -> list[StreamRecord]:
        self._check_registry()
        return [self.actors[key].record for key in sorted(self.actors)]

    def find_stream(self, uuid: str) -> FakeActor | None:
        for actor in self.actors.values():
            if actor.record.uuid == uuid:
                return actor
        return None

    def snapshot(self) -> dict[str, object]:
        return {
            "kind": "supervisor",
            "name": "supervisor",
            "state": "running",
            "children": [actor.snapshot() for actor in self.streams],
        }

    @property
    def streams(self) -> list[FakeActor]:
        return [self.actors[key] for key in sorted(self.actors)]

    @property
    def stream_count(self) -> int:
        return len(self.actors)

    @property
    def busy_streams(self) -> list[FakeActor]:
        return [self.actors[key] for key in sorted(self.actors) if self.actors[key].connections]
