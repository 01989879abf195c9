"""``/debug/actors`` answers: query parsing, rates, lag, summaries, pages, and their cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import trio
import trio.lowlevel

from actors.ports.registry import StreamRecord
from actors.snapshot import node
from tests.support.aio import turns_of_another_task
from web.debug import BATCH, DebugView
from web.debug_query import (
    FULL_TREE_LIMIT,
    MIN_RATE_INTERVAL,
    Json,
    Query,
    QueryError,
    RateMeter,
    StreamIndex,
    StreamRow,
    connection_lags,
    measure,
    page,
    parse_query,
)

# -- parsing ---------------------------------------------------------------


def test_no_parameters_is_the_automatic_answer() -> None:
    assert parse_query({}) == Query(mode="auto")


def test_page_parameters() -> None:
    query = parse_query({"routing_key": "a.b", "state": "idle", "sort": "rate", "limit": "5"})
    assert query == Query(mode="page", routing_key="a.b", state="idle", sort="rate", limit=5)
    assert parse_query({"q": "abc"}).search == "abc"
    assert parse_query({"limit": "7"}).mode == "page"


def test_stream_full_and_summary() -> None:
    assert parse_query({"stream": "42"}) == Query(mode="stream", stream=42)
    assert parse_query({"full": "1"}).mode == "full"
    assert parse_query({"summary": "1"}).mode == "summary"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"bogus": "1"}, "unknown parameter 'bogus'"),
        ({"stream": "-1"}, "positive integer"),
        ({"stream": "x"}, "positive integer"),
        ({"stream": "1", "limit": "2"}, "cannot be combined"),
        ({"full": "yes"}, "takes 1"),
        ({"summary": "1", "q": "x"}, "cannot be combined"),
        ({"sort": "name"}, "must be one of"),
        ({"limit": "0"}, "positive integer"),
        ({"limit": "1001"}, "at most 1000"),
        ({"limit": "1", "cursor": "x"}, "not a cursor"),
        ({"sort": "rate", "cursor": "12"}, "not a cursor"),
        ({"q": "x" * 300}, "longer than"),
    ],
)
def test_bad_queries_say_why(args: dict[str, str], reason: str) -> None:
    with pytest.raises(QueryError, match=reason):
        parse_query(args)


# -- rates -----------------------------------------------------------------


def test_rate_is_the_counter_delta_over_time_and_reused_within_the_interval() -> None:
    meter = RateMeter()
    assert meter.rates("a", 100.0, 0, 0) == (0.0, 0.0)  # first sample: nothing to compare
    assert meter.rates("a", 102.0, 20, 10) == (10.0, 5.0)
    # Sooner than MIN_RATE_INTERVAL: the same rate, not a division by a tiny interval.
    assert meter.rates("a", 102.0 + MIN_RATE_INTERVAL / 10, 25, 10) == (10.0, 5.0)
    assert meter.rates("a", 104.0, 20, 14) == (0.0, 2.0)


def test_a_counter_that_went_down_restarted_from_zero() -> None:
    meter = RateMeter()
    meter.rates("a", 0.0, 100, 100)
    assert meter.rates("a", 1.0, 7, 3) == (7.0, 3.0)


def test_keep_only_forgets_what_went_away() -> None:
    meter = RateMeter()
    for key in ("a", "b", "c"):
        meter.rates(key, 0.0, 1, 1)
    meter.keep_only(["b"])
    assert len(meter) == 1
    assert meter.rates("a", 5.0, 9, 9) == (0.0, 0.0)  # a new first sample


# -- one stream ------------------------------------------------------------


def connection(name: str, received: int, sent: int, last_ordinal: int | None) -> Json:
    counters = {"messages_received": received, "messages_sent": sent, "last_ordinal": last_ordinal}
    return node(
        "connection", name, "open", 0.0, counters, [node("consumer", f"{name}/c", "x", 0.0, {})]
    )


def stream(stream_id: int, *children: Json, hub_offset: int | None = None) -> Json:
    nodes = list(children)
    if hub_offset is not None:
        nodes.append(node("consumer", "live-tail", "attached", 0.0, {"last_offset": hub_offset}))
    counters = {"id": stream_id, "routing_key": f"rk.{stream_id}", "connections": len(children)}
    return node("stream", f"u{stream_id}", "active", 0.0, counters, nodes)


def test_lag_is_behind_the_newest_ordinal_the_stream_knows() -> None:
    snapshot = stream(
        1,
        connection("fast", 10, 10, 100),
        connection("slow", 4, 4, 60),
        connection("new", 0, 0, None),
        hub_offset=119,  # the shared consumer has received up to ordinal 120
    )
    measures = measure(snapshot, RateMeter(), 0.0)
    lags = {
        c["name"]: c["counters"]["lag"] for c in snapshot["children"] if c["kind"] == "connection"
    }  # type: ignore[index, union-attr, attr-defined]
    assert lags == {"fast": 20, "slow": 60, "new": None}
    assert measures.lag == 60 and measures.newest_ordinal == 120
    assert snapshot["counters"]["lag"] == 60  # type: ignore[index]


def test_without_a_shared_consumer_the_furthest_connection_is_the_newest() -> None:
    snapshot = stream(1, connection("a", 1, 1, 30), connection("b", 1, 1, 25))
    assert measure(snapshot, RateMeter(), 0.0).lag == 5


def test_a_connections_own_consumer_reporting_its_last_offset_counts() -> None:
    replaying = connection("replay", 5, 5, 10)
    replaying["children"][0]["counters"]["last_offset"] = 49  # type: ignore[index]
    assert measure(stream(1, replaying), RateMeter(), 0.0).lag == 40


def test_connection_lags_are_the_lags_measure_gives_without_touching_the_snapshot() -> None:
    snapshot = stream(
        1,
        connection("fast", 10, 10, 100),
        connection("slow", 4, 4, 60),
        connection("new", 0, 0, None),
        hub_offset=119,
    )
    assert connection_lags(snapshot) == [20, 60]
    assert "lag" not in snapshot["counters"]  # type: ignore[operator]
    assert connection_lags(stream(2)) == []


def test_rates_of_a_stream_and_its_connections() -> None:
    meter = RateMeter()
    measure(stream(1, connection("a", 0, 0, None), connection("b", 0, 0, None)), meter, 0.0)
    later = stream(1, connection("a", 30, 20, 20), connection("b", 10, 10, 10))
    measures = measure(later, meter, 2.0)
    assert (measures.rate_in, measures.rate_out) == (20.0, 15.0)
    rates = [c["counters"]["rate_out"] for c in later["children"]]  # type: ignore[index, union-attr, attr-defined]
    assert rates == [10.0, 5.0]


# -- many streams ----------------------------------------------------------


def idle_rows(count: int, state: str = "idle") -> list[StreamRow]:
    return [StreamRow(i, f"u{i}", f"rk.{i % 10}", state, float(i), 0) for i in range(1, count + 1)]


def index_with_busy() -> StreamIndex:
    rows = idle_rows(1000)
    for stream_id, rate, conns, lag in [(500, 9.0, 1, 3), (7, 50.0, 4, None), (900, 9.0, 2, 40)]:
        row = rows[stream_id - 1]
        row.state, row.rate_out, row.connections, row.lag = "active", rate, conns, lag
    return StreamIndex(rows, 0.0, [row for row in rows if row.connections])


def test_summary_counts_states_totals_and_tops() -> None:
    index = index_with_busy()
    index.top_n = 2
    summary = index.summary()
    assert index.summary() is summary  # computed once per index
    assert summary["streams"] == 1000
    assert summary["states"] == {"active": 3, "idle": 997}
    assert summary["connections"] == 7 and summary["rate_out"] == 68.0
    top = summary["top"]
    assert isinstance(top, dict)
    assert [r["id"] for r in top["rate"]] == [7, 500]  # ties broken by id
    assert [r["id"] for r in top["connections"]] == [7, 900]
    assert [r["id"] for r in top["lag"]] == [900, 500]
    assert summary["lag_max"] == {"stream": 900, "lag": 40}  # what the gauge is about


def test_the_worst_lag_is_none_until_a_connection_has_sent_something() -> None:
    rows = idle_rows(3)
    rows[1].state, rows[1].connections = "active", 1
    assert StreamIndex(rows, 0.0, [rows[1]]).summary()["lag_max"] is None
    rows[1].lag = 0
    assert StreamIndex(rows, 0.0, [rows[1]]).summary()["lag_max"] == {"stream": 2, "lag": 0}


def test_pages_by_id_follow_the_cursor_to_the_end() -> None:
    index = StreamIndex(idle_rows(250), 0.0)
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        found = page(index.order("id"), Query(mode="page", limit=100, cursor=cursor))
        seen.extend(row.id for row in found.rows)
        assert found.total == 250
        cursor = found.next_cursor
        if cursor is None:
            break
    assert seen == list(range(1, 251))


def test_an_id_cursor_survives_streams_coming_and_going() -> None:
    rows = idle_rows(10)
    first = page(rows, Query(mode="page", limit=3))
    assert [r.id for r in first.rows] == [1, 2, 3] and first.next_cursor == "3"
    changed = [r for r in rows if r.id not in (3, 4)]  # 3 and 4 were deleted meanwhile
    second = page(changed, Query(mode="page", limit=3, cursor=first.next_cursor))
    assert [r.id for r in second.rows] == [5, 6, 7]


def test_measure_sorts_put_busy_streams_first_then_the_rest_by_id() -> None:
    index = index_with_busy()
    assert [r.id for r in index.order("rate")[:4]] == [7, 500, 900, 1]
    assert [r.id for r in index.order("lag")[:3]] == [900, 500, 1]
    assert [r.id for r in index.order("connections")[:4]] == [7, 900, 500, 1]
    assert [r.id for r in index.order("age")[:2]] == [1, 2]
    assert len(index.order("rate")) == 1000


def test_a_measure_cursor_continues_after_the_last_row() -> None:
    order = index_with_busy().order("rate")
    first = page(order, Query(mode="page", sort="rate", limit=2))
    assert [r.id for r in first.rows] == [7, 500]
    second = page(order, Query(mode="page", sort="rate", limit=2, cursor=first.next_cursor))
    assert [r.id for r in second.rows] == [900, 1]


def test_filters_match_routing_key_state_and_search() -> None:
    rows = idle_rows(30)
    assert [r.id for r in rows if r.matches(Query(routing_key="rk.3"))] == [3, 13, 23]
    assert [r.id for r in rows if r.matches(Query(search="17"))] == [17]  # id, exactly
    assert [r.id for r in rows if r.matches(Query(search="u2"))] == [2, *range(20, 30)]
    assert not [r for r in rows if r.matches(Query(state="active"))]


# -- what an answer costs ----------------------------------------------------


@dataclass
class FakeStream:
    """A stream actor that counts how often it was snapshotted."""

    record: StreamRecord
    connections: list[object] = field(default_factory=list)
    state: str = "idle"
    restarts: int = 0
    snapshots: int = 0

    def snapshot(self) -> Json:
        self.snapshots += 1
        children = [connection(f"c{self.record.id}", 5, 5, 5) for _ in self.connections]
        counters = {"id": self.record.id, "routing_key": self.record.routing_key}
        counters["connections"] = len(self.connections)
        return node("stream", self.record.uuid[:8], self.state, 0.0, counters, children)


@dataclass
class FakeTree:
    """The supervisor: counts full snapshots and the lists of every stream it gave out."""

    actors: Sequence[FakeStream]
    full_snapshots: int = 0
    listings: int = 0

    @property
    def streams(self) -> Sequence[FakeStream]:
        self.listings += 1
        return self.actors

    @property
    def stream_count(self) -> int:
        return len(self.actors)

    @property
    def busy_streams(self) -> list[FakeStream]:
        return [actor for actor in self.actors if actor.state != "idle"]

    def snapshot(self) -> Json:
        self.full_snapshots += 1
        return node(
            "supervisor", "supervisor", "running", 0.0, {}, [s.snapshot() for s in self.actors]
        )


def fake_tree(count: int, active: Sequence[int] = ()) -> FakeTree:
    streams = [
        FakeStream(StreamRecord(i, f"{i:08d}-uuid", f"rk.{i}", False, float(i)))
        for i in range(1, count + 1)
    ]
    for stream_id in active:
        streams[stream_id - 1].connections.append(object())
        streams[stream_id - 1].state = "active"
    return FakeTree(streams)


async def test_small_trees_answer_the_whole_tree_as_before() -> None:
    tree = fake_tree(3, active=[2])
    status, body = await DebugView(tree).answer(Query())
    assert status == 200 and body["kind"] == "supervisor" and len(body["children"]) == 3  # type: ignore[arg-type]
    assert tree.full_snapshots == 1


async def test_large_trees_answer_a_summary_snapshotting_only_busy_streams() -> None:
    tree = fake_tree(FULL_TREE_LIMIT * 10, active=[5, 1500])
    view = DebugView(tree)
    status, body = await view.answer(Query())
    assert status == 200 and body["kind"] == "summary"
    assert body["streams"] == FULL_TREE_LIMIT * 10 and body["connections"] == 2
    assert body["states"] == {"active": 2, "idle": FULL_TREE_LIMIT * 10 - 2}
    assert tree.full_snapshots == 0
    assert [s.record.id for s in tree.actors if s.snapshots] == [5, 1500]
    assert view._index is None  # no row of an idle stream was made


async def test_an_id_page_is_a_slice_of_the_streams_without_an_index() -> None:
    tree = fake_tree(FULL_TREE_LIMIT * 10, active=[150])
    view = DebugView(tree)
    status, first = await view.answer(parse_query({"limit": "100"}))
    assert status == 200 and first["kind"] == "page" and first["total"] == FULL_TREE_LIMIT * 10
    assert [row["id"] for row in first["streams"]] == list(range(1, 101))  # type: ignore[attr-defined, index]
    assert first["next_cursor"] == "100"
    _, second = await view.answer(parse_query({"limit": "100", "cursor": "100"}))
    rows = second["streams"]
    assert [row["id"] for row in rows] == list(range(101, 201))  # type: ignore[attr-defined, index]
    assert rows[49]["connections"] == 1  # type: ignore[index]  # stream 150, snapshotted
    _, last = await view.answer(parse_query({"cursor": str(FULL_TREE_LIMIT * 10 - 1)}))
    assert len(last["streams"]) == 1 and last["next_cursor"] is None  # type: ignore[arg-type]
    assert view._index is None
    assert [s.record.id for s in tree.actors if s.snapshots] == [150]


async def test_one_stream_snapshots_that_stream_only() -> None:
    tree = fake_tree(5000, active=[4321])
    view = DebugView(tree)
    status, body = await view.answer(parse_query({"stream": "4321"}))
    assert status == 200 and body["counters"]["id"] == 4321  # type: ignore[index]
    assert body["children"][0]["counters"]["lag"] == 0  # type: ignore[index]
    assert sum(s.snapshots for s in tree.actors) == 1
    assert (await view.answer(parse_query({"stream": "5001"})))[0] == 404


async def test_a_page_of_a_large_tree_is_the_page() -> None:
    tree = fake_tree(5000)
    status, body = await DebugView(tree).answer(parse_query({"q": "rk.4999"}))
    assert status == 200 and body["kind"] == "page" and body["total"] == 1
    assert [row["id"] for row in body["streams"]] == [4999]  # type: ignore[attr-defined, index]
    assert sum(s.snapshots for s in tree.actors) == 0


async def test_the_index_is_rebuilt_at_most_once_per_ttl() -> None:
    now = [0.0]
    tree = fake_tree(1000, active=[1])
    view = DebugView(tree, clock=lambda: now[0])
    for mode in ("summary", "page"):
        query = parse_query({"summary": "1"} if mode == "summary" else {"sort": "lag"})
        for _ in range(5):
            await view.answer(query)
        assert tree.actors[0].snapshots == 1 + 5 * (mode == "page")  # a page reads its rows
        now[0] += 1.5
        await view.answer(query)
        assert tree.actors[0].snapshots == 2 + 6 * (mode == "page")
        tree.actors[0].snapshots = 0


@pytest.mark.parametrize("mode", ["summary of busy streams", "index"])
async def test_an_index_build_lets_other_tasks_run_every_batch(mode: str) -> None:
    busy = range(1, BATCH * 20 + 1) if mode != "index" else ()
    tree = fake_tree(BATCH * 20, active=busy)
    view = DebugView(tree)
    query = Query(mode="summary") if mode != "index" else parse_query({"sort": "rate"})
    during, _ = await turns_of_another_task(lambda: view.answer(query))
    assert during >= 19, during  # it ran between (nearly) every two batches


def test_idle_rows_are_reused_between_indexes() -> None:
    tree = fake_tree(BATCH * 2, active=[3])
    view = DebugView(tree, clock=lambda: 0.0)
    first = trio.run(view.index, tree.actors)
    second = trio.run(view.index, list(tree.actors))  # another list: a rebuild
    assert first is not second
    assert first.rows[0] is second.rows[0]  # idle: the same object, not a new one
    assert first.rows[2] is not second.rows[2]  # active: measured afresh


async def test_the_whole_tree_forgets_the_rates_of_connections_gone() -> None:
    tree = fake_tree(3, active=[1, 2])
    view = DebugView(tree)
    await view.answer(Query(mode="full"))
    sampled = len(view._meter)
    tree.actors[1].connections.clear()
    await view.answer(Query(mode="full"))
    assert len(view._meter) < sampled
