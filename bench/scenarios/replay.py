"""replay: a client reads a whole stream from ``stream_from_ordinal=0``.

Two stream shapes (:data:`SHAPES`), each its own stream: ``bench``, 50,000
events of ~300 bytes published fast (many events per osiris chunk), and
``single``, 20,000 published one confirmed message at a time (one event per
chunk). Per shape: msg/s from the connect to the last frame, checked
complete and in order. Ceilings in the same run, on the same stream, with the
same prefetch: a bare AMQP consumer (:func:`bench.ceilings.bare_amqp_consume`)
and a bare trio-websocket server pushing the very frames the service sent to
the same client. Targets per shape (issue 12): >= 15,000 msg/s and >= 0.8 of
the bare consumer's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from ..ceilings import bare_amqp_consume, bare_ws_server
from ..client import open_ws
from ..harness import (
    Profiler,
    Result,
    broker_pid,
    event_body,
    median,
    proc_cpu_seconds,
    running_service,
    unique_key,
)

NAME = "replay"
#: Issue 12: the service within 0.8 of the bare consumer, same stream, same prefetch.
RATIO_TARGET: Final = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replay-events", type=int, default=50_000)
    parser.add_argument("--replay-size", type=int, default=300, help="event body bytes")
    parser.add_argument("--replay-repeats", type=int, default=3)
    parser.add_argument(
        "--replay-shapes",
        default=",".join(SHAPES),
        help="comma-separated: bench (published fast), single (one confirmed publish each)",
    )
    parser.add_argument(
        "--replay-single-events", type=int, default=20_000, help="events of the single shape"
    )


async def receive_all(url: str, count: int, timeout: float = 300.0) -> tuple[float, list[str]]:
    """Connect, read ``count`` frames; seconds from the connect to the last frame."""
    frames: list[str | bytes] = []
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


#: The two stream shapes (issue 12): ``bench``, published fast (many events
#: per osiris chunk), and ``single``, one confirmed publish at a time (one
#: event per chunk, as the Account Server publishes). RabbitMQ reads and
#: credits a stream chunk by chunk, so the second shape costs the broker far
#: more per event and is the one real replays look like.
SHAPES: Final = ("bench", "single")


async def _publish(publisher: Any, key: str, shape: str, n: int, size: int) -> None:
    if shape == "bench":
        await publisher.publish_many(key, (event_body(i, size) for i in range(n)))
    else:
        for i in range(n):  # one confirmed message at a time: one chunk each
            await publisher.publish(key, event_body(i, size))


async def _measure(
    args: argparse.Namespace,
    service: Any,
    api: Any,
    publisher: Any,
    shape: str,
    n: int,
    profiler: Profiler,
    notes: list[str],
) -> dict[str, Any]:
    """One shape: publish its stream, then ``--replay-repeats`` x (service, bare amqp, bare ws)."""
    size, prefetch = args.replay_size, args.prefetch
    figures: dict[str, Any] = {"events": n}
    key = unique_key(f"replay-{shape}")
    service.routing_keys.append(key)
    _, location = await api.create(key)
    t0 = time.perf_counter()
    await _publish(publisher, key, shape, n, size)
    figures["publish_msg_per_s"] = round(n / (time.perf_counter() - t0))

    url = f"{location}?stream_from_ordinal=0"
    rates: dict[str, list[float]] = {"service": [], "bare_amqp": [], "bare_ws": []}
    cpu_us_per_msg: list[float] = []
    # Who used the cores during each run: the broker (shared with the other
    # clients of this RabbitMQ) and this driver (the websocket client), per
    # message. On 2 cores, a broker near a core during the service's run but
    # not the bare consumer's says the machine, not the service, is the cap.
    cores: dict[str, list[float]] = {"broker_service": [], "broker_bare": [], "client": []}
    bpid = broker_pid()

    def broker_cpu() -> float:
        return proc_cpu_seconds(bpid) if bpid is not None else 0.0

    frames_file = Path(tempfile.mkstemp(prefix="ess-bench-frames-", suffix=".txt")[1])
    try:
        for rep in range(args.replay_repeats):
            cpu0, b0, c0 = service.cpu_seconds(), broker_cpu(), time.process_time()
            with profiler if rep == 0 else _null():
                elapsed, frames = await receive_all(url, n)
            cpu_us_per_msg.append((service.cpu_seconds() - cpu0) / n * 1e6)
            cores["broker_service"].append((broker_cpu() - b0) / elapsed)
            cores["client"].append((time.process_time() - c0) / elapsed)
            rates["service"].append(n / elapsed)
            problem = check_frames(frames, n)
            if problem:
                notes.append(f"{shape} rep {rep}: {problem}")
            if rep == 0:
                frames_file.write_text("\n".join(frames) + "\n", encoding="utf-8")
                figures["frame_bytes_mean"] = round(sum(map(len, frames)) / n)
            del frames
            b0 = broker_cpu()
            bare_s = await bare_amqp_consume(key, n, prefetch)
            cores["broker_bare"].append((broker_cpu() - b0) / bare_s)
            rates["bare_amqp"].append(n / bare_s)
            async with bare_ws_server(frames_file) as bare_url:
                elapsed, frames = await receive_all(bare_url, n)
            rates["bare_ws"].append(n / elapsed)
            del frames
            await asyncio.sleep(0.5)
    finally:
        frames_file.unlink(missing_ok=True)
    med = {k: median(v) for k, v in rates.items()}
    figures.update(
        {
            "service_msg_per_s": round(med["service"]),
            "bare_amqp_msg_per_s": round(med["bare_amqp"]),
            "bare_ws_msg_per_s": round(med["bare_ws"]),
            "ratio_to_bare_amqp": round(med["service"] / med["bare_amqp"], 3),
            "ratio_to_bare_ws": round(med["service"] / med["bare_ws"], 3),
            # Each run over its own same-run ceiling: robust to the neighbours' load.
            "run_ratios_to_bare_amqp": [
                round(s / b, 3) for s, b in zip(rates["service"], rates["bare_amqp"], strict=True)
            ],
            "service_cpu_us_per_msg": round(median(cpu_us_per_msg), 1),
            "cores_median": {k: round(median(v), 2) for k, v in cores.items() if v},
            "runs_msg_per_s": {k: [round(x) for x in v] for k, v in rates.items()},
            "complete_and_in_order": not any(note.startswith(f"{shape} rep") for note in notes),
        }
    )
    return figures


async def run(args: argparse.Namespace) -> Result:
    n, size = args.replay_events, args.replay_size
    shapes = [s for s in args.replay_shapes.split(",") if s]
    unknown = set(shapes) - set(SHAPES)
    if unknown or not shapes:
        raise ValueError(f"--replay-shapes: choose from {', '.join(SHAPES)}")
    prefetch = args.prefetch
    env = {"ESS_PREFETCH": str(prefetch)} if args.prefetch_set else {}
    counts = {"bench": n, "single": args.replay_single_events}
    result = Result(
        NAME,
        {
            "events": n,
            "single_events": counts["single"],
            "shapes": shapes,
            "body_bytes": size,
            "repeats": args.replay_repeats,
            "prefetch": prefetch,
        },
    )
    async with running_service(env, args.log_level) as (service, api, publisher):
        profiles: dict[str, Any] = {}
        for shape in shapes:
            profiler = Profiler(
                service.pid, Path(args.profile_dir), f"{NAME}-{shape}", args.profile
            )
            figures = await _measure(
                args, service, api, publisher, shape, counts[shape], profiler, result.notes
            )
            if args.profile:
                profiles[shape] = profiler.top()
            # The bench shape keeps its figures at the top level (earlier JSON readers).
            if shape == "bench":
                result.figures.update(figures)
            else:
                result.figures[shape] = figures
            prefix = "" if shape == "bench" else f"{shape}_"
            result.target(f"{prefix}msg_per_s", figures["service_msg_per_s"], ">=", 15_000)
            result.target(
                f"{prefix}ratio_to_bare_amqp", figures["ratio_to_bare_amqp"], ">=", RATIO_TARGET
            )
            result.target(
                f"{prefix}complete_in_order", figures["complete_and_in_order"], "==", True
            )
        if args.profile:
            result.profile = profiles.get("bench") or next(iter(profiles.values()))
            if len(profiles) > 1:
                result.figures["profiles"] = profiles
    return result


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
