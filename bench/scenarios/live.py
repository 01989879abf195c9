"""live: one client, 300 msg/s for 10 s; publish-to-receive latency and loss.

The broker's floor is measured alongside: a bare AMQP consumer of the same
stream queue records the same latency without the service. Targets: p99 <=
2.5 ms, and (issue 12) p99 within 0.5 ms of that bare consumer's in the same run.
"""

from __future__ import annotations

import argparse
import asyncio

from ..ceilings import bare_amqp_latency
from ..client import open_ws
from ..harness import (
    Result,
    event_costs,
    lag_shares,
    latency_summary,
    observed,
    running_service,
    unique_key,
)
from ..latency import Reader, paced_publish, wait_all_received

NAME = "live"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--live-rate", type=float, default=300.0, help="msg/s")
    parser.add_argument("--live-duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--live-size", type=int, default=300, help="event body bytes")


async def run(args: argparse.Namespace) -> Result:
    rate, duration, size = args.live_rate, args.live_duration, args.live_size
    result = Result(NAME, {"rate_msg_per_s": rate, "duration_s": duration, "body_bytes": size})
    async with running_service({}, args.log_level) as (service, api, publisher):
        key = unique_key("live")
        service.routing_keys.append(key)
        _, location = await api.create(key)
        reader = Reader(await open_ws(location)).start()
        ready, stop = asyncio.Event(), asyncio.Event()
        floor_task = asyncio.create_task(bare_amqp_latency(key, ready, stop))
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(0.5)
        lag0 = await api.delivery_lag_buckets()  # outside the CPU window: a request costs
        cpu0, wall0 = service.cpu_seconds(), asyncio.get_running_loop().time()
        counts0 = service.counters()
        with observed(service, args, NAME) as (profiler, syscalls):
            sent, achieved = await paced_publish(publisher, [key], rate, duration, size)
            await wait_all_received([reader], sent, grace=5.0)
        cpu = service.cpu_seconds() - cpu0
        counts1 = service.counters()
        wall = asyncio.get_running_loop().time() - wall0
        lag = lag_shares(lag0, await api.delivery_lag_buckets())
        closed_early = reader.closed
        stop.set()
        floor = await floor_task
        await reader.stop()
        if args.profile:
            result.profile = profiler.top()

    lat = latency_summary(reader.latencies_ms)
    result.figures.update(
        {
            "sent": sent,
            "publish_rate_achieved": round(achieved, 1),
            "received": len(reader.seqs),
            "lost": sent - len(reader.seqs),
            "duplicates": reader.duplicates,
            "out_of_order": reader.out_of_order,
            "latency": lat,
            "broker_floor_latency": latency_summary(floor),
            "service_own_lag_shares": lag,
            "service_cpu_fraction_of_core": round(cpu / wall, 4),
            **event_costs(cpu, counts0, counts1, syscalls, len(reader.seqs)),
            "closed_early": closed_early,
        }
    )
    result.target("p99_ms", lat.get("p99_ms"), "<=", 2.5, "ms")
    floor_p99 = result.figures["broker_floor_latency"].get("p99_ms")
    over_floor = None if floor_p99 is None or "p99_ms" not in lat else lat["p99_ms"] - floor_p99
    result.target(
        "p99_over_bare_consumer_ms",
        None if over_floor is None else round(over_floor, 3),
        "<=",
        0.5,
        "ms",
    )
    result.target("lost", result.figures["lost"], "==", 0)
    return result
