"""Run the end-to-end scenarios: ``python -m bench [SCENARIO ...] [flags]``.

Each scenario starts its own ``ess serve`` (temporary registry, free ports, a
unique exchange) against the local RabbitMQ, drives it from this process
(asyncio, ``websockets`` + ``aiormq``), prints one JSON object on one line, and
cleans up what it created. A table of every target follows at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .harness import STARTED, Result, format_table, machine, raise_fd_limit
from .scenarios import SCENARIOS, capacity

PROFILED_SERVE = Path(__file__).with_name("profiled_serve.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="End-to-end benchmark scenarios for ess serve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the big sizes: --connections 10000, --capacity-websockets 1000, "
        "--capacity-step-seconds 30",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each scenario this many times")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="ESS_PREFETCH for the service and the bare consumer (default: the "
        "service's default, 200, for both)",
    )
    parser.add_argument("--log-level", default="WARNING", help="the service's ESS_LOG_LEVEL")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record the service during each scenario; top frames in JSON",
    )
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="count the service's syscalls per event with perf stat (fanout, live)",
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="run the service under bench/profiled_serve.py and cProfile its measured "
        "window (fanout, live); calls and own time per event in JSON",
    )
    parser.add_argument("--profile-dir", default=f"{tempfile.gettempdir()}/ess-bench-profiles")
    parser.add_argument(
        "--scenario-timeout",
        type=float,
        default=300.0,
        help="seconds before a scenario is abandoned (its service is stopped); capacity "
        "takes at least what its steps need",
    )
    parser.add_argument("--output", help="also append the JSON lines to this file")
    for module in SCENARIOS.values():
        group = parser.add_argument_group(module.NAME)
        module.add_arguments(group)  # type: ignore[arg-type]
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    args.prefetch_set = args.prefetch is not None
    if args.prefetch is None:
        args.prefetch = 200
    if args.full and args.connections == 2_000:
        args.connections = 10_000
    if args.full and args.capacity_websockets == capacity.QUICK_WEBSOCKETS:
        args.capacity_websockets = capacity.FULL_WEBSOCKETS
    if args.full and args.capacity_step_seconds == capacity.QUICK_STEP_SECONDS:
        args.capacity_step_seconds = capacity.FULL_STEP_SECONDS
    return args


async def run_one(name: str, args: argparse.Namespace) -> Result:
    module = SCENARIOS[name]
    started = time.perf_counter()
    timeout = max(args.scenario_timeout, getattr(module, "min_timeout", lambda _: 0.0)(args))
    try:
        result: Result = await asyncio.wait_for(module.run(args), timeout)
    except Exception as exc:
        result = Result(name, {})
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    result.figures["scenario_wall_s"] = round(time.perf_counter() - started, 1)
    if STARTED:
        service = STARTED.pop()
        STARTED.clear()
        log = getattr(service, "log", None)
        if log is not None and log.bytes:
            path = Path(args.profile_dir) / f"{name}.service.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(log.text(), encoding="utf-8")
        result.figures["service"] = {
            "log_lines": log.lines if log else None,
            "log_bytes": log.bytes if log else None,
            "sigterm_to_exit_s": round(service.stop_seconds, 2) if service.stop_seconds else None,
            "exit_code": service.exit_code,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cprofile and not os.environ.get("BENCH_ESS_COMMAND"):
        os.environ["BENCH_ESS_COMMAND"] = f"{sys.executable} {PROFILED_SERVE}"
        os.environ["PROFILE_DIR"] = args.profile_dir
    fd_limit = raise_fd_limit()
    names = args.scenarios or list(SCENARIOS)
    info = machine()
    info["driver_fd_limit"] = fd_limit
    results: list[Result] = []
    for _ in range(args.repeat):
        for name in names:
            result = asyncio.run(run_one(name, args))
            results.append(result)
            line = json.dumps(result.as_dict(info), default=str)
            print(line, flush=True)
            if args.output:
                with open(args.output, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
    print()
    print(format_table(results))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
