"""A minimal AMQP 0-9-1 publisher over a plain socket, sending frames exactly as given.

The service's own client (``amqp/``) encodes properties from typed values,
so it cannot send what a hostile or buggy publisher can: header names that
are not UTF-8, field tags that do not exist, timestamps past year 9999,
tables nested thousands deep. This client takes the *encoded* property list
and puts it on the wire untouched. It also pipelines publishes (thousands in
flight, confirms collected afterwards), which makes RabbitMQ write a stream
queue in big chunks, as a busy Account Server would.

Only what the tests need: PLAIN login, one channel in confirm mode,
``basic.publish``, confirms, and the broker's refusals (``channel.close`` or
``connection.close``) surfaced as :class:`Refused`.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import trio

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
CONFIRM_TIMEOUT = 30.0


class Refused(Exception):
    """The broker closed the channel or the connection (or the socket ended)."""

    def __init__(self, what: str, code: int, text: str) -> None:
        super().__init__(f"{what} closed by the broker: {code} {text}")
        self.code = code
        self.text = text


# --------------------------------------------------------------------------- #
# Encoding (values are bytes already; these only add the AMQP framing)


def shortstr(raw: bytes) -> bytes:
    assert len(raw) < 256, len(raw)
    return bytes([len(raw)]) + raw


def longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def method(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", FRAME_METHOD, channel, len(payload)) + payload + FRAME_END


def content_header(channel: int, body_size: int, properties: bytes) -> bytes:
    """``properties`` is the property flags word(s) followed by the property list."""
    payload = struct.pack(">HHQ", 60, 0, body_size) + properties
    return struct.pack(">BHI", FRAME_HEADER, channel, len(payload)) + payload + FRAME_END


def body_frames(channel: int, body: bytes, frame_max: int) -> bytes:
    room = frame_max - 8
    out = bytearray()
    for start in range(0, len(body), room):
        piece = body[start : start + room]
        out += struct.pack(">BHI", FRAME_BODY, channel, len(piece)) + piece + FRAME_END
    return bytes(out)


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
    frame_max: int,
    *,
    mandatory: bool = False,
) -> bytes:
    flags = b"\x01" if mandatory else b"\x00"  # bit 0 mandatory, bit 1 immediate (never)
    args = b"\x00\x00" + shortstr(exchange.encode()) + shortstr(routing_key.encode()) + flags
    return (
        method(channel, 60, 40, args)
        + content_header(channel, len(body), properties)
        + body_frames(channel, body, frame_max)
    )


NO_PROPERTIES = b"\x00\x00"


# --------------------------------------------------------------------------- #
# The connection


@dataclass
class _Frame:
    kind: int
    channel: int
    payload: bytes


class RawPublisher:
    """One AMQP connection with one channel in confirm mode."""

    CHANNEL = 1

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self.frame_max = 131072
        self._published = 0
        self._confirmed = 0
        self._nacked: set[int] = set()
        #: Sequence numbers of mandatory publishes the broker returned unroutable.
        self._returned: set[int] = set()
        self._ended = False  # the broker closed the connection (or the socket ended)

    @classmethod
    async def connect(cls, amqp_url: str, name: str = "ess-test-raw-publisher") -> RawPublisher:
        parts = urlsplit(amqp_url)
        stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 5672)
        publisher = cls(stream)
        try:
            with trio.fail_after(CONFIRM_TIMEOUT):
                await publisher._handshake(
                    unquote(parts.username or "guest"),
                    unquote(parts.password or "guest"),
                    unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
                    name,
                )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return publisher

    async def _handshake(self, user: str, password: str, vhost: str, name: str) -> None:
        await self._stream.send_all(b"AMQP\x00\x00\x09\x01")
        await self._expect_method(10, 10)  # connection.start
        client_properties = (shortstr(b"connection_name") + b"S" + longstr(name.encode())) + (
            shortstr(b"product") + b"S" + longstr(b"ess tests raw publisher")
        )
        start_ok = (
            longstr(client_properties)
            + shortstr(b"PLAIN")
            + longstr(b"\x00" + user.encode() + b"\x00" + password.encode())
            + shortstr(b"en_US")
        )
        await self._stream.send_all(method(0, 10, 11, start_ok))
        tune = await self._expect_method(10, 30)
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", tune[4:12])
        self.frame_max = frame_max or 131072
        await self._stream.send_all(
            method(0, 10, 31, struct.pack(">HIH", channel_max, self.frame_max, 0))
        )
        await self._stream.send_all(method(0, 10, 40, shortstr(vhost.encode()) + b"\x00\x00"))
        await self._expect_method(10, 41)
        await self._stream.send_all(method(self.CHANNEL, 20, 10, b"\x00"))
        await self._expect_method(20, 11)
        await self._stream.send_all(method(self.CHANNEL, 85, 10, b"\x00"))
        await self._expect_method(85, 11)

    async def aclose(self) -> None:
        """``connection.close`` and a short wait for its ``close-ok`` (the broker then logs no
        "unexpectedly closed" warning), unless the broker already ended the connection."""
        if not self._ended:
            with trio.move_on_after(2), contextlib.suppress(Refused, trio.BrokenResourceError):
                close = struct.pack(">H", 200) + shortstr(b"done") + struct.pack(">HH", 0, 0)
                await self._stream.send_all(method(0, 10, 50, close))
                await self._expect_method(10, 51)
        await trio.aclose_forcefully(self._stream)

    # -- publishing ----------------------------------------------------------

    def frames(self, routing_key: str, body: bytes, properties: bytes, *, mandatory: bool) -> bytes:
        """The frames of one publish to the default exchange (straight into the queue)."""
        return publish_frames(
            self.CHANNEL, "", routing_key, properties, body, self.frame_max, mandatory=mandatory
        )

    async def publish(
        self, routing_key: str, body: bytes, properties: bytes = NO_PROPERTIES
    ) -> bool:
        """Publish one message and wait for its confirm: True if it was stored.

        False if nacked, or returned unroutable: published as ``mandatory``,
        because a broker that is starting up confirms a message for a queue
        whose process is not up yet, and drops it. Raises :class:`Refused`
        when the broker closes the channel or the connection instead (the
        publisher is unusable then: reconnect).
        """
        await self._stream.send_all(self.frames(routing_key, body, properties, mandatory=True))
        self._published += 1
        await self.wait_confirmed(self._published)
        return self._published not in self._nacked and self._published not in self._returned

    async def publish_pipelined(
        self, routing_key: str, bodies: list[bytes], window: int = 2000, batch: int = 500
    ) -> None:
        """Publish in order with up to ``window`` unconfirmed; all must be acked.

        Sending ``batch`` publishes per write keeps many in the broker's
        mailbox at once, so the stream writer stores them as big chunks.
        """
        for start in range(0, len(bodies), batch):
            data = b"".join(
                self.frames(routing_key, body, NO_PROPERTIES, mandatory=False)
                for body in bodies[start : start + batch]
            )
            await self._stream.send_all(data)
            self._published += len(bodies[start : start + batch])
            await self.wait_confirmed(self._published - window)
        await self.wait_confirmed(self._published)
        assert not self._nacked, f"{len(self._nacked)} publishes nacked"

    async def wait_confirmed(self, sequence: int) -> None:
        with trio.fail_after(CONFIRM_TIMEOUT):
            while self._confirmed < sequence:
                frame = await self._read_frame()
                if frame.kind != FRAME_METHOD:
                    continue
                class_id, method_id = struct.unpack(">HH", frame.payload[:4])
                if (class_id, method_id) in ((60, 80), (60, 120)):  # basic.ack / basic.nack
                    (tag,) = struct.unpack(">Q", frame.payload[4:12])
                    multiple = bool(frame.payload[12] & 1)
                    first = self._confirmed + 1 if multiple else tag
                    if method_id == 120:
                        self._nacked.update(range(first, tag + 1))
                    # RabbitMQ confirms in publish order: a tag covers all before it.
                    self._confirmed = max(self._confirmed, tag)
                elif (class_id, method_id) == (60, 50):  # basic.return: unroutable
                    # It comes before the confirm of its publish (its content follows).
                    self._returned.add(self._confirmed + 1)
                else:
                    await self._on_other_method(frame, class_id, method_id)

    async def _on_other_method(self, frame: _Frame, class_id: int, method_id: int) -> None:
        if (class_id, method_id) in ((20, 40), (10, 50)):  # channel.close / connection.close
            (code,) = struct.unpack(">H", frame.payload[4:6])
            text = frame.payload[7 : 7 + frame.payload[6]].decode(errors="replace")
            what = "channel" if class_id == 20 else "connection"
            self._ended = True  # either way this publisher is done (one channel)
            raise Refused(what, code, text)
        # connection.blocked/unblocked and anything else: not ours to act on.

    # -- consuming -----------------------------------------------------------

    async def read_stream(
        self, queue: str, stop: Callable[[bytes], bool], timeout: float = 60.0
    ) -> list[bytes]:
        """Every body in stream ``queue`` from its first offset up to the one ``stop`` accepts.

        The ground truth of what the broker stored: a publisher that retries
        after a lost confirm may have stored an event twice. Use a publisher of
        its own (this puts the channel in consuming mode).
        """
        args = struct.pack(">IHB", 0, 1000, 0)  # basic.qos: prefetch 1000 on this channel
        await self._stream.send_all(method(self.CHANNEL, 60, 10, args))
        await self._expect_method(60, 11)
        offset = b"x-stream-offset" + b"S" + longstr(b"first")
        consume = (
            b"\x00\x00"
            + shortstr(queue.encode())
            + shortstr(b"ess-test-reader")
            + b"\x00"  # no-local, no-ack=0 (manual acks), exclusive, nowait: all clear
            + longstr(bytes([len(b"x-stream-offset")]) + offset)
        )
        await self._stream.send_all(method(self.CHANNEL, 60, 20, consume))
        await self._expect_method(60, 21)
        bodies: list[bytes] = []
        with trio.fail_after(timeout):
            while True:
                deliver = await self._expect_method(60, 60)  # basic.deliver
                tag_at = 5 + deliver[4]  # after class, method, consumer tag
                (tag,) = struct.unpack(">Q", deliver[tag_at : tag_at + 8])
                header = await self._read_frame()
                assert header.kind == FRAME_HEADER, header
                (size,) = struct.unpack(">Q", header.payload[4:12])
                body = b""
                while len(body) < size:
                    frame = await self._read_frame()
                    assert frame.kind == FRAME_BODY, frame
                    body += frame.payload
                bodies.append(body)
                ack = struct.pack(">QB", tag, 0)
                await self._stream.send_all(method(self.CHANNEL, 60, 80, ack))
                if stop(body):
                    return bodies

    # -- reading -------------------------------------------------------------

    async def _expect_method(self, class_id: int, method_id: int) -> bytes:
        while True:
            frame = await self._read_frame()
            if frame.kind != FRAME_METHOD:
                continue
            got = struct.unpack(">HH", frame.payload[:4])
            if got == (class_id, method_id):
                return frame.payload
            await self._on_other_method(frame, *got)

    async def _read_frame(self) -> _Frame:
        while True:
            if len(self._buffer) >= 7:
                kind, channel, size = struct.unpack(">BHI", self._buffer[:7])
                if len(self._buffer) >= 8 + size:
                    payload = bytes(self._buffer[7 : 7 + size])
                    assert self._buffer[7 + size : 8 + size] == FRAME_END, "bad frame end"
                    del self._buffer[: 8 + size]
                    return _Frame(kind, channel, payload)
            try:
                chunk = await self._stream.receive_some(65536)
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                self._ended = True
                raise Refused("socket", 0, "the broker ended the TCP connection")
            self._buffer += chunk
