"""The ``ess`` command line: help, argument parsing, one-line config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ess.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKEN = "cli-s3cr3t-token"


def run_ess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Only the ESS_* variables the test chooses: the developer's own must not leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESS_")}
    return subprocess.run(
        [sys.executable, "-m", "ess", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**base, **(env or {})},
        timeout=60,
    )


def test_help_lists_every_subcommand() -> None:
    result = run_ess("--help")
    assert result.returncode == 0
    for command in ("serve", "listen", "publish", "streams"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["serve"], ["--public-port", "--amqp-url", "ESS_AMPQ_URL", "ESS_PREFETCH"]),
        (["listen"], ["--from-ordinal", "--from-timestamp", "--from-datetime", "--json"]),
        (["publish"], ["ROUTING_KEY", "MESSAGE", "--count", "--rate", "--to-queue"]),
        (["streams"], ["list", "create", "delete"]),
        (["streams", "delete"], ["ID", "--api", "--token"]),
    ],
)
def test_subcommand_help(
    command: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ESS_PUBLIC_PORT": "abc"}, "ESS_PUBLIC_PORT"),
        ({"ESS_LOG_FORMAT": "xml"}, "ESS_LOG_FORMAT"),
        ({"ESS_AMPQ_URL": "http://x/"}, "ESS_AMPQ_URL"),
    ],
)
def test_serve_bad_env_exits_2_with_one_line(env: dict[str, str], variable: str) -> None:
    result = run_ess("serve", env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ess: configuration error: {variable}=")
    assert result.stdout == ""


def test_serve_bad_token_is_not_echoed() -> None:
    result = run_ess("serve", env={"ESS_INTERNAL_TOKEN": f"{TOKEN} x"})
    assert result.returncode == 2
    assert "ESS_INTERNAL_TOKEN" in result.stderr
    assert TOKEN not in result.stderr


def test_serve_bad_flag_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--internal-port", "70000"], environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("ess: configuration error: --internal-port='70000'")
    assert err.count("\n") == 1


def test_listen_options_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["listen", "ws://h/event-stream/u", "--from-ordinal", "1", "--from-timestamp", "2"])
    assert caught.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_parser_shapes() -> None:
    parser = build_parser()
    args = parser.parse_args(["publish", "rk", "hello", "--count", "3", "--rate", "2.5"])
    assert (args.routing_key, args.message, args.count, args.rate) == ("rk", "hello", 3, 2.5)
    assert args.to_queue is False
    args = parser.parse_args(["streams", "delete", "7", "--api", "http://x:1", "--token", "t"])
    assert (args.action, args.id, args.api, args.token) == ("delete", 7, "http://x:1", "t")
    args = parser.parse_args(["listen", "ws://h/event-stream/u", "--from-ordinal", "0"])
    assert args.from_ordinal == 0


def test_streams_tool_without_an_api_fails_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["streams", "list", "--api", "http://127.0.0.1:9"], environ={}) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err
    assert "Traceback" not in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], environ={}) == 2
    assert "serve" in capsys.readouterr().err


def test_registry_open_error_is_found_inside_exception_groups() -> None:
    from ess.cli import _find_startup_error
    from ess.errors import StartupError

    error = StartupError("ESS_DATABASE: cannot open the registry database /x: boom")
    nested = BaseExceptionGroup("outer", [ValueError("v"), ExceptionGroup("inner", [error])])
    assert _find_startup_error(nested) is error
    assert _find_startup_error(ValueError("v")) is None


def _fake_service(monkeypatch: pytest.MonkeyPatch, serve: object) -> None:
    import types

    import ess

    fake = types.ModuleType("ess.service")
    fake.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ess.service", fake)
    monkeypatch.setattr(ess, "service", fake, raising=False)
    # Keep the root logger as pytest set it up: no handler on a captured stream.
    monkeypatch.setattr("ess.cli.configure_logging", lambda level, fmt, **kwargs: None)


def test_serve_runs_the_service_with_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ess.config import Config

    seen: list[Config] = []

    async def serve(config: Config) -> int:
        seen.append(config)
        return 0

    _fake_service(monkeypatch, serve)
    db = tmp_path / "r.db"
    assert main(["serve", "--database", str(db), "--public-port", "9999"], environ={}) == 0
    assert seen[0].database == db and seen[0].public_port == 9999


def test_serve_registry_open_failure_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import trio

    from ess.config import Config
    from ess.registry_factory import open_registry

    async def serve(config: Config) -> int:
        async with trio.open_nursery() as nursery, open_registry(config.database, nursery):
            return 0

    _fake_service(monkeypatch, serve)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["serve", "--database", str(blocker / "r.db")], environ={}) == 1
    err = capsys.readouterr().err
    assert err.startswith("ess: cannot start: ESS_DATABASE: cannot create the registry directory")
    assert err.count("\n") == 1


def test_serve_startup_error_is_one_line_without_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A driver's multi-line message (PostgreSQL's are) still makes one line."""
    from ess.config import Config
    from ess.errors import StartupError

    async def serve(config: Config) -> int:
        raise StartupError(
            "cannot open the registry postgresql://ess:hunter2@db:5432/ess:\n"
            "\tconnection refused\n\tIs the server running on that host?"
        )

    _fake_service(monkeypatch, serve)
    assert main(["serve"], environ={}) == 1
    err = capsys.readouterr().err
    assert err == (
        "ess: cannot start: cannot open the registry postgresql://ess:***@db:5432/ess: "
        "connection refused Is the server running on that host?\n"
    )
