"""Whether a local service the tests need is listening."""

from __future__ import annotations

import contextlib
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
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different free ports, picked together.

    One pick after another may give the same port twice (each socket is
    closed before the next pick, and the kernel may hand its port out
    again): a 3-node cluster once got one port for two nodes. Sockets bound
    at the same time cannot share one.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
