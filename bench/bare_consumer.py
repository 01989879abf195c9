"""The replay ceiling: our own ``amqp/`` consumer reading a stream bare.

Run in its own process (``python -m bench.bare_consumer QUEUE COUNT PREFETCH
URL``) so that neither the asyncio driver nor its GIL share its core: it
prints the seconds from just before ``basic.consume`` to the last delivery.
Manual acks are batched with ``multiple`` as the service's adapter batches
them: a quarter window, or whenever nothing more is buffered (RabbitMQ grants
stream credit per acknowledgement, so the policy sets the pace).
"""

from __future__ import annotations

import sys
import time

import trio

import amqp


async def consume(queue: str, count: int, prefetch: int, amqp_url: str) -> float:
    ack_every = max(1, prefetch // 4)
    seen = 0
    pending = 0
    async with amqp.connect(amqp_url) as connection, connection.channel() as channel:
        await channel.basic_qos(prefetch)
        start = time.perf_counter()
        async with channel.basic_consume(queue, arguments={"x-stream-offset": 0}) as consumer:
            async for message in consumer:
                seen += 1
                pending += 1
                if pending >= ack_every or consumer.buffered == 0 or seen == count:
                    await channel.basic_ack(message.delivery_tag, multiple=True)
                    pending = 0
                if seen == count:
                    return time.perf_counter() - start
    raise RuntimeError(f"the stream ended after {seen} of {count} messages")


def main() -> None:
    queue, count, prefetch, url = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(trio.run(consume, queue, count, prefetch, url))


if __name__ == "__main__":
    main()
