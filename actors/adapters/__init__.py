"""Adapters of the ports in :mod:`actors.ports`: the real ones and the in-memory fakes."""
