"""The life of a server that listens, written once for the REST API and the WebSocket and HTTP workers.

`start` binds, or raises a one-line DagrunError (``cannot listen on 127.0.0.1:8765: address already in
use; ...``); `port` and `url` say where it listens once it started; `aclose` stops it and may be called
twice; a closed server does not start again. `async with` does both. A subclass says how it listens
(`_listen`: the port it got, OSError when it cannot bind) and how it stops (`_stop`, only once it
started), and may phrase the error (`_cannot_listen`).
"""

from __future__ import annotations

from typing import Self

from dagrun.errors import DagrunError
from dagrun.serving.listening import cannot_listen


class Server:
    """A server on `host`:`port` (0: any free port) whose URLs start with `scheme` (``http``, ``wss`` ...)."""

    def __init__(self, host: str, port: int, *, scheme: str) -> None:
        self.host = host
        self.scheme = scheme
        self._requested_port = port
        self._port: int | None = None  # the port it got, once it listens
        self._is_closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{self.scheme}://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; DagrunError, in one line, when the address cannot be bound."""
        if self._is_closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        try:
            self._port = await self._listen()
        except OSError as exc:
            raise self._cannot_listen(cannot_listen(self.host, self._requested_port, exc)) from exc

    async def aclose(self) -> None:
        """Stop serving; safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._port is not None:
            await self._stop()

    async def _listen(self) -> int:
        """Bind and serve; the port bound. OSError when the address cannot be bound, with nothing left open."""
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def _cannot_listen(self, message: str) -> DagrunError:
        return DagrunError(message)
