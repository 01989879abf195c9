"""RateLimitedLog: a burst per window at the chosen level, the rest at DEBUG, one summary."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from web.log_limit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _limiter(caplog: pytest.LogCaptureFixture, capture: int, **options: Any) -> RateLimitedLog:
    """A limiter on a logger whose records at ``capture`` and above ``caplog`` keeps."""
    caplog.set_level(capture, logger="limit-test")
    return RateLimitedLog(logging.getLogger("limit-test"), **options)


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_burst_then_debug_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = _limiter(caplog, logging.DEBUG, what="refusals", burst=3, interval=10.0, clock=clock)
    for n in range(1000):
        limited.log("line %d", n)
    assert _lines(caplog, logging.INFO) == ["line 0", "line 1", "line 2"]
    assert len(_lines(caplog, logging.DEBUG)) == 997

    caplog.clear()
    clock.now = 10.0
    limited.log("line %d", 1000)
    assert _lines(caplog, logging.INFO) == [
        "refusals: suppressed 997 similar lines in 10 s",
        "line 1000",
    ]


def test_no_summary_when_nothing_was_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = _limiter(caplog, logging.INFO, what="x", burst=2, interval=1.0, clock=clock)
    for step in range(5):
        clock.now = float(step)
        limited.log("tick")
    assert _lines(caplog, logging.INFO) == ["tick"] * 5


def test_level_is_configurable(caplog: pytest.LogCaptureFixture) -> None:
    limited = _limiter(
        caplog, logging.DEBUG, what="x", burst=1, level=logging.WARNING, clock=Clock()
    )
    limited.log("a")
    limited.log("b")
    assert _lines(caplog, logging.WARNING) == ["a"]
    assert _lines(caplog, logging.DEBUG) == ["b"]
