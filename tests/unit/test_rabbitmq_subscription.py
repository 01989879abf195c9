"""How a RabbitMQ subscription reads each message and how it ends, without a socket."""

from __future__ import annotations

import datetime
import logging
from collections import deque
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import amqp
from actors.adapters.rabbitmq_subscription import (
    MAX_TIMESTAMP_MS,
    RabbitMQSubscription,
    event_timestamp_ms,
)
from actors.ports.broker import BrokerUnavailable, StreamEvent, StreamNotFound, SubscriptionLost

UTC = datetime.UTC
FALLBACK = 1_700_000_003  # the AMQP timestamp property, in seconds


class Marker:
    """Stands for any value of a type the decoder may hand over (e.g. an undecodable field)."""


def message(
    tag: int, headers: Any = None, timestamp: Any = None, body: bytes = b"{}"
) -> amqp.DeliveredMessage:
    properties = amqp.Properties(headers=headers, timestamp=timestamp)
    return amqp.DeliveredMessage("ctag", tag, False, "", "rk", properties, body)


def header_ms(value: object, timestamp: object = None) -> int | None:
    return event_timestamp_ms(message(1, {"timestamp_in_ms": value}, timestamp))


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000_001, 1_700_000_000_001),
        (0, 0),
        (MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS),
        ("1700000000002", 1_700_000_000_002),
        (" 1700000000002\n", 1_700_000_000_002),
        (b"1700000000003", 1_700_000_000_003),
    ],
)
def test_a_usable_header_is_the_event_time(value: object, expected: int) -> None:
    assert header_ms(value, FALLBACK) == expected


@pytest.mark.parametrize(
    "value",
    [
        MAX_TIMESTAMP_MS + 1,
        2**63 - 1,
        10**40,
        -1,
        -(2**63),
        "-5",
        "12abc",
        "1.7e12",
        "",
        "1_000",
        "\u0663\u0664\u0665",  # Arabic-Indic digits: str.isdigit says yes, they are no timestamp
        "9" * 5000,  # beyond int()'s digit limit
        1.7e12,
        float("nan"),
        float("inf"),
        b"\xff\xfe",
        "\u0661".encode(),  # non-ASCII bytes
        True,
        None,
        datetime.datetime(2024, 1, 1, tzinfo=UTC),
        [1, 2],
        {"nested": 1},
        Marker(),
    ],
)
def test_an_unusable_header_counts_as_absent(value: object) -> None:
    assert header_ms(value, FALLBACK) == FALLBACK * 1000
    assert header_ms(value) is None


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (FALLBACK, FALLBACK * 1000),
        (0, 0),
        (datetime.datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=UTC), 1_704_067_200_123),
        (datetime.datetime(2024, 1, 1), 1_704_067_200_000),  # naive means UTC
        (datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), MAX_TIMESTAMP_MS),
    ],
)
def test_the_timestamp_property_in_milliseconds(timestamp: object, expected: int) -> None:
    assert event_timestamp_ms(message(1, timestamp=timestamp)) == expected


@pytest.mark.parametrize(
    "timestamp",
    [
        -1,
        253_402_300_800,  # year 10000
        2**64 - 1,
        True,
        1.5,
        "1700000000",
        b"1700000000",
        datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5))),
        Marker(),
    ],
)
def test_an_unusable_timestamp_property_counts_as_absent(timestamp: object) -> None:
    assert event_timestamp_ms(message(1, timestamp=timestamp)) is None


def test_headers_that_are_not_a_table_count_as_absent() -> None:
    assert event_timestamp_ms(message(1, headers=Marker(), timestamp=FALLBACK)) == FALLBACK * 1000


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(),
    st.binary(),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.lists(st.integers(), max_size=3),
    st.builds(Marker),
)


@given(header=ANY_VALUE, timestamp=ANY_VALUE)
def test_any_header_and_property_give_a_time_in_range_or_none(
    header: object, timestamp: object
) -> None:
    ms = header_ms(header, timestamp)
    assert ms is None or (isinstance(ms, int) and 0 <= ms <= MAX_TIMESTAMP_MS)


@given(st.integers(min_value=0, max_value=MAX_TIMESTAMP_MS))
def test_every_time_in_range_round_trips_as_int_text_and_bytes(ms: int) -> None:
    assert header_ms(ms) == header_ms(str(ms)) == header_ms(str(ms).encode()) == ms


# --------------------------------------------------------------------------- the subscription


class FakeConsumer:
    """Hands out a script of messages and errors, like ``amqp.Consumer`` iteration."""

    queue = "rk"

    def __init__(self, *script: amqp.DeliveredMessage | Exception) -> None:
        self.script: deque[amqp.DeliveredMessage | Exception] = deque(script)
        self.listener: amqp.DeliveryListener | None = None

    @property
    def buffered(self) -> int:
        return sum(isinstance(item, amqp.DeliveredMessage) for item in self.script)

    async def __anext__(self) -> amqp.DeliveredMessage:
        if not self.script:
            raise StopAsyncIteration
        item = self.script.popleft()
        if isinstance(item, Exception):
            raise item
        return item


class FakeChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack_nowait(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))


def stream_message(tag: int, offset: object) -> amqp.DeliveredMessage:
    return message(tag, {"x-stream-offset": offset}, body=b"%d" % tag)


def subscription(
    consumer: FakeConsumer, *, exists: bool = True, prefetch: int = 100
) -> tuple[RabbitMQSubscription, FakeChannel]:
    channel = FakeChannel()

    async def queue_exists() -> bool:
        return exists

    return RabbitMQSubscription(channel, consumer, prefetch, queue_exists), channel


async def test_a_broker_cancel_while_the_queue_exists_loses_the_subscription() -> None:
    sub, _ = subscription(FakeConsumer(amqp.ConsumerCancelled("leader moved")), exists=True)
    with pytest.raises(SubscriptionLost):
        await sub.__anext__()


async def test_a_broker_cancel_of_a_deleted_queue_is_stream_not_found() -> None:
    sub, _ = subscription(FakeConsumer(amqp.ConsumerCancelled("deleted")), exists=False)
    with pytest.raises(StreamNotFound):
        await sub.__anext__()


async def test_an_overflowing_consumer_loses_the_subscription_after_its_buffer() -> None:
    sub, _ = subscription(FakeConsumer(stream_message(1, 0), amqp.ConsumerOverflow("full")))
    assert (await sub.__anext__()).offset == 0
    with pytest.raises(SubscriptionLost):
        await sub.__anext__()


async def test_a_closed_channel_while_consuming_is_broker_unavailable_after_the_buffer() -> None:
    closed = amqp.ChannelClosed(406, "PRECONDITION_FAILED - unknown delivery tag")
    sub, _ = subscription(FakeConsumer(stream_message(1, 0), closed))
    assert (await sub.__anext__()).offset == 0
    with pytest.raises(BrokerUnavailable, match="consuming 'rk'") as raised:
        await sub.__anext__()
    assert raised.value.__cause__ is closed


async def test_the_end_of_the_consumer_ends_the_iteration_untranslated() -> None:
    sub, _ = subscription(FakeConsumer(stream_message(1, 0)))
    assert [event.offset async for event in sub] == [0]


@pytest.mark.parametrize("bad", [None, "7", -1, True, 1.0, Marker()])
async def test_a_message_without_a_usable_offset_is_skipped_and_acked_with_its_neighbour(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = FakeConsumer(
        stream_message(1, 0),
        stream_message(2, bad),
        stream_message(3, bad),
        stream_message(4, 3),
    )
    sub, channel = subscription(consumer)
    with caplog.at_level(logging.DEBUG, logger="actors.adapters.rabbitmq_subscription"):
        first = await sub.__anext__()
        second = await sub.__anext__()
    assert (first, second) == (StreamEvent(0, b"1", None), StreamEvent(3, b"4", None))
    assert sub.skipped == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per run of skipped messages
    assert "after offset 0" in warnings[0].getMessage()
    await sub.ack(0)  # the skipped tags 2 and 3 ride on offset 0's ack
    assert channel.acks == [(3, True)]
    await sub.ack(3)
    assert channel.acks == [(3, True), (4, True)]


async def test_skipped_messages_alone_are_acked_so_the_window_never_stalls() -> None:
    consumer = FakeConsumer(stream_message(1, None), stream_message(2, None), stream_message(3, 0))
    sub, channel = subscription(consumer, prefetch=8)
    assert (await sub.__anext__()).offset == 0
    assert channel.acks == [(2, True)]  # a quarter window of skipped messages: acked


async def test_a_subscription_of_only_unusable_messages_ends_only_with_its_consumer() -> None:
    sub, channel = subscription(FakeConsumer(stream_message(1, None), stream_message(2, "x")))
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()
    assert sub.skipped == 2
    assert channel.acks == [(2, True)]
