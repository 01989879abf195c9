"""Coordination of replicas through the broker (SPEC section 7).

:mod:`~actors.cluster.messages` and :mod:`~actors.cluster.membership` are
sans-IO (the control messages, their encoding, the table of live replicas);
:mod:`~actors.cluster.coordinator` does the I/O through the control port
(:mod:`actors.ports.control`).
"""
