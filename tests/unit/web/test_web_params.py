"""SPEC section 4's query parameters, parsed without a socket."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.start import AfterOrdinal, AtOrAfterTime, LiveTail
from web.params import (
    MAX_ORDINAL,
    MAX_TIMESTAMP_MS,
    StartParameterError,
    parse_start,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("query", ["", "&", "foo=bar", "Stream_From_Ordinal=x", "a&b=&=c"])
def test_no_start_parameter_is_live_tail(query: str) -> None:
    assert parse_start(query) == LiveTail()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("stream_from_ordinal=0", AfterOrdinal(0)),
        ("stream_from_ordinal=42&other=1", AfterOrdinal(42)),
        (f"stream_from_ordinal={MAX_ORDINAL}", AfterOrdinal(MAX_ORDINAL)),
        ("stream_from_timestamp=0", AtOrAfterTime(0)),
        ("stream_from_timestamp=1700000000123", AtOrAfterTime(1_700_000_000_123)),
        ("stream_from_datetime=2024-01-01", AtOrAfterTime(1_704_067_200_000)),
        ("stream_from_datetime=2024-01-01T10:00:00", AtOrAfterTime(1_704_103_200_000)),
        ("stream_from_datetime=2024-01-01T10:00:00Z", AtOrAfterTime(1_704_103_200_000)),
        # "+" stays a plus (not a space), encoded or not.
        ("stream_from_datetime=2024-01-01T11:00:00+01:00", AtOrAfterTime(1_704_103_200_000)),
        ("stream_from_datetime=2024-01-01T11:00:00%2B01:00", AtOrAfterTime(1_704_103_200_000)),
        ("stream_from_datetime=2024-01-01%2010:00:00.5", AtOrAfterTime(1_704_103_200_500)),
        # Sub-millisecond precision rounds up: "at or after" stays true.
        ("stream_from_datetime=2024-01-01T10:00:00.000001", AtOrAfterTime(1_704_103_200_001)),
        ("stream_from_datetime=1970-01-01T00:00:00Z", AtOrAfterTime(0)),
        ("stream_from_datetime=9999-12-31T23:59:59.999999", AtOrAfterTime(MAX_TIMESTAMP_MS)),
    ],
)
def test_valid_values(query: str, expected: object) -> None:
    assert parse_start(query) == expected


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("stream_from_ordinal=", "stream_from_ordinal"),
        ("stream_from_ordinal", "stream_from_ordinal"),
        ("stream_from_ordinal=-1", "stream_from_ordinal"),
        ("stream_from_ordinal=+1", "stream_from_ordinal"),
        ("stream_from_ordinal=1.5", "stream_from_ordinal"),
        ("stream_from_ordinal=1e3", "stream_from_ordinal"),
        ("stream_from_ordinal=%201", "stream_from_ordinal"),
        ("stream_from_ordinal=%D9%A1", "stream_from_ordinal"),  # Arabic-Indic digit one
        (f"stream_from_ordinal={MAX_ORDINAL + 1}", "stream_from_ordinal"),
        ("stream_from_ordinal=" + "9" * 5000, "stream_from_ordinal"),
        ("stream_from_timestamp=-5", "stream_from_timestamp"),
        ("stream_from_timestamp=abc", "stream_from_timestamp"),
        (f"stream_from_timestamp={MAX_TIMESTAMP_MS + 1}", "stream_from_timestamp"),
        ("stream_from_datetime=", "stream_from_datetime"),
        ("stream_from_datetime=yesterday", "stream_from_datetime"),
        ("stream_from_datetime=2024-13-01", "stream_from_datetime"),
        ("stream_from_datetime=1969-12-31T23:59:59Z", "stream_from_datetime"),
        ("stream_from_datetime=9999-12-31T23:59:59-01:00", "stream_from_datetime"),
        ("stream_from_datetime=" + "2" * 500, "stream_from_datetime"),
        ("stream_from_ordinal=1&stream_from_ordinal=2", "stream_from_ordinal"),
        (
            "stream_from_ordinal=1&stream_from_timestamp=2",
            "stream_from_ordinal,stream_from_timestamp",
        ),
        (
            "stream_from_datetime=x&stream_from_ordinal=1&stream_from_timestamp=2",
            "stream_from_datetime,stream_from_ordinal,stream_from_timestamp",
        ),
    ],
)
def test_invalid_values_name_the_parameter(query: str, parameter: str) -> None:
    with pytest.raises(StartParameterError) as caught:
        parse_start(query)
    assert caught.value.parameter == parameter
    for name in parameter.split(","):
        assert name in caught.value.reason
    assert len(caught.value.reason.encode()) <= 123


@given(st.text())
def test_any_text_parses_or_raises_the_declared_error(query: str) -> None:
    try:
        result = parse_start(query)
    except StartParameterError as error:
        assert 0 < len(error.reason.encode("utf-8")) <= 123
    else:
        assert isinstance(result, LiveTail | AfterOrdinal | AtOrAfterTime)


_names = st.sampled_from(
    ["stream_from_ordinal", "stream_from_timestamp", "stream_from_datetime", "x", ""]
)
_fields = st.tuples(_names, st.text(max_size=40)).map(lambda nv: f"{nv[0]}={quote(nv[1])}")


@given(st.lists(_fields, max_size=4).map("&".join))
def test_structured_queries_parse_or_raise_the_declared_error(query: str) -> None:
    try:
        parse_start(query)
    except StartParameterError as error:
        assert len(error.reason.encode("utf-8")) <= 123


@given(st.integers(min_value=0, max_value=MAX_ORDINAL), st.text(alphabet="abc=&", max_size=10))
def test_ordinal_round_trips(ordinal: int, noise: str) -> None:
    extra = "&".join(f"x{part}" for part in noise.split("&"))
    assert parse_start(f"{extra}&stream_from_ordinal={ordinal}") == AfterOrdinal(ordinal)


@given(st.integers(min_value=0, max_value=MAX_TIMESTAMP_MS))
def test_timestamp_round_trips(milliseconds: int) -> None:
    assert parse_start(f"stream_from_timestamp={milliseconds}") == AtOrAfterTime(milliseconds)


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5, minutes=-30))]),
    )
)
def test_datetime_round_trips_with_millisecond_precision(moment: dt.datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    expected = (moment - EPOCH) // dt.timedelta(milliseconds=1)
    assert parse_start(f"stream_from_datetime={quote(moment.isoformat())}") == AtOrAfterTime(
        expected
    )


@given(st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(9999, 12, 31)))
def test_naive_datetime_means_utc(moment: dt.datetime) -> None:
    expected = -(-(moment.replace(tzinfo=dt.UTC) - EPOCH) // dt.timedelta(milliseconds=1))
    assert parse_start(f"stream_from_datetime={moment.isoformat()}") == AtOrAfterTime(
        min(expected, MAX_TIMESTAMP_MS)
    )
