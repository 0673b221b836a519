"""An asyncio client for clamd's INSTREAM protocol (unix socket or TCP).

Spoken directly with the event loop's socket methods rather than through the blocking
``clamd`` package in a thread: no thread per scan, and a semaphore bounding the connections
clamd sees during a burst (bench/antivirus.py compares the two).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.config import parse_hostport
from gateway.errors import TemporaryCheckError


class ClamdError(TemporaryCheckError):
    """clamd could not be reached, timed out, or answered an error."""


@dataclass(frozen=True, slots=True)
class ClamdResult:
    """clamd's verdict on one stream."""

    infected: bool
    signature: str = ""


@dataclass(frozen=True, slots=True)
class ClamdAddress:
    """A unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str = ""
    port: int = 3310


def parse_address(address: str) -> ClamdAddress:
    """``unix:/path`` or ``host[:port]`` (port 3310 by default)."""
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ValueError("empty socket path in 'unix:'")
        return ClamdAddress(path=path)
    host, port = parse_hostport(address, 3310)
    return ClamdAddress(host=host, port=port)


async def _connected(
    loop: asyncio.AbstractEventLoop, family: socket.AddressFamily, address: Any
) -> socket.socket:
    """A non-blocking stream socket of ``family`` connected to ``address``."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _address_family(host: str) -> socket.AddressFamily | None:
    """AF_INET or AF_INET6 when ``host`` is an IP address, None for a name (or no host)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


class ClamdClient:
    """INSTREAM scans with a per-scan timeout and at most ``max_concurrency`` at once."""

    def __init__(
        self,
        address: str,
        timeout: float = 30.0,
        max_concurrency: int = 4,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self.target = parse_address(address)
        self.address = address
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.slots = asyncio.Semaphore(max_concurrency)
        self.literal = _address_family(self.target.host)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        target = self.target
        if target.path is not None:
            return await _connected(loop, socket.AF_UNIX, target.path)
        if self.literal is not None:  # an address: no lookup (a thread hop) per scan
            return await _connected(loop, self.literal, (target.host, target.port))
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        for family, _, _, _, address in infos[:-1]:  # a name's addresses in turn (::1, then
            with contextlib.suppress(OSError):  # 127.0.0.1 for localhost, on some hosts)
                return await _connected(loop, family, address)
        family, _, _, _, address = infos[-1]
        return await _connected(loop, family, address)

    async def _exchange(self, frames: Iterable[bytes | memoryview]) -> str:
        """Connect, send the frames, read one NUL-terminated answer; errors become ClamdError.

        The loop's socket methods are used rather than streams: measured (bench/antivirus.py),
        they cost less per scan, which matters at thousands of small messages a second.
        """
        loop = asyncio.get_running_loop()
        async with self.slots:
            sock: socket.socket | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    sock = await self._connect(loop)
                    try:
                        for frame in frames:
                            await loop.sock_sendall(sock, frame)
                    except (ConnectionResetError, BrokenPipeError) as exc:
                        # clamd hangs up mid-stream when the stream passes its StreamMaxLength.
                        raise ClamdError(
                            f"clamd at {self.address} closed the connection during INSTREAM "
                            "(over its StreamMaxLength?)"
                        ) from exc
                    answer = bytearray()
                    while not answer.endswith(b"\0"):
                        chunk = await loop.sock_recv(sock, 4096)
                        if not chunk:
                            raise ClamdError(f"clamd at {self.address} closed without answering")
                        answer += chunk
                        if len(answer) > 65536:
                            raise ClamdError(f"clamd at {self.address} sent an oversized answer")
            except TimeoutError as exc:
                raise ClamdError(
                    f"clamd at {self.address} timed out after {self.timeout}s"
                ) from exc
            except OSError as exc:
                raise ClamdError(f"clamd at {self.address}: {exc}") from exc
            finally:
                if sock is not None:
                    sock.close()
        return answer[:-1].decode("utf-8", "replace")

    async def ping(self) -> bool:
        """True when clamd answers PONG."""
        return await self._exchange([b"zPING\0"]) == "PONG"

    async def version(self) -> str:
        """clamd's version string (engine and database)."""
        return await self._exchange([b"zVERSION\0"])

    def _frames(self, data: bytes) -> Iterator[bytes | memoryview]:
        """INSTREAM framing: command, then <4-byte length><chunk>..., then a zero length."""
        if len(data) <= self.chunk_size:
            # Small messages (the common case) go out in one send.
            yield b"zINSTREAM\0" + struct.pack(">I", len(data)) + data + b"\0\0\0\0"
            return
        yield b"zINSTREAM\0"
        view = memoryview(data)
        for start in range(0, len(view), self.chunk_size):
            chunk = view[start : start + self.chunk_size]
            yield struct.pack(">I", len(chunk))
            yield chunk
        yield b"\0\0\0\0"

    async def scan(self, data: bytes) -> ClamdResult:
        """Stream ``data`` with INSTREAM and parse the answer."""
        return parse_answer(await self._exchange(self._frames(data)))


def parse_answer(answer: str) -> ClamdResult:
    """``stream: OK`` / ``stream: NAME FOUND`` / ``... ERROR`` (clamd's INSTREAM replies)."""
    _, _, result = answer.partition(": ")
    if answer.endswith(" ERROR") or not result:
        raise ClamdError(f"clamd answered an error: {answer[:200]}")
    if result == "OK":
        return ClamdResult(infected=False)
    if result.endswith(" FOUND"):
        return ClamdResult(infected=True, signature=result[: -len(" FOUND")])
    raise ClamdError(f"unexpected clamd answer: {answer[:200]}")
