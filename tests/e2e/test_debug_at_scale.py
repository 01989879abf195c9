"""``/debug/actors`` against a real service holding 10,000 streams: answers cost what they hold.

The streams are written straight into the registry file before the service
starts (the service restores one idle actor per row, as after a restart);
creating 10,000 through the API would take minutes on a shared machine.
The rows own no queue, so nothing on the broker is left behind by them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from actors.adapters.sqlite_registry import SQLiteRegistry

from .client import connect
from .service import ServiceProcess

STREAMS = 10_000


def prefill_registry(database: Path, count: int, prefix: str) -> None:
    """``count`` stream rows with routing keys ``<prefix>.<n>``, none owning a queue."""

    async def create_schema() -> None:
        async with SQLiteRegistry.open(database):
            pass

    trio.run(create_schema)
    now = time.time()
    rows = ((str(uuid.uuid4()), f"{prefix}.{n}", 0, now) for n in range(1, count + 1))
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            "INSERT INTO streams (uuid, routing_key, owns_queue, created_at) VALUES (?, ?, ?, ?)",
            rows,
        )


@contextlib.contextmanager
def prefilled_service(
    workdir: Path, amqp_url: str, count: int, prefix: str
) -> Iterator[ServiceProcess]:
    """A started service restored from ``count`` pre-filled streams; stopped and cleaned after."""
    proc = ServiceProcess(workdir=workdir, amqp_url=amqp_url, extra_env={"ESS_LOG_LEVEL": "INFO"})
    proc.database.parent.mkdir(parents=True, exist_ok=True)
    prefill_registry(proc.database, count, prefix)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()  # first: clean_up would delete 10,000 streams one request at a time
        proc.clean_up()  # the owned queues (of streams a test created) and the exchange


@contextlib.asynccontextmanager
async def watched_streams(
    api_url: str, *routing_keys: str
) -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    """A client of the API at ``api_url``, the streams it created and a websocket on the first.

    Yields once the websocket's handshake is complete on the server's side
    too (it answered a ping): the connection is in the actor tree. The
    streams are deleted afterwards.
    """
    streams: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=api_url, timeout=30.0) as api:
        try:
            for routing_key in routing_keys:
                response = await api.post("/event-stream/", json={"routing_key": routing_key})
                assert response.status_code == 201, response.text
                streams.append(response.json())
            async with connect(streams[0]["location"]) as ws:
                await ws.ping()
                yield api, streams
        finally:
            for stream in streams:
                await api.delete(f"/event-stream/{stream['id']}")


@pytest.fixture(scope="module")
def big_service(
    tmp_path_factory: pytest.TempPathFactory, amqp_url: str
) -> Iterator[ServiceProcess]:
    prefix = f"ess.e2e.scale.{uuid.uuid4().hex[:8]}"
    with prefilled_service(tmp_path_factory.mktemp("ess-scale"), amqp_url, STREAMS, prefix) as proc:
        yield proc


async def timed_get(api: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await api.get(path)
    return response, time.perf_counter() - started


async def test_default_answer_is_a_small_summary_and_the_full_tree_is_still_there(
    big_service: ServiceProcess,
) -> None:
    async with httpx.AsyncClient(base_url=big_service.api, timeout=30.0) as api:
        await api.get("/debug/actors")  # the first index build (rates need a first sample)
        summary, summary_seconds = await timed_get(api, "/debug/actors")
        full, _ = await timed_get(api, "/debug/actors?full=1")
    assert summary.status_code == 200
    body = summary.json()
    assert body["kind"] == "summary" and body["streams"] == STREAMS
    assert body["states"] == {"idle": STREAMS}
    assert len(summary.content) < 5_000, len(summary.content)
    assert summary_seconds < 0.5, summary_seconds
    # For contrast, and for small deployments that want it: the whole tree.
    assert full.json()["kind"] == "supervisor" and len(full.json()["children"]) == STREAMS
    assert len(full.content) > 100 * len(summary.content)


async def test_a_page_is_small_fast_and_pages_by_id(big_service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=big_service.api, timeout=30.0) as api:
        first, seconds = await timed_get(api, "/debug/actors?limit=100")
        second, _ = await timed_get(
            api, f"/debug/actors?limit=100&cursor={first.json()['next_cursor']}"
        )
        last, _ = await timed_get(api, f"/debug/actors?limit=100&cursor={STREAMS - 50}")
    page = first.json()
    assert page["kind"] == "page" and page["total"] == STREAMS
    assert [row["id"] for row in page["streams"]] == list(range(1, 101))
    assert [row["id"] for row in second.json()["streams"]] == list(range(101, 201))
    assert len(last.json()["streams"]) == 50 and last.json()["next_cursor"] is None
    assert len(first.content) < 30_000, len(first.content)
    assert seconds < 0.5, seconds


async def test_search_and_one_stream_show_a_connection_with_rate_and_lag(
    big_service: ServiceProcess, routing_key: str
) -> None:
    async with watched_streams(big_service.api, routing_key) as (api, [created]):
        found = (await api.get("/debug/actors", params={"q": routing_key})).json()
        one, seconds = await timed_get(api, f"/debug/actors?stream={created['id']}")
        busiest = (await api.get("/debug/actors?sort=connections&limit=1")).json()
    assert [row["id"] for row in found["streams"]] == [created["id"]]
    assert found["streams"][0]["connections"] == 1
    assert busiest["streams"][0]["id"] == created["id"]
    stream = one.json()
    assert stream["kind"] == "stream" and stream["counters"]["id"] == created["id"]
    connections = [child for child in stream["children"] if child["kind"] == "connection"]
    assert len(connections) == 1
    assert {"rate_in", "rate_out", "lag", "peer"} <= set(connections[0]["counters"])
    assert len(one.content) < 5_000 and seconds < 0.5


async def test_bad_queries_are_clear_400s(big_service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=big_service.api, timeout=30.0) as api:
        bad = await api.get("/debug/actors?sort=name")
        unknown = await api.get("/debug/actors?stream=99999999")
    assert bad.status_code == 400 and "sort" in bad.json()["detail"]
    assert unknown.status_code == 404
