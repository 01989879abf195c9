"""The fanout ceiling: our own ``amqp/`` client consuming every stream live, bare.

``python -m bench.bare_fanout URL PREFETCH POOL KEY...`` consumes each stream
queue from ``next`` on a channel of its own, spread over ``POOL`` connections
as the service spreads its consumers. It does what the service does with a
live event short of the websocket and the actors: decode the frames and the
JSON body, and acknowledge each delivery on its own (``basic_ack_nowait``:
the connection shares acks' writes as it does for the service), taking
each in the connection's reader (the consumer's listener, as the service's
hub does). What it
costs per event, and the latency it sees, are what the service would reach
if websockets and actors cost nothing.

Protocol with the driver (``bench.ceilings.bare_amqp_fanout``): it prints
``ready`` once every consumer is attached, then reads the number of events
published on stdin, waits for them (at most :data:`GRACE` seconds) and
prints one JSON line: ``received`` and the summary of the publish-to-delivery
latencies (ms).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import AsyncExitStack

import orjson
import trio

import amqp

from .harness import latency_summary

#: Seconds to wait for the last events after the driver says how many there are.
GRACE = 5.0


class Tally:
    """Latencies of every delivery; :attr:`reached` is set once ``expected`` arrived."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.expected: int | None = None
        self.reached = trio.Event()

    def delivered(self, body: bytes) -> None:
        now = time.time_ns()
        self.latencies_ms.append((now - orjson.loads(body)["pub_ns"]) / 1e6)
        if self.expected is not None and len(self.latencies_ms) >= self.expected:
            self.reached.set()

    def expect(self, count: int) -> None:
        self.expected = count
        if len(self.latencies_ms) >= count:
            self.reached.set()


async def consume(
    connection: amqp.Connection,
    queue: str,
    prefetch: int,
    tally: Tally,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with connection.channel() as channel:
        await channel.basic_qos(prefetch)
        async with channel.basic_consume(queue, arguments={"x-stream-offset": "next"}) as consumer:

            def take(message: amqp.DeliveredMessage) -> bool:
                tally.delivered(message.body)
                channel.basic_ack_nowait(message.delivery_tag)
                return True

            # In the reader's task, as the service's hub takes live events:
            # no wake-up of this task per event. What is buffered anyway (a
            # burst) is read below.
            consumer.listener = take
            task_status.started()
            async for message in consumer:
                take(message)


async def run(url: str, prefetch: int, pool: int, queues: list[str]) -> dict[str, object]:
    tally = Tally()
    async with AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(amqp.connect(url)) for _ in range(pool)]
        async with trio.open_nursery() as nursery:
            for index, queue in enumerate(queues):
                connection = connections[index % pool]
                await nursery.start(consume, connection, queue, prefetch, tally)
            print("ready", flush=True)
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            tally.expect(int(line))
            with trio.move_on_after(GRACE):
                await tally.reached.wait()
            nursery.cancel_scope.cancel()
    return {"received": len(tally.latencies_ms), "latency": latency_summary(tally.latencies_ms)}


def main() -> None:
    url, prefetch, pool, *queues = sys.argv[1:]
    print(json.dumps(trio.run(run, url, int(prefetch), int(pool), queues)), flush=True)


if __name__ == "__main__":
    main()
