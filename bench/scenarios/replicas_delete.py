"""replicas_delete: DELETE on one replica, websockets on the others; 50 rounds.

Three ``ess serve`` replicas on one SQLite registry file and one exchange
(issue 11, SPEC section 7). Each round creates a stream, opens one websocket
on every replica but the one that will answer the DELETE (the deleter
rotates), proves each is served (one event reaches it), then DELETEs. Times,
from sending the DELETE: each client's receipt of the close frame (1000 "The
stream has been deleted", checked) and the 204. The 204 must never come
before a close on any replica: the DELETE waits for every other replica's
``closed`` answer on the control exchange, each sent after its websockets
closed. ``ESS_MAX_CONNECTIONS_PER_STREAM=0`` so that the websockets of one
stream on several replicas do not take each other over (4001). Targets
(issue 11): close p50 <= 20 ms, max <= 200 ms, 0 violations.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from .. import harness
from ..client import open_ws, wait_close
from ..harness import Result, event_body, latency_summary, location_on, running_replicas, unique_key
from .delete import REASON

NAME = "replicas_delete"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=3, help="replicas (replicas_*)")
    parser.add_argument("--replicas-delete-rounds", type=int, default=50)


async def run(args: argparse.Namespace) -> Result:
    count, rounds = args.replicas, args.replicas_delete_rounds
    result = Result(NAME, {"replicas": count, "rounds": rounds})
    close_ms: list[float] = []
    ok_ms: list[float] = []
    ok_before_close = 0
    wrong: list[str] = []
    env = {"ESS_MAX_CONNECTIONS_PER_STREAM": "0"}
    async with running_replicas(count, env, args.log_level) as (services, apis, publisher):
        for n in range(rounds):
            deleter = n % count
            key = unique_key("replicas-delete")
            services[0].routing_keys.append(key)
            stream_id, location = await apis[deleter].create(key)
            watched = [s for i, s in enumerate(services) if i != deleter]
            clients = [await open_ws(location_on(s, location)) for s in watched]
            await publisher.publish(key, event_body(0, 100))
            for ws in clients:  # served: the event reached each replica's websocket
                await asyncio.wait_for(ws.recv(), 10)
            closers = [asyncio.create_task(wait_close(ws, timeout=30)) for ws in clients]
            t0 = time.perf_counter_ns()
            status = await apis[deleter].delete(stream_id)
            t_ok = time.perf_counter_ns()
            closes = await asyncio.gather(*closers)
            ok_ms.append((t_ok - t0) / 1e6)
            if status != 204:
                wrong.append(f"status {status}")
            for ws, (code, reason) in zip(clients, closes, strict=True):
                if ws.close_frame_ns is None:
                    wrong.append("no close frame")
                    ok_before_close += 1
                    continue
                close_ms.append((ws.close_frame_ns - t0) / 1e6)
                if t_ok < ws.close_frame_ns:
                    ok_before_close += 1
                if code != 1000 or reason != REASON:
                    wrong.append(f"{code} {reason!r}")

    close = latency_summary(close_ms)
    result.figures.update(
        {
            "close_frame_on_other_replicas": close,
            "http_204": latency_summary(ok_ms),
            "ok_before_close": ok_before_close,
            **harness.sample_of("wrong", wrong),
        }
    )
    result.latency_targets("close", close, p50_ms=20, max_ms=200)
    result.target("204_before_close", ok_before_close, "==", 0)
    result.target("wrong_close_or_status", len(wrong), "==", 0)
    return result
