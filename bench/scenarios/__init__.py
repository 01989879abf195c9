"""One module per scenario; each exposes ``NAME``, ``add_arguments(parser)`` and ``run(args)``."""

from . import (
    capacity,
    connections,
    debug_polling,
    delete,
    fanout,
    live,
    replay,
    replicas_delete,
    replicas_takeover,
    subscribe_gap,
    workers_fanout,
)

SCENARIOS = {
    m.NAME: m
    for m in (
        replay,
        live,
        fanout,
        connections,
        delete,
        subscribe_gap,
        debug_polling,
        replicas_delete,
        replicas_takeover,
        workers_fanout,
        capacity,
    )
}
