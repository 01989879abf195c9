"""``ess publish``: message rendering, drift-free pacing, progress bar and summary."""

from __future__ import annotations

import io
import json

import pytest
import trio
import trio.testing

from actors.adapters.memory_broker import MemoryBroker
from actors.ports.broker import BrokerUnavailable
from ess.tools.publisher import (
    Progress,
    PublishResult,
    render_message,
    run_publish,
    scheduled_time,
    summary_line,
)


def test_scheduled_time_is_absolute() -> None:
    assert scheduled_time(100.0, None, 5) == 100.0
    assert [scheduled_time(100.0, 4.0, i) for i in range(4)] == [100.0, 100.25, 100.5, 100.75]
    # No accumulated rounding: the millionth event is due exactly when it should be.
    assert scheduled_time(0.0, 3.0, 3_000_000) == 1_000_000.0


def test_render_message() -> None:
    assert render_message('{"n": {n}, "x": {}}', 7, 9, 0.0) == '{"n": 7, "x": {}}'
    assert render_message("T|a: 1", 2, 2, 0.0) == "T|a: 1"
    default = json.loads(render_message(None, 3, 10, 1_714_564_800.123))
    assert default["n"] == 3 and default["count"] == 10
    assert default["time"] == "2024-05-01T12:00:00.123Z"


def test_summary_line() -> None:
    line = summary_line(PublishResult(3, 0.5), "exchange 'e' with routing key 'k'")
    assert line == "published 3 events to exchange 'e' with routing key 'k' in 0.500 s (6.0 msg/s)"
    assert summary_line(PublishResult(1, 0.0, interrupted=True), "q").endswith(", interrupted")
    assert "published 1 event to" in summary_line(PublishResult(1, 1.0), "q")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_for_long_runs_on_a_terminal() -> None:
    assert Progress.wanted(1000, None, _Terminal())
    assert Progress.wanted(10, 2.0, _Terminal())  # five seconds
    assert not Progress.wanted(10, None, _Terminal())
    assert not Progress.wanted(1000, None, io.StringIO())  # a pipe or a file


def test_progress_bar_rendering_and_throttling() -> None:
    now = [0.0]
    stream = _Terminal()
    progress = Progress(200, stream, enabled=True, clock=lambda: now[0])
    assert (
        progress.render(50, 2.0) == "[#######.......................]  50/200  25%     25.0 msg/s"
    )
    now[0] = 1.0
    progress.update(1)
    progress.update(2)  # within 0.1 s: not redrawn
    now[0] = 2.0
    progress.update(200)
    progress.close()
    drawn = stream.getvalue()
    assert drawn.count("\r[") == 2
    assert drawn.endswith("\r\x1b[K")


def test_disabled_progress_writes_nothing() -> None:
    stream = _Terminal()
    progress = Progress(200, stream, enabled=False)
    progress.update(100)
    progress.close()
    assert stream.getvalue() == ""


async def test_publishes_in_order_through_the_exchange() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream("k")
    result = await run_publish(broker, "k", "T|n: {n}", count=3)
    assert (result.published, result.interrupted, result.error) == (3, False, None)
    entries = broker.entries("k")
    assert [e.body for e in entries] == [b"T|n: 1", b"T|n: 2", b"T|n: 3"]
    assert all(e.timestamp_ms is not None for e in entries)


async def test_to_queue_needs_no_binding() -> None:
    broker = MemoryBroker()
    broker.create_stream("k")  # as the Account Server does: not bound to the exchange
    await run_publish(broker, "k", None, count=2, to_queue=True)
    assert [json.loads(e.body)["n"] for e in broker.entries("k")] == [1, 2]


class _SlowBroker(MemoryBroker):
    """Confirms take ``delay`` seconds; records when each publish started."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.started: list[float] = []

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        timestamp_ms: int | None = None,
        to_queue: bool = False,
    ) -> None:
        self.started.append(trio.current_time())
        await trio.sleep(self.delay)


async def test_rate_has_no_drift(autojump_clock: trio.testing.MockClock) -> None:
    broker = _SlowBroker(delay=0.07)  # most of the 0.1 s interval goes to the confirm
    start = trio.current_time()
    result = await run_publish(broker, "k", "x", count=50, rate=10.0)
    assert broker.started == pytest.approx([start + i / 10 for i in range(50)], abs=1e-9)
    assert result.seconds == pytest.approx(4.97)


async def test_a_slow_broker_is_caught_up_with_not_slept_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker = _SlowBroker(delay=0.25)  # slower than the rate: publish back to back
    start = trio.current_time()
    await run_publish(broker, "k", "x", count=4, rate=10.0)
    assert broker.started == pytest.approx([start + 0.25 * i for i in range(4)])


async def test_stop_reports_how_far_it_got(autojump_clock: trio.testing.MockClock) -> None:
    broker = _SlowBroker(delay=0.0)
    stop = trio.CancelScope()
    async with trio.open_nursery() as nursery:

        async def stop_later() -> None:
            await trio.sleep(0.45)
            stop.cancel()

        nursery.start_soon(stop_later)
        result = await run_publish(broker, "k", "x", count=100, rate=10.0, stop=stop)
    assert (result.published, result.interrupted) == (5, True)


async def test_a_broker_error_ends_the_run_with_the_reason() -> None:
    class _Failing(MemoryBroker):
        calls = 0

        async def publish(self, routing_key: str, body: bytes, **kwargs: object) -> None:
            self.calls += 1
            if self.calls == 3:
                raise BrokerUnavailable("connection lost")

    result = await run_publish(_Failing(), "k", "x", count=10)
    assert (result.published, result.error) == (2, "connection lost")
