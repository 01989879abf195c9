"""The control messages replicas exchange, and their encoding (sans-IO).

Each message is one small JSON object on the control exchange (a fanout:
every replica receives every message, its own included). ``"from"`` is the
sender's replica id (its name plus a random suffix, unique per process
run). Every message is idempotent: receiving it twice does what receiving
it once does. What each means, who sends it and what happens when one is
lost, late or duplicated is documented on each class.

Anything that does not decode (another version, garbage) is ignored by the
receiver: :func:`decode` raises :class:`BadMessage`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple


class ConnectionKey(NamedTuple):
    """Orders websocket connections of one stream across replicas: the newest wins.

    Compared as a tuple: the connection's start time (wall clock), then the
    replica id and the connection id, so two replicas always agree on which
    of two connections is the older one, even with equal times.
    """

    started_at: float
    replica: str
    connection: str


@dataclass(frozen=True, slots=True)
class ReplicaAlive:
    """ "I am alive": sent by every replica every few seconds, and at once when it connects.

    Lost or late: the sender expires from the others' membership tables only
    after several intervals without one. Duplicated: refreshes the entry.
    """

    sender: str
    name: str
    started_at: float
    websockets: int


@dataclass(frozen=True, slots=True)
class ReplicaGone:
    """ "I am stopping": sent once on shutdown so that nobody waits for it.

    Lost: the replica expires from the tables after the alive timeout, and a
    DELETE meanwhile waits at most the confirm bound for it.
    """

    sender: str


@dataclass(frozen=True, slots=True)
class StreamDeleted:
    """ "Stream ``stream`` was deleted": sent by the replica that answers the DELETE.

    Sent after the registry record is gone. Each receiver closes the
    stream's websockets (1000) and answers :class:`Closed`, also when it had
    none. Duplicated: closing again is a no-op, the answer is sent again.
    Lost (or the receiver is cut off): the requester stops waiting after the
    bound, and the receiver closes the stream when it re-reads the registry
    after reconnecting. Late: the stream is closed late; no new websocket is
    served meanwhile by a replica that knows it was cut off.
    """

    sender: str
    stream: int
    request: str


@dataclass(frozen=True, slots=True)
class Closed:
    """ "I closed the websockets of ``stream``": the answer to :class:`StreamDeleted`.

    Sent by each receiver, addressed to the requester (``to``); others ignore
    it. Lost or late: the requester answers the DELETE after the bound
    anyway. Duplicated or for an unknown request: ignored.
    """

    sender: str
    to: str
    stream: int
    request: str


@dataclass(frozen=True, slots=True)
class TakenOver:
    """ "A new websocket of ``stream`` was admitted": sent by the replica that admitted it.

    Every other replica closes its connections of the stream that are older
    than ``key`` with 4001. Duplicated: nothing older is left the second time.
    Lost: an older connection on another replica stays open (two connections
    of one stream) until the next takeover. Late: it still only closes older
    connections, never a newer one.
    """

    sender: str
    stream: int
    key: ConnectionKey


Message = ReplicaAlive | ReplicaGone | StreamDeleted | Closed | TakenOver


class BadMessage(ValueError):
    """A control message that cannot be decoded; the receiver ignores it."""


def encode(message: Message) -> bytes:
    """The compact JSON form of ``message``."""
    data: dict[str, object]
    match message:
        case ReplicaAlive():
            data = {
                "t": "alive",
                "name": message.name,
                "started": message.started_at,
                "websockets": message.websockets,
            }
        case ReplicaGone():
            data = {"t": "gone"}
        case StreamDeleted():
            data = {"t": "deleted", "stream": message.stream, "request": message.request}
        case Closed():
            data = {
                "t": "closed",
                "to": message.to,
                "stream": message.stream,
                "request": message.request,
            }
        case TakenOver():
            key = message.key
            data = {
                "t": "taken",
                "stream": message.stream,
                "at": key.started_at,
                "replica": key.replica,
                "conn": key.connection,
            }
    data["from"] = message.sender
    return json.dumps(data, separators=(",", ":")).encode()


def decode(body: bytes) -> Message:
    """The message in ``body``; :class:`BadMessage` if it is not one."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise BadMessage("not a JSON object")
        kind = data["t"]
        sender = _text(data, "from")
        if kind == "alive":
            return ReplicaAlive(
                sender, _text(data, "name"), _number(data, "started"), _integer(data, "websockets")
            )
        if kind == "gone":
            return ReplicaGone(sender)
        if kind == "deleted":
            return StreamDeleted(sender, _integer(data, "stream"), _text(data, "request"))
        if kind == "closed":
            return Closed(
                sender, _text(data, "to"), _integer(data, "stream"), _text(data, "request")
            )
        if kind == "taken":
            key = ConnectionKey(_number(data, "at"), _text(data, "replica"), _text(data, "conn"))
            return TakenOver(sender, _integer(data, "stream"), key)
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadMessage(f"undecodable control message: {error}") from error
    raise BadMessage(f"unknown control message type {kind!r}")


def _text(data: dict[str, object], field: str) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise BadMessage(f"{field} is not a string")
    return value


def _integer(data: dict[str, object], field: str) -> int:
    value = data[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadMessage(f"{field} is not an integer")
    return value


def _number(data: dict[str, object], field: str) -> float:
    value = data[field]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadMessage(f"{field} is not a number")
    return float(value)
