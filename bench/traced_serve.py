"""``ess serve`` under tracemalloc, dumping where the memory is on SIGUSR1.

For ``python -m bench connections --connections-signal`` (bench/README.md,
"Memory per idle websocket")::

    MEMDUMP_DIR=/tmp/memdump \\
    BENCH_ESS_COMMAND="env PYTHONPATH=<tree> python bench/traced_serve.py" \\
    python -m bench connections --connections 2000 --connections-signal

On SIGUSR1 it writes ``dump-<pid>-<time>.json`` to ``$MEMDUMP_DIR``: the
traced total, the trio tasks and suspended coroutine frames (walked from the
root task), the top allocations by file and by line, and the type counts of
``gc.get_objects()``. Divide by the number of connections, and compare two
trees in the same session: the figures include the service's baseline.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter
from types import FrameType

tracemalloc.start(1)
OUT_DIR = os.environ.get("MEMDUMP_DIR", "/tmp/memdump")


def _count_tasks() -> tuple[int, int]:
    """Trio tasks and the coroutine frames they are suspended in."""
    import trio

    tasks = frames = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        tasks += 1
        awaited: object = task.coro
        while awaited is not None:
            if not any(hasattr(awaited, a) for a in ("cr_frame", "gi_frame", "ag_frame")):
                break
            frames += 1
            awaited = (
                getattr(awaited, "cr_await", None)
                or getattr(awaited, "gi_yieldfrom", None)
                or getattr(awaited, "ag_await", None)
            )
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return tasks, frames


def _dump(signum: int, frame: FrameType | None) -> None:
    snapshot = tracemalloc.take_snapshot()
    by_file = snapshot.statistics("filename")
    by_line = snapshot.statistics("lineno")
    try:
        tasks, frames = _count_tasks()
    except RuntimeError:  # not in the trio thread's run
        tasks = frames = -1
    types = Counter(type(o).__name__ for o in gc.get_objects())
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, f"dump-{os.getpid()}-{time.strftime('%H%M%S')}.json")
    with open(path, "w") as out:
        json.dump(
            {
                "traced_total": sum(stat.size for stat in by_file),
                "tasks": tasks,
                "frames": frames,
                "by_file": [(str(s.traceback[0].filename), s.size, s.count) for s in by_file[:40]],
                "by_line": [(str(s.traceback[0]), s.size, s.count) for s in by_line[:80]],
                "types": types.most_common(60),
            },
            out,
            indent=1,
        )


def main() -> int:
    signal.signal(signal.SIGUSR1, _dump)
    sys.argv = ["ess", "serve"]
    from ess.cli import main as ess_main

    return ess_main()


if __name__ == "__main__":
    raise SystemExit(main())
