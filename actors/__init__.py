"""Supervisor, stream and connection actors, and the ports they talk through."""
