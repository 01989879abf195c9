"""Where a websocket client asks its stream to start: SPEC section 4's query.

A pure function, so every odd query string can be tried on it (see the
property-based tests) without a socket.

Decisions (the README states them):

- At most one ``stream_from_*`` parameter, given at most once. Two different
  ones, or the same one repeated, is an error naming them.
- Other query parameters are ignored, so clients may add cache busters or
  tracing parameters. Names are case-sensitive.
- ``+`` in the query is a literal plus, not a space (RFC 3986; the
  ``application/x-www-form-urlencoded`` convention does not apply). So an
  unencoded offset such as ``2024-05-01T10:00:00+02:00`` works; ``%2B`` works
  too.
- ``stream_from_ordinal``: ASCII digits only, 0 to 2**63-1.
- ``stream_from_timestamp``: ASCII digits only, milliseconds since the epoch,
  0 to :data:`MAX_TIMESTAMP_MS` (the end of year 9999 UTC, the range of
  ``stream_from_datetime`` too). Negative values are rejected: a stream
  cannot hold events from before 1970.
- ``stream_from_datetime``: whatever :meth:`datetime.datetime.fromisoformat`
  accepts (Python 3.11: dates, ``T`` or space separators, fractions, ``Z``,
  offsets, basic and week formats). No zone means UTC; a date alone means
  midnight UTC. Sub-millisecond precision rounds *up* to the next
  millisecond, so "at or after" keeps its meaning for integer-ms event times.
- Error messages fit a websocket close reason (at most 123 UTF-8 bytes).
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import unquote

from actors.start import AfterOrdinal, AtOrAfterTime, ClientStart, LiveTail
from web.reasons import close_reason

ORDINAL = "stream_from_ordinal"
TIMESTAMP = "stream_from_timestamp"
DATETIME = "stream_from_datetime"
START_PARAMETERS = (ORDINAL, TIMESTAMP, DATETIME)

#: The largest ordinal accepted: the largest signed 64-bit integer.
MAX_ORDINAL = 2**63 - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)
_MAX_SINCE_EPOCH = dt.datetime.max.replace(tzinfo=dt.UTC) - _EPOCH
#: 9999-12-31T23:59:59.999Z, the last millisecond a datetime can express.
MAX_TIMESTAMP_MS = _MAX_SINCE_EPOCH // _ONE_MS
#: Longer datetime values are refused before parsing (no ISO form is this long).
_MAX_DATETIME_CHARS = 64
_DIGITS = re.compile(r"[0-9]{1,19}")


class StartParameterError(ValueError):
    """The query asks for an impossible start; the websocket closes with 1002.

    ``parameter`` names the offending parameter(s) (comma separated when
    several conflict); ``reason`` is a ready-made close reason.
    """

    def __init__(self, parameter: str, reason: str) -> None:
        self.parameter = parameter
        self.reason = close_reason(reason)
        super().__init__(self.reason)


def parse_start(query: str) -> ClientStart:
    """The start position a query string (without the ``?``) asks for.

    Raises :class:`StartParameterError` and nothing else, whatever the input.
    """
    given = [(name, value) for name, value in _split_query(query) if name in START_PARAMETERS]
    if not given:
        return LiveTail()
    if len(given) > 1:
        names = list(dict.fromkeys(name for name, _ in given))
        if len(names) == 1:
            message = f"{names[0]} given more than once; give at most one stream_from_* parameter"
        else:
            message = f"Conflicting parameters {', '.join(names)}; give at most one"
        raise StartParameterError(",".join(names), message)
    name, value = given[0]
    if name == ORDINAL:
        return AfterOrdinal(_parse_int(name, value, MAX_ORDINAL, "an integer >= 0"))
    if name == TIMESTAMP:
        return AtOrAfterTime(
            _parse_int(name, value, MAX_TIMESTAMP_MS, "milliseconds since the epoch (>= 0)")
        )
    return AtOrAfterTime(_parse_datetime(value))


def _split_query(query: str) -> list[tuple[str, str]]:
    """``name=value`` pairs, percent-decoded, ``+`` kept literal (see module doc)."""
    pairs = []
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _parse_int(name: str, value: str, maximum: int, expected: str) -> int:
    if _DIGITS.fullmatch(value) is None or int(value) > maximum:
        raise StartParameterError(name, f"{name} must be {expected}, at most {maximum}")
    return int(value)


def _parse_datetime(value: str) -> int:
    """Milliseconds since the epoch, rounded up, for an ISO 8601 date/time."""
    expected = f"{DATETIME} must be an ISO 8601 date/time from 1970 to 9999"
    if len(value) > _MAX_DATETIME_CHARS:
        raise StartParameterError(DATETIME, expected)
    try:
        moment = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise StartParameterError(DATETIME, expected) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    # Aware subtraction works in timedelta, so far offsets cannot overflow.
    since_epoch = moment - _EPOCH
    if not dt.timedelta(0) <= since_epoch <= _MAX_SINCE_EPOCH:
        raise StartParameterError(DATETIME, expected)
    # Round up (ceiling division), but the very last microseconds of 9999 stay in range.
    return min(-(-since_epoch // _ONE_MS), MAX_TIMESTAMP_MS)
