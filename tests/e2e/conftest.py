"""End-to-end fixtures: the real ``ess serve`` process, real HTTP, real websockets."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from actors.adapters.rabbitmq import RabbitMQBroker

from .service import ServiceProcess


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[ServiceProcess]:
    """One service shared by the tests of a module (start-up costs about a second)."""
    proc = ServiceProcess(workdir=tmp_path_factory.mktemp("ess"), amqp_url=amqp_url)
    proc.start()
    yield proc
    proc.clean_up()


@pytest.fixture
def fresh_service(tmp_path: Path, amqp_url: str) -> Iterator[ServiceProcess]:
    """A service of the test's own, not started: for restarts, kills and signals."""
    proc = ServiceProcess(workdir=tmp_path / "ess", amqp_url=amqp_url)
    yield proc
    proc.clean_up()


@pytest.fixture
def routing_key() -> str:
    return f"ess.e2e.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def api(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.api, timeout=10.0) as client:
        yield client


@pytest.fixture
async def broker(service: ServiceProcess, amqp_url: str) -> AsyncIterator[RabbitMQBroker]:
    """The test's own broker client, on the service's exchange, to publish and inspect."""
    async with trio.open_nursery() as nursery:
        test_broker = RabbitMQBroker(amqp_url, service.exchange, connection_name="ess-test-client")
        await nursery.start(test_broker.run)
        await test_broker.wait_available()
        yield test_broker
        nursery.cancel_scope.cancel()
