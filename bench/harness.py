"""What every scenario needs: the service process, its API, a publisher, probes.

The driver (this process, asyncio) talks to ``ess serve`` (a subprocess, Trio)
only through the SPEC's external interface: the internal HTTP API, the public
websockets and the broker. Nothing here imports the service's packages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

import aiormq
import httpx
import psutil

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # SIGTERM to exit; ESS_SHUTDOWN_GRACE defaults to 10 s
SERVICE_NOFILE = 65536
DRIVER_NOFILE = 65536
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- #
# Machine, limits, statistics


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mb": mem_kb // 1024,
        "loadavg_1m_at_start": round(load[0], 2),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def raise_fd_limit(wanted: int = DRIVER_NOFILE) -> int:
    """Raise this process's RLIMIT_NOFILE as far as allowed; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target_hard in (max(hard, wanted), hard):
        target_soft = min(wanted, target_hard) if target_hard != resource.RLIM_INFINITY else wanted
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target_soft, target_hard))
            return target_soft
        except (ValueError, OSError):
            continue
    return soft


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil
    return sorted_values[min(rank, len(sorted_values)) - 1]


def cpu_us_per_event(cpu_seconds: float, events: int) -> float | None:
    """Service CPU (utime+stime) per delivered event, in microseconds.

    On a shared machine latency and CPU fraction move with the neighbours'
    load; CPU per event moves much less, so cuts to the per-event cost are
    compared by this figure.
    """
    return round(cpu_seconds * 1e6 / events, 1) if events > 0 else None


def sample_of(name: str, items: Sequence[str], shown: int = 5) -> dict[str, Any]:
    """Figures for a list of anomalies: the first ``shown`` and how many there were."""
    return {name: list(items[:shown]), f"{name}_count": len(items)}


def latency_summary(values_ms: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 3),
        "p90_ms": round(percentile(ordered, 90), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3),
    }


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def event_body(seq: int, size: int, **extra: Any) -> bytes:
    """A JSON object of about ``size`` bytes carrying ``seq`` and the publish time."""
    obj: dict[str, Any] = {"seq": seq, "pub_ns": time.time_ns(), **extra, "pad": ""}
    base = len(json.dumps(obj, separators=(",", ":")))
    obj["pad"] = "x" * max(0, size - base)
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- #
# Process probes (/proc)


def proc_switches(pid: int) -> dict[str, int]:
    """Voluntary and involuntary context switches of ``pid`` so far (all threads).

    A voluntary switch is a wait with nothing to run (an ``epoll_wait`` that
    blocked); involuntary ones are the neighbours taking the core.
    """
    counts = {"voluntary_switches": 0, "involuntary_switches": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "voluntary_ctxt_switches":
                counts["voluntary_switches"] += int(value)
            elif name == "nonvoluntary_ctxt_switches":
                counts["involuntary_switches"] += int(value)
    return counts


def per_event_counts(
    before: dict[str, int], after: dict[str, int], events: int
) -> dict[str, float | None]:
    """What :func:`proc_switches` (or a :class:`SyscallCounter`) counted, per event."""
    return {
        name: round((after[name] - before[name]) / events, 3) if events > 0 else None
        for name in before
    }


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields_ = stat[stat.rindex(")") + 2 :].split()
    # fields_[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields_[11]) + int(fields_[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_fd_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return -1


def proc_fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def machine_cpu_seconds() -> float:
    """CPU seconds all cores spent busy so far (``/proc/stat``: all but idle and iowait)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK


def broker_ports_of(pid: int, broker_port: int = 5672) -> set[int]:
    """Local ports of ``pid``'s TCP connections to the broker (psutil if present, else /proc)."""
    try:
        import psutil

        conns = psutil.Process(pid).net_connections(kind="tcp")
        return {
            c.laddr.port
            for c in conns
            if c.raddr and c.raddr.port == broker_port and c.status == "ESTABLISHED"
        }
    except ImportError:
        pass
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                if (
                    inode in inodes
                    and state == "01"
                    and int(remote.split(":")[1], 16) == broker_port
                ):
                    ports.add(int(local.split(":")[1], 16))
    return ports


def rabbitmqctl(*args: str) -> str | None:
    """What ``rabbitmqctl ARGS`` prints, or None if it is not installed or fails."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return None
    try:
        return subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None


def rabbitmq_connections() -> list[dict[str, Any]] | None:
    """``rabbitmqctl list_connections`` as dicts (peer_port, channels), or None if unavailable."""
    out = rabbitmqctl("list_connections", "-q", "--no-table-headers", "peer_port", "channels")
    if out is None:
        return None
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            rows.append({"peer_port": int(parts[0]), "channels": int(parts[1])})
    return rows


def rabbitmq_fds() -> dict[str, int] | None:
    """The broker's file descriptors (``total_limit``, ``total_used``, ...) or None."""
    out = rabbitmqctl("status", "--formatter", "json")
    if out is None:
        return None
    try:
        fds = json.loads(out).get("file_descriptors")
    except ValueError:
        return None
    return {k: int(v) for k, v in fds.items()} if isinstance(fds, dict) else None


def rabbitmq_count(what: str) -> int | None:
    """Number of broker-wide ``list_<what>`` rows (channels, consumers), or None."""
    out = rabbitmqctl(f"list_{what}", "-q", "--no-table-headers")
    if out is None:
        return None
    return sum(1 for line in out.splitlines() if line.strip())


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the service gets SIGTERM if the driver dies (no orphans)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class LogCapture:
    """Reads the service's output in a thread; keeps its head and tail, counts the rest.

    A service stuck in a logging loop must not fill the disk or the driver's memory.
    """

    KEEP = 32_768

    def __init__(self, stream: Any) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.bytes = 0
        self.lines = 0
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        while chunk := stream.read1(65536):
            self.bytes += len(chunk)
            self.lines += chunk.count(b"\n")
            if len(self.head) < self.KEEP:
                self.head += chunk[: self.KEEP - len(self.head)]
            self.tail += chunk
            if len(self.tail) > 2 * self.KEEP:
                del self.tail[: -self.KEEP]

    def text(self) -> str:
        if self.bytes <= len(self.head):
            return self.head.decode(errors="replace")
        skipped = self.bytes - len(self.head) - len(self.tail)
        middle = f"\n[... {skipped} bytes skipped ...]\n" if skipped > 0 else ""
        return (self.head + middle.encode() + self.tail[max(0, -skipped) :]).decode(
            errors="replace"
        )


def service_command() -> list[str]:
    """``python -m ess serve``, or ``$BENCH_ESS_COMMAND`` (split on spaces) to measure
    another implementation behind the same interface (e.g. the upstream service)."""
    override = os.environ.get("BENCH_ESS_COMMAND", "").strip()
    return override.split() if override else [sys.executable, "-m", "ess", "serve"]


@dataclass
class Service:
    """One ``ess serve`` subprocess on free ports with its own registry and exchange."""

    extra_env: dict[str, str] = field(default_factory=dict)
    log_level: str = "WARNING"
    #: What runs the service (:func:`service_command` unless told otherwise).
    command: list[str] = field(default_factory=service_command)
    amqp_url: str = AMQP_URL
    exchange: str = field(default_factory=lambda: f"ess-bench-{uuid.uuid4().hex[:10]}")
    public_port: int = field(default_factory=free_port)
    internal_port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ess-bench-")))
    process: subprocess.Popen[bytes] | None = None
    keep_workdir: bool = field(default_factory=lambda: bool(os.environ.get("BENCH_KEEP_WORKDIR")))
    routing_keys: list[str] = field(default_factory=list)  # queues to remove at the end
    exit_code: int | None = None
    stop_seconds: float | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "ess.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ESS_AMQP_URL": self.amqp_url,
                "ESS_HOST": "127.0.0.1",
                "ESS_PUBLIC_PORT": str(self.public_port),
                "ESS_INTERNAL_PORT": str(self.internal_port),
                "ESS_INGRESS_LOCATION": f"127.0.0.1:{self.public_port}",
                "ESS_DATABASE": str(self.workdir / "event-streams.db"),
                "ESS_EXCHANGE": self.exchange,
                "ESS_LOG_LEVEL": self.log_level,
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        def limits() -> None:  # runs in the child before exec
            _die_with_parent()
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            for limit in ((SERVICE_NOFILE, max(hard, SERVICE_NOFILE)), (hard, hard)):
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, limit)
                    return
                except (ValueError, OSError):
                    continue

        self.process = subprocess.Popen(
            self.command,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=limits,
        )
        self.log = LogCapture(self.process.stdout)  # type: ignore[arg-type]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ess serve exited early:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.api}/health/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"ess serve not ready within {STARTUP_TIMEOUT}s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        log = getattr(self, "log", None)
        return log.text()[-chars:] if log is not None else ""

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def counters(self) -> dict[str, int]:
        return proc_switches(self.pid)

    def rss_kb(self) -> int:
        return proc_rss_kb(self.pid)


_LAG_BUCKET = re.compile(r'^ess_delivery_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.MULTILINE)


def lag_shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Between two :meth:`Api.delivery_lag_buckets`: the share of sends within each bound (ms)."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if total <= 0:
        return {}
    return {
        f"<= {float(le) * 1000:g} ms": round((after[le] - before.get(le, 0.0)) / total, 4)
        for le in ("0.00025", "0.0005", "0.001", "0.0025", "0.005")
        if le in after
    }


class Api:
    """The internal HTTP API, as the Account Server uses it."""

    def __init__(self, service: Service) -> None:
        self.client = httpx.AsyncClient(
            base_url=service.api,
            timeout=30.0,
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
        )

    async def create(self, routing_key: str) -> tuple[int, str]:
        r = await self.client.post("/event-stream/", json={"routing_key": routing_key})
        if r.status_code != 201:
            raise RuntimeError(f"POST /event-stream/ {routing_key!r}: {r.status_code} {r.text}")
        body = r.json()
        return int(body["id"]), str(body["location"])

    async def delivery_lag_buckets(self) -> dict[str, float]:
        """The service's ``ess_delivery_lag_seconds`` histogram now: ``{le: cumulative count}``.

        Its own time from an event's receipt from the broker to its
        websocket send: what the service adds, apart from the broker, the
        kernel and the client.
        """
        text = (await self.client.get("/metrics")).text
        return {match.group(1): float(match.group(2)) for match in _LAG_BUCKET.finditer(text)}

    async def create_many(
        self, service: Service, prefix: str, count: int, *, concurrency: int = 10
    ) -> tuple[list[str], list[str]]:
        """Create ``count`` streams of fresh keys (removed with the service): keys, locations."""
        keys = [unique_key(f"{prefix}{i}") for i in range(count)]
        service.routing_keys.extend(keys)
        slots = asyncio.Semaphore(concurrency)

        async def create(key: str) -> str:
            async with slots:
                return (await self.create(key))[1]

        return keys, list(await asyncio.gather(*(create(key) for key in keys)))

    async def delete(self, stream_id: int) -> int:
        r = await self.client.delete(f"/event-stream/{stream_id}")
        return r.status_code

    async def list_ids(self) -> list[int]:
        r = await self.client.get("/event-stream/")
        r.raise_for_status()
        return [int(s["id"]) for s in r.json()["event_streams"]]

    async def delete_all(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            ids = await self.list_ids()
            sem = asyncio.Semaphore(10)

            async def one(i: int) -> None:
                async with sem:
                    with contextlib.suppress(httpx.HTTPError):
                        await self.delete(i)

            await asyncio.gather(*(one(i) for i in ids))

    async def aclose(self) -> None:
        await self.client.aclose()


class Publisher:
    """Publishes to the service's exchange with publisher confirms (aiormq on asyncio)."""

    def __init__(self, exchange: str, amqp_url: str = AMQP_URL) -> None:
        self.exchange = exchange
        self.amqp_url = amqp_url
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.pending: set[asyncio.Future[Any]] = set()
        self.nacked = 0

    async def open(self) -> Publisher:
        self.connection = await aiormq.connect(self.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        return self

    async def publish(self, routing_key: str, body: bytes) -> None:
        """Publish and wait for the confirm."""
        assert self.channel is not None
        confirm = await self.channel.basic_publish(
            body, exchange=self.exchange, routing_key=routing_key
        )
        if not isinstance(confirm, aiormq.spec.Basic.Ack):
            self.nacked += 1

    def publish_nowait(self, routing_key: str, body: bytes) -> None:
        """Publish without waiting for the confirm (collected by :meth:`drain`)."""
        task = asyncio.ensure_future(self.publish(routing_key, body))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def drain(self) -> None:
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)

    async def publish_many(
        self, routing_key: str, bodies: Iterable[bytes], window: int = 1000
    ) -> None:
        batch: list[Any] = []
        for body in bodies:
            batch.append(self.publish(routing_key, body))
            if len(batch) >= window:
                await asyncio.gather(*batch)
                batch = []
        if batch:
            await asyncio.gather(*batch)

    async def delete_exchange(self) -> None:
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.channel.exchange_delete(self.exchange)

    async def delete_queues(self, names: Iterable[str]) -> None:
        """Remove queues the service may have left (it deletes those it owns on DELETE)."""
        if self.connection is None:
            return
        for name in names:
            with contextlib.suppress(Exception):
                ch = await self.connection.channel()
                await ch.queue_delete(name)
                await ch.close()

    async def close(self) -> None:
        await self.drain()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()


STARTED: list[Service] = []  # every service started, for the figures run_one adds


@contextlib.asynccontextmanager
async def running_service(
    extra_env: dict[str, str] | None = None, log_level: str = "WARNING"
) -> AsyncIterator[tuple[Service, Api, Publisher]]:
    """Start a service, yield it with its API and a publisher; clean everything up after.

    Cleanup: every event stream is DELETEd (the service removes the queues it
    owns), leftover queues named after the routing keys the scenario recorded in
    ``service.routing_keys`` are deleted, the service gets SIGTERM, and the
    scenario's exchange is deleted.
    """
    service = Service(extra_env=dict(extra_env or {}), log_level=log_level)
    STARTED.append(service)
    await asyncio.to_thread(service.start)
    api = Api(service)
    publisher = await Publisher(service.exchange).open()
    try:
        yield service, api, publisher
    except BaseException:
        print(f"--- ess serve log (tail) ---\n{service.log_tail()}", file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api.delete_all(), 120)
        await api.aclose()
        t_stop = time.perf_counter()
        service.exit_code = await asyncio.to_thread(service.stop)
        service.stop_seconds = time.perf_counter() - t_stop
        await publisher.delete_queues(service.routing_keys)
        await publisher.delete_exchange()
        await publisher.close()


def unique_key(prefix: str) -> str:
    return f"bench.{prefix}.{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- #
# Replicas and workers (issue 11)

#: How long replicas may take to hear of each other (alive beats every 2 s).
MEMBERSHIP_TIMEOUT = 20.0


def proc_children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``: the workers of ``--workers N``."""
    return sorted(
        child.pid
        for child in psutil.Process(pid).children()
        if child.status() != psutil.STATUS_ZOMBIE
    )


def broker_pid(port: int = 5672) -> int | None:
    """The ``beam.smp`` process listening on the broker's ``port`` (for its CPU), or None.

    Other people's tests may run brokers of their own on other ports, so the
    one to measure is found by its listening socket, not by name alone.
    """
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    listening.add(f"socket:[{parts[9]}]")
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if not entry.name.isdigit() or (entry / "comm").read_text().strip() != "beam.smp":
                continue
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in listening:
                        return int(entry.name)
    return None


def location_on(service: Service, location: str) -> str:
    """The websocket URL of ``location`` (any replica's) on ``service``'s public port."""
    return f"ws://127.0.0.1:{service.public_port}/event-stream/{location.rsplit('/', 1)[-1]}"


async def wait_replicas_listed(urls: Sequence[str], count: int, *, answerers: int = 1) -> None:
    """Return once ``/debug/replicas`` on each internal-API URL lists ``count`` replicas.

    ``answerers``: how many processes answer on each URL (the workers of one
    ``--workers N`` service share its port; each new TCP connection reaches
    whichever the kernel picks), each of which must list them all.
    """
    deadline = time.monotonic() + MEMBERSHIP_TIMEOUT
    async with httpx.AsyncClient(timeout=5.0) as client:
        for url in urls:
            done: set[str] = set()
            while len(done) < answerers:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url}/debug/replicas: only {sorted(done)} list {count}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{url}/debug/replicas", headers={"Connection": "close"})
                    body = r.json()
                    if len(body["replicas"]) == count:
                        done.add(str(body["replica"]))
                        continue
                await asyncio.sleep(0.1)  # membership has no event to wait on: alive beats


@contextlib.asynccontextmanager
async def running_replicas(
    count: int, extra_env: dict[str, str] | None = None, log_level: str = "WARNING"
) -> AsyncIterator[tuple[list[Service], list[Api], Publisher]]:
    """``count`` replicas on one registry file and one exchange, each listing all the others.

    The first is :func:`running_service`'s (its cleanup, its routing keys);
    the others share its SQLite file and exchange on ports of their own and
    are stopped first (SIGTERM, so they leave and no DELETE of the cleanup
    waits for them).
    """
    env = dict(extra_env or {})
    async with running_service({**env, "ESS_REPLICA_NAME": "bench-r1"}, log_level) as (
        first,
        api,
        publisher,
    ):
        database = str(first.workdir / "event-streams.db")
        others = [
            Service(
                extra_env={**env, "ESS_DATABASE": database, "ESS_REPLICA_NAME": f"bench-r{n}"},
                log_level=log_level,
                exchange=first.exchange,
            )
            for n in range(2, count + 1)
        ]
        apis = [api]
        try:
            for other in others:
                await asyncio.to_thread(other.start)
                apis.append(Api(other))
            await wait_replicas_listed([s.api for s in (first, *others)], count)
            yield [first, *others], apis, publisher
        except BaseException:
            for other in others:
                print(f"--- {other.api} log (tail) ---\n{other.log_tail()}", file=sys.stderr)
            raise
        finally:
            for other_api in apis[1:]:
                await other_api.aclose()
            for other in others:
                await asyncio.to_thread(other.stop)


# --------------------------------------------------------------------------- #
# Profiling the service with py-spy


#: The syscalls a live event costs the service, counted by :class:`SyscallCounter`.
SYSCALLS: Final = ("sendto", "recvfrom", "epoll_wait", "epoll_ctl")


def interrupt(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT a profiler (it writes its output then), SIGKILL it if it hangs."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


class _Attached:
    """A tool (``perf``, ``py-spy``) attached to the service for the length of a ``with`` block.

    Subclasses give the tool's command line; the tool is SIGINTed (so it
    writes its output) when the block ends. Not enabled, or not installed:
    the block runs unobserved.
    """

    #: Seconds the tool needs to attach before the block may start measuring.
    attach_seconds: float = 0.5

    def __init__(self, pid: int, out_dir: Path, exe: str | None, enabled: bool) -> None:
        self.pid = pid
        self.exe = exe if enabled else None
        self.enabled = self.exe is not None
        self.proc: subprocess.Popen[bytes] | None = None
        out_dir.mkdir(parents=True, exist_ok=True)

    def command(self, exe: str) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if self.exe is not None:
            self.proc = subprocess.Popen(
                self.command(self.exe), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(self.attach_seconds)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            interrupt(self.proc)


class SyscallCounter(_Attached):
    """``perf stat`` of the service's syscalls for the length of a ``with`` block.

    Counts (in the kernel, no per-call overhead in the service) every syscall
    and the ones in :data:`SYSCALLS`. Unlike CPU time and latency these do
    not move with the neighbours' load, so they show what a cut to the
    per-event path saves on a shared machine. Needs ``perf`` and the right
    to trace the service (root, or ``perf_event_paranoid`` <= 1); else
    :meth:`counts` is empty.
    """

    attach_seconds = 0.3

    def __init__(self, pid: int, out_dir: Path, name: str, enabled: bool) -> None:
        super().__init__(pid, out_dir, shutil.which("perf"), enabled)
        self.out = out_dir / f"{name}.perf-stat.csv"

    def command(self, exe: str) -> list[str]:
        events = ",".join(
            ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{n}" for n in SYSCALLS)]
        )
        return [exe, "stat", "-x,", "-o", str(self.out), "-e", events, "-p", str(self.pid)]

    def counts(self) -> dict[str, int]:
        """``{"all": n, "sendto": n, ...}`` (empty if nothing was counted)."""
        if not self.out.exists():
            return {}
        counts: dict[str, int] = {}
        for line in self.out.read_text(errors="replace").splitlines():
            fields_ = line.split(",")
            if len(fields_) < 3 or not fields_[0].isdigit():
                continue
            event = fields_[2]
            name = "all" if event == "raw_syscalls:sys_enter" else event.rpartition("enter_")[2]
            counts[name] = int(fields_[0])
        return counts

    def per_event(self, events: int) -> dict[str, float | None]:
        """:meth:`counts` divided by ``events``."""
        counts = self.counts()
        return per_event_counts(dict.fromkeys(counts, 0), counts, events)


class Profiler(_Attached):
    """``py-spy record`` on the service for the length of a ``with`` block.

    Writes collapsed stacks (raw format) and an SVG flame graph next to each
    other; :meth:`top` returns the leaf functions with the most samples.
    """

    def __init__(self, pid: int, out_dir: Path, name: str, enabled: bool) -> None:
        super().__init__(pid, out_dir, shutil.which("py-spy", path=_venv_bin_path()), enabled)
        self.raw = out_dir / f"{name}.collapsed.txt"

    def command(self, exe: str) -> list[str]:
        options = ["--format", "raw", "--rate", "200", "--nonblocking", "-o", str(self.raw)]
        return [exe, "record", "--pid", str(self.pid), *options]

    def top(self, n: int = 15) -> dict[str, Any]:
        if not self.raw.exists():
            return {}
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in self.raw.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for f in set(frames):
                inclusive[f] = inclusive.get(f, 0) + count

        def rank(d: dict[str, int]) -> list[dict[str, Any]]:
            return [
                {"frame": k, "pct": round(100 * v / total, 1)}
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]
            ]

        return {
            "samples": total,
            "file": str(self.raw),
            "self": rank(own),
            "inclusive": rank(inclusive),
        }


@contextlib.contextmanager
def call_profile_window(pid: int, enabled: bool) -> Iterator[None]:
    """SIGUSR1 and SIGUSR2 to a service run by ``bench/profiled_serve.py`` (``--cprofile``):
    its cProfile window is the block. The pstats file lands in ``$PROFILE_DIR``; read it
    with ``bench/profile_report.py``."""
    if enabled:
        os.kill(pid, signal.SIGUSR1)
    try:
        yield
    finally:
        if enabled:
            os.kill(pid, signal.SIGUSR2)


@contextlib.contextmanager
def observed(
    service: Service, args: argparse.Namespace, name: str
) -> Iterator[tuple[Profiler, SyscallCounter]]:
    """py-spy, ``perf stat`` and a cProfile window on the service for the block, as asked
    by ``--profile``, ``--syscalls`` and ``--cprofile``."""
    out_dir = Path(args.profile_dir)
    with (
        Profiler(service.pid, out_dir, name, args.profile) as profiler,
        SyscallCounter(service.pid, out_dir, name, args.syscalls) as syscalls,
        call_profile_window(service.pid, args.cprofile),
    ):
        yield profiler, syscalls


def event_costs(
    cpu_seconds: float,
    before: dict[str, int],
    after: dict[str, int],
    syscalls: SyscallCounter,
    events: int,
) -> dict[str, Any]:
    """The service's CPU, context switches (``before``/``after``: its counters) and syscalls
    per delivered event: the figures that stay comparable on a shared machine."""
    return {
        "service_cpu_us_per_event": cpu_us_per_event(cpu_seconds, events),
        "service_per_event": per_event_counts(before, after, events),
        "service_syscalls_per_event": syscalls.per_event(events),
    }


def _venv_bin_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


# --------------------------------------------------------------------------- #
# Results


@dataclass
class Target:
    name: str
    value: Any
    op: str  # ">=", "<=", "=="
    limit: Any
    unit: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        try:
            if self.op == ">=":
                return bool(self.value >= self.limit)
            if self.op == "<=":
                return bool(self.value <= self.limit)
            return bool(self.value == self.limit)
        except TypeError:
            return False

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "target": f"{self.op} {self.limit}{(' ' + self.unit) if self.unit else ''}",
            "pass": self.passed,
        }


@dataclass
class Result:
    scenario: str
    parameters: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    error: str | None = None

    def target(self, name: str, value: Any, op: str, limit: Any, unit: str = "") -> None:
        self.targets.append(Target(name, value, op, limit, unit))

    def latency_targets(
        self, name: str, summary: dict[str, Any], *, p50_ms: float, max_ms: float
    ) -> None:
        """The two bounds of a latency (a :func:`latency_summary`): its median and its worst."""
        self.target(f"{name}_p50_ms", summary.get("p50_ms"), "<=", p50_ms, "ms")
        self.target(f"{name}_max_ms", summary.get("max_ms"), "<=", max_ms, "ms")

    @property
    def passed(self) -> bool:
        return self.error is None and all(t.passed for t in self.targets)

    def as_dict(self, machine_info: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "parameters": self.parameters,
            "figures": self.figures,
            "targets": {t.name: t.as_dict() for t in self.targets},
            "pass": self.passed,
            "machine": machine_info,
        }
        if self.notes:
            out["notes"] = self.notes
        if self.profile:
            out["profile"] = self.profile
        if self.error:
            out["error"] = self.error
        return out


def format_table(results: list[Result]) -> str:
    rows = [("scenario", "figure", "measured", "target", "ok")]
    for r in results:
        if r.error:
            rows.append((r.scenario, "ERROR", r.error.splitlines()[0][:60], "", "FAIL"))
        for t in r.targets:
            value = t.value
            if isinstance(value, float):
                value = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
            elif isinstance(value, int) and not isinstance(value, bool):
                value = f"{value:,}"
            rows.append(
                (
                    r.scenario,
                    t.name,
                    str(value),
                    f"{t.op} {t.limit} {t.unit}".strip(),
                    "ok" if t.passed else "MISS",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def monotonic_ms(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6


Callback = Callable[[], None]
