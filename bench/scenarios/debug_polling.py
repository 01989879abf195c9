"""debug_polling: a live websocket's latency, with and without operators polling, at 50,000 streams.

Issue 13: the operator's endpoints must cost what their answer costs, not
hold the event loop for the whole registry. The service is restored from a
registry pre-filled with ``--debug-streams`` idle streams (written straight
into its SQLite file between a first start, which creates the schema, and
the measured one), plus one live stream with one client. The same paced
publishing (as in ``live``) runs once per phase, in the same run, on the
same client, while a separate process (so the driver's own loop is not the
one kept busy) polls, one loop per path:

1. *quiet*: nobody polls;
2. *control*: ``/health/live`` in three loops, each request sent the moment
   the previous one answered: what any HTTP request costs the loop;
3. *polled*: ``/debug/actors`` (the default answer: a summary at this
   size), ``/debug/actors?limit=100`` (the page's list) and ``/metrics``,
   each as fast as it answers (the issue's measure);
4. *polled_10hz*: the same three, each every 0.1 s (five open pages and a
   Prometheus scraping every second would ask for less);
5. *polled_without_metrics*: the two ``/debug/actors`` loops alone, as fast
   as they answer (to tell their share from ``/metrics``'s).

The phases run in turn, ``--debug-rounds`` times (a shared machine's
load drifts; this way it drifts over every phase alike), and each phase's
latencies are pooled over its rounds. It prints each phase's latency, the
p99 differences (targets <= 5 ms), each round's p99 and their median per
phase (a noisy machine's outliers land in one round, not in all), and per
path and round the requests answered, their mean and max time and body size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from ..client import open_ws
from ..harness import (
    STARTED,
    Api,
    Profiler,
    Publisher,
    Result,
    Service,
    latency_summary,
    unique_key,
)
from ..latency import Reader, paced_publish, wait_all_received

NAME = "debug_polling"
#: What the poller process asks for, one loop per path.
POLLED_PATHS = ("/debug/actors", "/debug/actors?limit=100", "/metrics")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug-streams", type=int, default=50_000, help="pre-filled streams")
    parser.add_argument("--debug-rate", type=float, default=300.0, help="msg/s on the live client")
    parser.add_argument(
        "--debug-duration", type=float, default=5.0, help="seconds per phase and round"
    )
    parser.add_argument("--debug-rounds", type=int, default=3, help="rounds of every phase")
    parser.add_argument(
        "--debug-poll",
        default=",".join(POLLED_PATHS),
        help="comma-separated paths polled in the second phase, one loop each",
    )


def prefill(database: Path, count: int, prefix: str) -> None:
    """``count`` idle streams owning no queue (so nothing on the broker to clean up)."""
    now = time.time()
    rows = ((str(uuid.uuid4()), f"{prefix}.{n}", 0, now) for n in range(count))
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            "INSERT INTO streams (uuid, routing_key, owns_queue, created_at) VALUES (?, ?, ?, ?)",
            rows,
        )


async def measure_phase(
    reader: Reader, publisher: Publisher, key: str, rate: float, duration: float, size: int
) -> dict[str, Any]:
    start = len(reader.latencies_ms)
    reader.seqs, reader.last_seq = set(), -1  # each phase numbers its events from 0
    sent, achieved = await paced_publish(publisher, [key], rate, duration, size)
    await wait_all_received([reader], sent, grace=10.0)
    return {
        "sent": sent,
        "received": len(reader.seqs),
        "publish_rate_achieved": round(achieved, 1),
        "latencies_ms": reader.latencies_ms[start:],
    }


def phases_of(polled: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], float]]:
    """The phases, in order: (name, paths polled, seconds between a loop's requests).

    ``control`` polls a trivial endpoint at the same concurrency as ``polled``:
    the latency any HTTP request costs the loop, whatever it asks for.
    ``polled_without_metrics`` tells ``/debug/actors``'s share from ``/metrics``'s.
    """
    without_metrics = tuple(path for path in polled if not path.startswith("/metrics"))
    phases = [
        ("quiet", (), 0.0),
        ("control", ("/health/live",) * len(polled), 0.0),
        ("polled", polled, 0.0),
        ("polled_10hz", polled, 0.1),
    ]
    if without_metrics and without_metrics != polled:
        phases.append(("polled_without_metrics", without_metrics, 0.0))
    return phases


async def run(args: argparse.Namespace) -> Result:
    count, rate, duration = args.debug_streams, args.debug_rate, args.debug_duration
    parameters = {
        "streams": count,
        "rate_msg_per_s": rate,
        "phase_s": duration,
        "rounds": args.debug_rounds,
    }
    result = Result(NAME, parameters | {"polled": args.debug_poll})
    # A first start creates the registry's schema; the rows go in while it is stopped.
    first = Service(log_level=args.log_level, keep_workdir=True)
    await asyncio.to_thread(first.start)
    await asyncio.to_thread(first.stop)
    await asyncio.to_thread(prefill, first.workdir / "event-streams.db", count, unique_key("idle"))
    probe_log = Path(tempfile.mkstemp(prefix="ess-loop-probe-", suffix=".jsonl")[1])
    service = Service(log_level=args.log_level, workdir=first.workdir, **probed(probe_log))
    STARTED.append(service)
    started = time.perf_counter()
    await asyncio.to_thread(service.start)
    result.figures["startup_s"] = round(time.perf_counter() - started, 2)
    api = Api(service)
    publisher = await Publisher(service.exchange).open()
    key = unique_key("debug-live")
    service.routing_keys.append(key)
    phases: dict[str, dict[str, Any]] = {}
    windows: dict[str, list[tuple[float, float]]] = {}  # wall-clock spans of each phase
    try:
        stream_id, location = await api.create(key)
        reader = Reader(await open_ws(location)).start()
        await asyncio.sleep(0.5)  # let the live tail settle before measuring
        # Rounds of every phase in turn: a shared machine's load drifts, and it
        # then drifts over every phase alike instead of favouring one.
        for round_ in range(args.debug_rounds):
            for name, paths, interval in phases_of(tuple(args.debug_poll.split(","))):
                profiled = args.profile and name == "polled" and round_ == 0
                with Profiler(service.pid, Path(args.profile_dir), NAME, profiled) as profiler:
                    poller = start_poller(service.api, interval, list(paths)) if paths else None
                    began = time.time()
                    try:
                        measured = await measure_phase(reader, publisher, key, rate, duration, 300)
                    finally:
                        windows.setdefault(name, []).append((began, time.time()))
                        if poller is not None:
                            measured["polls"] = await asyncio.to_thread(stop_poller, poller)
                if profiled:
                    result.profile = profiler.top()
                _accumulate(phases.setdefault(name, {}), measured)
        await reader.stop()
        await api.delete(stream_id)
    except BaseException:
        print(f"--- ess serve log (tail) ---\n{service.log_tail()}", file=sys.stderr)
        raise
    finally:
        await api.aclose()
        service.exit_code = await asyncio.to_thread(service.stop)  # 50,000 DELETEs: no
        await publisher.delete_queues(service.routing_keys)
        await publisher.delete_exchange()
        await publisher.close()

    for figures in phases.values():
        figures["latency"] = latency_summary(figures.pop("latencies_ms"))
    events = read_probe(probe_log)
    probe_log.unlink(missing_ok=True)
    for name, spans in windows.items():
        if events is not None:
            phases[name]["loop"] = loop_figures(events, spans)
    p99 = {name: figures["latency"].get("p99_ms") for name, figures in phases.items()}
    result.figures.update(phases)
    result.figures["p99_ms"] = p99
    added = _difference(p99["polled"], p99["quiet"])
    result.figures["p99_added_ms"] = added
    result.target("p99_added_ms", added, "<=", 5.0, "ms")
    result.target(
        "p99_over_control_ms", _difference(p99["polled"], p99["control"]), "<=", 5.0, "ms"
    )
    result.target(
        "p99_added_10hz_ms", _difference(p99["polled_10hz"], p99["quiet"]), "<=", 5.0, "ms"
    )
    if "polled_without_metrics" in p99:
        result.figures["p99_added_without_metrics_ms"] = _difference(
            p99["polled_without_metrics"], p99["quiet"]
        )
    # The machine is noisy: the median over rounds of each phase's p99 too.
    medians = {name: _median(figures["round_p99_ms"]) for name, figures in phases.items()}
    result.figures["p99_median_of_rounds_ms"] = medians
    result.figures["p99_added_median_of_rounds_ms"] = {
        name: _difference(medians[name], medians["quiet"]) for name in medians if name != "quiet"
    }
    lost = sum(figures["sent"] - figures["received"] for figures in phases.values())
    result.target("lost", lost, "==", 0)
    return result


# -- the event loop's long stretches (bench/loop_probe.py) --------------------


def probed(log: Path) -> dict[str, Any]:
    """The :class:`Service` arguments that run it under :mod:`bench.loop_probe`, writing ``log``.

    The service's code comes from ``$BENCH_SERVICE_TREE`` if set (another
    checkout, to compare two trees with the probe on), else from this one.
    Not with ``BENCH_ESS_COMMAND`` (another implementation: nothing to probe).
    """
    if os.environ.get("BENCH_ESS_COMMAND", "").strip():
        return {}
    root = Path(__file__).resolve().parents[2]
    tree = os.environ.get("BENCH_SERVICE_TREE") or str(root)
    path = os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))
    probe = str(root / "bench" / "loop_probe.py")  # by path: the tree may have no probe
    return {
        "command": [sys.executable, probe, str(log), "serve"],
        "extra_env": {"PYTHONPATH": path},
    }


def read_probe(log: Path) -> list[dict[str, Any]] | None:
    """The probe's events (``None``: the service did not run under the probe)."""
    if not log.exists() or log.stat().st_size == 0:
        return None
    with log.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def loop_figures(events: list[dict[str, Any]], spans: list[tuple[float, float]]) -> dict[str, Any]:
    """A phase's long stretches: the longest step, batch and collection, counts, worst tasks.

    ``batches_over_Nms_per_s`` counts scheduler batches (one I/O poll to the
    next) longer than N ms per second of the phase (wall clock: the
    machine's other processes count too); ``steps_cpu_over_1ms`` counts the
    steps that took over 1 ms of the service's own CPU time, by HTTP path or
    task, with the longest.
    """
    seconds = sum(end - began for began, end in spans) or 1.0
    inside = [e for e in events if any(began <= e["at"] <= end for began, end in spans)]
    figures: dict[str, Any] = {}
    for kind in ("step", "batch", "gc"):
        of_kind = [e for e in inside if e["kind"] == kind]
        longest = max(of_kind, key=lambda e: e["s"], default=None)
        figures[f"max_{kind}_ms"] = round(1000 * longest["s"], 2) if longest else None
        if kind == "step" and longest is not None:
            figures["max_step_task"] = longest["task"]
            # The same, in the service's own CPU time (what the machine did not take away).
            figures["max_step_cpu_ms"] = round(1000 * max(e.get("cpu_s", 0) for e in of_kind), 2)
    batches = [e["s"] for e in inside if e["kind"] == "batch"]
    for limit_ms in (2, 5, 10):
        over = sum(1 for s in batches if s > limit_ms / 1000)
        figures[f"batches_over_{limit_ms}ms_per_s"] = round(over / seconds, 2)
    # The service's own long stretches, whatever the machine took away: CPU time.
    steps = [e for e in inside if e["kind"] == "step"]
    costly = [e for e in steps if e.get("cpu_s", 0) > 0.001]
    figures["steps_cpu_over_1ms_per_s"] = round(len(costly) / seconds, 2)
    by_task: dict[str, list[float]] = {}
    for e in costly:
        by_task.setdefault(e.get("path") or e["task"], []).append(1000 * e["cpu_s"])
    top = sorted(by_task.items(), key=lambda item: -len(item[1]))[:6]
    figures["steps_cpu_over_1ms"] = {
        task: {"per_s": round(len(ms) / seconds, 2), "max_ms": round(max(ms), 2)}
        for task, ms in top
    }
    return figures


def _accumulate(total: dict[str, Any], measured: dict[str, Any]) -> None:
    """Add one round of a phase to its totals (latencies pooled, polls kept per round)."""
    total["sent"] = total.get("sent", 0) + measured["sent"]
    total["received"] = total.get("received", 0) + measured["received"]
    total.setdefault("latencies_ms", []).extend(measured["latencies_ms"])
    total.setdefault("round_p99_ms", []).append(
        latency_summary(measured["latencies_ms"]).get("p99_ms")
    )
    total.setdefault("publish_rate_achieved", []).append(measured["publish_rate_achieved"])
    if "polls" in measured:
        total.setdefault("polls", []).append(measured["polls"])


def _median(values: list[float | None]) -> float | None:
    known = sorted(value for value in values if value is not None)
    return statistics.median(known) if known else None


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


# -- the poller process -------------------------------------------------------


def start_poller(base_url: str, interval: float, paths: list[str]) -> subprocess.Popen[bytes]:
    """A separate process polling ``paths`` (one loop each, ``interval`` s apart) until SIGTERM."""
    code = "from bench.scenarios.debug_polling import poll_main; poll_main()"
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", code, base_url, str(interval), *paths],
        cwd=root,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"polling":  # every loop has answered once
        raise RuntimeError("the poller did not start")
    return process


def stop_poller(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return figures


def poll_main() -> None:
    """Entry of the poller process: one thread per path; figures as JSON on SIGTERM."""
    base_url, interval, paths = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    stop = threading.Event()
    stats: list[dict[str, Any]] = [
        {"requests": 0, "seconds": 0.0, "max_s": 0.0, "bytes": 0, "errors": 0} for _ in paths
    ]
    first = threading.Barrier(len(paths) + 1)

    def loop(path: str, figures: dict[str, Any]) -> None:
        with httpx.Client(base_url=base_url, timeout=60.0) as client:
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    response = client.get(path)
                    figures["bytes"] = len(response.content)
                    if response.status_code != 200:
                        figures["errors"] += 1
                except httpx.HTTPError:
                    figures["errors"] += 1
                took = time.perf_counter() - began
                figures["requests"] += 1
                figures["seconds"] += took
                figures["max_s"] = max(figures["max_s"], took)
                if figures["requests"] == 1:
                    first.wait()
                if interval > 0:
                    stop.wait(max(0.0, interval - took))

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(target=loop, args=pair, daemon=True)
        for pair in zip(paths, stats, strict=True)
    ]
    for thread in threads:
        thread.start()
    first.wait()
    began = time.perf_counter()
    print("polling", flush=True)
    stop.wait()
    elapsed = time.perf_counter() - began
    for thread in threads:
        thread.join(timeout=60)
    report = {
        (path if paths.count(path) == 1 else f"{path} [{n}]"): {
            "requests": f["requests"],
            "per_s": round(f["requests"] / elapsed, 1),
            "mean_ms": round(1000 * f["seconds"] / max(f["requests"], 1), 2),
            "max_ms": round(1000 * f["max_s"], 2),
            "body_bytes": f["bytes"],
            "errors": f["errors"],
        }
        for n, (path, f) in enumerate(zip(paths, stats, strict=True))
    }
    print(json.dumps(report), flush=True)
