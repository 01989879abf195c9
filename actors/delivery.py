"""The pure delivery core of one connection: which events become which frames.

No I/O, no clock, no broker: the connection actor
(:mod:`actors.connection_actor`) is a thin shell that feeds it the events of
its subscription with the wall time, sends the frames it batches, and
acknowledges what it says is processed (modelled on hypercorn's
``protocol/h11.py``, whose ``handle()`` decides and an injected ``send``
does the I/O). Unit tests drive it with plain calls.

It holds the connection's position in its stream:

- ``cursor``: the offset of the last event *processed* (sent, skipped or
  filtered, and acknowledged). A new consumer resumes at ``cursor + 1``: no
  gap, no duplicate.
- ``last_ordinal``: the ordinal of the last frame sent.

and decides, per event (SPEC section 4):

- below ``stream_from_ordinal``'s offset: filtered (the broker may start
  lower, at the oldest retained event, never higher);
- carrying its own timestamp below ``not_before_ms`` (``stream_from_timestamp``,
  or a live tail that resumed by time, below): filtered, *every* such event,
  not only until the first later one. Events without their own timestamp are
  positioned by the broker (whole seconds) and delivered;
- a body :func:`~actors.formatting.format_event` skips (not UTF-8, not a
  JSON object), or any failure to format it: skipped and reported with its
  ordinal, never an error of the connection;
- ``POISON``: the connection ends (1000) after what came before it is sent;
- anything else: a frame, stamped with the connection's non-decreasing
  :class:`~actors.formatting.EventClock`.

Where to resume (:meth:`Delivery.position`), in order: ``cursor + 1``; the
offset the live-tail hub handed over when it let the connection go; for a
live tail that was attached but has processed nothing yet, the time it was
first attached (:meth:`Delivery.attached`): it then continues as
``stream_from_timestamp`` of that time, so nothing published after its
handshake is lost and nothing stamped before it is delivered; else where the
client asked to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from actors.formatting import EventClock, Poison, Skip, Text, format_event
from actors.ports.broker import FromNext, FromOffset, FromTimestamp, StartPosition, StreamEvent
from actors.resubscription import position_at
from actors.start import AfterOrdinal, AtOrAfterTime, ClientStart, LiveTail

#: Most frames written to a websocket with one socket write.
SEND_BATCH: Final = 64


def start_position(start: ClientStart) -> StartPosition:
    """Where the broker consumer starts for what the client asked (SPEC section 4).

    ``stream_from_ordinal=N`` wants ordinal N+1 first, which is offset N.
    ``stream_from_timestamp`` starts one (whole) second early, because the
    broker positions by seconds; the core then filters what is too early.
    """
    match start:
        case LiveTail():
            return FromNext()
        case AfterOrdinal(ordinal):
            return FromOffset(ordinal)
        case AtOrAfterTime(timestamp_ms):
            return position_at(timestamp_ms)
    raise TypeError(f"not a client start: {start!r}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class StepAt:
    """What :meth:`Delivery.receive` decided for the event of ``ordinal``: every step names it."""

    ordinal: int


class Queued(StepAt):
    """The event became a frame, added to :attr:`Delivery.batch`."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Skipped(StepAt):
    """The event is not delivered: log ``reason`` with the ordinal."""

    reason: str


class Filtered(StepAt):
    """The event lies before where the client asked to start: not delivered, not logged."""

    __slots__ = ()


class Poisoned(StepAt):
    """``POISON``: send the batch, then close the connection normally."""

    __slots__ = ()


Step = Queued | Skipped | Filtered | Poisoned


class Delivery:
    """The position and decisions of one connection; see the module documentation."""

    __slots__ = (
        "_batch_ordinal",
        "_clock",
        "_min_offset",
        "_resume_offset",
        "batch",
        "batch_limit",
        "cursor",
        "initial",
        "last_ordinal",
        "newest_offset",
        "not_before_ms",
        "received",
        "since_ms",
        "skipped",
        "start",
    )

    def __init__(self, start: ClientStart, *, batch_limit: int = SEND_BATCH) -> None:
        self.start = start
        self.initial = start_position(start)
        self.batch_limit = batch_limit
        #: Frames formatted but not sent yet (at most ``batch_limit``).
        self.batch: list[str] = []
        #: Offset of the last event processed (sent, skipped or filtered).
        self.cursor: int | None = None
        #: Ordinal of the last frame sent.
        self.last_ordinal: int | None = None
        #: The highest offset handed to :meth:`receive` (filtered events too):
        #: the newest event of the stream this connection knows of, for lag.
        self.newest_offset: int | None = None
        #: Events handed to :meth:`receive`, and those skipped.
        self.received = 0
        self.skipped = 0
        #: Events with their own timestamp below this are filtered.
        self.not_before_ms = start.timestamp_ms if isinstance(start, AtOrAfterTime) else None
        #: Wall time (ms) a live tail resumes from: its first attach, or its
        #: first attempt if that failed (:meth:`attach_failed`).
        self.since_ms: int | None = None
        self._min_offset = start.ordinal if isinstance(start, AfterOrdinal) else 0
        self._resume_offset: int | None = None
        self._batch_ordinal: int | None = None
        self._clock = EventClock()

    # -- the position ----------------------------------------------------

    def position(self) -> StartPosition:
        """Where the next consumer attaches (the first one too)."""
        if self.cursor is not None:
            return FromOffset(self.cursor + 1)
        if self._resume_offset is not None:
            return FromOffset(self._resume_offset)
        if self.since_ms is not None and isinstance(self.start, LiveTail):
            return position_at(self.since_ms)
        return self.initial

    def attached(self, position: StartPosition, now_ms: int) -> None:
        """A consumer is attached at ``position`` (at wall time ``now_ms``).

        A frame batched for a consumer that ended before it was sent is
        dropped: it is delivered again from ``cursor + 1``. A live tail
        attached by time filters what is stamped before its first attach.
        """
        self.batch.clear()
        self._batch_ordinal = self.last_ordinal
        if self.since_ms is None:
            self.since_ms = now_ms
        if isinstance(position, FromTimestamp) and self.not_before_ms is None:
            self.not_before_ms = self.since_ms

    def attach_failed(self, first_attempt_ms: int) -> None:
        """An attempt failed before any consumer attached (at wall time ``first_attempt_ms``).

        A live tail then resumes from that first attempt, by time, instead of
        from whatever is *next* once a consumer attaches: its broker was down
        or refused the consumer (a stream without a member on its node) while
        the others took publishes, and those are the client's events. (A
        joiner of the shared hub comes here when the hub starts waiting: the
        hub dates its own resumption from its first attempt, and this one
        counts only if the hub ends before it attaches.)
        """
        if self.since_ms is None:
            self.since_ms = first_attempt_ms

    def handed_over(self, resume_offset: int | None, not_before_ms: int | None) -> None:
        """The live-tail hub let this connection go (:class:`~actors.hub.LeftHub`).

        ``resume_offset`` is the first event the hub did not give it;
        ``not_before_ms`` is set when the hub was filtering by time for it.
        """
        if resume_offset is not None and self.cursor is None:
            self._resume_offset = resume_offset
        if not_before_ms is not None and self.not_before_ms is None:
            self.not_before_ms = not_before_ms

    # -- events ----------------------------------------------------------

    def receive(self, event: StreamEvent, now_ms: int) -> Step:
        """Decide what ``event`` (received at wall time ``now_ms``) becomes."""
        self.received += 1
        offset = event.offset
        if self.newest_offset is None or offset > self.newest_offset:
            self.newest_offset = offset
        ordinal = offset + 1
        own_ms = event.timestamp_ms
        if offset < self._min_offset:
            return Filtered(ordinal)
        not_before = self.not_before_ms
        if not_before is not None and own_ms is not None and own_ms < not_before:
            return Filtered(ordinal)
        stamp = self._clock.peek(own_ms, now_ms)
        try:
            result = format_event(event.body, ordinal, stamp)
        except Exception as error:  # containment: a message never ends the connection
            result = Skip(f"cannot be formatted ({type(error).__name__})")
        if isinstance(result, Text):
            self.batch.append(result.text)
            # Committed before the send: a failed send ends the connection
            # (or the batch is dropped and re-formatted, never lower).
            self._clock.commit(stamp)
            self._batch_ordinal = ordinal
            return Queued(ordinal)
        if isinstance(result, Poison):
            return Poisoned(ordinal)
        self.skipped += 1
        return Skipped(ordinal, result.reason)

    def flush_due(self, buffered: int) -> bool:
        """Whether to send the batch now: it is full, or nothing more is waiting.

        A replay thus costs one socket write per burst; a live event is sent
        on its own at once.
        """
        return len(self.batch) >= self.batch_limit or buffered <= 0

    def batch_sent(self) -> None:
        """Every frame of :attr:`batch` was written to the socket."""
        self.batch = []
        self.last_ordinal = self._batch_ordinal

    def processed(self, offset: int) -> None:
        """Every event up to ``offset`` is done with: acknowledge it, resume after it."""
        self.cursor = offset
