"""An AMQP 0-9-1 client for Trio (and anything else anyio runs on).

Built on anyio byte streams and the pamqp codec, with an aiormq-like API::

    async with amqp.connect("amqp://guest:guest@localhost/") as connection:
        async with connection.channel() as channel:
            await channel.basic_qos(1000)
            async with channel.basic_consume("q", arguments={"x-stream-offset": "first"}) as c:
                async for message in c:
                    await channel.basic_ack(message.delivery_tag)

This package knows nothing about the rest of the service and imports
nothing from it.

Layout (imports only go down the list; :mod:`amqp.contract` is the typed
interface each layer sees of its neighbours, so no module uses another's
private names): :mod:`~amqp.connection` (socket, reader, writer,
heartbeats) -> :mod:`~amqp.channel` (requests, confirms, routing to
consumers) -> :mod:`~amqp.consumer` (byte-bounded buffer, iteration) ->
:mod:`~amqp.contract`; below them the sans-IO parts: :mod:`~amqp.frames`
(bytes to events), :mod:`~amqp.table` (lenient properties and field tables),
:mod:`~amqp.codec` (events to bytes), :mod:`~amqp.message`,
:mod:`~amqp.errors`, :mod:`~amqp.url`.
"""

from .channel import Channel, QueueDeclareOk
from .connection import Connection, connect
from .consumer import Consumer, DeliveryListener
from .errors import (
    AccessRefused,
    AMQPConnectionError,
    AMQPError,
    AuthenticationError,
    CannotConnect,
    ChannelClosed,
    ConnectionClosedByClient,
    ConnectionClosedByServer,
    ConnectionForced,
    ConnectionLost,
    ConnectionNotAllowed,
    ConsumerCancelled,
    ConsumerOverflow,
    HeartbeatTimeout,
    NoFreeChannels,
    NotFound,
    PreconditionFailed,
    ProtocolError,
    PublishNacked,
    ResourceLocked,
)
from .message import DeliveredMessage, Properties
from .table import Unusable
from .url import ConnectionParameters, InvalidURL, parse_url

__all__ = [
    "AMQPConnectionError",
    "AMQPError",
    "AccessRefused",
    "AuthenticationError",
    "CannotConnect",
    "Channel",
    "ChannelClosed",
    "Connection",
    "ConnectionClosedByClient",
    "ConnectionClosedByServer",
    "ConnectionForced",
    "ConnectionLost",
    "ConnectionNotAllowed",
    "ConnectionParameters",
    "Consumer",
    "ConsumerCancelled",
    "ConsumerOverflow",
    "DeliveredMessage",
    "DeliveryListener",
    "HeartbeatTimeout",
    "InvalidURL",
    "NoFreeChannels",
    "NotFound",
    "PreconditionFailed",
    "Properties",
    "ProtocolError",
    "PublishNacked",
    "QueueDeclareOk",
    "ResourceLocked",
    "Unusable",
    "connect",
    "parse_url",
]
