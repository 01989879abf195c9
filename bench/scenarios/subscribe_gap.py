"""subscribe gap: publish right after each handshake completes, 200 times; count losses.

A client connects without a start parameter; the moment the handshake has
completed, the driver publishes one event (confirmed). SPEC section 4: the
consumer is attached before the handshake completes, so that event must be the
first frame the client receives. Target: zero losses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from ..client import ConnectionClosed, open_ws
from ..harness import Profiler, Result, event_body, latency_summary, running_service, unique_key

NAME = "subscribe_gap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gap-repeats", type=int, default=200)
    parser.add_argument(
        "--gap-timeout", type=float, default=2.0, help="seconds to wait for the event"
    )


async def run(args: argparse.Namespace) -> Result:
    reps, timeout = args.gap_repeats, args.gap_timeout
    result = Result(NAME, {"repetitions": reps, "receive_timeout_s": timeout})
    lost = 0
    wrong_first: list[str] = []
    latencies: list[float] = []
    handshake_ms: list[float] = []
    async with running_service({}, args.log_level) as (service, api, publisher):
        key = unique_key("gap")
        service.routing_keys.append(key)
        _, location = await api.create(key)
        with Profiler(service.pid, Path(args.profile_dir), NAME, args.profile) as profiler:
            for i in range(reps):
                t = time.perf_counter()
                ws = await open_ws(location)
                handshake_ms.append((time.perf_counter() - t) * 1000)
                publisher.publish_nowait(key, event_body(i, 200))
                try:
                    async with asyncio.timeout(timeout):
                        frame = await ws.recv()
                    event = json.loads(frame)
                    latencies.append((time.time_ns() - event["pub_ns"]) / 1e6)
                    if event.get("seq") != i:
                        wrong_first.append(f"rep {i}: first frame seq {event.get('seq')}")
                except TimeoutError:
                    lost += 1
                except ConnectionClosed:
                    lost += 1
                    wrong_first.append(f"rep {i}: closed {ws.close_code} {ws.close_reason!r}")
                await ws.close()
            await publisher.drain()
        if args.profile:
            result.profile = profiler.top()

    result.figures.update(
        {
            "lost": lost,
            "wrong_first_frame": len(wrong_first),
            "wrong_first_samples": wrong_first[:5],
            "event_latency": latency_summary(latencies),
            "handshake": latency_summary(handshake_ms),
        }
    )
    result.target("lost", lost, "==", 0)
    result.target("wrong_first_frame", len(wrong_first), "==", 0)
    return result
