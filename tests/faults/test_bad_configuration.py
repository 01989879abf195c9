"""A bad configuration or registry stops start-up with one line; an unusable registry is 503.

SPEC section 1: "A bad configuration value stops start-up with one clear
line naming the variable; it never starts half-configured." Section 3: "A
registry that cannot be written makes /health/ready answer 503 and
POST/DELETE answer 503 with a reason, never 500." Each test runs the real
``ess serve`` process (as tests/e2e/service.py starts it).
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.service import ServiceProcess

from .conftest import WAIT, RoutingKeys, Services, poll_until

PASSWORD = "pa55-never-printed"

BAD_AMQP_URLS = {
    "unknown option": f"amqp://ess:{PASSWORD}@127.0.0.1:5672/?hearbeat=5",
    "two-segment path": f"amqp://ess:{PASSWORD}@127.0.0.1:5672/vhost/extra",
    "port out of range": f"amqp://ess:{PASSWORD}@127.0.0.1:99999/",
    "port not a number": f"amqp://ess:{PASSWORD}@127.0.0.1:56x2/",
    "other scheme": f"http://ess:{PASSWORD}@127.0.0.1:5672/",
    "bad second url of a list": f"amqp://a:b@127.0.0.1/,amqp://ess:{PASSWORD}@h/a/b",
}


def _run_serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``ess serve`` as a deployment starts it, to its exit (bounded)."""
    service = ServiceProcess(workdir=tmp_path, amqp_url="amqp://guest:guest@127.0.0.1:5672/")
    full_env = service.env()
    full_env["ESS_LOG_LEVEL"] = "INFO"
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ess", "serve"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("variable", ["ESS_AMQP_URL", "ESS_AMPQ_URL"])
@pytest.mark.parametrize("case", sorted(BAD_AMQP_URLS))
def test_a_bad_amqp_url_is_one_line_naming_the_variable(
    tmp_path: Path, variable: str, case: str
) -> None:
    env = {variable: BAD_AMQP_URLS[case]}
    if variable == "ESS_AMPQ_URL":
        env["ESS_AMQP_URL"] = ""  # the upstream spelling is read when ours is unset
    result = _run_serve(tmp_path, **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ess: configuration error: {variable}="), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
    assert not (tmp_path / "registry").exists()  # nothing started, not even the registry


def test_a_corrupt_registry_is_one_line(tmp_path: Path) -> None:
    database = tmp_path / "registry" / "event-streams.db"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"this is not an SQLite database\n" * 200)
    result = _run_serve(tmp_path, ESS_DATABASE=str(database))
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ess: cannot start: "), lines[0]
    assert str(database) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("variable", "what"),
    [("ESS_PUBLIC_PORT", "websockets"), ("ESS_INTERNAL_PORT", "the internal API")],
)
def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path, variable: str, what: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_serve(tmp_path, **{variable: str(port)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("ess: cannot start")]
    assert errors == [
        f"ess: cannot start: cannot listen for {what} on 127.0.0.1:{port} ({variable}): "
        "Address already in use"
    ], result.stderr


@contextlib.contextmanager
def write_locked(database: Path) -> Iterator[None]:
    """Another process holds the registry's write lock: it cannot be written meanwhile."""
    holder = sqlite3.connect(database, isolation_level=None, timeout=1.0)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_registry_that_cannot_be_written_is_503_and_not_ready(
    services: Services, routing_keys: RoutingKeys
) -> None:
    """Needs the registry adapter's RegistryUnavailable and ``available`` (the registry helper).

    The API side (503 with the reason and Retry-After, /health/ready 503) is
    in web/ and proven by tests/unit/web/test_web_api.py.
    """
    service = await services.start()
    key = routing_keys.new()
    async with httpx.AsyncClient(base_url=service.api, timeout=WAIT) as api:
        created = await api.post("/event-stream/", json={"routing_key": key})
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        with write_locked(service.database):
            response = await api.post("/event-stream/", json={"routing_key": key})
            assert response.status_code == 503, response.text
            assert response.json()["detail"]
            assert int(response.headers["retry-after"]) > 0
            assert (await api.get("/health/ready")).status_code == 503
            deleted = await api.delete(f"/event-stream/{stream_id}")
            assert deleted.status_code == 503, deleted.text
        # Usable again: the service recovers without a restart.
        response = await api.post("/event-stream/", json={"routing_key": key})
        assert response.status_code == 201, response.text

        async def ready() -> bool:
            return (await api.get("/health/ready")).status_code == 200

        await poll_until(ready, WAIT, "/health/ready answers 200 again")
        for item in (await api.get("/event-stream/")).json()["event_streams"]:
            assert (await api.delete(f"/event-stream/{item['id']}")).status_code == 204
    await trio.to_thread.run_sync(service.stop)
