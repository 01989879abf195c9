"""connections: N concurrent websockets over 100 event streams.

The service runs with ESS_MAX_CONNECTIONS_PER_STREAM=0 (unlimited). Figures:
the open rate with 50 opens in flight, RSS per connection above the idle
baseline (100 streams, no websocket), the broker TCP connections the service
uses (its established sockets to the broker port, cross-checked with
``rabbitmqctl list_connections``), and the time for one event per stream to
reach every client. Targets: all held, <= 16 KB/connection (issue 12), >= 500 opens/s,
<= 8 broker connections, every client served within 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from pathlib import Path

from ..client import ConnectionClosed, TimedClient, open_ws
from ..harness import (
    Profiler,
    Result,
    broker_ports_of,
    event_body,
    latency_summary,
    proc_fd_count,
    proc_fd_limit,
    rabbitmq_connections,
    rabbitmq_fds,
    running_service,
)

NAME = "connections"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connections", type=int, default=2_000, help="websockets (full run: 10000)"
    )
    parser.add_argument("--connection-streams", type=int, default=100)
    parser.add_argument("--opens-in-flight", type=int, default=50)
    parser.add_argument(
        "--connections-signal",
        action="store_true",
        help="send the service SIGUSR1 while all websockets are held (then wait 5 s): with "
        "bench/traced_serve.py as BENCH_ESS_COMMAND, which dumps a tracemalloc snapshot on it",
    )
    parser.add_argument(
        "--force-broker-fds",
        action="store_true",
        help="run even if N websockets may exhaust the broker's file descriptors",
    )


async def run(args: argparse.Namespace) -> Result:
    n, streams, in_flight = args.connections, args.connection_streams, args.opens_in_flight
    result = Result(NAME, {"connections": n, "streams": streams, "opens_in_flight": in_flight})
    env = {"ESS_MAX_CONNECTIONS_PER_STREAM": "0"}
    # RabbitMQ opens the stream's segment and index files for every stream
    # consumer (osiris offset reader), and running out (emfile) kills channels
    # of every client of that broker. Live tails of one stream share one
    # consumer, so the cost is per stream, not per websocket. Refuse unless
    # forced when even that could exhaust the broker.
    fds = rabbitmq_fds()
    result.figures["broker_fds_at_start"] = fds
    if fds and not args.force_broker_fds:
        room = fds["total_limit"] - fds["total_used"]
        if streams > room // 2:
            raise RuntimeError(
                f"{streams} streams may exhaust the broker's file descriptors (limit "
                f"{fds['total_limit']}, used {fds['total_used']}; a stream consumer costs the "
                f"broker at least one): use --connection-streams <= {room // 2}, raise the "
                "broker's limit, or --force-broker-fds"
            )
    async with running_service(env, args.log_level) as (service, api, publisher):
        keys, locations = await api.create_many(service, "conn", streams)
        await asyncio.sleep(2.0)
        rss_base = service.rss_kb()
        broker_before = len(broker_ports_of(service.pid))

        clients: list[TimedClient | None] = [None] * n
        open_ms: list[float] = []
        errors: list[str] = []
        first_ns: list[int | None] = [None] * n
        closed: list[tuple[int | None, str | None] | None] = [None] * n
        tasks: list[asyncio.Task[None]] = []
        open_sem = asyncio.Semaphore(in_flight)

        async def read(i: int, ws: TimedClient) -> None:
            try:
                await ws.recv()
                first_ns[i] = time.time_ns()
                while True:
                    await ws.recv()
            except ConnectionClosed:
                closed[i] = (ws.close_code, ws.close_reason)

        async def open_one(i: int) -> None:
            async with open_sem:
                t = time.perf_counter()
                try:
                    ws = await open_ws(locations[i % streams], max_queue=4)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                open_ms.append((time.perf_counter() - t) * 1000)
                clients[i] = ws
                tasks.append(asyncio.create_task(read(i, ws)))

        with Profiler(service.pid, Path(args.profile_dir), NAME, args.profile) as profiler:
            t0 = time.perf_counter()
            await asyncio.gather(*(open_one(i) for i in range(n)))
            open_s = time.perf_counter() - t0
        opened = sum(1 for c in clients if c is not None)
        await asyncio.sleep(3.0)
        rss_held = service.rss_kb()
        if args.connections_signal:
            os.kill(service.pid, signal.SIGUSR1)
            await asyncio.sleep(5.0)
        fds = proc_fd_count(service.pid)
        fd_limit = proc_fd_limit(service.pid)
        ports = broker_ports_of(service.pid)
        result.figures["broker_fds_held"] = rabbitmq_fds()
        rows = rabbitmq_connections()
        channels = None
        if rows is not None:
            channels = sum(r["channels"] for r in rows if r["peer_port"] in ports)
            listed = sum(1 for r in rows if r["peer_port"] in ports)
        else:
            listed = None

        # One event per stream; every client of that stream must get it.
        t_pub = time.time_ns()
        await asyncio.gather(
            *(publisher.publish(k, event_body(i, 200)) for i, k in enumerate(keys))
        )
        deadline = time.perf_counter() + 15.0
        live = [i for i, c in enumerate(clients) if c is not None and closed[i] is None]
        while time.perf_counter() < deadline and any(first_ns[i] is None for i in live):
            await asyncio.sleep(0.05)
        served = [(first_ns[i] - t_pub) / 1e6 for i in live if first_ns[i] is not None]  # type: ignore[operator]
        held = sum(1 for i, c in enumerate(clients) if c is not None and closed[i] is None)

        close_sem = asyncio.Semaphore(200)

        async def close(ws: TimedClient) -> None:
            async with close_sem:
                await ws.close()

        t_close = time.perf_counter()
        await asyncio.gather(*(close(c) for c in clients if c is not None), return_exceptions=True)
        close_s = time.perf_counter() - t_close
        await asyncio.gather(*tasks, return_exceptions=True)
        if args.profile:
            result.profile = profiler.top()

    per_conn_kb = (rss_held - rss_base) / max(1, opened)
    served_sorted = sorted(served)
    all_served_ms = served_sorted[-1] if len(served) == len(live) and served else None
    result.figures.update(
        {
            "opened": opened,
            "open_errors": len(errors),
            "open_error_samples": sorted(set(errors))[:5],
            "held": held,
            "opens_per_s": round(opened / open_s, 1),
            "open_latency": latency_summary(open_ms),
            "rss_kb_base": rss_base,
            "rss_kb_held": rss_held,
            "rss_kb_per_connection": round(per_conn_kb, 2),
            "service_fds_held": fds,
            "service_fd_limit": fd_limit,
            "broker_connections_before_clients": broker_before,
            "broker_connections": len(ports),
            "broker_connections_listed_by_rabbitmqctl": listed,
            "broker_channels": channels,
            "served": len(served),
            "not_served": len(live) - len(served),
            "serve_latency": latency_summary(served),
            "all_served_ms": round(all_served_ms, 1) if all_served_ms is not None else None,
            "client_close_all_s": round(close_s, 2),
        }
    )
    result.target("held", held, ">=", n)
    result.target("kb_per_connection", round(per_conn_kb, 2), "<=", 16, "KB")
    result.target("opens_per_s", round(opened / open_s, 1), ">=", 500)
    result.target("broker_connections", len(ports), "<=", 8)
    result.target("all_served_ms", result.figures["all_served_ms"], "<=", 2000, "ms")
    return result
