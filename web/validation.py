"""Validation of ``POST /event-stream/`` bodies (SPEC section 3).

The routing key becomes a RabbitMQ queue name, so the rules are RabbitMQ's,
not a client library's stricter pattern: any valid UTF-8 up to 255 bytes,
except control characters (unusable in logs and management tools) and the
``amq.`` prefix, which the broker reserves (case-sensitively, as RabbitMQ
does). Each function returns a human-readable reason, suitable as the 422
``detail``.
"""

from __future__ import annotations

import json
import unicodedata

MAX_ROUTING_KEY_BYTES = 255
RESERVED_PREFIX = "amq."


class InvalidRequest(ValueError):
    """The request body cannot be accepted; ``str(error)`` is the 422 detail."""


def parse_create_body(body: bytes) -> str:
    """The routing key of a create request, or :class:`InvalidRequest`.

    The body is parsed as JSON whatever the ``Content-Type`` says (lenient,
    like ``curl -d`` users expect). Members other than ``routing_key`` are
    ignored.
    """
    if not body.strip():
        raise InvalidRequest('The body must be a JSON object such as {"routing_key": "..."}')
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON, bad encodings and over-long integers.
        raise InvalidRequest("The body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidRequest('The body must be a JSON object such as {"routing_key": "..."}')
    if "routing_key" not in document:
        raise InvalidRequest("routing_key is required")
    routing_key = document["routing_key"]
    if not isinstance(routing_key, str):
        raise InvalidRequest("routing_key must be a string")
    problem = routing_key_problem(routing_key)
    if problem is not None:
        raise InvalidRequest(problem)
    return routing_key


def routing_key_problem(routing_key: str) -> str | None:
    """Why ``routing_key`` cannot name a stream queue, or ``None`` if it can."""
    if not routing_key:
        return "routing_key must not be empty"
    try:
        size = len(routing_key.encode("utf-8"))
    except UnicodeEncodeError:
        # JSON escapes can smuggle in lone surrogates, which UTF-8 cannot carry.
        return "routing_key must be valid Unicode (no lone surrogates)"
    if size > MAX_ROUTING_KEY_BYTES:
        return f"routing_key must be at most {MAX_ROUTING_KEY_BYTES} UTF-8 bytes (got {size})"
    if any(unicodedata.category(char) == "Cc" for char in routing_key):
        return "routing_key must not contain control characters"
    if routing_key.startswith(RESERVED_PREFIX):
        return f"routing_key must not start with {RESERVED_PREFIX!r} (reserved by RabbitMQ)"
    return None
