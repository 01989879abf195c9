"""Fixtures for the amqp client against the real RabbitMQ (127.0.0.1:5672)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

import amqp

AMQP_URL = os.environ.get("ESS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

#: Names RabbitMQ accepts and pamqp's validator refuses, or that would break
#: naive string handling: they must all work as queue names and routing keys.
WEIRD_NAMES = [
    "with space",
    "pipe|separated|key",
    "quotes ' \" ` and ; semicolons",
    "'); DROP TABLE event_stream; --",
    "$(touch /tmp/pwned) && `id` > /dev/null",
    "ünïcödé ключ 键 🎉",
]


@pytest.fixture
async def connection() -> AsyncIterator[amqp.Connection]:
    async with amqp.connect(AMQP_URL) as conn:
        yield conn


@pytest.fixture
async def channel(connection: amqp.Connection) -> AsyncIterator[amqp.Channel]:
    async with connection.channel() as ch:
        yield ch


@asynccontextmanager
async def _unique_names(
    prefix: str, delete: Callable[[amqp.Channel, str], Awaitable[object]]
) -> AsyncIterator[Callable[..., str]]:
    """Make unique names; ``delete`` removes every one made, afterwards."""
    made: list[str] = []

    def make(prefix: str = prefix) -> str:
        name = f"{prefix}-{uuid.uuid4()}"
        made.append(name)
        return name

    yield make
    await _delete_retrying_internal_errors(delete, made)


#: RabbitMQ 3.10 sometimes fails ``queue.delete`` of a stream queue declared
#: a moment before with 541 INTERNAL_ERROR (its members still starting) and
#: closes the connection; the same delete a little later succeeds.
DELETE_ATTEMPTS = 4
DELETE_RETRY_PAUSE = 0.25


async def _delete_retrying_internal_errors(
    delete: Callable[[amqp.Channel, str], Awaitable[object]], names: list[str]
) -> None:
    """Delete ``names`` on one connection; a new one (at most 4 in all) after each 541."""
    pending = list(names)
    for attempt in range(1, DELETE_ATTEMPTS + 1):
        try:
            async with amqp.connect(AMQP_URL) as conn:
                while pending:
                    async with conn.channel() as ch:
                        await delete(ch, pending[0])
                    pending.pop(0)
            return
        except amqp.ConnectionClosedByServer as exc:
            if exc.reply_code != 541 or attempt == DELETE_ATTEMPTS:
                raise
        await trio.sleep(DELETE_RETRY_PAUSE * attempt)  # a back-off, not a synchronisation


@pytest.fixture
async def queue_names() -> AsyncIterator[Callable[..., str]]:
    """Make unique queue names; every queue made is deleted after the test."""
    async with _unique_names("test-amqp", amqp.Channel.queue_delete) as make:
        yield make


@pytest.fixture
async def exchange_names() -> AsyncIterator[Callable[..., str]]:
    """Make unique exchange names; every exchange made is deleted after the test."""
    async with _unique_names("test-amqp-ex", amqp.Channel.exchange_delete) as make:
        yield make


async def close_connection_named(*names: str, reason: str = "closed by test") -> None:
    """Have the broker force-close (320) our connection(s) announcing any of ``names``."""

    def run() -> None:
        listing = subprocess.run(
            [
                "rabbitmqctl",
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        pids = [
            line.split("\t")[0]
            for line in listing.stdout.splitlines()
            if any(name in line for name in names)  # names are unique (uuid) per test
        ]
        assert pids, f"no broker connection named any of {names!r}"
        for pid in pids:
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, reason], capture_output=True, check=True
            )

    await trio.to_thread.run_sync(run)
