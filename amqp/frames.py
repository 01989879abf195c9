"""The frame decoder: bytes from the socket in, complete AMQP events out.

This is the client's hot path. The reader hands it whatever one
``receive(65536)`` returned and gets back every *complete* event in it, with
no await in between, so one socket read (one Trio checkpoint) carries
hundreds of messages. The frames a consumer sees by the thousand --
``basic.deliver``, content headers, content bodies, and the broker's
``basic.ack`` for publisher confirms -- are decoded with precompiled
:mod:`struct` formats straight from the buffer, the content header's
properties by the lenient decoder of :mod:`amqp.table` (a publisher's bytes
never cost the connection); every other (rare) method frame goes through
pamqp.

Content is reassembled here as well: a ``basic.deliver`` frame creates a
:class:`~amqp.message.DeliveredMessage`, its content header fills the
properties, and its body frame(s) -- several when the body is larger than
``frame_max`` -- complete it. Only complete messages are emitted, so the
layers above never see a half message.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from pamqp import base as _pamqp_base
from pamqp import commands
from pamqp import exceptions as _pamqp_exceptions
from pamqp import frame as _pamqp_frame

from .codec import FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD
from .errors import ProtocolError
from .message import DeliveredMessage, ReturnedMessage
from .table import decode_properties


class Heartbeat:
    """A heartbeat frame (only its arrival matters)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<Heartbeat>"


HEARTBEAT: Final = Heartbeat()


class ConfirmAck(NamedTuple):
    """The broker's ``basic.ack`` for publisher confirms (decoded on the fast path)."""

    delivery_tag: int
    multiple: bool


#: What :meth:`FrameDecoder.feed` emits, per channel number.
Event = DeliveredMessage | ReturnedMessage | ConfirmAck | Heartbeat | _pamqp_base.Frame

_FRAME_HEADER = struct.Struct(">BHI")
_unpack_frame_header = _FRAME_HEADER.unpack_from
_unpack_method_id = struct.Struct(">I").unpack_from
_unpack_long = struct.Struct(">I").unpack_from
_unpack_longlong = struct.Struct(">Q").unpack_from
_unpack_body_size = struct.Struct(">Q").unpack_from

_BASIC_DELIVER: Final = (60 << 16) | 60
_BASIC_ACK: Final = (60 << 16) | 80
_BASIC_RETURN: Final = (60 << 16) | 50
_BASIC_GET_OK: Final = (60 << 16) | 71

# --------------------------------------------------------------------------- decoder


class _Content:
    """A message whose content header or body frames are still to come."""

    __slots__ = ("message", "parts", "received", "size")

    def __init__(self, message: DeliveredMessage | ReturnedMessage) -> None:
        self.message = message
        self.size = -1  # -1: the content header has not arrived yet
        self.received = 0
        self.parts: list[bytes] = []


class FrameDecoder:
    """Turns a byte stream into complete events; keeps the incomplete tail.

    Not thread-safe and not async: :meth:`feed` is a pure function of the
    bytes seen so far, which is also what makes it easy to test on crafted
    buffers split at arbitrary boundaries.
    """

    def __init__(self, max_frame_size: int = 131072) -> None:
        #: Largest acceptable frame payload; larger is a protocol error (and
        #: would otherwise let a broken peer make us buffer without bound).
        self.max_frame_size = max_frame_size
        self._tail: list[bytes] = []
        self._tail_size = 0
        self._need = 0  # bytes the tail must reach before a frame can complete
        self._content: dict[int, _Content] = {}
        self._at_start = True

    @property
    def buffered(self) -> int:
        """Bytes held back because they do not yet form a complete frame."""
        return self._tail_size

    def feed(self, chunk: bytes) -> list[tuple[int, Event]]:
        """Add bytes read from the socket; return every event they complete."""
        if self._tail:
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            if self._tail_size < self._need:
                # A large frame is still arriving: wait without re-copying.
                return []
            data = b"".join(self._tail)
            self._tail.clear()
        else:
            data = chunk
        if self._at_start and data:
            if data[:4] == b"AMQP"[: len(data)]:
                if len(data) < 8:
                    self._keep(data, 0, 8)
                    return []
                raise ProtocolError(
                    f"the broker does not speak AMQP 0-9-1 (it answered {data[:8]!r})"
                )
            self._at_start = False

        out: list[tuple[int, Event]] = []
        append = out.append
        content = self._content
        size_limit = self.max_frame_size
        total = len(data)
        pos = 0
        while total - pos >= 7:
            frame_type, channel, size = _unpack_frame_header(data, pos)
            end = pos + 7 + size  # index of the frame-end octet
            if end >= total:
                if size > size_limit:
                    raise ProtocolError(f"frame of {size} bytes exceeds frame_max {size_limit}")
                self._keep(data, pos, end + 1 - pos)
                return out
            if data[end] != FRAME_END:
                raise ProtocolError(f"frame end octet is {data[end]:#x}, not 0xce")
            start = pos + 7
            pos = end + 1

            if frame_type == FRAME_BODY:
                pending = content.get(channel)
                if pending is None or pending.size < 0:
                    raise ProtocolError(f"unexpected content body on channel {channel}")
                if not pending.parts and size == pending.size:
                    pending.message.body = data[start:end]
                else:
                    pending.parts.append(data[start:end])
                    pending.received += size
                    if pending.received < pending.size:
                        continue
                    if pending.received > pending.size:
                        raise ProtocolError(f"content body overruns its size on {channel}")
                    pending.message.body = b"".join(pending.parts)
                del content[channel]
                append((channel, pending.message))

            elif frame_type == FRAME_HEADER:
                pending = content.get(channel)
                if pending is None or pending.size >= 0:
                    raise ProtocolError(f"unexpected content header on channel {channel}")
                if size < 12:  # class, weight, body size: without them we lose step
                    raise ProtocolError("content header frame too short")
                (body_size,) = _unpack_body_size(data, start + 4)
                # The properties are whatever the publisher wrote: decoded
                # leniently, they affect this message alone (see amqp.table).
                message = pending.message
                message.properties, error = decode_properties(data[start + 12 : end])
                if error is not None and type(message) is DeliveredMessage:
                    message.properties_error = error
                if body_size == 0:
                    del content[channel]
                    append((channel, message))
                else:
                    pending.size = body_size

            elif frame_type == FRAME_METHOD:
                if size < 4:
                    raise ProtocolError("method frame too short")
                (method_id,) = _unpack_method_id(data, start)
                if method_id == _BASIC_DELIVER:
                    if channel in content:
                        raise ProtocolError(f"new method before content completed on {channel}")
                    content[channel] = _Content(_decode_deliver(data, start + 4, end))
                elif method_id == _BASIC_ACK:
                    if size < 13:
                        raise ProtocolError("basic.ack frame too short")
                    append(
                        (
                            channel,
                            ConfirmAck(
                                _unpack_longlong(data, start + 4)[0], bool(data[start + 12] & 1)
                            ),
                        )
                    )
                else:
                    method = _decode_method(data[start - 7 : end + 1])
                    if method_id in (_BASIC_RETURN, _BASIC_GET_OK):
                        if channel in content:
                            raise ProtocolError(f"new method before content completed on {channel}")
                        content[channel] = _Content(ReturnedMessage(method))
                    else:
                        append((channel, method))

            elif frame_type == FRAME_HEARTBEAT:
                append((channel, HEARTBEAT))
            else:
                raise ProtocolError(f"unknown frame type {frame_type}")

        if pos < total:
            self._keep(data, pos, 7)
        else:
            self._tail_size = 0
            self._need = 0
        return out

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        rest = data[pos:]
        self._tail = [rest]
        self._tail_size = len(rest)
        self._need = need


def _decode_deliver(data: bytes, offset: int, end: int) -> DeliveredMessage:
    """``basic.deliver`` arguments, decoded with struct (the per-message method)."""
    try:
        length = data[offset]
        offset += 1
        consumer_tag = data[offset : offset + length].decode("utf-8")
        offset += length
        (delivery_tag,) = _unpack_longlong(data, offset)
        redelivered = bool(data[offset + 8] & 1)
        offset += 9
        # The exchange and routing key are the publisher's: never fatal.
        length = data[offset]
        offset += 1
        exchange = data[offset : offset + length].decode("utf-8", "replace")
        offset += length
        length = data[offset]
        offset += 1
        routing_key = data[offset : offset + length].decode("utf-8", "replace")
        offset += length
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed basic.deliver: {exc}") from exc
    if offset > end:
        raise ProtocolError("basic.deliver overruns its frame")
    return DeliveredMessage(consumer_tag, delivery_tag, redelivered, exchange, routing_key)


#: ``(class_id, method_id)`` of connection.close and channel.close.
_CLOSE_METHODS: Final = {(10, 50): commands.Connection.Close, (20, 40): commands.Channel.Close}
_CLOSE_HEAD = struct.Struct(">HHHB")  # class, method, reply code, reply text length


def _decode_method(frame: bytes) -> _pamqp_base.Frame:
    """Any other method frame, through pamqp (it does not validate names on decode)."""
    close = _decode_close(frame)
    if close is not None:
        return close
    try:
        _consumed, _channel, method = _pamqp_frame.unmarshal(frame)
    except _pamqp_exceptions.UnmarshalingException as exc:
        raise ProtocolError(f"cannot decode method frame: {exc}") from exc
    if not isinstance(method, _pamqp_base.Frame):
        raise ProtocolError(f"expected a method frame, got {method!r}")
    return method


def _decode_close(frame: bytes) -> _pamqp_base.Frame | None:
    """connection.close / channel.close, whose reply text may be cut mid-character.

    RabbitMQ truncates its reply text to 255 bytes, which can split a
    multi-byte character of a quoted queue name; pamqp's strict UTF-8
    decoding would turn the broker's explanation into a protocol error and
    cost the whole connection. Decode the text leniently instead.
    """
    if len(frame) < 7 + _CLOSE_HEAD.size:
        return None
    class_id, method_id, reply_code, length = _CLOSE_HEAD.unpack_from(frame, 7)
    method = _CLOSE_METHODS.get((class_id, method_id))
    if method is None:
        return None
    start = 7 + _CLOSE_HEAD.size
    text = frame[start : start + length].decode("utf-8", errors="replace")
    try:
        failed_class, failed_method = struct.unpack_from(">HH", frame, start + length)
    except struct.error as exc:
        raise ProtocolError(f"malformed close method: {exc}") from exc
    return method(reply_code, text, failed_class, failed_method)
