"""ess.logging: JSON lines that parse, text lines that read, quiet libraries."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from actors.logcontext import LogContext
from ess.logging import NOISY_LOGGERS, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library_levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, lib_level in library_levels.items():
        logging.getLogger(name).setLevel(lib_level)
    logging.captureWarnings(False)


def test_json_one_object_per_line_with_extras() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    log = logging.getLogger("ess.test")
    log.info("opened %s", "thing", extra={"stream": 7, "conn": "ab12cd34…"})
    log.debug("not shown at INFO")
    log.warning("multi\nline message", extra={"path": object()})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")

    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    first = entries[0]
    assert first["message"] == "opened thing"
    assert first["level"] == "INFO"
    assert first["logger"] == "ess.test"
    assert first["stream"] == 7
    assert first["conn"] == "ab12cd34…"
    stamp = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert first["time"].endswith("Z")
    assert entries[1]["message"] == "multi\nline message"
    assert isinstance(entries[1]["path"], str)  # unserialisable extra -> str
    assert "RuntimeError: boom" in entries[2]["exc_info"]


def test_extras_cannot_shadow_core_fields() -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("ess.test").info("real", extra={"level": "fake", "time": "fake"})
    entry = json.loads(out.getvalue())
    assert entry["level"] == "INFO" and entry["time"] != "fake"


def test_text_is_compact_with_extras() -> None:
    out = io.StringIO()
    configure_logging("info", "text", stream=out)
    logging.getLogger("ess.test").info("hello", extra={"stream": 3})
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" INFO ess.test: hello stream=3")
    assert line[:4].isdigit() and line.split(" ", 1)[0].endswith("Z")


def test_every_line_names_the_replica_when_asked() -> None:
    json_out, text_out = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=json_out, replica="ess-a-w2")
    logging.getLogger("ess.test").info("one", extra={"stream": 3})
    assert json.loads(json_out.getvalue())["replica"] == "ess-a-w2"
    configure_logging("INFO", "text", stream=text_out, replica="ess-a-w2")
    logging.getLogger("ess.test").info("two")
    assert text_out.getvalue().splitlines()[0].endswith(" INFO ess.test: two replica=ess-a-w2")


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "text", stream=first)
    configure_logging("INFO", "json", stream=second)
    logging.getLogger("ess.test").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_libraries_quiet_unless_debug() -> None:
    out = io.StringIO()
    configure_logging("INFO", "text", stream=out)
    logging.getLogger("hypercorn.error").info("chatter")
    logging.getLogger("trio-websocket").info("chatter")
    logging.getLogger("quart.app").warning("kept")
    assert "chatter" not in out.getvalue()
    assert "kept" in out.getvalue()

    configure_logging("DEBUG", "text", stream=out)
    logging.getLogger("trio-websocket").debug("now visible")
    assert "now visible" in out.getvalue()


def test_an_actor_context_is_structured_in_json_and_shown_once_in_text() -> None:
    text, js = io.StringIO(), io.StringIO()
    stream = LogContext(logging.getLogger("actors.stream"), stream=3)
    conn = stream.bind(logging.getLogger("actors.connection_actor"), conn="4f2a1c")
    configure_logging("INFO", "text", stream=text)
    conn.info("skipped ordinal=%d", 7, extra={"why": "bad"})
    configure_logging("INFO", "json", stream=js)
    conn.warning("client did not read")
    stream.info("restarted")

    (line,) = text.getvalue().splitlines()
    assert line.endswith(
        " INFO actors.connection_actor: stream=3 conn=4f2a1c skipped ordinal=7 why=bad"
    )
    first, second = (json.loads(entry) for entry in js.getvalue().splitlines())
    assert first["message"] == "stream=3 conn=4f2a1c client did not read"
    assert (first["stream"], first["conn"]) == (3, "4f2a1c")
    assert second["message"] == "stream=3 restarted"
    assert second["stream"] == 3 and "conn" not in second
    assert str(conn) == "stream=3 conn=4f2a1c"
