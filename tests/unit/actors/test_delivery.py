"""The pure delivery core: plain calls, no socket, no broker, no clock."""

from __future__ import annotations

import pytest

import actors.delivery
from actors.delivery import Delivery, Filtered, Poisoned, Queued, Skipped
from actors.ports.broker import FromNext, FromOffset, FromTimestamp, StreamEvent
from actors.start import AfterOrdinal, AtOrAfterTime, LiveTail

T = 1_700_000_000_500  # ms


def event(offset: int, body: bytes = b"x", own_ms: int | None = None) -> StreamEvent:
    return StreamEvent(offset, body, own_ms)


def deliver(core: Delivery, *events: StreamEvent, now_ms: int = T) -> list[str]:
    """Feed ``events`` as one burst, flushing at the end as the shell does."""
    for e in events:
        core.receive(e, now_ms)
    texts = list(core.batch)
    core.batch_sent()
    core.processed(events[-1].offset)
    return texts


def test_replay_filters_below_the_ordinal_and_resumes_after_the_cursor() -> None:
    core = Delivery(AfterOrdinal(3))
    assert core.position() == FromOffset(3)
    core.attached(core.position(), T)
    assert core.receive(event(1), T) == Filtered(2)  # the broker started lower (retention)
    assert core.receive(event(3), T) == Queued(4)
    core.batch_sent()
    core.processed(3)
    assert (core.last_ordinal, core.cursor) == (4, 3)
    assert core.position() == FromOffset(4)


def test_timestamp_start_filters_every_event_stamped_before_it() -> None:
    core = Delivery(AtOrAfterTime(T))
    assert core.position() == FromTimestamp(T // 1000 - 1)
    core.attached(core.position(), T)
    steps = [
        core.receive(event(0, own_ms=T - 1), T),
        core.receive(event(1, own_ms=T), T),
        core.receive(event(2, own_ms=T - 100), T),  # after one at or after T: still early
        core.receive(event(3), T),  # no own time: positioned by the broker
    ]
    assert steps == [Filtered(1), Queued(2), Filtered(3), Queued(4)]


def test_a_live_tail_that_processed_nothing_resumes_from_when_it_attached() -> None:
    core = Delivery(LiveTail())
    assert core.position() == FromNext()
    core.attached(FromNext(), T)
    # Attached by "next", nothing is filtered by time: the publisher's clock rules.
    assert core.receive(event(0, own_ms=1234), T + 5) == Queued(1)
    core.batch.clear()  # the consumer is lost before the frame is sent or acked
    resume = core.position()
    assert resume == FromTimestamp(T // 1000 - 1)
    core.attached(resume, T + 60_000)
    assert core.not_before_ms == T  # the first attach, not the resumption
    assert core.batch == []
    assert core.receive(event(0, own_ms=1234), T + 60_000) == Filtered(1)
    assert core.receive(event(1, own_ms=T + 1), T + 60_000) == Queued(2)
    assert core.receive(event(2), T + 60_000) == Queued(3)


def test_a_live_tail_refused_at_first_resumes_from_its_first_attempt() -> None:
    core = Delivery(LiveTail())
    assert core.position() == FromNext()
    core.attach_failed(T)  # refused: nothing attached
    resume = core.position()
    assert resume == FromTimestamp(T // 1000 - 1)
    core.attach_failed(T + 30_000)  # refused again: still dated from the first attempt
    assert core.position() == resume
    core.attached(resume, T + 60_000)
    assert core.not_before_ms == T
    assert core.receive(event(0, own_ms=T - 1), T + 60_000) == Filtered(1)
    assert core.receive(event(1, own_ms=T + 10_000), T + 60_000) == Queued(2)


def test_a_failed_attempt_after_an_attach_changes_nothing() -> None:
    core = Delivery(LiveTail())
    core.attached(FromNext(), T)
    core.attach_failed(T - 50_000)  # the connection's start: earlier than its attach
    assert core.position() == FromTimestamp(T // 1000 - 1)
    replay = Delivery(AfterOrdinal(3))
    replay.attach_failed(T)
    assert replay.position() == FromOffset(3)  # not a live tail: where the client asked


def test_a_live_tail_that_delivered_resumes_after_its_cursor() -> None:
    core = Delivery(LiveTail())
    core.attached(FromNext(), T)
    assert deliver(core, event(7)) == [f"x|ordinal: 8|timestamp: {T}"]
    assert core.position() == FromOffset(8)


def test_handed_over_by_the_hub() -> None:
    core = Delivery(LiveTail())
    core.attached(FromNext(), T)
    core.handed_over(5, T + 10)
    assert core.position() == FromOffset(5)
    assert core.not_before_ms == T + 10
    core.attached(FromOffset(5), T + 20)
    assert core.position() == FromOffset(5)  # still nothing processed: the same offset
    deliver(core, event(5, own_ms=T + 11))
    core.handed_over(9, None)  # the cursor wins
    assert core.position() == FromOffset(6)


def test_skip_poison_and_batches() -> None:
    core = Delivery(AfterOrdinal(0), batch_limit=2)
    core.attached(core.position(), T)
    assert core.receive(event(0, b"\xff"), T) == Skipped(1, "body is not valid UTF-8")
    assert core.flush_due(buffered=3) is False
    assert core.receive(event(1, b"{}", own_ms=42), T) == Queued(2)
    assert core.flush_due(buffered=3) is False
    assert core.receive(event(2, b"a", own_ms=41), T) == Queued(3)
    assert core.flush_due(buffered=3) is True  # full
    assert core.batch == ['{"ess_ordinal":2,"ess_timestamp":42}', "a|ordinal: 3|timestamp: 42"]
    core.batch_sent()
    assert core.receive(event(3, b"POISON"), T) == Poisoned(4)
    assert (core.received, core.skipped, core.last_ordinal) == (4, 1, 3)
    assert core.flush_due(buffered=0) is True


def test_a_message_that_cannot_be_formatted_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: bytes, ordinal: int, timestamp_ms: int) -> object:
        raise RecursionError("nested too deep")

    monkeypatch.setattr(actors.delivery, "format_event", broken)
    core = Delivery(AfterOrdinal(0))
    core.attached(core.position(), T)
    assert core.receive(event(0), T) == Skipped(1, "cannot be formatted (RecursionError)")
    assert core.skipped == 1
