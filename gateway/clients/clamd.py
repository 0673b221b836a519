"""An asyncio client for clamd's INSTREAM protocol (unix socket or TCP).

Spoken directly rather than through the blocking ``clamd`` package in a thread: one
coroutine per scan, no thread per scan, and a semaphore bounding the connections clamd
sees during a burst (bench/antivirus.py compares the two).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

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

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """One connection, with OS errors and timeouts translated to ClamdError."""
        async with self.slots:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    target = self.target
                    if target.path is not None:
                        reader, writer = await asyncio.open_unix_connection(target.path)
                    else:
                        reader, writer = await asyncio.open_connection(target.host, target.port)
                    yield reader, writer
            except TimeoutError as exc:
                raise ClamdError(
                    f"clamd at {self.address} timed out after {self.timeout}s"
                ) from exc
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise ClamdError(f"clamd at {self.address}: {exc}") from exc
            finally:
                if writer is not None:
                    writer.close()

    async def _command(self, command: bytes) -> str:
        async with self._connection() as (reader, writer):
            writer.write(b"z" + command + b"\0")
            await writer.drain()
            return (await reader.readuntil(b"\0"))[:-1].decode("utf-8", "replace")

    async def ping(self) -> bool:
        """True when clamd answers PONG."""
        return await self._command(b"PING") == "PONG"

    async def version(self) -> str:
        """clamd's version string (engine and database)."""
        return await self._command(b"VERSION")

    async def _stream(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"zINSTREAM\0")
        view = memoryview(data)
        for start in range(0, len(view), self.chunk_size):
            chunk = view[start : start + self.chunk_size]
            writer.write(struct.pack(">I", len(chunk)))
            writer.write(chunk)
            await writer.drain()
        writer.write(struct.pack(">I", 0))
        await writer.drain()

    async def scan(self, data: bytes) -> ClamdResult:
        """Stream ``data`` with INSTREAM in chunks and parse the answer."""
        async with self._connection() as (reader, writer):
            try:
                await self._stream(writer, data)
            except (ConnectionResetError, BrokenPipeError) as exc:
                # clamd hangs up mid-stream when the stream passes its StreamMaxLength.
                raise ClamdError(
                    f"clamd at {self.address} closed the connection during INSTREAM "
                    f"({len(data)} bytes; over its StreamMaxLength?)"
                ) from exc
            answer = (await reader.readuntil(b"\0"))[:-1].decode("utf-8", "replace")
        return parse_answer(answer)


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
