"""capacity: the highest delivered event rate one ``ess serve`` sustains.

Two shapes, each against its own service: ``streams`` (N streams with one
live websocket each, every event to one websocket) and ``shared`` (one
stream with N live websockets, ``ESS_MAX_CONNECTIONS_PER_STREAM=0``, every
event to all N). The rate steps up through ``--capacity-rates`` (delivered
events/s; the publish rate is that divided by the websockets per stream),
each step ``--capacity-step-seconds`` long; a step passes with 0 lost, 0
duplicated, no websocket closed, the publisher on its rate and p99 <= 20 ms.
Stepping stops at the first step that fails (``--capacity-keep-going``: at
the first that lost events; the highest passing step is still the last
before the first failure).

Per step: delivered events/s, latency, and the CPU of the service, of the
broker (its ``beam.smp``: shared with whatever else uses that broker), of
the driver (publisher) and of each reader process, per delivered event and
as fractions of a core, with the whole machine's busy CPU beside them: on
2 cores these four share the machine, and the reader processes
(:class:`bench.client.ReaderPool`) show whether the client was the limit.
Target: the highest passing step >= 15,000 delivered events/s per shape.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from ..client import ReaderPool
from ..harness import (
    Profiler,
    Publisher,
    Result,
    broker_pid,
    cpu_us_per_event,
    event_body,
    latency_summary,
    machine_cpu_seconds,
    proc_cpu_seconds,
    proc_fd_count,
    proc_fd_limit,
    rabbitmq_fds,
    running_service,
)
from ..latency import paced_publish

NAME = "capacity"
SHAPES = ("streams", "shared")
QUICK_WEBSOCKETS, FULL_WEBSOCKETS = 100, 1_000
QUICK_STEP_SECONDS, FULL_STEP_SECONDS = 5.0, 30.0
CLIENT_SATURATED = 0.9  # of a core: a reader process or the publisher this busy was the limit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--capacity-shapes",
        default=",".join(SHAPES),
        help="comma-separated: streams (N streams x 1 websocket), shared (1 stream x N)",
    )
    parser.add_argument(
        "--capacity-websockets",
        type=int,
        default=QUICK_WEBSOCKETS,
        help=f"live websockets per shape (--full: {FULL_WEBSOCKETS})",
    )
    parser.add_argument(
        "--capacity-rates",
        default="1000,2000,4000,7000,10000,15000,20000,25000",
        help="comma-separated delivered events/s, one step each, in order",
    )
    parser.add_argument(
        "--capacity-step-seconds",
        type=float,
        default=QUICK_STEP_SECONDS,
        help=f"seconds per step (--full: {FULL_STEP_SECONDS:g})",
    )
    parser.add_argument("--capacity-p99-ms", type=float, default=20.0, help="p99 a step may have")
    parser.add_argument("--capacity-size", type=int, default=300, help="event body bytes")
    parser.add_argument(
        "--capacity-client-processes",
        type=int,
        default=2,
        help="reader processes sharing the websockets (one asyncio loop each)",
    )
    parser.add_argument(
        "--capacity-keep-going",
        action="store_true",
        help="step on past a step that failed without losing events (figures only)",
    )
    parser.add_argument(
        "--capacity-grace", type=float, default=5.0, help="seconds a step's last events may take"
    )


def min_timeout(args: argparse.Namespace) -> float:
    """Seconds the scenario may need: every step of every shape, with set-up."""
    steps = len([r for r in args.capacity_rates.split(",") if r])
    per_shape = 120.0 + steps * (args.capacity_step_seconds + args.capacity_grace + 5.0)
    return per_shape * len([s for s in args.capacity_shapes.split(",") if s])


def check_broker_fds(streams: int, force: bool) -> None:
    """Refuse a number of streams that may exhaust the broker's file descriptors.

    Every stream with a consumer holds about one more descriptor open in
    RabbitMQ (measured: 100 streams ~ +94 in ``/proc/<beam.smp>/fd``), and
    ``emfile`` breaks the channels of every client of that broker (see the
    ``connections`` scenario). The OS-level count and limit of ``beam.smp``
    are used where readable, else ``rabbitmqctl status``; half the room is
    left to the broker's other clients. ``--force-broker-fds`` runs anyway.
    """
    pid = broker_pid()
    used, limit = (proc_fd_count(pid), proc_fd_limit(pid)) if pid is not None else (-1, -1)
    if used < 0 or limit < 0:
        fds = rabbitmq_fds() or {}
        used, limit = fds.get("total_used", -1), fds.get("total_limit", -1)
    if not force and used >= 0 and streams > (limit - used) // 2:
        raise RuntimeError(
            f"{streams} streams may exhaust the broker's file descriptors (limit {limit}, "
            f"used {used}, each stream's consumer costs about one): fewer "
            "--capacity-websockets, raise the broker's limit, or --force-broker-fds"
        )


class Cpu:
    """CPU seconds so far of everything that shares the machine during a step."""

    def __init__(self, service_pid: int, broker: int | None, pool: ReaderPool) -> None:
        self.service_pid, self.broker, self.pool = service_pid, broker, pool
        self.wall = time.perf_counter()
        self.service = proc_cpu_seconds(service_pid)
        self.broker_s = proc_cpu_seconds(broker) if broker is not None else None
        self.driver = proc_cpu_seconds(os.getpid())
        self.readers = pool.cpu_seconds()
        self.machine = machine_cpu_seconds()

    def since(self, before: Cpu, delivered: int) -> dict[str, Any]:
        wall = self.wall - before.wall
        readers = [a - b for a, b in zip(self.readers, before.readers, strict=True)]
        broker = (
            self.broker_s - before.broker_s
            if self.broker_s is not None and before.broker_s is not None
            else None
        )
        parts = {
            "service": self.service - before.service,
            "broker": broker,
            "driver": self.driver - before.driver,
            "readers": sum(readers),
        }
        known = sum(v for v in parts.values() if v is not None)
        return {
            "wall_s": round(wall, 2),
            "fraction_of_core": {
                **{k: round(v / wall, 3) if v is not None else None for k, v in parts.items()},
                "each_reader": [round(r / wall, 3) for r in readers],
                "machine_busy": round((self.machine - before.machine) / wall, 3),
                "others": round((self.machine - before.machine - known) / wall, 3),
            },
            "service_cpu_us_per_event": cpu_us_per_event(parts["service"], delivered),
            "broker_cpu_us_per_event": (
                cpu_us_per_event(broker, delivered) if broker is not None else None
            ),
            "client_cpu_us_per_event": cpu_us_per_event(
                parts["driver"] + parts["readers"], delivered
            ),
            "client_saturated": max([parts["driver"], *readers]) / wall >= CLIENT_SATURATED,
        }


async def run_shape(shape: str, args: argparse.Namespace, rates: list[float]) -> dict[str, Any]:
    """Step the rate up on one shape until a step fails; the figures of every step."""
    n = args.capacity_websockets
    per_stream = n if shape == "shared" else 1
    env = {"ESS_MAX_CONNECTIONS_PER_STREAM": "0"} if shape == "shared" else {}
    out: dict[str, Any] = {"websockets": n, "streams": n // per_stream, "steps": []}
    check_broker_fds(n // per_stream, args.force_broker_fds)
    async with running_service(env, args.log_level) as (service, api, publisher):
        keys, locations = await api.create_many(service, f"cap-{shape}", n // per_stream)
        pool = ReaderPool(args.capacity_client_processes)
        try:
            opened, errors = await pool.open(locations * per_stream)
            broker = broker_pid()
            out.update(
                opened=opened,
                open_errors=errors,
                broker_fds_held=rabbitmq_fds(),
                broker_os_fds_held=proc_fd_count(broker) if broker is not None else None,
                broker_os_fd_limit=proc_fd_limit(broker) if broker is not None else None,
            )
            if opened < n:
                raise RuntimeError(f"{shape}: opened {opened} of {n} websockets: {errors}")
            # One event per stream reaching every websocket: all are subscribed.
            await asyncio.gather(
                *(
                    publisher.publish(k, event_body(i, args.capacity_size))
                    for i, k in enumerate(keys)
                )
            )
            warm = await pool.wait_received(n, 30.0)
            await pool.take()
            if warm < n:
                raise RuntimeError(f"{shape}: the warm-up event reached {warm} of {n} websockets")
            profile = Path(args.profile_dir)
            with Profiler(service.pid, profile, f"{NAME}-{shape}", args.profile) as profiler:
                for rate in rates:
                    step = await run_step(args, service.pid, broker, pool, publisher, keys, rate)
                    out["steps"].append(step)
                    if step["lost"] or not (step["pass"] or args.capacity_keep_going):
                        break
            if args.profile:
                out["profile"] = profiler.top()
        finally:
            await pool.close()
    passing = []  # the steps up to the first that failed
    for step in out["steps"]:
        if not step["pass"]:
            break
        passing.append(step)
    out["highest_passing_rate"] = passing[-1]["rate"] if passing else None
    out["highest_passing_delivered_per_s"] = passing[-1]["delivered_per_s"] if passing else None
    return out


async def run_step(
    args: argparse.Namespace,
    service_pid: int,
    broker: int | None,
    pool: ReaderPool,
    publisher: Publisher,
    keys: list[str],
    rate: float,
) -> dict[str, Any]:
    """One step at ``rate`` delivered events/s: publish, wait for the last, judge."""
    per_stream = args.capacity_websockets // len(keys)
    publish_rate = rate / per_stream
    before = Cpu(service_pid, broker, pool)
    sent, achieved = await paced_publish(
        publisher, keys, publish_rate, args.capacity_step_seconds, args.capacity_size
    )
    expected = sent * per_stream
    await pool.wait_received(expected, args.capacity_grace)
    after = Cpu(service_pid, broker, pool)
    got = await pool.take()
    lat = latency_summary(got.latencies_ms)
    p99 = lat.get("p99_ms")
    on_rate = achieved >= 0.95 * publish_rate
    step = {
        "rate": rate,
        "publish_rate": round(publish_rate, 2),
        "publish_rate_achieved": round(achieved, 1),
        "sent": sent,
        "expected": expected,
        "received": got.received,
        "lost": expected - got.received,
        "duplicates": got.duplicates,
        "out_of_order": got.out_of_order,
        "closed": got.closed,
        # Over the time to the last delivery, but at least the schedule's length:
        # at a few events/s the last publish is a whole interval before its end.
        "delivered_per_s": round(
            got.received / max(after.wall - before.wall, sent / publish_rate), 1
        ),
        "latency": lat,
        **after.since(before, got.received),
    }
    # One event is a burst of ``per_stream`` frames. The service (one thread)
    # needs its CPU per frame times the burst before the burst's last
    # websocket has the event: a floor under the latency at any rate. Each
    # reader process handles its share of the burst one frame after another:
    # at most that much of the latency is the client's own.
    reader_cpu = sum(after.readers) - sum(before.readers)
    service_us = step["service_cpu_us_per_event"]
    step["service_burst_cpu_ms"] = (
        round(service_us * per_stream / 1000, 2) if service_us is not None else None
    )
    step["client_burst_cpu_ms"] = (
        round(reader_cpu / got.received * per_stream / len(after.readers) * 1000, 2)
        if got.received
        else None
    )
    step["pass"] = bool(
        step["lost"] == 0
        and got.duplicates == 0
        and got.closed == 0
        and on_rate
        and p99 is not None
        and p99 <= args.capacity_p99_ms
    )
    print(
        f"capacity: {rate:,.0f}/s x {per_stream} per stream: delivered "
        f"{step['delivered_per_s']:,.0f}/s, lost {step['lost']}, p99 {p99} ms, "
        f"cores {step['fraction_of_core']}, {'pass' if step['pass'] else 'FAIL'}",
        flush=True,
    )
    return step


async def run(args: argparse.Namespace) -> Result:
    shapes = [s for s in args.capacity_shapes.split(",") if s]
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        raise ValueError(f"unknown --capacity-shapes {sorted(unknown)}; choose from {SHAPES}")
    rates = [float(r) for r in args.capacity_rates.split(",") if r]
    result = Result(
        NAME,
        {
            "shapes": shapes,
            "websockets": args.capacity_websockets,
            "rates_delivered_per_s": rates,
            "step_s": args.capacity_step_seconds,
            "p99_limit_ms": args.capacity_p99_ms,
            "body_bytes": args.capacity_size,
            "client_processes": args.capacity_client_processes,
        },
    )
    for shape in shapes:
        figures = await run_shape(shape, args, rates)
        result.figures[shape] = figures
        if any(step["client_saturated"] for step in figures["steps"]):
            result.notes.append(f"{shape}: a reader process or the publisher saturated a core")
        result.target(
            f"{shape}_highest_passing_delivered_per_s",
            figures["highest_passing_delivered_per_s"],
            ">=",
            15_000,
            "events/s",
        )
    return result
