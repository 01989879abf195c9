"""``ess publish``: publish test events the way the Account Server does.

It goes through :class:`actors.adapters.rabbitmq.RabbitMQBroker`, the service's own
broker adapter (our AMQP client with publisher confirms), so "published"
means "the broker confirmed it": when the command returns, every event it
counted is in the stream queue (or was dropped as unroutable, which it warns
about beforehand).

Pacing with ``--rate`` uses absolute deadlines (event *i* is due at
``start + i / rate``), not a sleep between events, so the time spent waiting
for confirms does not accumulate into drift: 1000 events at 100/s take ten
seconds, not ten seconds plus a thousand round trips.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TextIO

import trio

from actors.ports.broker import Broker, BrokerError
from ess.config import Config, redact_url

__all__ = [
    "Progress",
    "PublishResult",
    "publish",
    "render_message",
    "run_publish",
    "scheduled_time",
    "summary_line",
]

PROG = "ess publish"
#: How long to wait for the broker connection before giving up.
CONNECT_TIMEOUT = 15.0
#: A progress bar is worth drawing for this many events, or for a run this long.
PROGRESS_MIN_COUNT = 100
PROGRESS_MIN_SECONDS = 2.0
PROGRESS_INTERVAL = 0.1
PROGRESS_WIDTH = 30


def scheduled_time(start: float, rate: float | None, index: int) -> float:
    """When event ``index`` (0-based) is due: ``start + index / rate``.

    Computed from the start every time rather than by adding intervals, so
    neither slow confirms nor float rounding accumulate. ``rate=None`` means
    as fast as possible (every event is due at ``start``).
    """
    if rate is None:
        return start
    return start + index / rate


def render_message(template: str | None, n: int, count: int, now: float) -> str:
    """The body of event ``n`` (1-based) of ``count``.

    A given message has ``{n}`` replaced by the sequence number (a plain
    replacement, not ``str.format``: a JSON body is full of braces). The
    default is a small JSON object a person can recognise in ``ess listen``.
    """
    if template is not None:
        return template.replace("{n}", str(n))
    moment = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    return json.dumps(
        {
            "message": "ess publish test event",
            "n": n,
            "count": count,
            "time": moment.replace("+00:00", "Z"),
        }
    )


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a run achieved, for the summary line and the exit status."""

    published: int
    seconds: float
    interrupted: bool = False
    error: str | None = None


def summary_line(result: PublishResult, target: str) -> str:
    """``published 3 events to <target> in 0.012 s (250.0 msg/s)``."""
    noun = "event" if result.published == 1 else "events"
    seconds = max(result.seconds, 1e-9)
    rate = result.published / seconds
    line = (
        f"published {result.published} {noun} to {target} in {result.seconds:.3f} s "
        f"({rate:.1f} msg/s)"
    )
    if result.interrupted:
        line += ", interrupted"
    return line


@dataclass(eq=False)
class Progress:
    """A one-line text progress bar on a terminal, redrawn at most 10 times a second.

    Drawn only where a person watches (a TTY) and only for runs long enough
    to need it; in a pipe or a log it would be noise.
    """

    total: int
    stream: TextIO
    _: KW_ONLY
    enabled: bool
    clock: Callable[[], float] = time.monotonic
    _start: float = field(init=False)
    _drawn_at: float = field(default=-math.inf, init=False)
    _drawn: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._start = self.clock()

    @staticmethod
    def wanted(count: int, rate: float | None, stream: TextIO) -> bool:
        """Whether a run of ``count`` events at ``rate`` deserves a bar on ``stream``."""
        long_run = count >= PROGRESS_MIN_COUNT or (
            rate is not None and count / rate >= PROGRESS_MIN_SECONDS
        )
        return long_run and stream.isatty()

    def render(self, done: int, elapsed: float) -> str:
        """The bar for ``done`` events after ``elapsed`` seconds (no terminal codes)."""
        fraction = done / self.total if self.total else 1.0
        filled = int(fraction * PROGRESS_WIDTH)
        rate = done / elapsed if elapsed > 0 else 0.0
        bar = "#" * filled + "." * (PROGRESS_WIDTH - filled)
        width = len(str(self.total))
        return f"[{bar}] {done:>{width}}/{self.total} {fraction:4.0%} {rate:8.1f} msg/s"

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if done < self.total and now - self._drawn_at < PROGRESS_INTERVAL:
            return
        self._drawn_at = now
        self._drawn = True
        self.stream.write("\r" + self.render(done, now - self._start))
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar so the summary line starts on a clean line."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


async def run_publish(
    broker: Broker,
    routing_key: str,
    message: str | None,
    *,
    count: int = 1,
    rate: float | None = None,
    to_queue: bool = False,
    progress: Progress | None = None,
    stop: trio.CancelScope | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> PublishResult:
    """Publish ``count`` events through an available ``broker``, paced by ``rate``.

    Each publish waits for the broker's confirm before the next (events stay
    in order and "published" means confirmed). Cancelling ``stop`` (Ctrl-C)
    ends the run early with an ``interrupted`` result rather than an
    exception, so the caller can still say how far it got.
    """
    stop = trio.CancelScope() if stop is None else stop
    start = trio.current_time()
    published = 0
    error: str | None = None
    with stop:
        try:
            for index in range(count):
                await trio.sleep_until(scheduled_time(start, rate, index))
                now = wall_clock()
                body = render_message(message, index + 1, count, now)
                await broker.publish(
                    routing_key,
                    body.encode("utf-8"),
                    timestamp_ms=int(now * 1000),
                    to_queue=to_queue,
                )
                published += 1
                if progress is not None:
                    progress.update(published)
        except BrokerError as exc:
            error = str(exc) or type(exc).__name__
    if progress is not None:
        progress.close()
    elapsed = trio.current_time() - start
    return PublishResult(published, elapsed, stop.cancelled_caught, error)


async def _publish_with_rabbitmq(
    config: Config,
    routing_key: str,
    message: str | None,
    *,
    count: int,
    rate: float | None,
    to_queue: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    # Imported here: the AMQP client is only needed by this command.
    from actors.adapters.rabbitmq import RabbitMQBroker

    def say(text: str) -> None:
        err.write(f"{PROG}: {text}\n")
        err.flush()

    target = (
        f"stream queue {routing_key!r}"
        if to_queue
        else f"exchange {config.exchange!r} with routing key {routing_key!r}"
    )
    # One connection is plenty for one publisher; the name shows who it is in
    # the RabbitMQ management UI.
    broker = RabbitMQBroker(
        config.amqp_url, config.exchange, pool_size=1, connection_name="ess-publish"
    )
    publishing = trio.CancelScope()
    running = False
    result: PublishResult | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                # While publishing, stop the run so it can report how far it
                # got; before that (connecting), there is nothing to report.
                async for _ in signals:
                    publishing.cancel()
                    if not running:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            try:
                await nursery.start(broker.run)
            except BrokerError as exc:
                say(f"cannot use the broker at {redact_url(config.amqp_url)}: {exc}")
                nursery.cancel_scope.cancel()
                return 1
            with trio.move_on_after(CONNECT_TIMEOUT) as waiting:
                await broker.wait_available()
            if waiting.cancelled_caught:
                say(
                    f"cannot reach the broker at {redact_url(config.amqp_url)} "
                    f"within {CONNECT_TIMEOUT:g} s"
                )
                nursery.cancel_scope.cancel()
                return 1
            try:
                exists = await broker.stream_exists(routing_key)
            except BrokerError:
                exists = True  # only a hint; the publishes will say what is wrong
            if not exists:
                say(
                    f"warning: no stream queue named {routing_key!r} exists, the broker will "
                    "drop these events (create the event stream first: ess streams create)"
                )
            running = True
            result = await run_publish(
                broker,
                routing_key,
                message,
                count=count,
                rate=rate,
                to_queue=to_queue,
                progress=Progress(count, err, enabled=Progress.wanted(count, rate, err)),
                stop=publishing,
            )
            # Report before closing the connection: the events are confirmed
            # already, and the person should not wait for the teardown.
            out.write(summary_line(result, target) + "\n")
            out.flush()
            if result.error is not None:
                say(f"publishing failed after {result.published} events: {result.error}")
            nursery.cancel_scope.cancel()  # the broker connection and the signal watcher
    if result is None:  # interrupted while connecting
        return 130
    if result.error is not None:
        return 1
    return 130 if result.interrupted else 0


def publish(
    config: Config,
    routing_key: str,
    message: str | None,
    *,
    count: int = 1,
    rate: float | None = None,
    to_queue: bool = False,
) -> int:
    """``ess publish``: run :func:`run_publish` against the configured RabbitMQ."""
    return trio.run(
        partial(
            _publish_with_rabbitmq,
            config,
            routing_key,
            message,
            count=count,
            rate=rate,
            to_queue=to_queue,
            out=sys.stdout,
            err=sys.stderr,
        )
    )
