"""Method encoding: byte-identical to pamqp for ordinary names, and no name
pattern check, so any UTF-8 name of up to 255 bytes works."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

from amqp import codec
from amqp.frames import FrameDecoder

from .every_property import ess_properties

WEIRD_NAMES = [
    "a b",
    "key|with|pipes",
    "quotes ' \" `",
    "'; DROP TABLE event_stream; --",
    "$(rm -rf /) && echo `id` > /tmp/x",
    "ünïcödé ключ 键 🎉",
    "tab\tand\\backslash",
    "x" * 255,
    "é" * 127,  # 254 bytes
]


def _pamqp(method: Any, channel: int = 3) -> bytes:
    return pframe.marshal(method, channel)


CASES: list[tuple[str, Callable[[], bytes], Any]] = [
    (
        "exchange.declare",
        lambda: codec.exchange_declare(3, "ex", "direct", durable=True, arguments={"a": 1}),
        commands.Exchange.Declare(
            exchange="ex", exchange_type="direct", durable=True, arguments={"a": 1}
        ),
    ),
    (
        "exchange.delete",
        lambda: codec.exchange_delete(3, "ex", if_unused=True),
        commands.Exchange.Delete(exchange="ex", if_unused=True),
    ),
    (
        "queue.declare",
        lambda: codec.queue_declare(
            3,
            "q",
            passive=True,
            durable=True,
            exclusive=True,
            auto_delete=True,
            arguments={"x-queue-type": "stream", "x-max-length-bytes": 1_000_000_000},
        ),
        commands.Queue.Declare(
            queue="q",
            passive=True,
            durable=True,
            exclusive=True,
            auto_delete=True,
            arguments={"x-queue-type": "stream", "x-max-length-bytes": 1_000_000_000},
        ),
    ),
    (
        "queue.bind",
        lambda: codec.queue_bind(3, "q", "ex", "rk"),
        commands.Queue.Bind(queue="q", exchange="ex", routing_key="rk"),
    ),
    (
        "queue.unbind",
        lambda: codec.queue_unbind(3, "q", "ex", "rk"),
        commands.Queue.Unbind(queue="q", exchange="ex", routing_key="rk"),
    ),
    ("queue.purge", lambda: codec.queue_purge(3, "q"), commands.Queue.Purge(queue="q")),
    (
        "queue.delete",
        lambda: codec.queue_delete(3, "q", if_empty=True),
        commands.Queue.Delete(queue="q", if_empty=True),
    ),
    (
        "basic.qos",
        lambda: codec.basic_qos(3, 1000),
        commands.Basic.Qos(prefetch_count=1000),
    ),
    (
        "basic.consume",
        lambda: codec.basic_consume(3, "q", "tag", no_ack=True, arguments={"x-stream-offset": 5}),
        commands.Basic.Consume(
            queue="q", consumer_tag="tag", no_ack=True, arguments={"x-stream-offset": 5}
        ),
    ),
    ("basic.cancel", lambda: codec.basic_cancel(3, "tag"), commands.Basic.Cancel("tag")),
    (
        "basic.ack",
        lambda: codec.basic_ack(3, 2**40, True),
        commands.Basic.Ack(delivery_tag=2**40, multiple=True),
    ),
    (
        "basic.nack",
        lambda: codec.basic_nack(3, 7, True, False),
        commands.Basic.Nack(delivery_tag=7, multiple=True, requeue=False),
    ),
    (
        "basic.reject",
        lambda: codec.basic_reject(3, 7, False),
        commands.Basic.Reject(delivery_tag=7, requeue=False),
    ),
    (
        "basic.publish",
        lambda: codec.method_frame(
            3,
            60,
            40,
            b"\x00\x00",
            codec.shortstr("ex"),
            codec.shortstr("rk"),
            codec.bits(False, False),
        ),
        commands.Basic.Publish(exchange="ex", routing_key="rk"),
    ),
    ("confirm.select", lambda: codec.confirm_select(3), commands.Confirm.Select()),
    (
        "channel.close",
        lambda: codec.channel_close(3, 200, "bye"),
        commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
    ),
    ("channel.close-ok", lambda: codec.channel_close_ok(3), commands.Channel.CloseOk()),
]


@pytest.mark.parametrize(("name", "ours", "theirs"), CASES, ids=[c[0] for c in CASES])
def test_encoding_matches_pamqp_for_ordinary_names(
    name: str, ours: Callable[[], bytes], theirs: Any
) -> None:
    assert ours() == _pamqp(theirs), name


def test_connection_methods_match_pamqp() -> None:
    assert codec.connection_tune_ok(2047, 131072, 60) == _pamqp(
        commands.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=60), 0
    )
    assert codec.connection_open("/") == _pamqp(commands.Connection.Open(virtual_host="/"), 0)
    assert codec.connection_close(320, "x") == _pamqp(
        commands.Connection.Close(reply_code=320, reply_text="x", class_id=0, method_id=0), 0
    )
    assert codec.connection_close_ok() == _pamqp(commands.Connection.CloseOk(), 0)
    start_ok = codec.connection_start_ok({"product": "p"}, "user", "pass")
    assert start_ok == _pamqp(
        commands.Connection.StartOk(
            client_properties={"product": "p"},
            mechanism="PLAIN",
            response="\x00user\x00pass",
            locale="en_US",
        ),
        0,
    )


def test_channel_open_decodes() -> None:
    assert isinstance(_decode(codec.channel_open(5)), commands.Channel.Open)


def test_pamqp_itself_rejects_names_rabbitmq_accepts() -> None:
    # Why codec.py exists: pamqp validates names on construction, against a
    # pattern narrower than RabbitMQ's.
    for name in ("a|b", "ünïcödé", "'; DROP TABLE x; --"):
        with pytest.raises(ValueError):
            commands.Queue.Declare(queue=name)


def _decode(frame: bytes) -> Any:
    (_, _, method) = pframe.unmarshal(frame)  # pamqp does not validate when decoding
    return method


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_any_utf8_name_encodes_without_validation(name: str) -> None:
    declare = _decode(codec.queue_declare(1, name, durable=True))
    assert declare.queue == name
    assert declare.durable and not declare.passive
    bind = _decode(codec.queue_bind(1, name, name, name))
    assert (bind.queue, bind.exchange, bind.routing_key) == (name, name, name)
    assert _decode(codec.queue_delete(1, name)).queue == name
    assert _decode(codec.basic_consume(1, name, "t")).queue == name
    assert _decode(codec.exchange_declare(1, name, "direct")).exchange == name
    publish = codec.basic_publish(1, name, name, b"x", None, 4096)
    method = _decode(publish[: publish.index(b"\xce") + 1])
    assert (method.exchange, method.routing_key) == (name, name)


def test_names_over_255_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        codec.queue_declare(1, "é" * 128)  # 256 bytes
    codec.queue_declare(1, "x" * 255)


def test_publish_splits_the_body_at_frame_max_and_round_trips() -> None:
    body = bytes(range(256)) * 100  # 25,600 bytes
    props = ess_properties()
    data = codec.basic_publish(1, "ex", "rk", body, props, 4096)
    frames = []
    rest = data
    while rest:
        consumed, channel, value = pframe.unmarshal(rest)
        frames.append(value)
        rest = rest[consumed:]
        assert channel == 1
    assert isinstance(frames[0], commands.Basic.Publish)
    assert isinstance(frames[1], pheader.ContentHeader)
    assert frames[1].body_size == len(body)
    bodies = frames[2:]
    assert all(isinstance(f, pbody.ContentBody) for f in bodies)
    assert all(len(f.value) <= 4096 - 8 for f in bodies)
    assert len(bodies) == -(-len(body) // (4096 - 8))
    assert b"".join(f.value for f in bodies) == body
    decoded = frames[1].properties
    assert decoded.headers["timestamp_in_ms"] == 1_700_000_000_123
    assert decoded.content_type == "application/json"
    assert decoded.timestamp == props.timestamp

    # Our own decoder reads the same frames back (header fields, multi-frame body).
    data_as_deliver = (
        codec.method_frame(
            1,
            60,
            60,
            codec.shortstr("ctag"),
            (9).to_bytes(8, "big"),
            b"\x00",
            codec.shortstr("ex"),
            codec.shortstr("rk"),
        )
        + data[data.index(b"\xce") + 1 :]
    )
    [(channel, message)] = FrameDecoder().feed(data_as_deliver)
    assert message.body == body
    assert message.properties.headers == props.headers
    assert message.properties.timestamp == int(props.timestamp.timestamp())  # type: ignore[union-attr]
    assert message.properties.app_id == "ess"


def test_datetime_table_values_encode_as_amqp_timestamps() -> None:
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    encoded = codec.table({"x-stream-offset": when})
    assert b"T" + int(when.timestamp()).to_bytes(8, "big") in encoded
