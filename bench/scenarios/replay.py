"""replay: a client reads a whole stream from ``stream_from_ordinal=0``.

50,000 events of ~300 bytes; msg/s from the connect to the last frame, checked
complete and in order. Ceilings in the same run, on the same stream: a bare
AMQP consumer (:func:`bench.ceilings.bare_amqp_consume`) and a bare
trio-websocket server pushing the very frames the service sent to the same
client. Targets: >= 15,000 msg/s and >= half the bare consumer's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from ..ceilings import bare_amqp_consume, bare_ws_server
from ..client import open_ws
from ..harness import Profiler, Result, event_body, median, running_service, unique_key

NAME = "replay"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replay-events", type=int, default=50_000)
    parser.add_argument("--replay-size", type=int, default=300, help="event body bytes")
    parser.add_argument("--replay-repeats", type=int, default=3)


async def receive_all(url: str, count: int, timeout: float = 300.0) -> tuple[float, list[str]]:
    """Connect, read ``count`` frames; seconds from the connect to the last frame."""
    frames: list[str] = []
    start = time.perf_counter()
    ws = await open_ws(url, max_queue=1024)
    try:
        async with asyncio.timeout(timeout):
            append = frames.append
            recv = ws.recv
            for _ in range(count):
                append(await recv())
        elapsed = time.perf_counter() - start
    finally:
        await ws.close()
    return elapsed, [f if isinstance(f, str) else f.decode() for f in frames]


def check_frames(frames: list[str], count: int) -> str | None:
    """None if ordinals run 1..count in order and match the published sequence."""
    if len(frames) != count:
        return f"got {len(frames)} frames, expected {count}"
    for i, frame in enumerate(frames):
        event = json.loads(frame)
        if event.get("ess_ordinal") != i + 1 or event.get("seq") != i:
            return f"frame {i}: ordinal {event.get('ess_ordinal')} seq {event.get('seq')}"
    return None


async def run(args: argparse.Namespace) -> Result:
    n, size = args.replay_events, args.replay_size
    prefetch = args.prefetch
    env = {"ESS_PREFETCH": str(prefetch)} if args.prefetch_set else {}
    result = Result(
        NAME,
        {"events": n, "body_bytes": size, "repeats": args.replay_repeats, "prefetch": prefetch},
    )
    async with running_service(env, args.log_level) as (service, api, publisher):
        key = unique_key("replay")
        service.routing_keys.append(key)
        _, location = await api.create(key)
        t0 = time.perf_counter()
        await publisher.publish_many(key, (event_body(i, size) for i in range(n)))
        result.figures["publish_msg_per_s"] = round(n / (time.perf_counter() - t0))

        url = f"{location}?stream_from_ordinal=0"
        rates: dict[str, list[float]] = {"service": [], "bare_amqp": [], "bare_ws": []}
        cpu_us_per_msg: list[float] = []
        frames_file = Path(tempfile.mkstemp(prefix="ess-bench-frames-", suffix=".txt")[1])
        try:
            profiler = Profiler(service.pid, Path(args.profile_dir), NAME, args.profile)
            for rep in range(args.replay_repeats):
                cpu0 = service.cpu_seconds()
                with profiler if rep == 0 else _null():
                    elapsed, frames = await receive_all(url, n)
                cpu_us_per_msg.append((service.cpu_seconds() - cpu0) / n * 1e6)
                rates["service"].append(n / elapsed)
                problem = check_frames(frames, n)
                if problem:
                    result.notes.append(f"rep {rep}: {problem}")
                if rep == 0:
                    frames_file.write_text("\n".join(frames) + "\n", encoding="utf-8")
                    result.figures["frame_bytes_mean"] = round(sum(map(len, frames)) / n)
                del frames
                rates["bare_amqp"].append(n / await bare_amqp_consume(key, n, prefetch))
                async with bare_ws_server(frames_file) as bare_url:
                    elapsed, frames = await receive_all(bare_url, n)
                rates["bare_ws"].append(n / elapsed)
                del frames
                await asyncio.sleep(0.5)
        finally:
            frames_file.unlink(missing_ok=True)
        if args.profile:
            result.profile = profiler.top()

    med = {k: median(v) for k, v in rates.items()}
    result.figures.update(
        {
            "service_msg_per_s": round(med["service"]),
            "bare_amqp_msg_per_s": round(med["bare_amqp"]),
            "bare_ws_msg_per_s": round(med["bare_ws"]),
            "ratio_to_bare_amqp": round(med["service"] / med["bare_amqp"], 3),
            "ratio_to_bare_ws": round(med["service"] / med["bare_ws"], 3),
            "service_cpu_us_per_msg": round(median(cpu_us_per_msg), 1),
            "runs_msg_per_s": {k: [round(x) for x in v] for k, v in rates.items()},
            "complete_and_in_order": not any("rep" in note for note in result.notes),
        }
    )
    result.target("msg_per_s", result.figures["service_msg_per_s"], ">=", 15_000)
    result.target("ratio_to_bare_amqp", result.figures["ratio_to_bare_amqp"], ">=", 0.5)
    result.target("complete_in_order", result.figures["complete_and_in_order"], "==", True)
    return result


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
