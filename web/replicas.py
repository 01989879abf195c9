"""``GET /debug/replicas``: the replicas alive now (SPEC section 7).

Each entry has the replica's ``name`` (``ESS_REPLICA_NAME``), its ``id``
(the name plus a random suffix, unique per process run), ``started_at``
(seconds since the epoch), its ``websockets`` count and whether it is
``this`` replica (listed first). The list comes from the replicas' alive
messages on the broker's control exchange; a replica drops out a few
seconds after its last one.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from quart import Response
from quart_trio import QuartTrio

from web.responses import json_response


@runtime_checkable
class ReplicaList(Protocol):
    """What lists the live replicas (the supervisor)."""

    def replicas(self) -> list[dict[str, object]]: ...


def install_replica_routes(app: QuartTrio, streams: object, *, replica: str) -> None:
    """Install ``GET /debug/replicas``; without a :class:`ReplicaList`, only this replica."""

    @app.get("/debug/replicas")
    async def debug_replicas() -> Response:
        if isinstance(streams, ReplicaList):
            replicas = streams.replicas()
        else:
            replicas = [{"id": "", "name": replica, "websockets": 0, "this": True}]
        for entry in replicas:
            if entry.get("this") and not entry.get("name"):
                entry["name"] = replica
        return json_response({"replica": replica, "replicas": replicas})
