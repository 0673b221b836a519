"""Listening sockets for the fronts, bound in the parent before workers are forked.

Every worker waits in accept on the one socket and the kernel hands a connection to one
that is waiting, so an idle worker takes the next client; SO_REUSEPORT would hash
connections to workers instead and can pile them on a busy one (a longer tail of latencies).

A socket handed over by systemd (socket activation: LISTEN_PID, LISTEN_FDS, sd_listen_fds(3))
for the configured address is used instead of binding a new one. The socket then outlives
the process: on a restart, clients wait in its backlog for the new process instead of being
refused (docs/operations.md, "Restarting without refusing mail"), and port 25 needs no
capability of ours.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from gateway.config import parse_hostport
from gateway.errors import ConfigError

LISTEN_BACKLOG = 1024
SD_LISTEN_FDS_START = 3  # the first file descriptor systemd passes
_inherited: list[socket.socket] | None = None


def listen_on(address: str, setting: str, socket_mode: str = "0660") -> socket.socket:
    """A non-blocking listening socket for ``host:port``, ``*:port`` or ``unix:/path``.

    A failure (a port in use, no permission for port 25) is one ConfigError line naming
    the setting, for the operator.
    """
    sock = _take_inherited(address)
    if sock is not None:
        sock.setblocking(False)
        return sock
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


def inherited_sockets() -> list[socket.socket]:
    """The listening sockets passed to this process (sd_listen_fds), read once.

    The variables are removed so that nothing started from here takes them for its own.
    """
    global _inherited
    if _inherited is None:
        count = os.environ.pop("LISTEN_FDS", "")
        pid = os.environ.pop("LISTEN_PID", "")
        os.environ.pop("LISTEN_FDNAMES", None)
        passed = count.isdigit() and pid == str(os.getpid())
        _inherited = [
            socket.socket(fileno=fd)
            for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
        ] if passed else []  # fmt: skip
    return _inherited


def _take_inherited(address: str) -> socket.socket | None:
    """The passed socket bound to ``address`` (taken from the pool), or None."""
    for sock in inherited_sockets():
        if _bound_to(sock, address):
            inherited_sockets().remove(sock)
            return sock
    return None


def _bound_to(sock: socket.socket, address: str) -> bool:
    name = sock.getsockname()
    if address.startswith("unix:"):
        return sock.family == socket.AF_UNIX and name == address[5:]
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    host, port = parse_hostport(address)
    if name[1] != port:
        return False
    bound = ipaddress.ip_address(name[0].split("%")[0])
    if host == "*":
        return bound.is_unspecified
    if host == "localhost":
        return bound.is_loopback
    try:
        return bound == ipaddress.ip_address(host)
    except ValueError:
        return False
