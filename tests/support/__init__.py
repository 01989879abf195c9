"""Test-only helpers that speak the wire protocols themselves (AMQP, websocket frames).

They depend on nothing in the service, so that a test built on them checks
the service from the outside and cannot share a bug with its client code.
"""
