"""Binding the data planes' sockets, and the one-line reason a person reads when that fails."""

from __future__ import annotations

import errno
import socket

BACKLOG = 1024
"""Pending connections the kernel queues per TCP listener before the loop accepts them."""


def bind_error(e: OSError, host: str, port: int) -> str:
    where = f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return f"address in use: {where}"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"address not available on this machine: {where}"
    if e.errno == errno.EACCES:
        return f"permission denied (ports below 1024 need privileges): {where}"
    return f"{(e.strerror or str(e)).lower()}: {where}"


def bound_socket(host: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A non-blocking socket bound to ``host:port``: listening (TCP) or ready for datagrams (UDP)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(BACKLOG)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s
