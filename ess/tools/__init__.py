"""Command-line tools for people: ``ess listen``, ``ess publish``, ``ess streams``.

:mod:`ess.cli` parses the arguments and calls these with validated values;
each returns the process exit code (0 = success). One module per command,
each with its own client (websocket, AMQP or HTTP), imported on first use:
``ess --help`` only needs :mod:`ess.tools.epilogs`, and should not pay for
loading all three clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ess.tools.listener import listen
    from ess.tools.publisher import publish
    from ess.tools.streams import streams_create, streams_delete, streams_list

__all__ = ["listen", "publish", "streams_create", "streams_delete", "streams_list"]

_HOMES = {
    "listen": "ess.tools.listener",
    "publish": "ess.tools.publisher",
    "streams_create": "ess.tools.streams",
    "streams_delete": "ess.tools.streams",
    "streams_list": "ess.tools.streams",
}


def __getattr__(name: str) -> object:
    """Import a command's module when its function is first used (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
