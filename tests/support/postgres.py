"""A PostgreSQL server of the test's own, which the test may stop and start at will.

The machine's PostgreSQL on 5432 is shared by everyone running tests: a test
that takes its registry away must never touch it. :class:`PostgresInstance`
runs Debian's binaries (``/usr/lib/postgresql/<version>/bin``, or
``ESS_TEST_POSTGRES_BIN``) on a free port with a data directory and a
Unix-socket directory in a temporary directory: ``initdb`` with trust
authentication, then ``pg_ctl start``/``stop`` as often as the test likes.
PostgreSQL refuses to run as root: as root the commands run as the
``postgres`` user (``runuser``), which owns the temporary directory.

:func:`own_postgres` (and the :func:`postgres` fixture) stops the server
(``immediate``) and removes its directory whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.net import free_port

#: Where Debian puts the server binaries (the newest installed version wins).
BIN_ROOT = Path("/usr/lib/postgresql")
#: Bound on ``initdb`` and on ``pg_ctl start``/``stop`` (a busy machine is slow).
TIMEOUT = 60


def server_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when none is installed."""
    configured = os.environ.get("ESS_TEST_POSTGRES_BIN")
    if configured:
        return Path(configured)
    versions = sorted(
        (path for path in BIN_ROOT.glob("*/bin") if (path / "pg_ctl").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


@dataclass
class PostgresInstance:
    """One PostgreSQL server: its own data directory, port and socket directory."""

    bin_dir: Path
    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        """What ``ESS_DATABASE`` is set to (TCP on 127.0.0.1, trust authentication)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        """``initdb``: an empty cluster, superuser ``postgres``, trust authentication."""
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def start(self) -> None:
        """Start the server and return once it accepts connections (``pg_ctl -w``)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session at once (what a restart does)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""


@contextlib.contextmanager
def own_postgres() -> Iterator[PostgresInstance]:
    """A running PostgreSQL of the caller's own; stopped and removed afterwards, always."""
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.fail(f"no PostgreSQL server binaries under {BIN_ROOT} (run `make test`)")
    # Not under pytest's tmp_path: that is private to root, and the server
    # runs as ``postgres``. Short, too: a Unix socket path is at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="ess-pg-"))
    instance = PostgresInstance(bin_dir=bin_dir, root=root)
    try:
        instance.init()
        instance.start()
        yield instance
    finally:
        if instance.running():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                instance.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[PostgresInstance]:
    """:func:`own_postgres` as a fixture (a test module imports it, or wraps the manager)."""
    with own_postgres() as instance:
        yield instance
