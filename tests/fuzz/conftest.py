"""Fuzz fixtures: the real ``ess serve`` process (as in tests/e2e), real RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import trio

from actors.rabbitmq import RabbitMQBroker
from tests.e2e.service import ServiceProcess

#: DEBUG logging (the e2e default) writes a line per frame; fuzzing makes many.
QUIET = {"ESS_LOG_LEVEL": "INFO"}


def unique_key(label: str = "key") -> str:
    return f"ess.fuzz.{label}.{uuid.uuid4().hex[:12]}"


def start_service(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str, **extra_env: str
) -> ServiceProcess:
    proc = ServiceProcess(
        workdir=tmp_path_factory.mktemp("ess-fuzz"), amqp_url=amqp_url, extra_env=QUIET | extra_env
    )
    proc.start()
    return proc


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[ServiceProcess]:
    """One service per module; its streams are deleted and it must exit 0 on SIGTERM."""
    proc = start_service(tmp_path_factory, amqp_url)
    yield proc
    code = proc.clean_up()
    assert code == 0, f"ess serve exited with {code}:\n{proc.log()}"


@pytest.fixture
def routing_key() -> str:
    return unique_key()


@pytest.fixture
async def api(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.api, timeout=10.0) as client:
        yield client


@pytest.fixture
async def broker(service: ServiceProcess, amqp_url: str) -> AsyncIterator[RabbitMQBroker]:
    """The test's own broker client on the service's exchange, to publish events."""
    async with trio.open_nursery() as nursery:
        test_broker = RabbitMQBroker(amqp_url, service.exchange)
        await nursery.start(test_broker.run)
        await test_broker.wait_available()
        yield test_broker
        nursery.cancel_scope.cancel()
