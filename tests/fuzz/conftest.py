"""Fuzz fixtures: the real ``ess serve`` process (as in tests/e2e), real RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import api, broker
from tests.e2e.service import ServiceProcess

__all__ = ["api", "broker"]  # the e2e fixtures, on this folder's `service`

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
