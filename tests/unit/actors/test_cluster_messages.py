"""The sans-IO part of replica coordination: messages, their encoding, the membership table."""

from __future__ import annotations

import json

import pytest

from actors.cluster import messages
from actors.cluster.membership import Membership

MESSAGES: list[messages.Message] = [
    messages.ReplicaAlive("r1.ab", "r1", 1_700_000_000.5, 3),
    messages.ReplicaGone("r1.ab"),
    messages.StreamDeleted("r1.ab", 42, "req-1"),
    messages.Closed("r2.cd", "r1.ab", 42, "req-1"),
    messages.TakenOver("r2.cd", 42, messages.ConnectionKey(1_700_000_001.25, "r2.cd", "a1b2c3")),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_encoding(message: messages.Message) -> None:
    body = messages.encode(message)
    assert len(body) < 200  # small: one frame, cheap to fan out
    assert messages.decode(body) == message


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"t": "alive"}',
        b'{"t": "nope", "from": "x"}',
        b'{"t": "deleted", "from": "x", "stream": "1", "request": "r"}',
        b'{"t": "deleted", "from": "x", "stream": true, "request": "r"}',
        b'{"t": "taken", "from": "x", "stream": 1, "at": "now", "replica": "x", "conn": "c"}',
        b"\xff\xfe",
    ],
)
def test_anything_else_is_a_bad_message(body: bytes) -> None:
    with pytest.raises(messages.BadMessage):
        messages.decode(body)


def test_the_wire_form_names_the_sender() -> None:
    data = json.loads(messages.encode(messages.StreamDeleted("r1.ab", 7, "q")))
    assert data == {"t": "deleted", "from": "r1.ab", "stream": 7, "request": "q"}


def test_connection_keys_order_by_time_then_replica_then_id() -> None:
    older = messages.ConnectionKey(10.0, "r2", "zz")
    assert older < messages.ConnectionKey(10.5, "r1", "aa")
    assert messages.ConnectionKey(10.0, "r1", "zz") < older  # same time: the replica id decides
    assert messages.ConnectionKey(10.0, "r2", "aa") < older  # same replica: the connection id


def test_membership_expires_replicas_not_heard_from() -> None:
    table = Membership(expiry=7.0)
    assert table.heard(messages.ReplicaAlive("b.1", "b", 1.0, 0), now=100.0) is True
    assert table.heard(messages.ReplicaAlive("a.1", "a", 2.0, 5), now=101.0) is True
    assert table.heard(messages.ReplicaAlive("b.1", "b", 1.0, 2), now=104.0) is False  # a refresh
    assert [(m.name, m.websockets) for m in table.live(now=105.0)] == [("a", 5), ("b", 2)]
    assert [m.id for m in table.live(now=108.5)] == ["b.1"]  # a: 7.5 s of silence
    assert not table.is_live("a.1", now=108.5)
    assert (
        table.heard(messages.ReplicaAlive("a.1", "a", 2.0, 0), now=109.0) is True
    )  # back: new again


def test_membership_forgets_a_replica_that_left() -> None:
    table = Membership(expiry=7.0)
    table.heard(messages.ReplicaAlive("a.1", "a", 2.0, 0), now=1.0)
    table.forget("a.1")
    table.forget("a.1")  # idempotent
    assert table.live(now=1.0) == []


def test_membership_needs_a_positive_expiry() -> None:
    with pytest.raises(ValueError, match="positive"):
        Membership(expiry=0)
