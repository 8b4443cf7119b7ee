"""Raw TCP clients for the lobby suites (`dagrun.serving.lobby`): sockets that stay idle or stop halfway through
their headers, and HTTP/1.1 exchanges on one kept-alive socket. `IdleSockets` closes what it opened."""

from __future__ import annotations

import asyncio
import contextlib
import time

HALF_HEADER = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow"  # never ends with a blank line


class IdleSockets:
    """Connections to 127.0.0.1:`port` that send `first` (nothing, or part of a header) and then wait:
    ``async with IdleSockets(port) as idle: await idle.open(200)``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __aenter__(self) -> IdleSockets:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for _, writer in self.connections:
            writer.close()
        for _, writer in self.connections:
            with contextlib.suppress(OSError):  # reset by the server: closed all the same
                await writer.wait_closed()

    async def open(self, count: int, first: bytes = b"") -> list[asyncio.StreamReader]:
        readers = []
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            if first:
                writer.write(first)
                await writer.drain()
            self.connections.append((reader, writer))
            readers.append(reader)
        return readers


async def closed_after_s(reader: asyncio.StreamReader, timeout_s: float) -> float:
    """How long until the server closes the connection of `reader` (end of stream or reset), which must
    send nothing; TimeoutError past `timeout_s`."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        try:
            data = await reader.read(1)
        except ConnectionResetError:
            data = b""
    assert data == b"", f"the server sent {data!r}"
    return time.monotonic() - started


async def count_closed(readers: list[asyncio.StreamReader], timeout_s: float) -> int:
    """How many of `readers` the server closes within `timeout_s`."""

    async def is_closed(reader: asyncio.StreamReader) -> bool:
        try:
            await closed_after_s(reader, timeout_s)
        except TimeoutError:
            return False
        return True

    return sum(await asyncio.gather(*(is_closed(reader) for reader in readers)))


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one HTTP/1.1 request on a kept-alive connection and read the whole answer; its status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    lengths = [value for name, value in headers.items() if name.lower() == "content-length"]
    await reader.readexactly(int(lengths[0]) if lengths else 0)
    return int(lines[0].split()[1])


def get(path: str, token: str | None = None) -> bytes:
    """A keep-alive ``GET path`` request, with the token when given."""
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}\r\n".encode()
