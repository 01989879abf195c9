"""The ports: what the actors need from the world, as small protocols.

Each port has a real adapter and an in-memory fake in :mod:`actors.adapters`;
the contract suite (``tests/contract``) runs the same tests against both.
"""
