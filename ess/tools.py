"""Command-line tools for people: ``ess listen``, ``ess publish``, ``ess streams``.

PLACEHOLDERS. Every function here raises :class:`NotImplementedError` until
someone implements it; :mod:`ess.cli` already parses the arguments and calls
these with validated values. Each returns the process exit code (0 = success).
"""

from __future__ import annotations

from ess.config import Config

__all__ = ["listen", "publish", "streams_create", "streams_delete", "streams_list"]


def listen(
    location: str,
    *,
    from_ordinal: int | None = None,
    from_timestamp: int | None = None,
    from_datetime: str | None = None,
    as_json: bool = False,
) -> int:
    """Print the events of one websocket ``location`` (``ws[s]://.../event-stream/<uuid>``).

    At most one ``from_*`` is set; they map to the ``stream_from_*`` query
    parameters of SPEC section 4. ``as_json`` prints one JSON object per event.
    """
    raise NotImplementedError("ess listen is not implemented yet (placeholder in ess/tools.py)")


def publish(
    config: Config,
    routing_key: str,
    message: str | None,
    *,
    count: int = 1,
    rate: float | None = None,
    to_queue: bool = False,
) -> int:
    """Publish ``count`` test events (``message``, or a generated one).

    To ``config.exchange`` with ``routing_key`` (version 1 style), or with
    ``to_queue`` straight into the stream queue named ``routing_key``
    (versions 2 and 3 style). ``rate`` is events per second (``None``: as fast
    as the broker confirms).
    """
    raise NotImplementedError("ess publish is not implemented yet (placeholder in ess/tools.py)")


def streams_list(api: str, token: str | None) -> int:
    """``GET /event-stream/`` on the internal API at ``api`` and print the streams."""
    raise NotImplementedError(
        "ess streams list is not implemented yet (placeholder in ess/tools.py)"
    )


def streams_create(api: str, token: str | None, routing_key: str) -> int:
    """``POST /event-stream/`` and print the new id and location."""
    raise NotImplementedError(
        "ess streams create is not implemented yet (placeholder in ess/tools.py)"
    )


def streams_delete(api: str, token: str | None, stream_id: int) -> int:
    """``DELETE /event-stream/{stream_id}``."""
    raise NotImplementedError(
        "ess streams delete is not implemented yet (placeholder in ess/tools.py)"
    )
