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
"""

from .channel import Channel, QueueDeclareOk
from .connection import Connection, connect
from .consumer import Consumer
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
from .url import ConnectionParameters, parse_url

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
    "HeartbeatTimeout",
    "NoFreeChannels",
    "NotFound",
    "PreconditionFailed",
    "Properties",
    "ProtocolError",
    "PublishNacked",
    "QueueDeclareOk",
    "ResourceLocked",
    "connect",
    "parse_url",
]
