"""delete: one connected client, then DELETE; 50 repetitions.

Times, from sending the DELETE: the client's receipt of the close frame (code
and reason checked: 1000 "The stream has been deleted") and the 204. The 204
must never come before the close. Targets: close <= 10 ms p50, <= 50 ms max.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from ..client import open_ws, wait_close
from ..harness import Profiler, Result, latency_summary, running_service, unique_key

NAME = "delete"
REASON = "The stream has been deleted"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delete-repeats", type=int, default=50)


async def run(args: argparse.Namespace) -> Result:
    reps = args.delete_repeats
    result = Result(NAME, {"repetitions": reps})
    close_ms: list[float] = []
    tcp_close_ms: list[float] = []
    ok_ms: list[float] = []
    ok_before_close = 0
    wrong_close: list[str] = []
    wrong_status: list[int] = []
    async with running_service({}, args.log_level) as (service, api, _publisher):
        with Profiler(service.pid, Path(args.profile_dir), NAME, args.profile) as profiler:
            for _ in range(reps):
                key = unique_key("delete")
                service.routing_keys.append(key)
                stream_id, location = await api.create(key)
                ws = await open_ws(location)
                await asyncio.sleep(0.05)
                closer = asyncio.create_task(wait_close(ws, timeout=30))
                t0 = time.perf_counter_ns()
                status = await api.delete(stream_id)
                t_ok = time.perf_counter_ns()
                code, reason = await closer
                t_tcp = time.perf_counter_ns()
                if status != 204:
                    wrong_status.append(status)
                ok_ms.append((t_ok - t0) / 1e6)
                if ws.close_frame_ns is None:
                    wrong_close.append("no close frame")
                    continue
                close_ms.append((ws.close_frame_ns - t0) / 1e6)
                tcp_close_ms.append((t_tcp - t0) / 1e6)
                if t_ok < ws.close_frame_ns:
                    ok_before_close += 1
                if code != 1000 or reason != REASON:
                    wrong_close.append(f"{code} {reason!r}")
        if args.profile:
            result.profile = profiler.top()

    close = latency_summary(close_ms)
    result.figures.update(
        {
            "close_frame": close,
            "http_204": latency_summary(ok_ms),
            "client_saw_tcp_close_or_later": latency_summary(tcp_close_ms),
            "ok_before_close": ok_before_close,
            "wrong_close": wrong_close[:5],
            "wrong_close_count": len(wrong_close),
            "wrong_status": wrong_status[:5],
        }
    )
    result.latency_targets("close", close, p50_ms=10, max_ms=50)
    result.target("204_before_close", ok_before_close, "==", 0)
    result.target("wrong_close_or_status", len(wrong_close) + len(wrong_status), "==", 0)
    return result
