"""The counters lag is computed from: the newest offset a connection has received.

``/metrics`` (``ess_connection_lag_events``) and ``/debug/actors`` compute a
connection's lag as the newest ordinal its stream knows of minus the last
ordinal it sent; a connection on a consumer of its own reports the newest
offset it received in its consumer node (``last_offset``), so a client that
stopped reading shows how far behind it is even without a shared live tail.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from actors.delivery import Delivery
from actors.ports.broker import StreamEvent
from actors.start import AfterOrdinal
from web.metrics import ServiceMetrics
from web.operations import LagSampler

from .actor_fakes import FakeWebSocket, running, settle

pytestmark = pytest.mark.autojump


def event(offset: int) -> StreamEvent:
    return StreamEvent(offset=offset, body=b'{"n": 1}', timestamp_ms=None)


def test_newest_offset_is_the_highest_received_filtered_or_not() -> None:
    core = Delivery(AfterOrdinal(5))
    assert core.newest_offset is None
    core.receive(event(2), 0)  # below the start: filtered, still received
    assert core.newest_offset == 2
    core.receive(event(7), 0)
    core.receive(event(6), 0)  # a resubscription may repeat lower offsets
    assert core.newest_offset == 7


async def test_a_client_that_stopped_reading_lags_in_the_metrics() -> None:
    async with running() as h:
        record = await h.stream()
        await h.publish("rk", *[f'{{"n": {n}}}' for n in range(3)])
        ws = await h.open(record, AfterOrdinal(0), FakeWebSocket())
        await ws.wait_frames(3)
        await settle()
        ws.reading = False  # the client stops reading: sends block, the consumer does not
        await h.publish("rk", *[f'{{"n": {n}}}' for n in range(3, 30)])
        await settle()
        [connection] = h.actor(record).connections
        [consumer] = connection.snapshot()["children"]  # type: ignore[misc]
        newest = consumer["counters"]["last_offset"]
        assert isinstance(newest, int) and newest >= 3  # received offset 3 (ordinal 4): not sent
        assert connection.last_ordinal == 3
        metrics = ServiceMetrics(CollectorRegistry())
        await LagSampler(h.supervisor, metrics).sample()
        assert metrics.connection_lag_max._value.get() == newest + 1 - 3
        ws.resume()
