"""Per-event call counts from a ``bench/profiled_serve.py`` window.

``python bench/profile_report.py prof.pstats --per _fan_out`` divides every
figure by the calls of the named function (one that runs once per delivered
event) and prints the calls and own time per event, by function and by
module, so that two trees can be compared step for step::

    calls/event  own us/event  function
"""

from __future__ import annotations

import argparse
import pstats
from collections import defaultdict


def _module(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1].split("/", 1)[0]
    parts = path.rsplit("/", 2)
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stats")
    parser.add_argument("--per", required=True, help="a function called once per event")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    stats = pstats.Stats(args.stats).stats  # type: ignore[attr-defined]
    events = sum(v[1] for (_, _, name), v in stats.items() if name == args.per)
    if not events:
        raise SystemExit(f"no calls of {args.per!r} in the window")
    total_calls = sum(v[1] for v in stats.values())
    total_time = sum(v[2] for v in stats.values())
    print(
        f"events {events}  calls/event {total_calls / events:.0f}  "
        f"own us/event (profiled) {total_time / events * 1e6:.0f}"
    )
    by_module: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (path, _, _), (_, calls, own, _, _) in stats.items():
        entry = by_module[_module(path)]
        entry[0] += calls
        entry[1] += own
    print("\nby module: calls/event  own us/event")
    for module, (calls, own) in sorted(by_module.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {calls / events:8.1f}  {own / events * 1e6:8.1f}  {module}")
    print("\nby function: calls/event  own us/event")
    rows = sorted(stats.items(), key=lambda kv: -kv[1][1])[: args.top]
    for (path, line, name), (_, calls, own, _, _) in rows:
        print(f"  {calls / events:8.2f}  {own / events * 1e6:8.1f}  {_module(path)}:{line} {name}")


if __name__ == "__main__":
    main()
