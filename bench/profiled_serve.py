"""``ess serve`` with a cProfile window opened and closed by signals.

py-spy's sampling counts a thread that is runnable but waiting for a core as
busy, and on this 2-core machine the broker and the bench client compete for
the cores (bench/README.md, "where the rest of a live event goes"). Call
counts do not depend on the neighbours, so this wrapper answers "how many
interpreted steps does one live event take, and where": open the window in
the measured part of a scenario, close it, divide by the events delivered
meanwhile::

    PROFILE_DIR=/tmp/prof \\
    BENCH_ESS_COMMAND="env PYTHONPATH=<tree> python bench/profiled_serve.py" \\
    python -m bench fanout &
    kill -USR1 <service pid>; sleep 10; kill -USR2 <service pid>

SIGUSR1 starts the profiler; SIGUSR2 stops it and writes
``prof-<pid>-<time>.pstats`` to ``$PROFILE_DIR`` (read it with
``python -m pstats`` or ``bench/profile_report.py``).
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
import time
from types import FrameType

OUT_DIR = os.environ.get("PROFILE_DIR", "/tmp/prof")
_profiler: cProfile.Profile | None = None


def _start(signum: int, frame: FrameType | None) -> None:
    global _profiler
    if _profiler is None:
        _profiler = cProfile.Profile()
        _profiler.enable()


def _stop(signum: int, frame: FrameType | None) -> None:
    global _profiler
    if _profiler is None:
        return
    _profiler.disable()
    os.makedirs(OUT_DIR, exist_ok=True)
    _profiler.dump_stats(
        os.path.join(OUT_DIR, f"prof-{os.getpid()}-{time.strftime('%H%M%S')}.pstats")
    )
    _profiler = None


def main() -> int:
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.argv = ["ess", "serve"]
    from ess.cli import main as ess_main

    return ess_main()


if __name__ == "__main__":
    raise SystemExit(main())
