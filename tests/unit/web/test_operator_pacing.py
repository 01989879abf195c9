"""Operator answers are paced (web/pacing.py): polling cannot take the event loop."""

from __future__ import annotations

import pytest
import trio

from web.pacing import OPERATOR_INTERVAL, PACED_ENDPOINTS, Pacer

from .web_fakes import FakeDirectory
from .web_servers import make_app

pytestmark = pytest.mark.autojump


async def test_turns_are_spaced_whatever_the_number_of_callers() -> None:
    pacer = Pacer(0.5, max_waiting=10)
    started = trio.current_time()
    turns: list[float] = []

    async def caller() -> None:
        assert await pacer.turn()
        turns.append(trio.current_time() - started)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(caller)
    assert turns == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert pacer.waiting == 0


async def test_a_caller_after_a_quiet_spell_is_served_at_once() -> None:
    pacer = Pacer(0.5)
    assert await pacer.turn()
    await trio.sleep(2)
    before = trio.current_time()
    assert await pacer.turn()
    assert trio.current_time() == before


async def test_one_more_than_may_wait_is_refused_at_once() -> None:
    pacer = Pacer(1.0, max_waiting=2)
    results: list[bool] = []

    async def caller() -> None:
        results.append(await pacer.turn())

    async with trio.open_nursery() as nursery:
        for _ in range(3):  # one served at once, two wait
            nursery.start_soon(caller)
        await trio.sleep(0.1)
        assert pacer.waiting == 2
        before = trio.current_time()
        assert not await pacer.turn()
        assert trio.current_time() == before
    assert results == [True, True, True]


async def test_a_cancelled_waiter_stops_waiting() -> None:
    pacer = Pacer(10.0, max_waiting=1)
    assert await pacer.turn()
    with trio.move_on_after(1):
        await pacer.turn()
    assert pacer.waiting == 0


@pytest.mark.parametrize("path", ["/metrics", "/debug/actors", "/debug/replicas"])
async def test_polling_an_operator_endpoint_flat_out_is_slowed_not_refused(path: str) -> None:
    client = make_app(FakeDirectory()).test_client()
    started = trio.current_time()
    for _ in range(5):
        response = await client.get(path)
        assert response.status_code == 200
    assert trio.current_time() - started >= 4 * OPERATOR_INTERVAL


async def test_health_probes_are_not_paced() -> None:
    client = make_app(FakeDirectory()).test_client()
    started = trio.current_time()
    for _ in range(5):
        assert (await client.get("/health/live")).status_code == 200
    assert trio.current_time() == started


def test_every_paced_endpoint_exists() -> None:
    app = make_app(FakeDirectory())
    assert set(app.view_functions) >= PACED_ENDPOINTS
