"""Local ports: pick a free one, check one is free, probe that one accepts connections."""

from __future__ import annotations

import asyncio
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free on ``host`` now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound now (``""`` or ``0.0.0.0``: every IPv4 interface)."""
    family = socket.AF_INET6 if ":" in (host or "") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


async def tcp_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts a TCP connection on ``host:port`` within ``timeout``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True
