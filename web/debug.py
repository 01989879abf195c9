"""The actor tree for people and programs: ``/debug/actors`` and ``/debug/``.

The page and its static files hold no data (only markup and code), so they
are served without the bearer token; the data endpoint requires it. The
page's script takes the token from the URL fragment (``#token=...``, which
the browser never sends to the server, so it stays out of access logs), from
``?token=...``, or from a field on the page, and sends it as ``Authorization:
Bearer``.

``/debug/actors`` costs what its answer costs (the logic is in
:mod:`web.debug_query`): a small deployment gets the whole tree, a large one
a summary, and pages or single streams on request. Only the streams an
answer needs are snapshotted. The summary is built from the busy streams
only (the supervisor's ``busy_streams``: every stream with connections) and
the count of streams, at most once per :data:`INDEX_TTL`; a page in id order
without filters is a slice of the streams after its cursor. Only filters and
the measure sorts (rate, lag, connections) need the per-stream rows of every
stream (an index), rebuilt at most once per :data:`INDEX_TTL` however many
clients poll, by one task at a time, in batches of :data:`BATCH` streams
with a checkpoint between batches, so no answer holds the event loop for
long whatever the number of streams.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import Protocol

import trio
import trio.lowlevel
from quart import Response, request
from quart_trio import QuartTrio

from actors.snapshot import short_uuid
from web.debug_query import (
    FULL_TREE_LIMIT,
    Json,
    Page,
    Query,
    QueryError,
    RateMeter,
    StreamIndex,
    StreamRow,
    decode_cursor,
    measure,
    page,
    parse_query,
    stream_row,
    summarise,
)
from web.ports import StreamDirectory, StreamView
from web.responses import error_response, json_response

#: Endpoints reachable without the bearer token (besides ``/health/*``).
PUBLIC_DEBUG_ENDPOINTS = frozenset({"debug_page", "static"})
#: Seconds an index of every stream serves summaries and pages before a rebuild.
INDEX_TTL = 1.0
#: Streams visited between two checkpoints (about a millisecond of work).
BATCH = 500


class ActorTree(Protocol):
    """The supervisor, as the debug view reads it (:class:`web.ports.StreamDirectory`)."""

    @property
    def streams(self) -> Sequence[StreamView]: ...

    @property
    def stream_count(self) -> int: ...

    @property
    def busy_streams(self) -> Sequence[StreamView]: ...

    def snapshot(self) -> Json: ...


class DebugView:
    """Answers ``/debug/actors`` queries from the live actor tree; see the module doc."""

    def __init__(
        self,
        tree: ActorTree,
        *,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._tree = tree
        self._clock = clock
        self._wall_clock = wall_clock
        self._started_at = wall_clock()
        self._meter = RateMeter()
        self._index: StreamIndex | None = None
        self._building = trio.Lock()
        #: The supervisor's list of stream actors (a fresh, sorted copy per call, so
        #: costly at 50,000) and when it was taken; the index is built from it.
        self._listed: Sequence[StreamView] = ()
        self._listed_at = -INDEX_TTL
        self._indexed: Sequence[StreamView] | None = None
        #: The idle rows of the last index by stream id, reused while unchanged:
        #: 50,000 fresh objects a second would survive into the oldest garbage
        #: collector generation and bring on full collections (~100 ms pauses).
        self._idle: dict[int, StreamRow] = {}
        #: The last summary and when it was taken (from the busy streams only).
        self._summary: tuple[Json, float] | None = None

    async def answer(self, query: Query) -> tuple[int, Json]:
        """(HTTP status, body) of ``query``."""
        filtered = query.routing_key or query.state or query.search
        streams = self._actors(fresh=bool(filtered))
        if query.mode == "stream":
            assert query.stream is not None
            found = self.stream(streams, query.stream) or self.stream(
                self._actors(fresh=True), query.stream
            )
            if found is None:
                return 404, {"detail": f"No event stream with id {query.stream}"}
            return 200, found
        count = self._tree.stream_count
        if query.mode == "full" or (query.mode == "auto" and count <= FULL_TREE_LIMIT):
            return 200, self.full_tree()
        if query.mode == "page" and not filtered and query.sort in ("id", "age"):
            return 200, self._id_page(streams, query) | self._header(self._clock())
        if query.mode == "page":
            index = await self.index(streams)
            body = await self._page(index, query, streams)
            return 200, body | self._header(index.taken_at)
        summary, taken_at = await self.summary()
        return 200, summary | self._header(taken_at)

    def _header(self, taken_at: float) -> Json:
        now = self._wall_clock()
        return {
            "started_at": self._started_at,
            "uptime": round(now - self._started_at, 3),
            "sampled_at": round(now - (self._clock() - taken_at), 3),
        }

    async def summary(self) -> tuple[Json, float]:
        """The summary and when it was taken, at most :data:`INDEX_TTL` old.

        Built from the busy streams only (those with a running task, so every
        stream with connections): every other stream is idle, so the count
        of streams is enough for them. O(busy streams), in batches of
        :data:`BATCH` with a checkpoint between them.
        """
        async with self._building:  # one build at a time; waiters reuse its result
            cached = self._summary
            if cached is not None and self._clock() - cached[1] < INDEX_TTL:
                return cached
            now = self._clock()
            rows: list[StreamRow] = []
            sampled: list[object] = []
            for at, actor in enumerate(self._tree.busy_streams):
                if at % BATCH == BATCH - 1:
                    await trio.lowlevel.checkpoint()
                    now = self._clock()
                rows.append(self._row(actor, now, sampled, {}))
            total = self._tree.stream_count
            states = Counter(row.state for row in rows)
            if total > len(rows):
                states["idle"] += total - len(rows)
            active = [row for row in rows if row.connections]
            self._meter.keep_only(sampled)  # every stream with connections was sampled
            self._summary = summarise(active, states, total), self._clock()
            return self._summary

    def _id_page(self, streams: Sequence[StreamView], query: Query) -> Json:
        """A page in id order without filters: the ``limit`` streams after the cursor, no index."""
        start = 0
        if query.cursor is not None:
            _, after = decode_cursor(query.cursor, query.sort)
            start = bisect.bisect_right(streams, after, key=lambda actor: actor.record.id)
        chosen = streams[start : start + query.limit]
        now = self._clock()
        rows = [self._row(actor, now, [], self._idle) for actor in chosen]
        more = start + query.limit < len(streams)
        cursor = str(rows[-1].id) if more and rows else None
        return Page(rows, cursor, len(streams)).as_json()

    def full_tree(self) -> Json:
        """The whole tree, each stream and connection with its rate and lag."""
        tree = self._tree.snapshot()
        now = self._clock()
        children = tree.get("children")
        sampled: list[object] = []
        for child in children if isinstance(children, list) else []:
            if isinstance(child, dict) and child.get("kind") == "stream":
                sampled.extend(measure(child, self._meter, now).meter_keys)
        self._meter.keep_only(sampled)  # every stream is here: forget the ones gone
        return tree

    def stream(self, streams: Sequence[StreamView], stream_id: int) -> Json | None:
        """One stream's node and its connections, with rates and lag; ``None`` if unknown."""
        actor = _find(streams, stream_id)
        if actor is None:
            return None
        snapshot = actor.snapshot()
        measure(snapshot, self._meter, self._clock())
        counters = snapshot.get("counters")
        if isinstance(counters, dict):
            counters["created_at"] = actor.record.created_at
        return snapshot

    async def index(self, streams: Sequence[StreamView]) -> StreamIndex:
        """The index of ``streams``, rebuilt if older than :data:`INDEX_TTL`."""
        async with self._building:  # one rebuild at a time; waiters reuse its result
            index = self._index
            if index is None or self._stale(index, streams):
                index = self._index = await self._build_index(streams)
                self._indexed = streams
        return index

    def _actors(self, *, fresh: bool) -> Sequence[StreamView]:
        """The stream actors by id: taken at most once per :data:`INDEX_TTL` unless ``fresh``.

        A search scans every row anyway and must find a stream created a
        moment ago, so it takes a fresh list; polls of the summary and of
        unfiltered pages reuse one up to :data:`INDEX_TTL` old.
        """
        now = self._clock()
        if fresh or now - self._listed_at >= INDEX_TTL:
            self._listed, self._listed_at = self._tree.streams, now
        return self._listed

    def _stale(self, index: StreamIndex, streams: Sequence[StreamView]) -> bool:
        """Older than :data:`INDEX_TTL`, or built from another list of the streams."""
        return self._clock() - index.taken_at >= INDEX_TTL or streams is not self._indexed

    async def _build_index(self, streams: Sequence[StreamView]) -> StreamIndex:
        now = self._clock()
        rows: list[StreamRow] = []
        active: list[StreamRow] = []
        sampled: list[object] = []
        previous, idle = self._idle, {}
        for at, actor in enumerate(streams):
            if at % BATCH == BATCH - 1:
                await trio.lowlevel.checkpoint()
                now = self._clock()
            row = self._row(actor, now, sampled, previous)
            rows.append(row)
            if row.connections:
                active.append(row)
            elif row.state == "idle":
                idle[row.id] = row
        self._meter.keep_only(sampled)
        self._idle = idle
        return StreamIndex(rows, self._clock(), active)

    def _row(
        self,
        actor: StreamView,
        now: float,
        sampled: list[object],
        idle: Mapping[int, StreamRow],
    ) -> StreamRow:
        """The stream's row now; only a stream with connections is snapshotted."""
        record = actor.record
        state = actor.state
        if state == "idle":  # no connections (cheaper to ask than to copy the list)
            row = idle.get(record.id)
            if row is not None and row.restarts == actor.restarts:
                return row
            name = short_uuid(record.uuid)
            return StreamRow(
                record.id, name, record.routing_key, state, record.created_at, 0, actor.restarts
            )
        snapshot = actor.snapshot()
        measures = measure(snapshot, self._meter, now)
        sampled.extend(measures.meter_keys)
        return stream_row(snapshot, record.created_at, measures)

    async def _page(self, index: StreamIndex, query: Query, streams: Sequence[StreamView]) -> Json:
        """A page in the index's order, its rows read afresh from their actors."""
        matches = order = index.order(query.sort)
        if query.routing_key is not None or query.state is not None or query.search is not None:
            matches = []
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]
                matches.extend(row for row in chunk if row.matches(query))
                await trio.lowlevel.checkpoint()
        found = page(matches, query)
        now = self._clock()
        fresh = []
        for row in found.rows:
            actor = _find(streams, row.id)
            fresh.append(row if actor is None else self._row(actor, now, [], self._idle))
        return replace(found, rows=fresh).as_json()


def install_debug_routes(app: QuartTrio, streams: StreamDirectory, *, replica: str) -> None:
    """``GET /debug/actors`` (JSON, the root names the replica) and ``GET /debug/`` (HTML)."""
    page_html = resources.files("web").joinpath("static", "debug.html").read_text(encoding="utf-8")
    view = DebugView(streams)

    @app.get("/debug/actors")
    async def debug_actors() -> Response:
        try:
            query = parse_query(_single_values(request.args))
        except QueryError as error:
            return error_response(400, str(error))
        status, body = await view.answer(query)
        if isinstance(body, dict):
            body = {**body, "replica": replica}
        return json_response(body, status)

    @app.get("/debug/")
    async def debug_page() -> Response:
        return Response(
            page_html,
            status=200,
            content_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )


def _find(streams: Sequence[StreamView], stream_id: int) -> StreamView | None:
    """The actor of ``stream_id`` in ``streams`` (ordered by id), by bisection."""
    at = bisect.bisect_left(streams, stream_id, key=lambda actor: actor.record.id)
    return streams[at] if at < len(streams) and streams[at].record.id == stream_id else None


def _single_values(args: Mapping[str, str]) -> dict[str, str]:
    """The query parameters, the first value of each (a repeated one is not an error)."""
    return {key: args[key] for key in args}
