"""Encoding of the frames this client sends.

Every method we send is encoded here with :mod:`struct`, field tables with
pamqp's table encoder. We do not use pamqp's command classes to send:
their constructors validate queue and exchange names against a pattern much
narrower than RabbitMQ's (``Queue.Declare(queue='a b')`` raises), while a
RabbitMQ name is any UTF-8 string of at most 255 bytes -- spaces, ``|``,
quotes and non-ASCII included. The only check here is that length limit.

Each function returns the complete wire bytes of one frame (or, for a
publish, of all its frames), ready to be appended to the write buffer in one
piece so a cancelled caller can never leave half a frame behind.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final, TypedDict, Unpack

from pamqp import encode as _pamqp_encode

from .message import Properties

FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_END_BYTE: Final = b"\xce"
#: Frame header (7 bytes) plus frame end (1 byte).
FRAME_OVERHEAD: Final = 8

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"

_FRAME_HEADER = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
_SHORT = struct.Struct(">H")
_LONG = struct.Struct(">I")
_LONGLONG = struct.Struct(">Q")
_CONTENT_HEADER = struct.Struct(">HHQ")

HEARTBEAT_FRAME: Final = _FRAME_HEADER.pack(FRAME_HEARTBEAT, 0, 0) + FRAME_END_BYTE


def shortstr(value: str) -> bytes:
    """Encode an AMQP short string: any UTF-8 of at most 255 bytes, no pattern check."""
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"AMQP short string exceeds 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def longstr(value: str | bytes) -> bytes:
    """Encode an AMQP long string."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _LONG.pack(len(raw)) + raw


def table(value: Mapping[str, Any] | Mapping[str | bytes, Any] | None) -> bytes:
    """Encode a field table (pamqp's encoder: it picks RabbitMQ's type tags).

    Names must be ``str``; a ``bytes`` name (one received that was not
    UTF-8) is refused with a :class:`TypeError`.
    """
    if not value:
        return b"\x00\x00\x00\x00"
    named: dict[str, Any] = {}
    for name, item in value.items():
        if not isinstance(name, str):
            raise TypeError(f"field names must be str, not {name!r}")
        named[name] = item
    return _pamqp_encode.field_table(named)


def bits(*flags: bool) -> bytes:
    """Pack up to eight consecutive ``bit`` fields into one octet."""
    byte = 0
    for position, flag in enumerate(flags):
        if flag:
            byte |= 1 << position
    return bytes((byte,))


def method_frame(channel: int, class_id: int, method_id: int, *fields: bytes) -> bytes:
    """Frame a method: header, class and method ids, the encoded fields, frame end."""
    payload = _METHOD_ID.pack(class_id, method_id) + b"".join(fields)
    return _FRAME_HEADER.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


_NO_TICKET: Final = b"\x00\x00"


def _ticketed(*names: str) -> bytes:
    """The reserved ticket, then short-string names: how exchange, queue and basic methods begin."""
    return _NO_TICKET + b"".join(shortstr(name) for name in names)


#: A field table argument (``x-`` arguments of a declare, bind or consume).
Arguments = Mapping[str, Any] | None


class _Declare(TypedDict, total=False):
    """The options both declares have (a flag not given is false)."""

    passive: bool
    durable: bool
    auto_delete: bool
    arguments: Arguments


class ExchangeDeclare(_Declare, total=False):
    """The options of ``exchange.declare``."""

    internal: bool


class QueueDeclare(_Declare, total=False):
    """The options of ``queue.declare``."""

    exclusive: bool


class Consume(TypedDict, total=False):
    """The options of ``basic.consume``."""

    no_local: bool
    no_ack: bool
    exclusive: bool
    arguments: Arguments


def _optioned(
    channel: int,
    class_id: int,
    method_id: int,
    names: tuple[str, ...],
    options: Mapping[str, Any],
    *flags: str,
) -> bytes:
    """A method of names, bit ``flags`` (taken from ``options`` in wire order, then a
    ``nowait`` we never set: we want the broker's verdict) and an argument table."""
    set_bits = bits(*(bool(options.get(flag)) for flag in flags), False)
    arguments = table(options.get("arguments"))
    return method_frame(channel, class_id, method_id, _ticketed(*names), set_bits, arguments)


# --------------------------------------------------------------------------- connection


def connection_start_ok(
    client_properties: Mapping[str, Any], username: str, password: str, locale: str = "en_US"
) -> bytes:
    """``connection.start-ok`` answering with SASL PLAIN (``\\0user\\0password``)."""
    response = b"\x00" + username.encode("utf-8") + b"\x00" + password.encode("utf-8")
    return method_frame(
        0,
        10,
        11,
        table(client_properties),
        shortstr("PLAIN"),
        longstr(response),
        shortstr(locale),
    )


def connection_tune_ok(channel_max: int, frame_max: int, heartbeat: int) -> bytes:
    """``connection.tune-ok`` with the negotiated limits."""
    return method_frame(
        0, 10, 31, _SHORT.pack(channel_max), _LONG.pack(frame_max), _SHORT.pack(heartbeat)
    )


def connection_open(vhost: str) -> bytes:
    """``connection.open`` of a virtual host."""
    return method_frame(0, 10, 40, shortstr(vhost), shortstr(""), bits(False))


def connection_close(reply_code: int = 200, reply_text: str = "Normal shutdown") -> bytes:
    """``connection.close`` from this side."""
    return method_frame(
        0, 10, 50, _SHORT.pack(reply_code), shortstr(reply_text[:255]), _SHORT.pack(0) * 2
    )


def connection_close_ok() -> bytes:
    """``connection.close-ok`` answering the broker's close."""
    return method_frame(0, 10, 51)


# --------------------------------------------------------------------------- channel


def channel_open(channel: int) -> bytes:
    """``channel.open``."""
    return method_frame(channel, 20, 10, shortstr(""))


def channel_flow_ok(channel: int, active: bool) -> bytes:
    """``channel.flow-ok`` (RabbitMQ no longer sends flow, but answer it anyway)."""
    return method_frame(channel, 20, 21, bits(active))


def channel_close(
    channel: int, reply_code: int = 200, reply_text: str = "Normal shutdown"
) -> bytes:
    """``channel.close`` from this side."""
    return method_frame(
        channel, 20, 40, _SHORT.pack(reply_code), shortstr(reply_text[:255]), _SHORT.pack(0) * 2
    )


def channel_close_ok(channel: int) -> bytes:
    """``channel.close-ok`` answering the broker's close."""
    return method_frame(channel, 20, 41)


# --------------------------------------------------------------------------- exchange


def exchange_declare(
    channel: int, exchange: str, exchange_type: str, **options: Unpack[ExchangeDeclare]
) -> bytes:
    """``exchange.declare``."""
    flags = ("passive", "durable", "auto_delete", "internal")
    return _optioned(channel, 40, 10, (exchange, exchange_type), options, *flags)


def exchange_delete(channel: int, exchange: str, *, if_unused: bool = False) -> bytes:
    """``exchange.delete``."""
    return method_frame(channel, 40, 20, _ticketed(exchange), bits(if_unused, False))


# --------------------------------------------------------------------------- queue


def queue_declare(channel: int, queue: str, **options: Unpack[QueueDeclare]) -> bytes:
    """``queue.declare``."""
    flags = ("passive", "durable", "exclusive", "auto_delete")
    return _optioned(channel, 50, 10, (queue,), options, *flags)


def queue_bind(
    channel: int, queue: str, exchange: str, routing_key: str, arguments: Arguments = None
) -> bytes:
    """``queue.bind``."""
    return _optioned(channel, 50, 20, (queue, exchange, routing_key), {"arguments": arguments})


def queue_unbind(
    channel: int, queue: str, exchange: str, routing_key: str, arguments: Arguments = None
) -> bytes:
    """``queue.unbind`` (no ``nowait`` bit, unlike bind)."""
    return method_frame(channel, 50, 50, _ticketed(queue, exchange, routing_key), table(arguments))


def queue_purge(channel: int, queue: str) -> bytes:
    """``queue.purge``."""
    return method_frame(channel, 50, 30, _ticketed(queue), bits(False))


def queue_delete(
    channel: int, queue: str, *, if_unused: bool = False, if_empty: bool = False
) -> bytes:
    """``queue.delete``."""
    return method_frame(channel, 50, 40, _ticketed(queue), bits(if_unused, if_empty, False))


# --------------------------------------------------------------------------- basic


def basic_qos(
    channel: int, prefetch_count: int, prefetch_size: int = 0, global_: bool = False
) -> bytes:
    """``basic.qos``."""
    return method_frame(
        channel, 60, 10, _LONG.pack(prefetch_size), _SHORT.pack(prefetch_count), bits(global_)
    )


def basic_consume(channel: int, queue: str, consumer_tag: str, **options: Unpack[Consume]) -> bytes:
    """``basic.consume`` (the tag is chosen by us so deliveries route at once)."""
    flags = ("no_local", "no_ack", "exclusive")
    return _optioned(channel, 60, 20, (queue, consumer_tag), options, *flags)


def basic_cancel(channel: int, consumer_tag: str, *, nowait: bool = False) -> bytes:
    """``basic.cancel``."""
    return method_frame(channel, 60, 30, shortstr(consumer_tag), bits(nowait))


def basic_cancel_ok(channel: int, consumer_tag: str) -> bytes:
    """``basic.cancel-ok`` answering a broker-initiated cancel."""
    return method_frame(channel, 60, 31, shortstr(consumer_tag))


_ACK = struct.Struct(">BHIHHQBB")


def basic_ack(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    """``basic.ack`` in a single ``struct.pack`` (it is sent often)."""
    return _ACK.pack(
        FRAME_METHOD, channel, 13, 60, 80, delivery_tag, 1 if multiple else 0, FRAME_END
    )


def basic_nack(
    channel: int, delivery_tag: int, multiple: bool = False, requeue: bool = True
) -> bytes:
    """``basic.nack``."""
    return method_frame(channel, 60, 120, _LONGLONG.pack(delivery_tag), bits(multiple, requeue))


def basic_reject(channel: int, delivery_tag: int, requeue: bool = True) -> bytes:
    """``basic.reject``."""
    return method_frame(channel, 60, 90, _LONGLONG.pack(delivery_tag), bits(requeue))


def confirm_select(channel: int) -> bytes:
    """``confirm.select``."""
    return method_frame(channel, 85, 10, bits(False))


# --------------------------------------------------------------------------- content


def _octet(value: int) -> bytes:
    return bytes((value,))


def _timestamp(value: int | datetime.datetime) -> bytes:
    """Seconds since the epoch; a naive datetime means UTC."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return _LONGLONG.pack(int(value.timestamp()))
    return _LONGLONG.pack(int(value))


#: The ``basic`` properties in wire order with their encoders; the first
#: has flag bit 15, each next one the bit below (AMQP 0-9-1 section 4.2.6.1).
_PROPERTY_ENCODERS: Final[tuple[tuple[str, Callable[[Any], bytes]], ...]] = (
    ("content_type", shortstr),
    ("content_encoding", shortstr),
    ("headers", table),
    ("delivery_mode", _octet),
    ("priority", _octet),
    ("correlation_id", shortstr),
    ("reply_to", shortstr),
    ("expiration", shortstr),
    ("message_id", shortstr),
    ("timestamp", _timestamp),
    ("type", shortstr),
    ("user_id", shortstr),
    ("app_id", shortstr),
)


def encode_properties(props: Properties | None) -> bytes:
    """The property flags and list of a content header."""
    if props is None:
        return b"\x00\x00"
    flags = 0
    parts: list[bytes] = []
    for bit, (name, encode) in enumerate(_PROPERTY_ENCODERS):
        value = getattr(props, name)
        if value is not None:
            flags |= 0x8000 >> bit
            parts.append(encode(value))
    return _SHORT.pack(flags) + b"".join(parts)


def basic_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: Properties | None,
    frame_max: int,
    *,
    mandatory: bool = False,
) -> bytes:
    """All frames of one publish: method, content header, body split to ``frame_max``."""
    method = method_frame(
        channel,
        60,
        40,
        _ticketed(exchange, routing_key),
        bits(mandatory, False),
    )
    size = len(body)
    header_payload = _CONTENT_HEADER.pack(60, 0, size) + encode_properties(properties)
    parts = [
        method,
        _FRAME_HEADER.pack(FRAME_HEADER, channel, len(header_payload)),
        header_payload,
        FRAME_END_BYTE,
    ]
    chunk = frame_max - FRAME_OVERHEAD if frame_max else size or 1
    for start in range(0, size, chunk):
        piece = body[start : start + chunk]
        parts.append(_FRAME_HEADER.pack(FRAME_BODY, channel, len(piece)))
        parts.append(piece)
        parts.append(FRAME_END_BYTE)
    return b"".join(parts)
