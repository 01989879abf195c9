"""Consume throughput: our ``amqp`` client under Trio vs aiormq on asyncio.

Publishes N messages (~300-byte JSON bodies) into a fresh stream queue, then
replays them all from ``x-stream-offset: first`` with prefetch 1000 and acks
batched (``multiple``) every 500 -- alternately with our client under Trio
and with aiormq on plain asyncio, several pairs in the same run on the same
queue. Prints msg/s per run, the medians, the ratio and one JSON line; deletes
the queue at the end.

    .venv/bin/python bench/amqp_consume.py [--count 50000] [--pairs 3] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import amqp

DEFAULT_URL = os.environ.get("ESS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def make_body(i: int, size: int) -> bytes:
    """A JSON object of about ``size`` bytes, like the events the AS publishes."""
    event = {"id": i, "type": "InstanceStatus", "ts": "2024-01-01T00:00:00Z", "pad": ""}
    raw = json.dumps(event)
    event["pad"] = "x" * max(0, size - len(raw))
    return json.dumps(event).encode()


async def setup(url: str, queue: str, count: int, body_size: int) -> None:
    async with amqp.connect(url) as conn, conn.channel() as ch:
        await ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
        await ch.confirm_select()
        workers = 64

        async def publish(worker: int) -> None:
            for i in range(worker, count, workers):
                await ch.basic_publish(make_body(i, body_size), routing_key=queue)

        async with trio.open_nursery() as nursery:
            for worker in range(workers):
                nursery.start_soon(publish, worker)


async def teardown(url: str, queue: str) -> None:
    async with amqp.connect(url) as conn, conn.channel() as ch:
        await ch.queue_delete(queue)


async def consume_ours(url: str, queue: str, count: int, prefetch: int, ack_every: int) -> float:
    async with amqp.connect(url) as conn, conn.channel() as ch:
        await ch.basic_qos(prefetch)
        received = 0
        start = time.perf_counter()
        async with ch.basic_consume(queue, arguments={"x-stream-offset": "first"}) as consumer:
            async for message in consumer:
                received += 1
                if received % ack_every == 0 or received == count:
                    await ch.basic_ack(message.delivery_tag, multiple=True)
                if received == count:
                    break
        elapsed = time.perf_counter() - start
    return count / elapsed


async def consume_aiormq(url: str, queue: str, count: int, prefetch: int, ack_every: int) -> float:
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=prefetch)
        done = asyncio.Event()
        received = 0

        async def on_message(message: Any) -> None:
            nonlocal received
            received += 1
            if received % ack_every == 0 or received == count:
                await channel.basic_ack(message.delivery_tag, multiple=True)
            if received == count:
                done.set()

        start = time.perf_counter()
        ok = await channel.basic_consume(queue, on_message, arguments={"x-stream-offset": "first"})
        await done.wait()
        elapsed = time.perf_counter() - start
        await channel.basic_cancel(ok.consumer_tag)
    finally:
        await connection.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--count", type=int, default=50_000, help="messages (default 50000)")
    parser.add_argument("--body-size", type=int, default=300, help="bytes per body")
    parser.add_argument("--pairs", type=int, default=3, help="ours/aiormq pairs (default 3)")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--ack-every", type=int, default=500)
    args = parser.parse_args()
    if args.pairs < 1 or args.count < 1:
        parser.error("--pairs and --count must be positive")

    queue = f"bench-amqp-consume-{uuid.uuid4().hex}"
    print(f"publishing {args.count} messages of ~{args.body_size} bytes into stream {queue}")
    t0 = time.perf_counter()
    trio.run(setup, args.url, queue, args.count, args.body_size)
    print(f"  published in {time.perf_counter() - t0:.1f} s")
    ours: list[float] = []
    theirs: list[float] = []
    try:
        for pair in range(1, args.pairs + 1):
            rate = trio.run(
                consume_ours, args.url, queue, args.count, args.prefetch, args.ack_every
            )
            ours.append(rate)
            print(f"pair {pair}: ours (amqp on Trio)      {rate:10,.0f} msg/s")
            rate = asyncio.run(
                consume_aiormq(args.url, queue, args.count, args.prefetch, args.ack_every)
            )
            theirs.append(rate)
            print(f"pair {pair}: aiormq (plain asyncio)   {rate:10,.0f} msg/s")
    finally:
        trio.run(teardown, args.url, queue)

    ours_median = statistics.median(ours)
    theirs_median = statistics.median(theirs)
    ratio = ours_median / theirs_median
    print(f"median ours   {ours_median:10,.0f} msg/s")
    print(f"median aiormq {theirs_median:10,.0f} msg/s")
    print(f"ratio         {ratio:10.2f}x")
    print(
        json.dumps(
            {
                "bench": "amqp_consume",
                "count": args.count,
                "body_size": args.body_size,
                "prefetch": args.prefetch,
                "ack_every": args.ack_every,
                "pairs": args.pairs,
                "ours_msg_s": [round(r) for r in ours],
                "aiormq_msg_s": [round(r) for r in theirs],
                "ours_median": round(ours_median),
                "aiormq_median": round(theirs_median),
                "ratio": round(ratio, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
