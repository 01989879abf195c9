"""One stream consumer of the RabbitMQ adapter, on its own channel.

Acknowledgements are batched per subscription: ``ack(offset)`` turns into
one ``basic.ack`` with ``multiple`` once ``prefetch // 4`` deliveries are
pending, or right away when the consumer's buffer is empty (nothing more to
deliver right now) -- so a slow, steady stream is acknowledged promptly and
a fast one costs one ack frame per quarter window.
"""

from __future__ import annotations

import datetime
from collections import deque
from typing import Any

import amqp
from actors.adapters.rabbitmq_errors import broker_errors
from actors.ports.broker import (
    BrokerError,
    BrokerUnavailable,
    FromNext,
    FromOffset,
    FromTimestamp,
    StartPosition,
    StreamEvent,
)


def offset_argument(start: StartPosition) -> Any:
    """The ``x-stream-offset`` value for a start position."""
    if isinstance(start, FromOffset):
        if start.offset < 0:
            raise ValueError("stream offsets are >= 0")
        return start.offset
    if isinstance(start, FromTimestamp):
        return datetime.datetime.fromtimestamp(max(start.seconds, 0), tz=datetime.UTC)
    if isinstance(start, FromNext):
        return "next"
    raise TypeError(f"unknown start position {start!r}")


def _timestamp_ms(message: amqp.DeliveredMessage) -> int | None:
    """The event's own time: ``timestamp_in_ms`` header, else AMQP timestamp * 1000."""
    properties = message.properties
    headers = properties.headers
    if headers:
        value = headers.get("timestamp_in_ms")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    return int(float(value))
                except (ValueError, OverflowError):
                    pass
        elif isinstance(value, float) and value == value:
            return int(value)
    timestamp = properties.timestamp
    if isinstance(timestamp, datetime.datetime):
        return int(timestamp.timestamp() * 1000)
    if timestamp is not None:
        return int(timestamp) * 1000
    return None


class RabbitMQSubscription:
    """A live stream consumer on its own channel (implements ``Subscription``)."""

    def __init__(self, channel: amqp.Channel, consumer: amqp.Consumer, prefetch: int) -> None:
        self._channel = channel
        self._consumer = consumer
        #: (offset, delivery tag) of deliveries handed out and not yet acked.
        self._unacked: deque[tuple[int, int]] = deque()
        self._ack_tag = 0
        self._ack_pending = 0
        self._ack_threshold = max(1, prefetch // 4)
        #: Acknowledgement frames sent (observable by tests and metrics).
        self.acks_sent = 0

    def __aiter__(self) -> RabbitMQSubscription:
        return self

    @property
    def buffered(self) -> int:
        return self._consumer.buffered

    async def __anext__(self) -> StreamEvent:
        consumer = self._consumer
        if self._ack_pending and consumer.buffered == 0:
            await self._flush()
        with broker_errors(f"consuming {consumer.queue!r}", channel_closed=BrokerUnavailable):
            message = await consumer.__anext__()
        offset = message.headers.get("x-stream-offset")
        if not isinstance(offset, int):
            raise BrokerError(f"{message.routing_key!r} is not a stream queue (no x-stream-offset)")
        self._unacked.append((offset, message.delivery_tag))
        return StreamEvent(offset, message.body, _timestamp_ms(message))

    async def ack(self, offset: int) -> None:
        """Acknowledge up to ``offset``; sent batched (see the module docstring)."""
        unacked = self._unacked
        while unacked and unacked[0][0] <= offset:
            _, self._ack_tag = unacked.popleft()
            self._ack_pending += 1
        if self._ack_pending and (
            self._ack_pending >= self._ack_threshold or self._consumer.buffered == 0
        ):
            await self._flush()

    async def _flush(self) -> None:
        tag = self._ack_tag
        self._ack_pending = 0
        with broker_errors("cannot acknowledge", channel_closed=BrokerUnavailable):
            await self._channel.basic_ack(tag, multiple=True)
        self.acks_sent += 1
