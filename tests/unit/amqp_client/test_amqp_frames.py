"""The frame decoder on crafted byte buffers.

Frames are built with pamqp's *encoder* (an independent implementation), so
these tests check our struct fast path against it.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

import pytest
from pamqp import body as pbody
from pamqp import commands
from pamqp import encode as pencode
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

from amqp import DeliveredMessage, ProtocolError, codec
from amqp.frames import HEARTBEAT, ConfirmAck, FrameDecoder
from amqp.message import ReturnedMessage
from amqp.table import decode_table

from .every_property import pamqp_properties


def deliver(
    channel: int,
    tag: int,
    body: bytes,
    *,
    consumer_tag: str = "ctag-1",
    exchange: str = "ex",
    routing_key: str = "rk",
    properties: commands.Basic.Properties | None = None,
    frame_max: int = 131072,
) -> bytes:
    parts = [
        pframe.marshal(
            commands.Basic.Deliver(
                consumer_tag=consumer_tag,
                delivery_tag=tag,
                redelivered=tag % 2 == 0,
                exchange=exchange,
                routing_key=routing_key,
            ),
            channel,
        ),
        pframe.marshal(
            pheader.ContentHeader(0, len(body), properties or commands.Basic.Properties()),
            channel,
        ),
    ]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        parts.append(pframe.marshal(pbody.ContentBody(body[start : start + chunk]), channel))
    return b"".join(parts)


def stream_properties(offset: int) -> commands.Basic.Properties:
    return commands.Basic.Properties(
        content_type="application/json",
        headers={"x-stream-offset": offset, "timestamp_in_ms": 1_700_000_000_000 + offset},
        delivery_mode=2,
        timestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )


def summary(events: list[tuple[int, Any]]) -> list[Any]:
    """Comparable view of decoded events."""
    out: list[Any] = []
    for channel, event in events:
        if isinstance(event, DeliveredMessage):
            out.append(
                (
                    channel,
                    "deliver",
                    event.consumer_tag,
                    event.delivery_tag,
                    event.redelivered,
                    event.exchange,
                    event.routing_key,
                    event.properties,
                    event.body,
                )
            )
        elif isinstance(event, ReturnedMessage):
            out.append((channel, "content", event.method.name, event.properties, event.body))
        elif isinstance(event, ConfirmAck | type(HEARTBEAT)):
            out.append((channel, event))
        else:
            out.append((channel, event.name, dict(event)))
    return out


def mixed_buffer() -> bytes:
    return b"".join(
        [
            pframe.marshal(
                commands.Queue.DeclareOk(queue="q", message_count=3, consumer_count=0), 2
            ),
            deliver(1, 1, b'{"n": 1}', properties=stream_properties(0)),
            pheartbeat.Heartbeat().marshal(),
            deliver(1, 2, b"", properties=stream_properties(1)),  # empty body: no body frame
            deliver(3, 3, b"x" * 300, properties=commands.Basic.Properties()),
            pframe.marshal(commands.Basic.Ack(delivery_tag=42, multiple=True), 4),
            deliver(1, 4, bytes(range(256)) * 40, properties=stream_properties(2), frame_max=4096),
            pframe.marshal(commands.Channel.Close(404, "NOT_FOUND - no queue", 50, 10), 5),
        ]
    )


def test_decodes_a_buffer_of_mixed_frames() -> None:
    events = FrameDecoder().feed(mixed_buffer())
    kinds = [type(event).__name__ for _, event in events]
    assert kinds == [
        "DeclareOk",
        "DeliveredMessage",
        "Heartbeat",
        "DeliveredMessage",
        "DeliveredMessage",
        "ConfirmAck",
        "DeliveredMessage",
        "Close",
    ]
    _, first = events[1]
    assert isinstance(first, DeliveredMessage)
    assert (first.consumer_tag, first.delivery_tag, first.redelivered) == ("ctag-1", 1, False)
    assert (first.exchange, first.routing_key, first.body) == ("ex", "rk", b'{"n": 1}')
    assert first.headers == {"x-stream-offset": 0, "timestamp_in_ms": 1_700_000_000_000}
    assert first.properties.timestamp == 1704067200
    assert first.properties.content_type == "application/json"
    assert first.properties.delivery_mode == 2
    assert events[3][1].body == b""  # type: ignore[union-attr]
    assert events[4][1].headers == {}  # type: ignore[union-attr]
    assert events[5] == (4, ConfirmAck(42, True))
    big = events[6][1]
    assert isinstance(big, DeliveredMessage)
    assert big.body == bytes(range(256)) * 40  # reassembled from 3 body frames
    close = events[7][1]
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (404, "NOT_FOUND - no queue")


def test_every_split_point_gives_the_same_events() -> None:
    data = mixed_buffer()
    expected = summary(FrameDecoder().feed(data))
    for split in range(len(data) + 1):
        decoder = FrameDecoder()
        events = decoder.feed(data[:split]) + decoder.feed(data[split:])
        assert summary(events) == expected, f"split at {split}"
        assert decoder.buffered == 0


def test_byte_by_byte_gives_the_same_events() -> None:
    data = mixed_buffer()
    expected = summary(FrameDecoder().feed(data))
    decoder = FrameDecoder()
    events = []
    for i in range(len(data)):
        events += decoder.feed(data[i : i + 1])
    assert summary(events) == expected


def test_three_way_splits_of_a_delivery() -> None:
    data = deliver(7, 9, b"hello world", properties=stream_properties(5))
    expected = summary(FrameDecoder().feed(data))
    for a in range(0, len(data), 3):
        for b in range(a, len(data), 5):
            decoder = FrameDecoder()
            events = decoder.feed(data[:a]) + decoder.feed(data[a:b]) + decoder.feed(data[b:])
            assert summary(events) == expected


def test_large_multi_frame_body_fed_in_small_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    data = deliver(1, 1, body, frame_max=4096)
    decoder = FrameDecoder(max_frame_size=4096)
    events = []
    for start in range(0, len(data), 1000):
        events += decoder.feed(data[start : start + 1000])
    [(_, message)] = events
    assert isinstance(message, DeliveredMessage)
    assert message.body == body


def test_deliver_with_any_utf8_names() -> None:
    # pamqp would refuse to *encode* these names: craft the method with our codec.
    rk = "ключ | 'quoted' ; DROP"
    method = codec.method_frame(
        1,
        60,
        60,
        codec.shortstr("ctag é"),
        (5).to_bytes(8, "big"),
        b"\x01",
        codec.shortstr("ex ü"),
        codec.shortstr(rk),
    )
    header = pframe.marshal(pheader.ContentHeader(0, 2, commands.Basic.Properties()), 1)
    body = pframe.marshal(pbody.ContentBody(b"ok"), 1)
    [(_, message)] = FrameDecoder().feed(method + header + body)
    assert isinstance(message, DeliveredMessage)
    assert (message.consumer_tag, message.exchange, message.routing_key) == ("ctag é", "ex ü", rk)
    assert message.redelivered and message.delivery_tag == 5


def test_all_properties_decode_like_pamqp() -> None:
    props = pamqp_properties()
    [(_, message)] = FrameDecoder().feed(deliver(1, 1, b"b", properties=props))
    assert isinstance(message, DeliveredMessage)
    p = message.properties
    assert (p.content_type, p.content_encoding) == ("application/json", "utf-8")
    assert p.headers == {"timestamp_in_ms": 1_700_000_000_123, "s": "v", "nested": {"a": [1, "b"]}}
    assert (p.delivery_mode, p.priority, p.correlation_id) == (2, 3, "c")
    assert (p.reply_to, p.expiration, p.message_id) == ("r", "60000", "m")
    assert p.timestamp_datetime == props.timestamp
    assert (p.type, p.user_id, p.app_id) == ("t", "guest", "ess")


TABLE = {
    "str": "value ü",
    "bytes": b"\xff\xfe".decode("latin-1"),
    "b": -5,
    "s": -3000,
    "u": 60000,
    "I": -2_000_000_000,
    "i": 4_000_000_000,
    "l": -(2**62),
    "bool": True,
    "void": None,
    "float": 1.5,
    "ts": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    "nested": {"list": [1, "two", {"three": 3}, [], False]},
}


def test_field_tables_decode_like_pamqp() -> None:
    encoded = pencode.field_table(TABLE)
    from pamqp import decode as pdecode

    _, theirs = pdecode.field_table(encoded)
    assert decode_table(encoded, 4, len(encoded)) == theirs


def test_non_utf8_long_string_decodes_to_bytes() -> None:
    raw = b"\x00" * 0 + bytes([3]) + b"key" + b"S" + (2).to_bytes(4, "big") + b"\xff\xfe"
    assert decode_table(raw, 0, len(raw)) == {"key": b"\xff\xfe"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00\x01\x00\x00\x00\x04\x00\x0a\x00\x0b\x00", "frame end"),
        (b"\x09\x00\x00\x00\x00\x00\x00\xce", "unknown frame type"),
        (pframe.marshal(pbody.ContentBody(b"x"), 1), "unexpected content body"),
        (
            pframe.marshal(pheader.ContentHeader(0, 1, commands.Basic.Properties()), 1),
            "unexpected content header",
        ),
        (b"AMQP\x00\x00\x09\x01", "does not speak"),
        (b"\x01\x00\x01\x7f\xff\xff\xff", "exceeds frame_max"),
    ],
)
def test_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(data)


def test_incomplete_frames_are_kept_not_emitted() -> None:
    data = deliver(1, 1, b"abc")
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == 7 + 3 + 1 - 1  # the body frame, less its last byte
    [(_, message)] = decoder.feed(data[-1:])
    assert message.body == b"abc"  # type: ignore[union-attr]


def test_a_close_whose_reply_text_was_cut_mid_character_still_decodes() -> None:
    """RabbitMQ cuts reply texts at 255 bytes, possibly inside a UTF-8 sequence."""
    text = ("NOT_FOUND - no queue '" + "é" * 200).encode()[:255]
    assert text.endswith(b"\xc3")  # the cut split a character
    payload = struct.pack(">HHHB", 20, 40, 404, len(text)) + text + struct.pack(">HH", 60, 20)
    frame = struct.pack(">BHI", 1, 3, len(payload)) + payload + b"\xce"
    decoder = FrameDecoder()
    [(channel, method)] = list(decoder.feed(frame))
    assert channel == 3
    assert isinstance(method, commands.Channel.Close)
    assert method.reply_code == 404
    assert method.reply_text.startswith("NOT_FOUND - no queue 'éé")
    assert (method.class_id, method.method_id) == (60, 20)
