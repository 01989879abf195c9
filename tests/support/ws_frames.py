"""Parses what a websocket server sent to a raw client (server frames are unmasked).

A raw client (see ``RawWebSocket`` in ``tests/faults/conftest.py``) reads
bytes at its own pace; this turns them back into text frames and the close
frame, so a test can check every event it was sent and how it was closed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from trio_websocket import ConnectionClosed

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


@dataclass
class FrameReader:
    """Feed it bytes; it keeps complete text messages and the close code, if any."""

    texts: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    _buffer: bytearray = field(default_factory=bytearray)
    _fragments: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode in (OP_TEXT, OP_CONTINUATION):
                self._fragments += payload
                if fin:
                    self.texts.append(self._fragments.decode())
                    self._fragments.clear()
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode(errors="replace")

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        assert not buf[1] & 0x80, "a server frame must not be masked"
        size, head = buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, head = struct.unpack(">H", buf[2:4])[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, head = struct.unpack(">Q", buf[2:10])[0], 10
        if len(buf) < head + size:
            return None
        payload = bytes(buf[head : head + size])
        del buf[: head + size]
        return fin, opcode, payload

    def events(self) -> list[dict[str, Any]]:
        """The text messages as JSON objects (events of JSON bodies)."""
        return [json.loads(text) for text in self.texts]


def describe_close(closed: ConnectionClosed) -> str:
    """``"<code> <reason>"`` of a trio-websocket close (its reason may be missing)."""
    reason = closed.reason
    return "no close reason" if reason is None else f"{reason.code} {reason.reason}"
