"""Whether a local service the tests need is listening."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` opens within two seconds."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port nothing listens on now, for a server a test starts (see :func:`free_ports`)."""
    return free_ports(1)[0]


#: Where :func:`free_ports` looks: below the kernel's ephemeral range.
LOWEST_PORT = 20000
_ATTEMPTS = 50


def free_ports(count: int) -> list[int]:
    """``count`` different free ports, picked together, below the ephemeral range.

    Not the kernel's pick (``bind`` to port 0): it comes from the range the
    kernel also takes outgoing connections' local ports from, so between
    the pick and the server's own bind an outgoing connection (the
    service's AMQP connection, a test's HTTP client) may take it; a service
    once failed to start with "Address already in use" that way. Nor one
    pick after another: each socket is closed before the next pick, and a
    3-node cluster once got one port for two nodes. Sockets bound at the
    same time cannot share one.
    """
    ceiling = _ephemeral_low()
    for _ in range(_ATTEMPTS):
        candidates = random.sample(range(LOWEST_PORT, ceiling), count)
        with contextlib.ExitStack() as stack:
            try:
                for port in candidates:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: try others
            return candidates
    raise RuntimeError(f"no {count} free ports found in {LOWEST_PORT}-{ceiling - 1}")


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return max(int(low), LOWEST_PORT + 1000)
    except (OSError, ValueError, IndexError):
        return 32768
