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


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick), for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
