"""Whether a local service the tests need is listening."""

from __future__ import annotations

import socket


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` opens within two seconds."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False
