"""What the web edges need from the actor tree, as protocols.

``web/`` depends on these, not on the concrete :class:`actors` supervisor, so
the edges can be tested against small fakes and the supervisor can change
its insides freely. The real ``Supervisor`` and ``StreamActor`` satisfy them
structurally (no inheritance needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from actors.ports.registry import StreamRecord
from actors.ports.websocket import PendingWebSocket
from actors.start import ClientStart


class StreamHandle(Protocol):
    """One event stream's actor, as the websocket edge sees it."""

    @property
    def record(self) -> StreamRecord: ...

    async def serve(self, websocket: PendingWebSocket, start: ClientStart) -> None:
        """Start one websocket connection of this stream; return once the actor holds it.

        The actor accepts the pending websocket itself (after attaching its
        broker consumer) and closes it with the appropriate code. It takes the
        websocket over with ``websocket.on_stop`` and returns (the edge then
        reads the connection until it is over); a websocket it refuses is
        closed before this returns.
        """
        ...


class StreamView(Protocol):
    """One stream actor, as the operator views read it (``actors.stream.StreamActor``).

    ``state`` is ``idle`` exactly when the stream has no connections (and is
    not closing or restarting): an idle stream's row needs no snapshot.
    """

    @property
    def record(self) -> StreamRecord: ...

    @property
    def state(self) -> str: ...

    @property
    def restarts(self) -> int: ...

    def snapshot(self) -> dict[str, object]:
        """The stream's node of the actor tree, its connections and consumers included."""
        ...


class StreamDirectory(Protocol):
    """The supervisor, as the internal API and the websocket edge see it."""

    async def create_stream(self, routing_key: str) -> StreamRecord:
        """Create and record a stream. Raises :class:`actors.ports.broker.BrokerUnavailable`."""
        ...

    async def delete_stream(self, stream_id: int) -> bool:
        """Delete a stream; ``False`` if unknown. Returns once its websockets are closed."""
        ...

    async def list_streams(self) -> list[StreamRecord]:
        """Every stream, ordered by id."""
        ...

    def find_stream(self, uuid: str) -> StreamHandle | None:
        """The actor of the stream with this websocket uuid, if any."""
        ...

    def snapshot(self) -> dict[str, object]:
        """The actor tree as JSON-ready data (``GET /debug/actors?full=1``)."""
        ...

    @property
    def streams(self) -> Sequence[StreamView]:
        """Every stream actor, ordered by id (a copy: O(streams), for the debug index)."""
        ...

    @property
    def stream_count(self) -> int:
        """How many streams this process holds an actor for, in O(1) (``/metrics``)."""
        ...

    @property
    def busy_streams(self) -> Sequence[StreamView]:
        """The stream actors whose task runs (those with connections), in O(busy streams).

        What ``/metrics`` samples the connections' lag from: never every stream.
        """
        ...
