"""The parent of ``ess serve --workers N``: its decisions, without processes (ess.workers)."""

from __future__ import annotations

import signal
import socket

import pytest

from actors.backoff import BackoffPolicy
from ess import cli
from ess.config import ConfigError, load_config
from ess.errors import StartupError
from ess.workers import (
    GiveUp,
    Restart,
    Stopped,
    WorkerCommand,
    WorkerSlot,
    reuse_port_sockets,
    shutdown_status,
    worker_name,
)

POLICY = BackoffPolicy(initial=0.5, maximum=4.0)


def slot(max_quick_failures: int = 5) -> WorkerSlot:
    """A slot whose jitter is pinned to the top of each range: delays are exact."""
    return WorkerSlot(
        1,
        "host-w1",
        policy=POLICY,
        stable_after=30.0,
        max_quick_failures=max_quick_failures,
        uniform=lambda low, high: high,
    )


def test_a_crash_restarts_the_worker_after_a_growing_delay() -> None:
    worker = slot()
    delays = [worker.exited(-signal.SIGKILL, 1.0, stopping=False) for _ in range(4)]
    assert delays == [Restart(0.5), Restart(1.0), Restart(2.0), Restart(4.0)]
    assert worker.restarts == 4


def test_the_delay_is_capped() -> None:
    worker = slot(max_quick_failures=100)
    delays = [worker.exited(1, 0.1, stopping=False) for _ in range(8)]
    assert delays[-3:] == [Restart(4.0)] * 3


def test_a_worker_that_ran_long_enough_restarts_from_the_first_delay() -> None:
    worker = slot()
    worker.exited(-signal.SIGKILL, 1.0, stopping=False)
    worker.exited(-signal.SIGKILL, 1.0, stopping=False)
    assert worker.exited(-signal.SIGKILL, 30.0, stopping=False) == Restart(0.5)
    assert worker.quick_failures == 1


def test_status_2_is_a_configuration_error_and_is_not_restarted() -> None:
    decision = slot().exited(2, 0.3, stopping=False)
    assert isinstance(decision, GiveUp)
    assert decision.status == 2
    assert "configuration error" in decision.reason
    assert "host-w1" in decision.reason
    assert "\n" not in decision.reason


def test_a_worker_that_keeps_failing_at_start_up_makes_the_parent_give_up() -> None:
    worker = slot()
    decisions = [worker.exited(1, 0.5, stopping=False) for _ in range(5)]
    assert all(isinstance(d, Restart) for d in decisions[:4])
    last = decisions[4]
    assert isinstance(last, GiveUp)
    assert last.status == 1
    assert "5 times in a row" in last.reason
    assert "status 1" in last.reason


def test_a_long_run_between_failures_is_not_a_crash_loop() -> None:
    worker = slot()
    for _ in range(20):
        assert isinstance(worker.exited(1, 31.0, stopping=False), Restart)


@pytest.mark.parametrize("status", [0, 1, 2, -signal.SIGKILL, -signal.SIGTERM])
def test_any_exit_while_stopping_is_the_expected_end(status: int) -> None:
    assert slot().exited(status, 0.1, stopping=True) == Stopped()


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([0, 0], 0),
        # Signalled before its own handler was installed (just restarted), or ^C.
        ([0, -signal.SIGTERM], 0),
        ([-signal.SIGINT, 130], 0),
        ([0, None], 1),  # killed after the deadline
        ([1, 0], 1),  # failed while draining
        ([0, -signal.SIGKILL], 1),
    ],
)
def test_the_exit_status_after_a_stop(statuses: list[int | None], expected: int) -> None:
    assert shutdown_status(statuses) == expected


def test_each_worker_gets_its_own_replica_name() -> None:
    command = WorkerCommand(["ess", "serve"], {"ESS_X": "1", "ESS_REPLICA_NAME": "pod-7"})
    argv, env = command.for_worker(worker_name("pod-7", 2))
    assert argv == ["ess", "serve"]
    assert env == {"ESS_X": "1", "ESS_REPLICA_NAME": "pod-7-w2"}


def test_a_worker_runs_serve_with_the_same_flags_as_a_worker() -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--workers", "3", "--public-port", "9000", "--host", "127.0.0.1"]
    )
    argv = cli._worker_argv(args)
    assert argv[1:4] == ["-m", "ess", "serve"]
    assert argv[-1] == "--as-worker"
    flags = argv[4:-1]
    assert dict(zip(flags[::2], flags[1::2], strict=True)) == {
        "--workers": "3",
        "--public-port": "9000",
        "--host": "127.0.0.1",
    }


def test_ess_workers_is_read_and_validated() -> None:
    assert load_config({}).workers == 1
    assert load_config({"ESS_WORKERS": "4"}).workers == 4
    assert load_config({"ESS_WORKERS": "4"}, {"workers": "2"}).workers == 2
    for bad in ("0", "-1", "two", "65"):
        with pytest.raises(ConfigError, match="ESS_WORKERS") as caught:
            load_config({"ESS_WORKERS": bad})
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="--workers"):
        load_config({}, {"workers": "0"})


def test_reuse_port_sockets_share_a_port_that_others_cannot_take() -> None:
    first = reuse_port_sockets("127.0.0.1", 0)
    port = first[0].getsockname()[1]
    second = reuse_port_sockets("127.0.0.1", port)
    try:
        assert [s.getsockname()[1] for s in second] == [port]
        plain = socket.socket()
        with plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    finally:
        for sock in first + second:
            sock.close()


def test_a_port_taken_by_a_program_that_does_not_share_it_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as caught:
            reuse_port_sockets("127.0.0.1", port)
    message = str(caught.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in message
    assert "\n" not in message
