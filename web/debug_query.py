"""What ``GET /debug/actors`` answers, computed without I/O (sans-IO).

At 50,000 streams the whole actor tree is a 9.6 MB body and a third of a
second of event-loop time, so the endpoint answers what was asked instead:
a *summary* (counts by state, totals, the top streams), a *page* of streams
(filtered, sorted, with a stable cursor) or *one stream* with its
connections. This module holds the logic of those answers; ``web/debug.py``
feeds it from the live actors in small, checkpointed batches.

- :func:`parse_query` turns the query string into a :class:`Query` (or a
  :class:`QueryError` with a one-line reason for a 400).
- :class:`RateMeter` turns monotonic counters sampled over time into events
  per second, keeping one previous sample per stream or connection. The
  actors only count; rates are the observer's business.
- :func:`measure` reads a stream's snapshot (a node of the actor tree) and
  adds each connection's rate and lag (events behind the newest ordinal the
  stream knows of: its shared consumer's last offset or its furthest
  connection); :func:`stream_row` condenses it into a :class:`StreamRow`.
- :class:`StreamIndex` holds one row per stream and answers summaries and
  pages from them; :func:`page` pages it with keyset cursors.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

#: Above this many streams a bare ``/debug/actors`` answers the summary, not the tree.
FULL_TREE_LIMIT = 200
#: Streams per page unless ``?limit=`` says otherwise, and the most it may say.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Streams in each "top" list of the summary.
TOP_N = 10
#: A rate is computed over at least this many seconds (fast pollers reuse it).
MIN_RATE_INTERVAL = 1.0
#: The longest search text or routing-key filter accepted.
MAX_TEXT = 256

Sort = Literal["id", "rate", "lag", "connections", "age"]
SORTS: tuple[Sort, ...] = ("id", "rate", "lag", "connections", "age")
Mode = Literal["auto", "full", "summary", "page", "stream"]
Json = dict[str, object]

_PAGE_PARAMS = frozenset({"routing_key", "state", "q", "sort", "limit", "cursor"})
_KNOWN_PARAMS = _PAGE_PARAMS | {"stream", "full", "summary"}


class QueryError(ValueError):
    """A ``/debug/actors`` query that cannot be answered; the message says why."""


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed ``/debug/actors`` query string."""

    mode: Mode = "auto"
    stream: int | None = None
    routing_key: str | None = None
    state: str | None = None
    search: str | None = None
    sort: Sort = "id"
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def parse_query(args: Mapping[str, str]) -> Query:
    """The query of ``args`` (the request's query parameters); :class:`QueryError` if bad."""
    unknown = sorted(set(args) - _KNOWN_PARAMS)
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0][:40]!r}; known: {sorted(_KNOWN_PARAMS)}")
    if "stream" in args:
        if len(args) > 1:
            raise QueryError("?stream= cannot be combined with other parameters")
        return Query(mode="stream", stream=_positive_int(args["stream"], "stream"))
    for flag in ("full", "summary"):
        if flag in args:
            if args[flag] not in ("1", "true"):
                raise QueryError(f"?{flag}= takes 1")
            if len(args) > 1:
                raise QueryError(f"?{flag}=1 cannot be combined with other parameters")
            return Query(mode="full" if flag == "full" else "summary")
    if not set(args) & _PAGE_PARAMS:
        return Query()
    sort = args.get("sort", "id")
    if sort not in SORTS:
        raise QueryError(f"?sort= must be one of {', '.join(SORTS)}")
    limit = _positive_int(args.get("limit", str(DEFAULT_LIMIT)), "limit")
    if limit > MAX_LIMIT:
        raise QueryError(f"?limit= is at most {MAX_LIMIT}")
    cursor = args.get("cursor") or None
    if cursor is not None:
        decode_cursor(cursor, sort)  # reject a malformed cursor now, with a clear reason
    return Query(
        mode="page",
        routing_key=_text(args, "routing_key"),
        state=_text(args, "state"),
        search=_text(args, "q"),
        sort=sort,
        limit=limit,
        cursor=cursor,
    )


def _positive_int(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < 1:
        raise QueryError(f"?{name}= must be a positive integer")
    return int(text)


def _text(args: Mapping[str, str], name: str) -> str | None:
    value = args.get(name)
    if value is not None and len(value) > MAX_TEXT:
        raise QueryError(f"?{name}= is longer than {MAX_TEXT} characters")
    return value or None


# -- rates -----------------------------------------------------------------


@dataclass(slots=True)
class _Sample:
    at: float
    received: int
    sent: int
    rate_in: float = 0.0
    rate_out: float = 0.0


class RateMeter:
    """Events per second of monotonic counters, one previous sample per key.

    A rate spans at least :data:`MIN_RATE_INTERVAL`: a sample taken sooner
    answers the rate already computed, so a page polled in a tight loop
    neither divides by tiny intervals nor costs more. A counter that went
    down (a connection closed, so a stream's sum dropped) counts as restarted
    from zero, as Prometheus treats counter resets. The first sample of a key
    has rate 0 (nothing to compare with yet).
    """

    def __init__(self) -> None:
        self._samples: dict[object, _Sample] = {}

    def __len__(self) -> int:
        return len(self._samples)

    def rates(self, key: object, now: float, received: int, sent: int) -> tuple[float, float]:
        """(in, out) events per second of ``key`` whose counters read ``received``/``sent``."""
        last = self._samples.get(key)
        if last is None:
            self._samples[key] = _Sample(now, received, sent)
            return 0.0, 0.0
        elapsed = now - last.at
        if elapsed < MIN_RATE_INTERVAL:
            return last.rate_in, last.rate_out
        rate_in = _delta(last.received, received) / elapsed
        rate_out = _delta(last.sent, sent) / elapsed
        self._samples[key] = _Sample(now, received, sent, rate_in, rate_out)
        return rate_in, rate_out

    def keep_only(self, keys: Iterable[object]) -> None:
        """Forget every key not in ``keys`` (streams and connections that went away)."""
        alive = set(keys)
        for key in [key for key in self._samples if key not in alive]:
            del self._samples[key]


def _delta(before: int, after: int) -> int:
    return after - before if after >= before else after


# -- one stream ------------------------------------------------------------


def _counters(node: Mapping[str, object]) -> Mapping[str, object]:
    counters = node.get("counters")
    return counters if isinstance(counters, Mapping) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _children(node: Mapping[str, object]) -> list[Json]:
    children = node.get("children")
    if not isinstance(children, list):
        return []
    return [child for child in children if isinstance(child, dict)]


@dataclass(slots=True)
class Measures:
    """What :func:`measure` found in a stream's snapshot."""

    received: int = 0
    sent: int = 0
    rate_in: float = 0.0
    rate_out: float = 0.0
    #: The largest lag of its connections (``None``: none has sent anything yet).
    lag: int | None = None
    #: The newest ordinal the stream knows of (``None``: no event seen yet).
    newest_ordinal: int | None = None
    #: The :class:`RateMeter` keys sampled (the stream's and its connections').
    meter_keys: list[object] = field(default_factory=list)


def measure(snapshot: Json, meter: RateMeter, now: float) -> Measures:
    """Add ``rate_in``, ``rate_out`` and ``lag`` to a stream snapshot and its connections.

    Mutates ``snapshot`` (a fresh dict from the actor) in place, in the
    ``counters`` of the stream node and of each connection node, and returns
    the stream's totals (the stream's lag is its largest connection lag).
    Lag is in events: the newest ordinal the stream knows of (the last
    offset + 1 of any of its consumers that reports ``last_offset``, the
    shared live tail's or a connection's own, or the furthest of its
    connections) minus the connection's last ordinal sent.
    It is a lower bound: events the broker holds that no consumer of this
    stream has received yet are not known here.
    """
    connections, newest = _connections_and_newest(snapshot)
    found = Measures(newest_ordinal=newest)
    for connection in connections:
        values = connection.get("counters")
        if not isinstance(values, dict):
            continue
        received = _int(values.get("messages_received")) or 0
        sent = _int(values.get("messages_sent")) or 0
        key = ("connection", connection.get("name"))
        rate_in, rate_out = meter.rates(key, now, received, sent)
        lag = _lag(values, newest)
        values.update(rate_in=round(rate_in, 2), rate_out=round(rate_out, 2), lag=lag)
        found.meter_keys.append(key)
        found.received += received
        found.sent += sent
        if lag is not None:
            found.lag = lag if found.lag is None else max(found.lag, lag)
    stream_counters = snapshot.get("counters")
    if isinstance(stream_counters, dict):
        key = ("stream", stream_counters.get("id"))
        found.rate_in, found.rate_out = meter.rates(key, now, found.received, found.sent)
        stream_counters.update(
            rate_in=round(found.rate_in, 2), rate_out=round(found.rate_out, 2), lag=found.lag
        )
        found.meter_keys.append(key)
    return found


def connection_lags(snapshot: Json) -> list[int]:
    """The lag of each connection of a stream snapshot that has sent something.

    The same lag as :func:`measure` gives (without rates, and without
    changing the snapshot): what ``ess_connection_lag_events`` samples.
    """
    connections, newest = _connections_and_newest(snapshot)
    lags = (_lag(_counters(connection), newest) for connection in connections)
    return [lag for lag in lags if lag is not None]


def _connections_and_newest(snapshot: Json) -> tuple[list[Json], int | None]:
    """A stream snapshot's connection nodes, and the newest ordinal the stream knows of."""
    children = _children(snapshot)
    connections = [child for child in children if child.get("kind") == "connection"]
    newest: int | None = None
    # The stream's own consumers and its connections' (one level further down).
    for child in children + [c for conn in connections for c in _children(conn)]:
        counters = _counters(child)
        if child.get("kind") == "consumer":
            offset = _int(counters.get("last_offset"))
            if offset is not None:
                newest = offset + 1 if newest is None else max(newest, offset + 1)
        ordinal = _int(counters.get("last_ordinal"))
        if ordinal is not None:
            newest = ordinal if newest is None else max(newest, ordinal)
    return connections, newest


def _lag(counters: Mapping[str, object], newest: int | None) -> int | None:
    """A connection's lag: ``None`` until it has sent something (or nothing is known)."""
    ordinal = _int(counters.get("last_ordinal"))
    return None if ordinal is None or newest is None else newest - ordinal


@dataclass(slots=True)
class StreamRow:
    """One stream as the list of streams shows it."""

    id: int
    name: str
    routing_key: str
    state: str
    created_at: float
    connections: int
    restarts: int = 0
    rate_in: float = 0.0
    rate_out: float = 0.0
    lag: int | None = None

    def as_json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "routing_key": self.routing_key,
            "state": self.state,
            "created_at": self.created_at,
            "connections": self.connections,
            "restarts": self.restarts,
            "rate_in": round(self.rate_in, 2),
            "rate_out": round(self.rate_out, 2),
            "lag": self.lag,
        }

    def matches(self, query: Query) -> bool:
        """Whether the row passes the query's filters (routing key, state, search text)."""
        if query.routing_key is not None and self.routing_key != query.routing_key:
            return False
        if query.state is not None and self.state != query.state:
            return False
        text = query.search
        if text is None:
            return True
        return text == str(self.id) or self.name.startswith(text) or text in self.routing_key


def stream_row(snapshot: Json, created_at: float, measures: Measures) -> StreamRow:
    """The list row of a measured stream snapshot (see :func:`measure`)."""
    counters = _counters(snapshot)
    return StreamRow(
        id=_int(counters.get("id")) or 0,
        name=str(snapshot.get("name", "")),
        routing_key=str(counters.get("routing_key", "")),
        state=str(snapshot.get("state", "")),
        created_at=created_at,
        connections=_int(counters.get("connections")) or 0,
        restarts=_int(counters.get("restarts")) or 0,
        rate_in=measures.rate_in,
        rate_out=measures.rate_out,
        lag=measures.lag,
    )


# -- many streams ----------------------------------------------------------


def _sort_key(sort: Sort) -> Callable[[StreamRow], tuple[float, int]]:
    """The order of a sort: its measure descending (oldest first for age), then id."""
    if sort == "rate":
        return lambda row: (-(row.rate_in + row.rate_out), row.id)
    if sort == "lag":
        return lambda row: (-(row.lag or 0), row.id)
    if sort == "connections":
        return lambda row: (-row.connections, row.id)
    # "id" and "age": ids are assigned in creation order, so oldest first is by id.
    return lambda row: (0, row.id)


def _encode_cursor(sort: Sort, row: StreamRow) -> str:
    value, stream_id = _sort_key(sort)(row)
    return str(stream_id) if sort in ("id", "age") else f"{value!r}:{stream_id}"


def decode_cursor(cursor: str, sort: Sort) -> tuple[float, int]:
    """The (sort value, id) a cursor points after; :class:`QueryError` if malformed."""
    try:
        if sort in ("id", "age"):
            return 0, int(cursor)
        value, _, stream_id = cursor.rpartition(":")
        return float(value), int(stream_id)
    except ValueError:
        raise QueryError(f"?cursor= is not a cursor of sort {sort!r}") from None


@dataclass
class StreamIndex:
    """One row per stream, in id order, taken at one moment; answers summaries and pages.

    ``active`` are the rows of streams that had connections (the only ones
    with rates and lags); the others are idle and all alike, so an order by
    a measure is "the active rows sorted, then the idle ones by id", and the
    sorts cost what the active streams cost.
    """

    rows: list[StreamRow]
    taken_at: float
    active: list[StreamRow] = field(default_factory=list)
    #: Streams in each "top" list of the summary.
    top_n: int = TOP_N
    _orders: dict[Sort, list[StreamRow]] = field(default_factory=dict, repr=False)
    _summary: Json | None = field(default=None, repr=False)

    def order(self, sort: Sort) -> list[StreamRow]:
        """Every row in the order of ``sort`` (cached: the index does not change)."""
        found = self._orders.get(sort)
        if found is None:
            if sort in ("id", "age"):
                found = self.rows
            else:
                key = _sort_key(sort)
                busy = sorted((row for row in self.active if key(row)[0] != 0), key=key)
                if busy:
                    chosen = {row.id for row in busy}
                    found = busy + [row for row in self.rows if row.id not in chosen]
                else:
                    found = self.rows
            self._orders[sort] = found
        return found

    def summary(self) -> Json:
        """Counts by state, totals and the top streams (cached: the index does not change)."""
        if self._summary is None:
            self._summary = self._summarise()
        return self._summary

    def _summarise(self) -> Json:
        states = Counter(row.state for row in self.rows)
        return summarise(self.active, states, len(self.rows), self.top_n)


def summarise(
    active: Sequence[StreamRow], states: Mapping[str, int], total: int, top: int = TOP_N
) -> Json:
    """The summary of ``total`` streams: ``states`` counted, ``active`` those with connections.

    Only the active rows carry rates, connections and lags, so a summary
    costs what the busy streams cost once their states are counted.
    """
    return {
        "kind": "summary",
        "streams": total,
        "states": dict(sorted(states.items())),
        "connections": sum(row.connections for row in active),
        "rate_in": round(sum(row.rate_in for row in active), 2),
        "rate_out": round(sum(row.rate_out for row in active), 2),
        "lag_max": _worst_lag(active),
        "top": {
            "rate": _top(active, top, lambda row: row.rate_in + row.rate_out),
            "connections": _top(active, top, lambda row: row.connections),
            "lag": _top(active, top, lambda row: row.lag or 0),
        },
    }


def _worst_lag(rows: Sequence[StreamRow]) -> Json | None:
    """``{"stream": id, "lag": events}`` of the stream furthest behind (lowest id on a tie).

    What ``ess_connection_lag_events_max`` measures, with the stream it is
    about (a label per stream would be a time series per stream).
    """
    lagging = [row for row in rows if row.lag is not None]
    if not lagging:
        return None
    worst = min(lagging, key=lambda row: (-(row.lag or 0), row.id))
    return {"stream": worst.id, "lag": worst.lag}


def _top(
    rows: Sequence[StreamRow], count: int, measure: Callable[[StreamRow], float]
) -> list[Json]:
    best = heapq.nsmallest(
        count, (row for row in rows if measure(row) > 0), key=lambda r: (-measure(r), r.id)
    )
    return [row.as_json() for row in best]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of streams and the cursor of the next (``None``: this was the last)."""

    rows: list[StreamRow]
    next_cursor: str | None
    #: How many streams pass the filters in all (not only on this page).
    total: int

    def as_json(self) -> Json:
        return {
            "kind": "page",
            "streams": [row.as_json() for row in self.rows],
            "next_cursor": self.next_cursor,
            "total": self.total,
        }


def page(matches: Sequence[StreamRow], query: Query) -> Page:
    """The page of ``query`` from ``matches``: the rows passing its filters, in its order.

    The cursor is keyset, (sort value, stream id): a page starts after the
    last row of the one before it however many streams came or went since.
    Under a measure sort (rate, lag, connections) a stream whose measure
    changed between two pages may move across the cursor (shown twice or
    not at all), as with any live ranking; under ``id``/``age`` paging is exact.
    """
    start = 0
    if query.cursor is not None:
        after = decode_cursor(query.cursor, query.sort)
        start = bisect.bisect_right(matches, after, key=_sort_key(query.sort))
    chosen = list(matches[start : start + query.limit])
    more = start + query.limit < len(matches)
    cursor = _encode_cursor(query.sort, chosen[-1]) if more and chosen else None
    return Page(chosen, cursor, len(matches))
