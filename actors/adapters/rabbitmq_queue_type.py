"""Is an existing queue a stream queue? Asked without changing it.

AMQP 0-9-1 has no "describe queue": a passive declare says only that a
queue exists. What does tell the type is an *equivalence check*: a
non-passive ``queue.declare`` of an existing queue is a no-op when its flags
and arguments match, and a ``406 PRECONDITION_FAILED`` that closes only that
channel when they do not. Observed on RabbitMQ 3.10 (see
``/work/notes/broker.md`` and the tests in ``tests/integration``):

- the check runs in a fixed order: ``durable``, ``auto_delete``, then the
  arguments in the order of ``rabbit_amqqueue:declare_args/0``, where
  ``x-max-length-bytes`` (and eleven arguments a stream refuses) come
  *before* ``x-queue-type`` and ``x-max-age`` and the other stream
  arguments come *after* it;
- the 406 names the first argument that differs: ``inequivalent arg
  'x-queue-type' ... received the value 'stream' of type 'longstr' but
  current is none`` (classic), ``... received 'stream' but current is
  'quorum'``, ``inequivalent arg 'durable'`` (non-durable), and for a
  stream with other retention an argument after the type (``x-max-age``);
- an exclusive queue of another connection answers 405 RESOURCE_LOCKED, a
  server-named ``amq.*`` queue 403 ACCESS_REFUSED: neither can be a stream.

So the probe redeclares with ``durable`` and only ``x-queue-type: stream``.
Accepted: a stream queue, untouched. Refused for ``durable``,
``auto_delete``, ``x-queue-type`` or an argument streams refuse: not a
stream. Refused for an argument checked after the type: a stream (its type
matched). Refused for ``x-max-length-bytes``, which both a stream and a
classic queue may carry and which is checked first: the probe is repeated
once with the current value the broker quoted. When the quote is cut off
(the reply text is at most 255 bytes, so with names longer than about 130
bytes) the queue counts as not a stream: refusing a POST is better than
binding and consuming someone's classic queue.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import amqp

#: The arguments RabbitMQ 3.10 compares before ``x-queue-type``.
CHECKED_BEFORE_TYPE: Final = frozenset(
    {
        "x-expires",
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-max-priority",
        "x-overflow",
        "x-queue-mode",
        "x-single-active-consumer",
    }
)
#: A difference in one of these means the queue cannot be a stream queue.
_NEVER_ON_A_STREAM: Final = frozenset({"durable", "auto_delete", "x-queue-type"})
_SHARED: Final = "x-max-length-bytes"
_INEQUIVALENT: Final = re.compile(r"inequivalent arg '([^']*)'")
_CURRENT_INTEGER: Final = re.compile(r"received none but current is the value '(\d{1,20})' of type")


def read_refusal(reply_text: str, sent: dict[str, Any]) -> bool | tuple[str, int]:
    """What a 406 to the probe says: stream (``True``), not (``False``), or probe again.

    "Probe again" is ``(argument, value)`` to add to the next probe: the
    shared ``x-max-length-bytes`` the queue carries and ``sent`` lacked.
    """
    match = _INEQUIVALENT.search(reply_text)
    if match is None:
        return False
    key = match.group(1)
    if key in _NEVER_ON_A_STREAM:
        return False
    if key == _SHARED and key not in sent:
        current = _CURRENT_INTEGER.search(reply_text)
        return (key, int(current.group(1))) if current else False
    return key not in CHECKED_BEFORE_TYPE


async def is_stream_queue(
    open_channel: Callable[[], AbstractAsyncContextManager[amqp.Channel]], queue: str
) -> bool:
    """Whether the existing ``queue`` is a stream queue (see the module docstring).

    Each probe uses its own channel from ``open_channel`` (a refused one is
    closed by the broker). Other errors propagate to the caller's translation.
    """
    arguments: dict[str, Any] = {"x-queue-type": "stream"}
    for _ in range(2):
        try:
            async with open_channel() as channel:
                await channel.queue_declare(queue, durable=True, arguments=arguments)
        except (amqp.ResourceLocked, amqp.AccessRefused):
            return False  # exclusive to another connection, or server-named: never a stream
        except amqp.PreconditionFailed as exc:
            verdict = read_refusal(exc.reply_text, arguments)
            if isinstance(verdict, bool):
                return verdict
            key, value = verdict
            arguments[key] = value
        else:
            return True
    return False
