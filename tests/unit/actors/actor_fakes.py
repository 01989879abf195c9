"""Fakes and harness for the actor tests: an in-memory websocket and a running supervisor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass, field, replace

import pytest
import trio

from actors.adapters.memory_broker import MemoryBroker, MemorySubscription
from actors.adapters.memory_registry import MemoryRegistry
from actors.hub import HubMember, LiveTailHub
from actors.ports.broker import StartPosition, StreamEvent, SubscriptionLost
from actors.ports.observer import ActorObserver
from actors.ports.registry import StreamRecord
from actors.ports.websocket import WebSocketClosed
from actors.settings import ActorSettings
from actors.start import ClientStart, LiveTail
from actors.stream import StreamActor
from actors.supervisor import Supervisor

#: The wall clock of the tests: a fixed epoch plus the (mock) trio clock.
EPOCH = 1_700_000_000.0
#: Generous bound for waits; under the autojump MockClock it is virtual time.
WAIT = 60.0

SETTINGS = ActorSettings(
    max_connections_per_stream=1,
    prefetch=8,
    send_timeout=5.0,
    ping_interval=20.0,
    ping_timeout=10.0,
    close_timeout=2.0,
    stats_interval=3,
    restart_backoff_initial=0.5,
    restart_backoff_max=4.0,
)


#: Any number of websockets per stream (the live-tail tests share one hub).
MANY = replace(SETTINGS, max_connections_per_stream=0)


def wall_clock() -> float:
    return EPOCH + trio.current_time()


@dataclass(eq=False, repr=False)
class FakeWebSocket:
    """Both a :class:`PendingWebSocket` and the :class:`WebSocket` it accepts as.

    Records what the server sends and how it closes. Knobs simulate clients:
    ``reading=False`` blocks ``send_text`` (a client that stopped reading;
    set ``reading`` back with :meth:`resume`), ``answers_pings=False`` never
    answers a ping (a vanished peer), ``close_blocks`` makes the closing
    handshake hang, ``close_delay`` makes it slow, ``fail_send`` raises an
    unexpected exception from ``send_text``, ``on_accept`` runs synchronously
    inside ``accept``; ``read_budget=N`` reads N frames, then stops reading;
    ``accept_delay`` makes the handshake slow.
    """

    peer: str = "192.0.2.7:50000"
    _: KW_ONLY
    reading: bool = True
    answers_pings: bool = True
    close_blocks: bool = False
    close_delay: float = 0.0
    fail_send: Exception | None = None
    on_accept: Callable[[], None] | None = None
    read_budget: int | None = None
    accept_delay: float = 0.0
    # What the server did, for the tests to check.
    sent: list[str] = field(default_factory=list, init=False)
    #: Sizes of the batches given to send_texts, in order.
    batches: list[int] = field(default_factory=list, init=False)
    accepted: trio.Event = field(default_factory=trio.Event, init=False)
    #: Set when the websocket is over: closed, aborted or left by the client.
    closed: trio.Event = field(default_factory=trio.Event, init=False)
    #: Set when the server is done with it: ``serve`` returned and the
    #: connection actor it handed the websocket to is gone (:meth:`Harness.connect`).
    served: trio.Event = field(default_factory=trio.Event, init=False)
    close_calls: list[tuple[int, str]] = field(default_factory=list, init=False)
    close_code: int | None = field(default=None, init=False)
    close_reason: str | None = field(default=None, init=False)
    close_time: float | None = field(default=None, init=False)
    aborted: bool = field(default=False, init=False)
    pings: int = field(default=0, init=False)
    sends_started: int = field(default=0, init=False)
    #: Frames ``send_now`` could not write (a client not reading), for ``flush``.
    held: list[str] = field(default_factory=list, init=False)
    _gone: bool = field(default=False, init=False)
    _on_gone: Callable[[], None] | None = field(default=None, init=False)
    #: The owner's callback, once it took the websocket over (``on_stop``).
    _on_stop: Callable[[], None] | None = field(default=None, init=False)
    handed_over: bool = field(default=False, init=False)
    _changed: trio.Event = field(default_factory=trio.Event, init=False)

    # -- PendingWebSocket / WebSocket ---------------------------------

    async def accept(self) -> FakeWebSocket:
        await trio.lowlevel.checkpoint()
        if self.accept_delay:
            await trio.sleep(self.accept_delay)
        if self._gone:
            raise WebSocketClosed("the client left before the handshake")
        self.accepted.set()
        if self.on_accept is not None:
            self.on_accept()
        return self

    async def send_text(self, text: str) -> None:
        await trio.lowlevel.checkpoint()
        self.sends_started += 1
        if self.closed.is_set():
            raise WebSocketClosed("closed")
        if self.fail_send is not None:
            raise self.fail_send
        if self.read_budget is not None and len(self.sent) >= self.read_budget:
            self.reading = False
        while not self.reading:
            await self._wait_changed()
            if self.closed.is_set():
                raise WebSocketClosed("closed")
        self.sent.append(text)
        self._notify()

    async def send_texts(self, texts: Sequence[str]) -> None:
        self.batches.append(len(texts))
        for text in texts:
            await self.send_text(text)

    def send_now(self, texts: Sequence[str]) -> bool:
        """What ``send_text`` would write without waiting; the rest is held for ``flush``."""
        self.batches.append(len(texts))
        if self.closed.is_set():
            raise WebSocketClosed("closed")
        if self.fail_send is not None:
            raise self.fail_send
        for text in texts:
            if self.read_budget is not None and len(self.sent) >= self.read_budget:
                self.reading = False
            if self.held or not self.reading:
                self.held.append(text)
            else:
                self.sent.append(text)
        self._notify()
        return not self.held

    async def flush(self) -> None:
        while self.held:
            await self.send_text(self.held.pop(0))

    def on_stop(self, callback: Callable[[], None]) -> None:
        self.handed_over = True
        self._on_stop = callback

    def stop(self) -> None:
        """The edge stops serving (the listener is cancelled), as the real edge tells the owner."""
        callback, self._on_stop = self._on_stop, None
        if callback is not None:
            callback()

    def on_gone(self, callback: Callable[[], None]) -> None:
        if self.closed.is_set():
            callback()
        else:
            self._on_gone = callback

    async def ping(self) -> None:
        self.pings += 1
        await trio.lowlevel.checkpoint()
        if self.closed.is_set():
            raise WebSocketClosed("closed")
        if not self.answers_pings:
            await self.closed.wait()
            raise WebSocketClosed("closed")

    async def close(self, code: int, reason: str) -> None:
        self.close_calls.append((code, reason))
        if self.closed.is_set():
            return
        if self.close_blocks:
            await trio.sleep_forever()
        if self.close_delay:
            await trio.sleep(self.close_delay)
        self.close_code = code
        self.close_reason = reason
        self._end()

    async def abort(self) -> None:
        await trio.lowlevel.checkpoint()
        self.aborted = True
        self._end()

    # -- the client's side ---------------------------------------------------

    def disconnect(self) -> None:
        """The client goes away (TCP closed)."""
        self._gone = True
        self._end()

    async def leave(self) -> None:
        """The client goes away; wait (bounded) until the server is done serving it."""
        self.disconnect()
        with trio.fail_after(WAIT):
            await self.served.wait()

    def resume(self) -> None:
        """A client that stopped reading reads again."""
        self.read_budget = None
        self.reading = True
        self._notify()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(text) for text in self.sent]

    def ordinals(self) -> list[int]:
        """The ordinals of the frames sent (JSON or text form)."""
        result = []
        for text in self.sent:
            if text.startswith("{"):
                result.append(int(json.loads(text)["ess_ordinal"]))
            else:
                result.append(int(text.split("|ordinal: ")[1].split("|")[0]))
        return result

    async def wait_frames(self, count: int, timeout: float = WAIT) -> list[str]:
        with trio.fail_after(timeout):
            while len(self.sent) < count:
                await self._wait_changed()
        return self.sent

    async def wait_closed(self, timeout: float = WAIT) -> None:
        with trio.fail_after(timeout):
            await self.closed.wait()

    async def wait_accepted(self, timeout: float = WAIT) -> None:
        with trio.fail_after(timeout):
            await self.accepted.wait()

    def _end(self) -> None:
        if not self.closed.is_set():
            self.close_time = trio.current_time()
            self.closed.set()
            callback, self._on_gone = self._on_gone, None
            if callback is not None:
                callback()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()


class LossySubscription:
    """A memory subscription that the adapter gives up after ``lose_after`` events.

    Like the RabbitMQ adapter whose consumer's buffer passed its bound: it
    yields what it had, then reports nothing buffered and raises
    :class:`SubscriptionLost`; the events it never yielded stay in the log.
    """

    def __init__(self, inner: MemorySubscription, lose_after: int | None) -> None:
        self.inner = inner
        self.lose_after = lose_after
        self.yielded = 0

    @property
    def losing(self) -> bool:
        return self.lose_after is not None and self.yielded >= self.lose_after

    @property
    def buffered(self) -> int:
        return 0 if self.losing else self.inner.buffered

    def __aiter__(self) -> LossySubscription:
        return self

    async def __anext__(self) -> StreamEvent:
        if self.losing:
            await trio.lowlevel.checkpoint()
            raise SubscriptionLost("the consumer's buffer passed its bound")
        event = await self.inner.__anext__()
        self.yielded += 1
        return event

    async def ack(self, offset: int) -> None:
        await self.inner.ack(offset)


class LossyBroker(MemoryBroker):
    """A memory broker whose consumers of ``lossy_keys`` are lost every ``lose_after`` events."""

    def __init__(self, *, lose_after: int, lossy_keys: Sequence[str] = ("rk",)) -> None:
        super().__init__(clock=wall_clock)
        self.lose_after = lose_after
        self.lossy_keys = set(lossy_keys)

    @asynccontextmanager
    async def subscribe(  # type: ignore[override]
        self, routing_key: str, start: StartPosition, *, prefetch: int
    ) -> AsyncIterator[LossySubscription]:
        lose_after = self.lose_after if routing_key in self.lossy_keys else None
        async with super().subscribe(routing_key, start, prefetch=prefetch) as inner:
            yield LossySubscription(inner, lose_after)


@dataclass
class Harness:
    """A running supervisor over a memory broker and registry."""

    broker: MemoryBroker
    registry: MemoryRegistry
    supervisor: Supervisor
    nursery: trio.Nursery
    settings: ActorSettings
    websockets: list[FakeWebSocket] = field(default_factory=list)

    def actor(self, record: StreamRecord) -> StreamActor:
        actor = self.supervisor.find_stream(record.uuid)
        assert actor is not None
        return actor

    async def stream(self, routing_key: str = "rk") -> StreamRecord:
        return await self.supervisor.create_stream(routing_key)

    def connect(
        self,
        record: StreamRecord,
        start: ClientStart | None = None,
        websocket: FakeWebSocket | None = None,
    ) -> FakeWebSocket:
        """Start serving a websocket on the stream (like trio-websocket's handler task)."""
        ws = websocket or FakeWebSocket()
        actor = self.actor(record)
        self.websockets.append(ws)

        async def handler() -> None:
            try:
                await actor.serve(ws, start or LiveTail())
                # The connection actor holds it: wait (as long as it lives) until it is done.
                while ws.handed_over and any(c._pending is ws for c in actor.connections):
                    await trio.sleep(0.01)
            finally:
                ws.served.set()

        self.nursery.start_soon(handler)
        return ws

    async def open(
        self,
        record: StreamRecord,
        start: ClientStart | None = None,
        websocket: FakeWebSocket | None = None,
    ) -> FakeWebSocket:
        """:meth:`connect` and wait until the websocket is accepted."""
        ws = self.connect(record, start, websocket)
        await ws.wait_accepted()
        return ws

    async def serves(self, record: StreamRecord) -> FakeWebSocket:
        """Open a websocket on ``record``; fail unless it receives an event published now."""
        ws = await self.open(record)
        await self.publish(record.routing_key, "x")
        await ws.wait_frames(1)
        return ws

    async def publish(self, routing_key: str, *bodies: bytes | str, **kwargs: object) -> None:
        for body in bodies:
            data = body.encode() if isinstance(body, str) else body
            await self.broker.publish(routing_key, data, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    settings: ActorSettings = SETTINGS,
    *,
    broker: MemoryBroker | None = None,
    registry: MemoryRegistry | None = None,
    observer: ActorObserver | None = None,
) -> AsyncIterator[Harness]:
    broker = broker or MemoryBroker(clock=wall_clock)
    registry = registry or MemoryRegistry()
    supervisor = Supervisor(broker, registry, settings, clock=wall_clock, observer=observer)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield Harness(broker, registry, supervisor, nursery, settings)
        nursery.cancel_scope.cancel()


#: How the server closes a websocket a newer one of the same stream replaced (SPEC).
TAKEOVER = (4001, "Replaced by a newer connection to this event stream")


@asynccontextmanager
async def oldest_of_three_taken_over() -> AsyncIterator[
    tuple[Harness, StreamRecord, FakeWebSocket, FakeWebSocket]
]:
    """Three websockets, one after the other, on a stream that allows two at once.

    Checks that the first two are both served and that the third takes the
    first's place (closed with :data:`TAKEOVER`); yields once the two kept
    have received an event published after the takeover.
    """
    async with running(replace(SETTINGS, max_connections_per_stream=2)) as h:
        record = await h.stream()
        first = await h.open(record)
        second = await h.open(record)
        await settle()
        assert not first.closed.is_set() and not second.closed.is_set()
        third = await h.open(record)
        await first.wait_closed()
        assert (first.close_code, first.close_reason) == TAKEOVER
        await h.publish("rk", "x")
        await second.wait_frames(1)
        await third.wait_frames(1)
        yield h, record, second, third


def hub_of(h: Harness, record: StreamRecord) -> LiveTailHub:
    """The running live-tail hub of ``record``'s stream actor."""
    hub = h.actor(record).live_tail
    assert hub is not None
    return hub


def crash_hub_at(monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    """Make every live-tail hub fail (a bug) when it receives the event at ``offset``."""
    original = LiveTailHub._fan_out

    def fan_out(self: LiveTailHub, event: StreamEvent, received_at: float) -> list[HubMember]:
        if event.offset == offset:
            raise RuntimeError("hub bug")
        return original(self, event, received_at)

    monkeypatch.setattr(LiveTailHub, "_fan_out", fan_out)


async def wait_queue_deleted(
    broker: MemoryBroker, registry: MemoryRegistry, routing_key: str = "rk"
) -> None:
    """Wait for the queue's deletion, let the service finish, and check nothing is pending."""
    with trio.fail_after(WAIT):
        await broker.wait_deleted(routing_key)
    await settle()
    assert await registry.pending_queue_deletions() == []


async def until(condition: Callable[[], object], timeout: float = WAIT) -> None:
    """Wait (at most ``timeout``) until ``condition()`` holds (polling: cheap in virtual time)."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def receive_each(sockets: Sequence[FakeWebSocket], ordinals: list[int]) -> None:
    """Wait until every websocket of ``sockets`` received ``ordinals``: these, in order, no more."""
    for ws in sockets:
        await ws.wait_frames(len(ordinals))
    await settle()
    for ws in sockets:
        assert ws.ordinals() == ordinals


async def settle() -> None:
    """Let every runnable task run until all are blocked (autojump clock: no time passes)."""
    await trio.testing.wait_all_tasks_blocked()
