"""``python bench/loop_probe.py LOG [ess arguments]``: ``ess`` with its event loop timed.

A live websocket's latency is hurt by the longest stretch the loop spends
without looking at its sockets, not by the total work: an event whose
socket turns readable waits for the scheduler batch under way (every task
step that was runnable) and then for each batch its path through the
service takes. This wrapper runs ``python -m ess`` with a Trio instrument
that writes one JSON line to ``LOG`` for every task step, scheduler batch
(from one I/O poll to the next) and garbage collection longer than
:data:`THRESHOLD_S`: ``{"kind", "at" (wall clock), "s", "task"}`` (for a
step also ``cpu_s``, the thread's CPU time (less than ``s`` when the
machine took the CPU away) and ``path``, the HTTP request it answers if
any; for a batch, ``task`` is its longest step's
task and ``steps`` its count of steps). ``bench/scenarios/debug_polling.py``
reads it back per phase. Events that long are rare, so writing each costs
nothing measurable.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import IO, Any

import trio
import trio.abc
import trio.lowlevel

#: Shorter steps, batches and collections are not written.
THRESHOLD_S = 0.001


class LoopProbe(trio.abc.Instrument):
    """Writes the long task steps, scheduler batches and collections to ``out``."""

    def __init__(self, out: IO[str], threshold: float = THRESHOLD_S) -> None:
        self._out = out
        self._threshold = threshold
        self._step_began = 0.0
        self._step_cpu = 0.0
        self._batch_began: float | None = None
        self._batch_steps = 0
        self._batch_longest = (0.0, "")
        self._gc_began = 0.0

    def _write(self, kind: str, seconds: float, task: str, **extra: Any) -> None:
        line = {"kind": kind, "at": round(time.time(), 4), "s": round(seconds, 6), "task": task}
        self._out.write(json.dumps(line | extra) + "\n")

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_began = time.perf_counter()
        self._step_cpu = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._step_began
        self._batch_steps += 1
        if took > self._batch_longest[0]:
            self._batch_longest = (took, task.name)
        if took > self._threshold:
            cpu = round(time.thread_time() - self._step_cpu, 6)
            self._write("step", took, task.name, cpu_s=cpu, path=_request_path(task))

    def after_io_wait(self, timeout: float) -> None:
        self._batch_began = time.perf_counter()
        self._batch_steps, self._batch_longest = 0, (0.0, "")

    def before_io_wait(self, timeout: float) -> None:
        if self._batch_began is None:
            return
        took = time.perf_counter() - self._batch_began
        if took > self._threshold:
            longest, task = self._batch_longest
            self._write("batch", took, task, steps=self._batch_steps, longest_step_s=longest)

    def collection(self, phase: str, info: dict[str, int]) -> None:
        """A :data:`gc.callbacks` entry: times each collection."""
        if phase == "start":
            self._gc_began = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_began
        if took > self._threshold:
            self._write("gc", took, f"generation {info.get('generation')}")


def _request_path(task: trio.lowlevel.Task) -> str | None:
    """The HTTP path the task answers (Quart's request context of the task), if any."""
    from quart.globals import _cv_request  # imported late: ess imports Quart first

    context = task.context.get(_cv_request)
    return None if context is None else str(context.request.path)


def main() -> None:
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # run by path: bench/'s modules must not shadow the service's imports
    log, argv = sys.argv[1], sys.argv[2:]
    out = open(log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open until exit
    probe = LoopProbe(out)
    gc.callbacks.append(probe.collection)
    real_run = trio.run

    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), probe]
        return real_run(*args, **kwargs)

    trio.run = run  # type: ignore[assignment]  # ess calls trio.run once, at start
    from ess.cli import main as ess_main

    sys.exit(ess_main(argv))


if __name__ == "__main__":
    main()
