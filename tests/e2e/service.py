"""Runs the real ``ess serve`` process for end-to-end tests.

Each instance gets free ports and its own registry file, and is driven only
through its public surfaces: HTTP, websockets, signals and its exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import trio

import amqp
from tests.support.net import free_port as free_port  # tests import it from here
from tests.support.net import free_ports

STARTUP_TIMEOUT = 30.0
#: How long replicas may take to hear of each other (alive every 2 s).
MEMBERSHIP_TIMEOUT = 20.0


@dataclass
class ServiceProcess:
    """One ``ess serve`` subprocess and what a test needs to reach it."""

    workdir: Path
    amqp_url: str
    exchange: str = field(default_factory=lambda: f"ess-e2e-{uuid.uuid4().hex[:8]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Both picked together when not given (:func:`~tests.support.net.free_ports`).
    public_port: int = 0
    internal_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def __post_init__(self) -> None:
        picked = iter(free_ports(2))
        self.public_port = self.public_port or next(picked)
        self.internal_port = self.internal_port or next(picked)

    @property
    def database(self) -> Path:
        return self.workdir / "registry" / "event-streams.db"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.internal_port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.public_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ESS_AMQP_URL": self.amqp_url,
                "ESS_HOST": "127.0.0.1",
                "ESS_PUBLIC_PORT": str(self.public_port),
                "ESS_INTERNAL_PORT": str(self.internal_port),
                "ESS_INGRESS_LOCATION": f"127.0.0.1:{self.public_port}",
                "ESS_DATABASE": str(self.database),
                "ESS_EXCHANGE": self.exchange,
                "ESS_LOG_LEVEL": "DEBUG",
                "ESS_PING_INTERVAL": "5",
                "ESS_PING_TIMEOUT": "5",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Start the process and return once ``/health/ready`` answers 200."""
        self._spawn()
        self.wait_ready("/health/ready", timeout)

    def start_live_only(self) -> None:
        """Start the process and return once ``/health/live`` answers (no broker needed)."""
        self._spawn()
        self.wait_ready("/health/live")

    def _spawn(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"ess-{int(time.time() * 1000)}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ess", "serve"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_ready(self, probe: str = "/health/ready", timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"ess serve exited early:\n{self.log()}")
                try:
                    if client.get(f"{self.api}{probe}").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling the readiness probe, the event we wait on
        raise TimeoutError(f"ess serve not ready within {timeout}s:\n{self.log()}")

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def clean_up(self) -> int | None:
        """Delete every stream (the service deletes the queues it owns), stop, drop the exchange.

        Tests share one broker across runs: what they leave behind slows
        every later broker restart and costs it file descriptors. Returns the
        exit status of the stop (``None`` if it had to be killed).
        """
        if self.process is not None and self.process.poll() is None:
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.Client(base_url=self.api, timeout=10.0, headers=self._auth()) as client,
            ):
                for stream in client.get("/event-stream/").json().get("event_streams", []):
                    client.delete(f"/event-stream/{stream['id']}")
        code = self.stop()
        # Streams a stopped or killed process could not delete: their owned
        # queues, straight from the registry it left behind.
        trio.run(_delete_leftovers, self.amqp_url, self.exchange, self._owned_queues())
        return code

    def _owned_queues(self) -> list[str]:
        query = "SELECT routing_key FROM streams WHERE owns_queue"
        database = self.env()["ESS_DATABASE"]
        if database.startswith("postgresql://"):
            # Only while that server is up: a test that stopped it for good cleans up itself.
            with contextlib.suppress(psycopg.Error), psycopg.connect(database) as conn:
                return [str(row[0]) for row in conn.execute(query).fetchall()]
            return []
        if not Path(database).exists():
            return []
        with contextlib.closing(sqlite3.connect(database)) as db:
            return [str(row[0]) for row in db.execute(query).fetchall()]

    def _auth(self) -> dict[str, str]:
        token = self.extra_env.get("ESS_INTERNAL_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-20000:]


async def _delete_leftovers(amqp_url: str, exchange: str, queues: list[str]) -> None:
    with contextlib.suppress(amqp.AMQPError, OSError):
        async with amqp.connect(amqp_url) as connection:
            for queue in queues:
                with contextlib.suppress(amqp.ChannelClosed):
                    async with connection.channel() as channel:
                        await channel.queue_delete(queue)
            async with connection.channel() as channel:
                await channel.exchange_delete(exchange)


def start_replicas(
    workdir: Path,
    amqp_url: str,
    count: int,
    *,
    last_url: str | None = None,
    database: str | None = None,
) -> list[ServiceProcess]:
    """``count`` replicas (SPEC section 7) on one registry and one exchange, each ready.

    The registry is ``database`` (a PostgreSQL URL) or else the first
    replica's SQLite file. ``last_url``: the broker URL of the last replica
    (to name its connections). They are named ``replica-1`` ... in
    ``ESS_REPLICA_NAME``.
    """
    first = ServiceProcess(workdir=workdir / "replica-1", amqp_url=amqp_url)
    shared = database if database is not None else str(first.database)
    replicas = [first]
    for n in range(2, count + 1):
        url = last_url if last_url is not None and n == count else amqp_url
        replicas.append(
            ServiceProcess(workdir=workdir / f"replica-{n}", amqp_url=url, exchange=first.exchange)
        )
    for n, replica in enumerate(replicas, start=1):
        replica.extra_env["ESS_REPLICA_NAME"] = f"replica-{n}"
        replica.extra_env["ESS_DATABASE"] = shared
        replica.start()
    return replicas


def replica_name(replica: ServiceProcess) -> str:
    return replica.extra_env["ESS_REPLICA_NAME"]


def running(replica: ServiceProcess) -> bool:
    return replica.process is not None and replica.process.poll() is None


def wait_until_all_listed(replicas: list[ServiceProcess]) -> None:
    """Return once every running replica lists every running replica as live."""
    expected = sorted(replica_name(r) for r in replicas if running(r))
    deadline = time.monotonic() + MEMBERSHIP_TIMEOUT
    listed: list[str] = []
    with httpx.Client(timeout=5.0) as client:
        for replica in filter(running, replicas):
            while True:
                body = client.get(f"{replica.api}/debug/replicas").json()
                listed = sorted(entry["name"] for entry in body["replicas"])
                if listed == expected:
                    break
                assert time.monotonic() < deadline, f"{replica.api} lists {listed}"
                time.sleep(0.1)  # polling the membership, the event we wait on


async def create_stream(replica: ServiceProcess, routing_key: str) -> tuple[int, str]:
    """POST on ``replica``, which must answer 201; returns the id and the websocket uuid."""
    async with httpx.AsyncClient(base_url=replica.api, timeout=10.0) as api:
        response = await api.post("/event-stream/", json={"routing_key": routing_key})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["location"].rsplit("/", 1)[-1]


def clean_up_all(replicas: list[ServiceProcess]) -> None:
    """:meth:`ServiceProcess.clean_up` for each (the first running one deletes every stream)."""
    for replica in replicas:
        replica.clean_up()
