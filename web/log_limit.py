"""Log lines that any client can cause, rate-limited so that no client can flood the log.

A websocket handshake needs no credential to be refused (an unknown uuid, a
bad ``stream_from_*`` query) and each refusal is worth one line to an
operator, but a client in a loop would otherwise write as many lines as it
makes handshakes. :class:`RateLimitedLog` lets ``burst`` lines through per
``interval`` seconds, sends the rest to DEBUG, and reports how many it held
back in one summary line at the first line after the window (SPEC issue 9,
point 5). The decision is sans-IO: the clock is injected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

__all__ = ["RateLimitedLog"]


@dataclass(eq=False)
class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds at ``level``; the excess at DEBUG."""

    logger: logging.Logger
    _: KW_ONLY
    #: What the lines are about, for the summary line ("handshake refusals").
    what: str
    burst: int = 20
    interval: float = 60.0
    level: int = logging.INFO
    clock: Callable[[], float] = time.monotonic
    _window_end: float = field(default=float("-inf"), init=False)
    _passed: int = field(default=0, init=False)
    _suppressed: int = field(default=0, init=False)

    def log(self, message: str, *args: object) -> None:
        """Log ``message % args`` at the limiter's level, or at DEBUG once over budget."""
        now = self.clock()
        if now >= self._window_end:
            if self._suppressed:
                self.logger.log(
                    self.level,
                    "%s: suppressed %d similar lines in %g s",
                    self.what,
                    self._suppressed,
                    self.interval,
                )
            self._window_end = now + self.interval
            self._passed = 0
            self._suppressed = 0
        if self._passed < self.burst:
            self._passed += 1
            self.logger.log(self.level, message, *args)
        else:
            self._suppressed += 1
            self.logger.debug(message, *args)
