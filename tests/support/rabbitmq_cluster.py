"""A private three-node RabbitMQ cluster for fault tests that lose a node.

The machine's (and CI's) shared broker is ``rabbit@localhost`` on 5672; a
test that stops a node must never touch it. :class:`RabbitMQCluster` starts
its own nodes from Debian's ``rabbitmq-server`` (3.10), each with:

- its own node name (``ess-test-<tag>-<n>@localhost``, the tag unique per
  run so parallel runs cannot collide), AMQP port and distribution port,
  all picked free and never 5672/25672;
- its own directory for the database, logs and pid file, and its own
  config files: ``RABBITMQ_CONF_ENV_FILE`` and ``RABBITMQ_CONFIG_FILE``
  replace ``/etc/rabbitmq``'s (which name the system node and its
  listener), an empty ``enabled_plugins`` file keeps every plugin (and the
  ports of management or prometheus) off;
- a random Erlang cookie in the cluster's own ``HOME``, which the nodes and
  every ``rabbitmqctl`` this module runs share (the system node's cookie is
  neither read nor needed).

The scripts are run from ``/usr/lib/rabbitmq/bin``: Debian's wrappers in
``/usr/sbin`` switch to the ``rabbitmq`` user when run as root, which could
not read the cluster's directory. Nodes 2 and 3 join node 1 (``stop_app``,
``join_cluster``, ``start_app``); :meth:`RabbitMQCluster.start` returns once
``cluster_status`` shows the three running. :meth:`RabbitMQCluster.close`
always stops every node (SIGKILL after a bounded wait) and removes the
directory, also when the start failed half way.

Everything here blocks (subprocesses and polling): a trio test calls it
through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.support.net import free_ports

#: Where Debian puts the real scripts (``/usr/sbin``'s wrappers change user).
SCRIPTS: Final = Path("/usr/lib/rabbitmq/bin")
#: Bound on one node booting (three Erlang nodes on a busy 2-core machine are slow).
BOOT_TIMEOUT: Final = 120.0
#: Bound on one ``rabbitmqctl`` call that should answer promptly.
CTL_TIMEOUT: Final = 60.0
#: Bound on a node stopping before it is killed.
STOP_TIMEOUT: Final = 30.0
#: Ports never to use: the shared broker's AMQP and distribution ports.
RESERVED_PORTS: Final = frozenset({5672, 25672, 4369})


def installed() -> bool:
    """Whether Debian's rabbitmq-server is installed here."""
    return (SCRIPTS / "rabbitmq-server").exists() and (SCRIPTS / "rabbitmqctl").exists()


def _free_ports(count: int) -> list[int]:
    """``count`` different free ports, none of the system broker's (:data:`RESERVED_PORTS`)."""
    while RESERVED_PORTS.intersection(ports := free_ports(count)):
        pass
    return ports


@dataclass
class Node:
    """One node of the cluster: its name, ports, directory and OS process."""

    index: int
    name: str
    amqp_port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def pid_file(self) -> Path:
        return self.base / "rabbit.pid"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def beam_pid(self) -> int | None:
        """The Erlang VM's OS pid, from the pid file the node writes at boot."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


class ClusterError(RuntimeError):
    """The cluster could not be started or changed as asked (with the node's log)."""


class RabbitMQCluster:
    """Three (``size``) private RabbitMQ nodes clustered together (see the module docstring)."""

    def __init__(self, size: int = 3, root: Path | None = None) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.root = Path(tempfile.mkdtemp(prefix="ess-rmq-cluster-", dir=root))
        self.tag = secrets.token_hex(3)
        (self.root / ".erlang.cookie").write_text(secrets.token_hex(20))
        (self.root / ".erlang.cookie").chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("# the cluster's own: none\n")
        (self.root / "enabled_plugins").write_text("[].\n")
        ports = iter(_free_ports(2 * size))  # all at once: no two nodes may share one
        self.nodes = [self._make_node(n, next(ports), next(ports)) for n in range(1, size + 1)]

    def _make_node(self, n: int, amqp_port: int, dist_port: int) -> Node:
        base = self.root / f"node{n}"
        base.mkdir()
        node = Node(n, f"ess-test-{self.tag}-{n}@localhost", amqp_port, dist_port, base)
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        return node

    # ------------------------------------------------------------------ environment

    def env(self, node: Node) -> dict[str, str]:
        """The environment of ``node``'s server and of every CLI call to it."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) and key != "NODENAME"
        }
        env.update(
            {
                "HOME": str(self.root),
                "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(node.amqp_port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONFIG_FILE": str(node.base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.base / "log"),
                "RABBITMQ_PID_FILE": str(node.pid_file),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
            }
        )
        return env

    def ctl(self, node: Node, *args: str, timeout: float = CTL_TIMEOUT, tool: str = "") -> str:
        """Run ``rabbitmqctl -n <node> args`` (or another CLI ``tool``); its stdout."""
        command = [str(SCRIPTS / (tool or "rabbitmqctl")), "-n", node.name, *args]
        try:
            result = subprocess.run(
                command,
                env=self.env(node),
                capture_output=True,
                timeout=timeout,
                check=False,
                cwd=self.root,
            )
        except subprocess.TimeoutExpired as expired:
            raise ClusterError(f"{' '.join(command)} did not finish in {timeout}s") from expired
        if result.returncode != 0:
            raise ClusterError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')}{result.stdout.decode(errors='replace')}"
            )
        return result.stdout.decode(errors="replace")

    def log(self, node: Node) -> str:
        """The tail of ``node``'s logs (for failure messages)."""
        parts = []
        for path in [*sorted(node.base.glob("log/*.log")), node.base / "console.out"]:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ the whole cluster

    @property
    def urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    def start(self) -> None:
        """Boot every node (in parallel), join 2.. to node 1, wait for all running."""
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self.wait_booted(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app", timeout=BOOT_TIMEOUT)
        self.wait_running(len(self.nodes))

    def close(self) -> None:
        """Stop every node (killed if it will not stop) and remove the directory."""
        try:
            for node in self.nodes:
                if node.running:
                    assert node.process is not None
                    node.process.send_signal(signal.SIGTERM)
            for node in self.nodes:
                self._reap(node)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def running_nodes(self, via: Node | None = None) -> list[str]:
        """``cluster_status``'s running nodes, as seen by ``via`` (any running node)."""
        asked = via or next(node for node in self.nodes if node.running)
        out = self.ctl(asked, "cluster_status", "--formatter", "json")
        status: dict[str, Any] = json.loads(out)
        return sorted(status.get("running_nodes", []))

    def wait_running(self, count: int, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until ``cluster_status`` shows ``count`` running nodes."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                seen = self.running_nodes()
            except ClusterError:
                seen = []
            if len(seen) == count:
                return
            time.sleep(0.5)  # polling cluster_status: there is no event to wait on
        raise ClusterError(f"{count} running nodes not within {timeout}s: {seen}")

    # ------------------------------------------------------------------ one node

    def _spawn(self, node: Node) -> None:
        assert not node.running, f"{node.name} is running"
        node.pid_file.unlink(missing_ok=True)
        with (node.base / "console.out").open("ab") as out:
            node.process = subprocess.Popen(
                [str(SCRIPTS / "rabbitmq-server")],
                env=self.env(node),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.base,
                start_new_session=True,
            )

    def wait_booted(self, node: Node, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until ``node`` has booted (``await_startup``) and accepts AMQP."""
        deadline = time.monotonic() + timeout
        while True:
            if not node.running:
                raise ClusterError(f"{node.name} exited while booting:\n{self.log(node)}")
            try:
                self.ctl(node, "await_startup", "--timeout", "30", timeout=45)
                with socket.create_connection(("127.0.0.1", node.amqp_port), timeout=2):
                    return
            except (ClusterError, OSError) as error:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{node.name} not up within {timeout}s: {error}\n{self.log(node)}"
                    ) from error
            time.sleep(0.5)  # the node's distribution is not up yet: ask again

    def stop_node(self, node: Node) -> None:
        """Stop ``node`` cleanly (SIGTERM, as ``systemctl stop`` does) and wait until gone."""
        assert node.process is not None and node.running, f"{node.name} is not running"
        node.process.send_signal(signal.SIGTERM)
        self._reap(node)

    def kill_node(self, node: Node) -> None:
        """``kill -9`` the node's Erlang VM (a lost host: no goodbye to anyone)."""
        pid = node.beam_pid()
        assert pid is not None and node.running, f"{node.name} is not running"
        os.kill(pid, signal.SIGKILL)
        self._reap(node)

    def restart_node(self, node: Node) -> None:
        """Start a stopped node again; return once the cluster shows every node running."""
        self._spawn(node)
        self.wait_booted(node)
        self.wait_running(len(self.nodes))

    def _reap(self, node: Node) -> None:
        if node.process is None:
            return
        try:
            node.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pid = node.beam_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=STOP_TIMEOUT)

    def stream_leader(self, queue: str, vhost: str = "/") -> str:
        """The node that leads the stream queue ``queue`` now (``list_queues name leader``)."""
        via = next(node for node in self.nodes if node.running)
        out = self.ctl(via, "list_queues", "-p", vhost, "name", "leader", "--formatter", "json")
        for row in json.loads(out):
            if row.get("name") == queue:
                return str(row.get("leader"))
        raise ClusterError(f"no queue {queue!r} on the cluster")

    def node_named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)


def cluster(size: int = 3) -> Iterator[RabbitMQCluster]:
    """A started cluster, stopped and removed afterwards (the body of a fixture)."""
    started = RabbitMQCluster(size)
    try:
        started.start()
        yield started
    finally:
        started.close()
