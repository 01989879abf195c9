"""Helpers shared by more than one test folder (fixtures stay in the conftest files).

The wire-protocol helpers (raw AMQP, websocket frames) depend on nothing in
the service, so that a test built on them checks the service from the
outside and cannot share a bug with its client code.
"""
