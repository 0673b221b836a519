"""Listening sockets for the fronts, bound in the parent before workers are forked.

Every worker waits in accept on the one socket and the kernel hands a connection to one
that is waiting, so an idle worker takes the next client; SO_REUSEPORT would hash
connections to workers instead and can pile them on a busy one (a longer tail of latencies).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from gateway.config import parse_hostport
from gateway.errors import ConfigError

LISTEN_BACKLOG = 1024


def listen_on(address: str, setting: str, socket_mode: str = "0660") -> socket.socket:
    """A non-blocking listening socket for ``host:port``, ``*:port`` or ``unix:/path``.

    A failure (a port in use, no permission for port 25) is one ConfigError line naming
    the setting, for the operator.
    """
    try:
        if address.startswith("unix:"):
            sock = _unix(Path(address[5:]), socket_mode)
        else:
            sock = _tcp(*parse_hostport(address))
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot listen on {address}: {exc}") from exc
    sock.setblocking(False)
    return sock


def _tcp(host: str, port: int) -> socket.socket:
    if host == "*":
        dual = socket.has_dualstack_ipv6()
        family = socket.AF_INET6 if dual else socket.AF_INET
        return socket.create_server(
            ("", port), family=family, dualstack_ipv6=dual, backlog=LISTEN_BACKLOG
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


def _unix(path: Path, mode: str) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()  # left by a previous run; a live one would still be bound
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, int(mode, 8))
    sock.listen(LISTEN_BACKLOG)
    return sock
