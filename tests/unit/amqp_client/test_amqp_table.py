"""Per-message containment: a publisher's property bytes affect that message alone.

The content header's properties are decoded leniently (amqp.table): nothing a
publisher can write there raises from the frame decoder or desynchronises
the frames that follow, and ``x-stream-offset`` is recovered whenever the
table can be walked up to it.
"""

from __future__ import annotations

import datetime
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands

from amqp import DeliveredMessage, codec
from amqp.frames import FrameDecoder
from amqp.table import MAX_DEPTH, Unusable, decode_properties, decode_table

from .test_amqp_frames import deliver


def name(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def longlong(tag: bytes, value: int) -> bytes:
    return tag + struct.pack(">Q", value)


def nested(tag: bytes, inner: bytes) -> bytes:
    return tag + struct.pack(">I", len(inner)) + inner


OFFSET_FIELD = name(b"x-stream-offset") + b"l" + struct.pack(">q", 42)


def headers_payload(table: bytes, flags: int = 0x2000, rest: bytes = b"") -> bytes:
    return struct.pack(">H", flags) + struct.pack(">I", len(table)) + table + rest


def content_header(channel: int, body_size: int, payload: bytes) -> bytes:
    inner = struct.pack(">HHQ", 60, 0, body_size) + payload
    return struct.pack(">BHI", 2, channel, len(inner)) + inner + b"\xce"


def deliver_with_payload(channel: int, tag: int, payload: bytes, body: bytes) -> bytes:
    method = codec.method_frame(
        channel,
        60,
        60,
        codec.shortstr("ctag-1"),
        struct.pack(">Q", tag),
        b"\x00",
        codec.shortstr(""),
        codec.shortstr("rk"),
    )
    frames = method + content_header(channel, len(body), payload)
    if body:
        frames += struct.pack(">BHI", 3, channel, len(body)) + body + b"\xce"
    return frames


def test_a_header_name_that_is_not_utf8_is_kept_as_bytes() -> None:
    table = name(b"\xff\xfe") + nested(b"S", b"v") + OFFSET_FIELD
    properties, error = decode_properties(headers_payload(table))
    assert properties.headers == {b"\xff\xfe": "v", "x-stream-offset": 42}
    assert error is not None and "name is not UTF-8" in error


def test_a_string_value_that_is_not_utf8_is_kept_as_bytes() -> None:
    table = name(b"k") + nested(b"S", b"\xc3") + OFFSET_FIELD
    properties, error = decode_properties(headers_payload(table))
    assert properties.headers == {"k": b"\xc3", "x-stream-offset": 42}
    assert error is not None and "string value is not UTF-8" in error


def test_timestamps_beyond_year_9999_are_raw_seconds() -> None:
    in_range = 1_704_067_200
    table = (
        name(b"late")
        + longlong(b"T", 2**63)
        + name(b"ok")
        + longlong(b"T", in_range)
        + OFFSET_FIELD
    )
    payload = headers_payload(table, flags=0x2000 | 0x0040, rest=struct.pack(">Q", 2**64 - 1))
    properties, error = decode_properties(payload)
    assert properties.headers == {
        "late": 2**63,
        "ok": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        "x-stream-offset": 42,
    }
    assert error is not None and "beyond year 9999" in error
    assert properties.timestamp == 2**64 - 1  # the property is the raw integer
    assert properties.timestamp_datetime is None  # and has no datetime


def test_tables_nested_thousands_deep_are_cut_at_the_bound_and_skipped() -> None:
    value = nested(b"F", b"")
    for _ in range(5000):
        value = nested(b"F", name(b"n") + value)
    arrays = nested(b"A", b"")
    for _ in range(5000):
        arrays = nested(b"A", arrays)
    table = name(b"deep") + value + name(b"list") + arrays + OFFSET_FIELD
    properties, error = decode_properties(headers_payload(table))
    headers = properties.headers
    assert headers is not None and headers["x-stream-offset"] == 42
    level, depth = headers["deep"], 1
    while isinstance(level, dict):
        level, depth = level["n"], depth + 1
    assert isinstance(level, Unusable)
    assert depth == MAX_DEPTH + 1
    assert error is not None and f"deeper than {MAX_DEPTH}" in error


def test_an_unknown_tag_loses_the_rest_of_its_table_only() -> None:
    inner = name(b"b") + b"Z\x01\x02" + name(b"c") + b"b\x01"
    table = name(b"a") + nested(b"F", inner) + OFFSET_FIELD
    properties, error = decode_properties(headers_payload(table))
    assert properties.headers == {
        "a": {"b": Unusable("unknown field type 'Z'")},
        "x-stream-offset": 42,
    }
    assert error is not None and "unknown field type" in error


def test_an_unknown_tag_at_the_top_loses_the_fields_after_it() -> None:
    table = OFFSET_FIELD + name(b"a") + b"Z" + name(b"b") + b"b\x01"
    properties, error = decode_properties(headers_payload(table))
    assert properties.headers == {"x-stream-offset": 42, "a": Unusable("unknown field type 'Z'")}
    assert error is not None


def test_a_value_that_overruns_its_table_is_unusable() -> None:
    inner = name(b"s") + b"S" + struct.pack(">I", 1000) + b"short"
    table = name(b"a") + nested(b"F", inner) + OFFSET_FIELD
    properties, error = decode_properties(headers_payload(table))
    assert properties.headers == {"a": {"s": Unusable("overruns its table")}, "x-stream-offset": 42}
    assert error is not None and "overruns" in error


def test_a_property_list_that_does_not_fit_keeps_what_came_before() -> None:
    # content_type present, then headers whose length passes the frame.
    payload = struct.pack(">H", 0x8000 | 0x2000) + name(b"text/plain") + struct.pack(">I", 999)
    properties, error = decode_properties(payload)
    assert properties.content_type == "text/plain"
    assert properties.headers is None
    assert error is not None and "overruns the content header" in error
    properties, error = decode_properties(b"\x80")  # not even the flags
    assert properties.content_type is None and error is not None


def test_a_short_string_property_that_is_not_utf8_is_absent() -> None:
    payload = struct.pack(">H", 0x8000 | 0x0080) + name(b"\xff") + name(b"id-1")
    properties, error = decode_properties(payload)
    assert (properties.content_type, properties.message_id) == (None, "id-1")
    assert error is not None and "string property is not UTF-8" in error


def test_a_clean_header_has_no_error() -> None:
    properties, error = decode_properties(headers_payload(OFFSET_FIELD))
    assert properties.headers == {"x-stream-offset": 42}
    assert error is None


def test_a_bad_header_reaches_its_consumer_and_its_neighbours_arrive() -> None:
    bad = headers_payload(name(b"\xff") + b"Z")
    data = (
        deliver(1, 1, b"before")
        + deliver_with_payload(1, 2, bad, b"bad")
        + deliver(1, 3, b"after", properties=commands.Basic.Properties(headers={"n": 3}))
    )
    events = FrameDecoder().feed(data)
    messages = [event for _, event in events]
    assert [m.body for m in messages] == [b"before", b"bad", b"after"]  # type: ignore[union-attr]
    first, middle, last = messages
    assert isinstance(middle, DeliveredMessage) and middle.properties_error is not None
    assert isinstance(first, DeliveredMessage) and first.properties_error is None
    assert isinstance(last, DeliveredMessage) and last.headers == {"n": 3}


def test_a_received_bytes_name_cannot_be_published_again() -> None:
    with pytest.raises(TypeError, match="field names must be str"):
        codec.table({b"\xff": 1})


# --------------------------------------------------------------------------- properties


def check_contained(payload: bytes, body: bytes, split: int) -> None:
    """Arbitrary property bytes: decoded without raising, the next frames in step."""
    good = deliver(1, 9, b"next", properties=commands.Basic.Properties(headers={"n": 9}))
    data = deliver_with_payload(1, 8, payload, body) + good
    decoder = FrameDecoder()
    split = split % (len(data) + 1)
    events = decoder.feed(data[:split]) + decoder.feed(data[split:])
    messages = [event for _, event in events]
    assert len(messages) == 2
    weird, following = messages
    assert isinstance(weird, DeliveredMessage) and weird.body == body
    assert isinstance(following, DeliveredMessage)
    assert (following.delivery_tag, following.body, following.headers) == (9, b"next", {"n": 9})
    assert following.properties_error is None
    assert decoder.buffered == 0


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=400), body=st.binary(max_size=20), split=st.integers(0))
def test_any_property_bytes_stay_with_their_message(
    payload: bytes, body: bytes, split: int
) -> None:
    check_contained(payload, body, split)


_TAGS = st.sampled_from(list(b"tbBsuIilLfdDSATFVxZ\x00?"))


@st.composite
def rough_tables(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Bytes shaped like a field table (names, tags, lengths) with arbitrary contents."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        parts.append(name(draw(st.binary(max_size=8))))
        tag = draw(_TAGS)
        if tag in b"FA" and depth < 3 and draw(st.booleans()):
            inner = draw(rough_tables(depth + 1))
            parts.append(nested(bytes((tag,)), inner))
        else:
            parts.append(bytes((tag,)) + draw(st.binary(max_size=12)))
    return b"".join(parts)


@settings(max_examples=500, deadline=None)
@given(table=rough_tables() | st.binary(max_size=200), split=st.integers(0))
def test_any_header_table_stays_with_its_message(table: bytes, split: int) -> None:
    check_contained(headers_payload(table), b"b", split)
    decode_table(table, 0, len(table))  # and on its own, never raises
