"""Which registry ``ESS_DATABASE`` names: a SQLite file (default) or a PostgreSQL URL.

The composition root opens the registry through :func:`open_registry`; an
adapter's :class:`~actors.adapters.sql_registry.RegistryOpenError` becomes a
:class:`~ess.errors.StartupError` here, so start-up stops with one line naming
``ESS_DATABASE`` (never a password) and no traceback.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from os import PathLike

import trio

from actors.adapters.postgres_registry import PostgresRegistry, is_postgres_url
from actors.adapters.sql_registry import RegistryOpenError, SQLRegistry
from actors.adapters.sqlite_registry import SQLiteRegistry

from .errors import StartupError

__all__ = ["open_registry"]


@asynccontextmanager
async def open_registry(
    database: str | PathLike[str], nursery: trio.Nursery
) -> AsyncIterator[SQLRegistry]:
    """Open the registry ``ESS_DATABASE`` names; its background checks run in ``nursery``.

    Raises :class:`StartupError` when it cannot be opened at all (corrupt
    file, bad credentials, unknown database, newer schema). An unreachable
    PostgreSQL is not an error: the registry is then not available and
    connects in the background.
    """
    text = os.fspath(database)  # config keeps a URL as text, a file as a Path
    opened: AbstractAsyncContextManager[SQLRegistry]
    try:
        if is_postgres_url(text):
            opened = PostgresRegistry.open(text, nursery)
        else:
            opened = SQLiteRegistry.open(text, nursery)
        async with opened as registry:
            yield registry
    except RegistryOpenError as error:
        raise StartupError(f"ESS_DATABASE: {error}") from error
