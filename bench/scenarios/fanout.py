"""fanout: 200 streams, one client each, 400 msg/s in total for 20 s.

Latency percentiles, loss, and the service's CPU (utime+stime from
/proc/<pid>/stat over the publishing window, also per delivered event: the
figure that stays comparable on a shared, noisy machine) and RSS. Targets
(issue 12): p99 <= 3 ms, <= 6 % of a core. Its ceiling follows in the same
run: the same publishing read by a bare ``amqp/`` consumer of every stream
(:func:`~bench.ceilings.bare_amqp_fanout`), its CPU per event and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable

from ..ceilings import bare_amqp_fanout
from ..client import open_ws
from ..harness import (
    Result,
    event_costs,
    lag_shares,
    latency_summary,
    observed,
    running_service,
)
from ..latency import Reader, paced_publish, wait_all_received

NAME = "fanout"


async def _published(publishing: Awaitable[tuple[int, float]]) -> int:
    sent, _ = await publishing
    return sent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fanout-streams", type=int, default=200)
    parser.add_argument("--fanout-rate", type=float, default=400.0, help="msg/s in total")
    parser.add_argument("--fanout-duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--fanout-size", type=int, default=300, help="event body bytes")


async def run(args: argparse.Namespace) -> Result:
    streams, rate = args.fanout_streams, args.fanout_rate
    duration, size = args.fanout_duration, args.fanout_size
    result = Result(
        NAME,
        {"streams": streams, "rate_msg_per_s": rate, "duration_s": duration, "body_bytes": size},
    )
    async with running_service({}, args.log_level) as (service, api, publisher):
        t0 = time.perf_counter()
        keys, locations = await api.create_many(service, "fanout", streams)
        result.figures["stream_creates_per_s"] = round(streams / (time.perf_counter() - t0), 1)
        rss_idle = service.rss_kb()
        open_sem = asyncio.Semaphore(50)

        async def connect(location: str) -> Reader:
            async with open_sem:
                return Reader(await open_ws(location)).start()

        readers = await asyncio.gather(*(connect(loc) for loc in locations))
        await asyncio.sleep(1.0)
        rss_connected = service.rss_kb()
        cpu_idle0 = service.cpu_seconds()
        await asyncio.sleep(2.0)
        idle_cpu = (service.cpu_seconds() - cpu_idle0) / 2.0
        lag0 = await api.delivery_lag_buckets()  # outside the CPU window: a request costs
        cpu0, wall0, counts0 = service.cpu_seconds(), time.perf_counter(), service.counters()
        with observed(service, args, NAME) as (profiler, syscalls):
            sent, achieved = await paced_publish(publisher, keys, rate, duration, size)
            cpu1, wall1, counts1 = service.cpu_seconds(), time.perf_counter(), service.counters()
            await wait_all_received(readers, sent, grace=5.0)
        lag = lag_shares(lag0, await api.delivery_lag_buckets())
        rss_end = service.rss_kb()
        closed_early = sum(1 for r in readers if r.closed is not None)
        await asyncio.gather(*(r.stop() for r in readers))
        if args.profile:
            result.profile = profiler.top()
        # The ceiling, in the same run once the websockets are gone: the same
        # publishing to the same streams, read by a bare amqp/ consumer.
        bare = await bare_amqp_fanout(
            keys,
            args.prefetch,
            lambda: _published(paced_publish(publisher, keys, rate, duration, size)),
        )

    latencies = [x for r in readers for x in r.latencies_ms]
    lat = latency_summary(latencies)
    received = sum(len(r.seqs) for r in readers)
    cpu_fraction = (cpu1 - cpu0) / (wall1 - wall0)
    result.figures.update(
        {
            "sent": sent,
            "publish_rate_achieved": round(achieved, 1),
            "received": received,
            "lost": sent - received,
            "duplicates": sum(r.duplicates for r in readers),
            "out_of_order": sum(r.out_of_order for r in readers),
            "closed_early": closed_early,
            "latency": lat,
            "service_own_lag_shares": lag,
            "service_cpu_seconds": round(cpu1 - cpu0, 3),
            "service_cpu_fraction_of_core": round(cpu_fraction, 4),
            **event_costs(cpu1 - cpu0, counts0, counts1, syscalls, received),
            "service_idle_cpu_fraction_of_core": round(idle_cpu, 4),
            "rss_kb_streams_idle": rss_idle,
            "rss_kb_clients_connected": rss_connected,
            "rss_kb_end": rss_end,
            "bare_consumer": bare,
        }
    )
    service_cpu = result.figures["service_cpu_us_per_event"]
    if isinstance(service_cpu, float) and bare["cpu_us_per_event"] > 0:
        result.figures["cpu_per_event_over_bare_consumer"] = round(
            service_cpu / bare["cpu_us_per_event"], 2
        )
    result.target("p99_ms", lat.get("p99_ms"), "<=", 3.0, "ms")
    result.target("cpu_fraction_of_core", round(cpu_fraction, 4), "<=", 0.06)
    result.target("lost", result.figures["lost"], "==", 0)
    return result
