"""workers_fanout: live-fanout capacity of ``ess serve --workers 2`` against one worker.

In the same run, alternately (``--workers-pairs`` pairs): a service with
``ESS_WORKERS=1`` and one with ``ESS_WORKERS=2`` (``ESS_MAX_CONNECTIONS_PER_STREAM=0``),
``--workers-streams`` streams x ``--workers-per-stream`` websockets opened on
the shared public port (the kernel spreads them over the workers with
SO_REUSEPORT). A publisher steps its rate up (``--workers-rate-start`` msg/s
in total, times ``--workers-rate-factor`` per step of ``--workers-step``
seconds) until a step loses an event, closes a client, misses the rate, or
has a p99 above ``--workers-p99-ms`` (the same bound for both). Reported: the
highest rate each sustains (msg/s published; frames delivered = rate x
websockets per stream), their medians and the ratio (target >= 1.6x), and at
the best step the CPU of each service process, of the broker (``beam.smp``
listening on 5672) and of this driver, as fractions of the machine's cores.

Why several websockets per stream: each worker holds one consumer per
stream it serves (the live tail), so the broker delivers each event once
per worker, whatever the number of websockets; the service sends it once
per websocket. Many websockets per stream keep the broker's share small,
so the ratio measures the workers, not the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from ..client import open_ws
from ..harness import (
    Result,
    broker_pid,
    latency_summary,
    median,
    proc_children,
    proc_cpu_seconds,
    running_service,
    wait_replicas_listed,
)
from ..latency import Reader, paced_publish, wait_all_received

NAME = "workers_fanout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers-pairs", type=int, default=1, help="1-worker/2-worker pairs")
    parser.add_argument("--workers-streams", type=int, default=20)
    parser.add_argument("--workers-per-stream", type=int, default=10, help="websockets/stream")
    parser.add_argument("--workers-rate-start", type=float, default=100.0, help="msg/s in total")
    parser.add_argument("--workers-rate-factor", type=float, default=1.5)
    parser.add_argument("--workers-max-steps", type=int, default=10)
    parser.add_argument("--workers-step", type=float, default=3.0, help="seconds per step")
    parser.add_argument("--workers-p99-ms", type=float, default=20.0, help="p99 bound")
    parser.add_argument("--workers-size", type=int, default=300, help="event body bytes")


def reset(reader: Reader) -> None:
    """Forget what the reader saw: every step publishes seq 0.. again."""
    reader.seqs.clear()
    reader.latencies_ms.clear()
    reader.last_seq = -1
    reader.duplicates = reader.out_of_order = 0


async def capacity(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """One service of ``workers`` workers: its steps and the highest rate it sustained."""
    env = {"ESS_MAX_CONNECTIONS_PER_STREAM": "0", "ESS_WORKERS": str(workers)}
    per_stream = args.workers_per_stream
    async with running_service(env, args.log_level) as (service, api, publisher):
        await wait_replicas_listed([service.api], workers, answerers=workers)
        pids = proc_children(service.pid) if workers > 1 else [service.pid]
        keys, locations = await api.create_many(service, f"workers{workers}-", args.workers_streams)
        slots = asyncio.Semaphore(50)

        async def connect(location: str) -> Reader:
            async with slots:
                return Reader(await open_ws(location)).start()

        readers = await asyncio.gather(
            *(connect(loc) for loc in locations for _ in range(per_stream))
        )
        # Served: one event per stream reaches every websocket.
        for n, key in enumerate(keys):
            await publisher.publish(key, b'{"seq": %d, "pub_ns": %d}' % (n, time.time_ns()))
        await wait_all_received(readers, len(readers), grace=30.0)
        served = sum(len(r.seqs) for r in readers)
        listed = (await api.client.get("/debug/replicas")).json()["replicas"]
        broker = broker_pid()
        watched = {"service": pids, "parent": [service.pid] if workers > 1 else []}
        steps: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        rate = args.workers_rate_start
        for _ in range(args.workers_max_steps):
            for r in readers:
                reset(r)
            cpu0 = {p: proc_cpu_seconds(p) for p in [*pids, *watched["parent"]]}
            broker0 = proc_cpu_seconds(broker) if broker else 0.0
            driver0, wall0 = proc_cpu_seconds(os.getpid()), time.perf_counter()
            sent, achieved = await paced_publish(
                publisher, keys, rate, args.workers_step, args.workers_size
            )
            wall = time.perf_counter() - wall0
            cpu = {p: round((proc_cpu_seconds(p) - c) / wall, 3) for p, c in cpu0.items()}
            broker_cores = (proc_cpu_seconds(broker) - broker0) / wall if broker else None
            driver_cores = (proc_cpu_seconds(os.getpid()) - driver0) / wall
            await wait_all_received(readers, sent * per_stream, grace=10.0)
            lat = latency_summary(x for r in readers for x in r.latencies_ms)
            received = sum(len(r.seqs) for r in readers)
            closed = sum(1 for r in readers if r.closed is not None)
            step = {
                "rate_msg_per_s": round(rate, 1),
                "achieved": round(achieved, 1),
                "frames_per_s": round(received / wall, 1),
                "lost": sent * per_stream - received,
                "closed": closed,
                "p99_ms": lat.get("p99_ms"),
                "service_cores": {str(p): cpu[p] for p in pids},
                "parent_cores": sum(cpu[p] for p in watched["parent"]),
                "broker_cores": round(broker_cores, 3) if broker_cores is not None else None,
                "broker_share_of_machine": (
                    round(broker_cores / (os.cpu_count() or 1), 3) if broker_cores else None
                ),
                "driver_cores": round(driver_cores, 3),
            }
            steps.append(step)
            p99 = lat.get("p99_ms")
            sustained = (
                step["lost"] == 0
                and closed == 0
                and achieved >= 0.95 * rate
                and p99 is not None
                and p99 <= args.workers_p99_ms
            )
            if not sustained:
                break
            best = step
            rate *= args.workers_rate_factor
        await asyncio.gather(*(r.stop() for r in readers))
    return {
        "workers": workers,
        "websockets_served": served,
        "websockets_per_replica": {e["name"]: e["websockets"] for e in listed},
        "best": best,
        # Never failed a step: the capacity is above the last rate tried.
        "capped_by_max_steps": best is not None and best is steps[-1],
        "steps": steps,
    }


async def run(args: argparse.Namespace) -> Result:
    result = Result(
        NAME,
        {
            "pairs": args.workers_pairs,
            "streams": args.workers_streams,
            "websockets_per_stream": args.workers_per_stream,
            "rate_start": args.workers_rate_start,
            "rate_factor": args.workers_rate_factor,
            "step_s": args.workers_step,
            "p99_bound_ms": args.workers_p99_ms,
            "body_bytes": args.workers_size,
        },
    )
    runs: list[dict[str, Any]] = []
    for _ in range(args.workers_pairs):
        for workers in (1, 2):
            runs.append(await capacity(args, workers))

    def best_rates(workers: int) -> list[float]:
        return [
            r["best"]["rate_msg_per_s"] if r["best"] else 0.0
            for r in runs
            if r["workers"] == workers
        ]

    one, two = median(best_rates(1)), median(best_rates(2))
    ratio = round(two / one, 2) if one > 0 else None
    result.figures.update(
        {
            "best_rate_1_worker": best_rates(1),
            "best_rate_2_workers": best_rates(2),
            "median_1_worker": one,
            "median_2_workers": two,
            "ratio": ratio,
            "runs": runs,
        }
    )
    if any(r["capped_by_max_steps"] for r in runs):
        result.notes.append("a run never failed a step: raise --workers-max-steps")
    result.target("ratio_2_workers_to_1", ratio, ">=", 1.6)
    return result
