"""``ess serve --workers N``: N worker processes on one host sharing both ports.

Each worker is a whole ``ess serve`` (its own Trio loop, registry handle,
broker pool and actor tree), named ``<replica name>-w<i>``: a replica of
SPEC section 7 that happens to share the host, the registry file and the
ports with its siblings. This module is the parent that starts them,
restarts one that dies and stops them all on SIGTERM/SIGINT.

How the ports are shared: every worker binds its own listening sockets with
``SO_REUSEPORT`` (:func:`reuse_port_sockets`) and the kernel spreads new
connections over the live ones by a hash of the addresses. Chosen over one
socket bound by the parent and inherited by all workers, because:

- on one shared socket every worker's ``epoll`` wakes for each connection
  and whichever ``accept`` wins takes it, so long-lived websockets pile up
  unevenly; the hash spreads them evenly, which is what makes two workers
  deliver nearly twice the fan-out of one;
- a dead worker's sockets close with it, so the kernel stops sending it
  connections at once; a socket held by the parent for a worker that is
  down (or crash-looping) would queue that worker's share unanswered.

The price of ``SO_REUSEPORT``: connections still in a dying worker's accept
queue are reset (the client retries), and any process of the same user
that sets the option could join the group. Against the last one and
against losing the port while workers restart, the parent holds a *guard*:
the same sockets bound but never listening. A bound socket that does not
listen receives no connection, yet no other program can take the port
while the parent lives, and a port already in use stops ``ess serve`` at
once with one line instead of N crash-looping workers.

The decisions (restart, back off, give up, exit status) are made by
:class:`WorkerSlot` and :func:`shutdown_status`, which do no I/O; the unit
tests drive them. The parent only spawns, waits and signals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from actors.backoff import Backoff, BackoffPolicy

from .config import Config
from .errors import StartupError

__all__ = [
    "GiveUp",
    "Restart",
    "Stopped",
    "WorkerSlot",
    "reuse_port_sockets",
    "run_parent",
    "serve_as_worker",
    "shutdown_status",
    "worker_name",
]

log = logging.getLogger(__name__)

#: Pauses between restarts of one worker: a crash loop costs one start every 30 s at most.
RESTART_BACKOFF = BackoffPolicy(initial=0.5, maximum=30.0)
#: A worker that ran this long was healthy: its next failure restarts it at once.
STABLE_AFTER = 30.0
#: Failures in a row, each within STABLE_AFTER of starting, after which the parent gives up.
MAX_QUICK_FAILURES = 5
#: What a worker may take beyond ESS_SHUTDOWN_GRACE to exit (closing the registry and
#: the broker pool, Hypercorn's graceful timeout) before it is killed.
STOP_MARGIN = 5.0
#: Exit statuses of a worker that stopped because it was asked to (SIGTERM/SIGINT
#: before its own handler was installed, or Python's KeyboardInterrupt status).
_ASKED_TO_STOP = frozenset({0, -signal.SIGTERM, -signal.SIGINT, 130})
_CONFIGURATION_ERROR = 2


def worker_name(replica_name: str, index: int) -> str:
    """The replica name of worker ``index`` (1-based): ``<name>-w<index>``."""
    return f"{replica_name}-w{index}"


def describe_status(status: int) -> str:
    """``status 1`` or ``signal SIGKILL``: how a worker ended, for a log line."""
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


# --------------------------------------------------------------------------- #
# Decisions (sans-IO)


@dataclass(frozen=True, slots=True)
class Restart:
    """Start the worker again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop every worker and exit with ``status``; ``reason`` is the one line to print."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The worker ended because the parent is stopping: nothing more to do for it."""


Decision = Restart | GiveUp | Stopped


class WorkerSlot:
    """What to do when worker ``index`` exits: the parent's whole restart policy.

    - While the parent stops, any exit is the expected end (:class:`Stopped`).
    - Exit status 2 is a configuration error (the CLI's contract): restarting
      cannot help, so the parent gives up with status 2.
    - Any other end (a crash, ``kill -9``, the OOM killer, status 1 for a
      start-up failure) restarts the worker after a :class:`Backoff` delay,
      so a crash loop does not spin. A worker that ran ``stable_after``
      seconds was healthy: the backoff starts again from its first step.
    - ``max_quick_failures`` failures in a row, each within ``stable_after``
      of starting, mean the worker cannot start (a corrupt registry, say):
      the parent gives up with status 1 rather than retry forever. The
      first few retries cover what is transient at start-up.
    """

    def __init__(
        self,
        index: int,
        name: str,
        *,
        policy: BackoffPolicy = RESTART_BACKOFF,
        stable_after: float = STABLE_AFTER,
        max_quick_failures: int = MAX_QUICK_FAILURES,
        uniform: Callable[[float, float], float] | None = None,
    ) -> None:
        self.index = index
        self.name = name
        self._backoff = Backoff(policy) if uniform is None else Backoff(policy, uniform=uniform)
        self._stable_after = stable_after
        self._max_quick_failures = max_quick_failures
        #: Failures in a row, each soon after starting.
        self.quick_failures = 0
        #: Times this worker was started again.
        self.restarts = 0

    def exited(self, status: int, uptime: float, *, stopping: bool) -> Decision:
        """The worker ended with ``status`` (negative: killed by that signal) after ``uptime`` s."""
        if stopping:
            return Stopped()
        how = describe_status(status)
        if status == _CONFIGURATION_ERROR:
            return GiveUp(
                _CONFIGURATION_ERROR,
                f"worker {self.name} exited with {how} (a configuration error): stopping",
            )
        if uptime >= self._stable_after:
            self._backoff.reset()
            self.quick_failures = 0
        self.quick_failures += 1
        if self.quick_failures >= self._max_quick_failures:
            return GiveUp(
                1,
                f"worker {self.name} failed {self.quick_failures} times in a row, each within "
                f"{self._stable_after:g}s of starting (last: {how}): stopping",
            )
        self.restarts += 1
        return Restart(self._backoff.next_delay())


def shutdown_status(statuses: Sequence[int | None]) -> int:
    """The parent's exit status once every worker has ended after a stop.

    ``None`` marks a worker that had to be killed after the deadline. 0 when
    every worker stopped as asked (status 0, or the forwarded signal for
    one that had not installed its handler yet); 1 otherwise.
    """
    return 0 if all(status in _ASKED_TO_STOP for status in statuses) else 1


# --------------------------------------------------------------------------- #
# Sockets


def reuse_port_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, not yet listening ``SO_REUSEPORT`` TCP sockets for every address of ``host``.

    The same addresses and options as :func:`trio.open_tcp_listeners` (which
    cannot set ``SO_REUSEPORT``), so a worker listens where one process
    would. Raises :class:`StartupError` (one line) when a port is taken by
    a program that does not share it.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except OSError as error:
        raise StartupError(f"cannot listen on {host}:{port}: {error}") from None
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sockets


# --------------------------------------------------------------------------- #
# The worker side


async def serve_as_worker(config: Config) -> int:
    """Run the service in a worker; stop it gracefully if the parent goes away.

    The parent gives each worker a pipe as stdin and never writes to it:
    end-of-file means the parent is gone (even by ``kill -9``), and the
    worker then stops as on SIGTERM rather than serve on as an orphan that
    nothing supervises or stops.
    """
    from ess import service  # the whole service: only workers need it

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_when_parent_goes)
        code = await service.serve(config)
        nursery.cancel_scope.cancel()
    return code


async def _stop_when_parent_goes() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some():
            pass
    log.warning("the parent process is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)


# --------------------------------------------------------------------------- #
# The parent


@dataclass(frozen=True, slots=True)
class WorkerCommand:
    """How to start a worker: the same argv for all, the environment with its own name."""

    argv: Sequence[str]
    environ: Mapping[str, str]

    def for_worker(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the worker whose replica name is ``name``."""
        return list(self.argv), {**self.environ, "ESS_REPLICA_NAME": name}


def run_parent(config: Config, command: WorkerCommand) -> int:
    """Hold the ports, run ``config.workers`` workers until SIGTERM/SIGINT; the exit status.

    Failures that stop it print one ``ess: ...`` line on stderr, as a single
    process does: a port taken (status 1, before any worker starts), a
    worker's configuration error (2), a worker that cannot start (1).
    """
    try:
        guards = [
            sock
            for port in (config.public_port, config.internal_port)
            for sock in reuse_port_sockets(config.host, port)
        ]
    except StartupError as error:
        print(f"ess: cannot start: {error}", file=sys.stderr)
        return 1
    parent = _Parent(config, command)
    try:
        code = trio.run(parent.run)
    except KeyboardInterrupt:  # ^C before the parent's own handler was installed
        return 130
    finally:
        for sock in guards:
            sock.close()
    if parent.gave_up is not None:
        print(f"ess: {parent.gave_up.reason}", file=sys.stderr)
    return code


class _Parent:
    """The I/O half: spawns, waits, forwards signals, kills stragglers."""

    def __init__(self, config: Config, command: WorkerCommand) -> None:
        self._config = config
        self._command = command
        self._processes: dict[int, trio.Process] = {}
        self._final: dict[int, int | None] = {}
        #: Pids killed after the stop deadline.
        self._killed: set[int] = set()
        self._stopping = trio.Event()
        self._signum = signal.SIGTERM
        self.gave_up: GiveUp | None = None

    async def run(self) -> int:
        n = self._config.workers
        log.info("starting %d workers as %s-w1..%d", n, self._config.replica_name, n)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals)
                async with trio.open_nursery() as slots:
                    for index in range(1, n + 1):
                        slots.start_soon(self._supervise, index)
                nursery.cancel_scope.cancel()
        if self.gave_up is not None:
            return self.gave_up.status
        log.info("all workers stopped")
        return shutdown_status([self._final.get(i) for i in range(1, n + 1)])

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            log.info("received %s: stopping the workers", signal.Signals(signum).name)
            self._stop(signal.Signals(signum))

    def _stop(self, signum: signal.Signals) -> None:
        """Forward ``signum`` to every live worker (once), and arm the kill deadline."""
        if self._stopping.is_set():
            return
        self._signum = signum
        self._stopping.set()
        for process in self._processes.values():
            _send(process, signum)

    async def _supervise(self, index: int) -> None:
        """Run worker ``index`` again and again, as its :class:`WorkerSlot` decides."""
        name = worker_name(self._config.replica_name, index)
        slot = WorkerSlot(index, name)
        while not self._stopping.is_set():
            started = trio.current_time()
            status = await self._run_once(index, name)
            self._final[index] = status
            decision = slot.exited(
                status if status is not None else -signal.SIGKILL,
                trio.current_time() - started,
                stopping=self._stopping.is_set(),
            )
            if isinstance(decision, Stopped):
                log.info("worker %s stopped (%s)", name, _describe(status))
                return
            if isinstance(decision, GiveUp):  # printed by run_parent, once
                if self.gave_up is None:
                    self.gave_up = decision
                self._stop(signal.SIGTERM)
                return
            log.warning(
                "worker %s ended with %s: restarting it in %.1fs",
                name,
                _describe(status),
                decision.delay,
            )
            with trio.move_on_after(decision.delay):
                await self._stopping.wait()

    async def _run_once(self, index: int, name: str) -> int | None:
        """Start the worker and wait for its end: its status (see :meth:`_wait`)."""
        argv, env = self._command.for_worker(name)
        try:
            process = await trio.lowlevel.open_process(argv, env=env, stdin=subprocess.PIPE)
        except OSError as error:  # out of processes or memory: a failed start like any other
            log.error("cannot start worker %s: %s", name, error)
            return 1
        self._processes[index] = process
        log.info("worker %s started (pid %d)", name, process.pid)
        if self._stopping.is_set():  # the signal came while it was being spawned
            _send(process, self._signum)
        try:
            return await self._wait(process, name)
        finally:
            del self._processes[index]

    async def _wait(self, process: trio.Process, name: str) -> int | None:
        """The worker's exit status; ``None`` if it had to be killed after a stop."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._kill_after_deadline, process, name)
            status = await process.wait()
            nursery.cancel_scope.cancel()
        return None if process.pid in self._killed else status

    async def _kill_after_deadline(self, process: trio.Process, name: str) -> None:
        await self._stopping.wait()
        deadline = self._config.shutdown_grace + STOP_MARGIN
        await trio.sleep(deadline)
        log.error("worker %s did not stop within %.1fs: killing it", name, deadline)
        self._killed.add(process.pid)
        process.kill()


def _send(process: trio.Process, signum: signal.Signals) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it has just exited: wait() tells
            process.send_signal(signum)


def _describe(status: int | None) -> str:
    return "killed after the stop deadline" if status is None else describe_status(status)
