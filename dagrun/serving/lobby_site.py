"""An aiohttp site whose connections wait in a `Lobby` until they authenticate.

aiohttp has no deadline for a request's headers and no cap on connections: its keep-alive timer is one
duration for every connection, authenticated or not. So `LobbySite` listens as `web.TCPSite` does, but
gives each accepted connection a `_LobbyProtocol` in front of aiohttp's own: the lobby admits it (or it
is closed before aiohttp sees it), and its close takes it out of the lobby; everything else passes
through untouched. The application's guard completes the picture: it answers each request inside
`Lobby.serving` and calls `Lobby.leave` once the request carries the token. A TLS handshake must end
within the header timeout as well; a connection counts in the lobby from the end of its handshake.
`start_app` serves an application this way, for the REST API and the HTTP worker alike.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from dagrun.serving.lobby import Lobby
from dagrun.serving.request_log import server_log


class _LobbyProtocol(asyncio.Protocol):
    """In front of the protocol aiohttp gives a connection, which is made only if the lobby admits it."""

    def __init__(self, lobby: Lobby, factory: Callable[[], asyncio.Protocol]) -> None:
        self._lobby = lobby
        self._factory = factory
        self._inner = asyncio.Protocol()  # ignores everything, until the lobby admits the connection
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a server's connections are stream transports
        if not self._lobby.enter(transport):
            transport.abort()
            return
        self._transport = transport
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lobby.leave(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class LobbySite(web.BaseSite):
    """`web.TCPSite` on `host`:`port` (TLS with `ssl_context`), each connection passing through `lobby`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        lobby: Lobby,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._lobby = lobby

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen; OSError when the address cannot be bound."""
        await super().start()
        server = self._runner.server
        assert server is not None  # BaseSite refuses a runner that is not set up
        handshake_timeout_s = self._lobby.settings.header_timeout_s if self._ssl_context else None
        self._server = await asyncio.get_running_loop().create_server(
            functools.partial(_LobbyProtocol, self._lobby, server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=handshake_timeout_s,
            backlog=self._backlog,
        )


async def start_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    lobby: Lobby,
    log_name: str,
    ssl_context: ssl.SSLContext | None = None,
    **runner_options: Any,
) -> tuple[web.AppRunner, int]:
    """Serve `app` on a `LobbySite`; its runner (whose `cleanup` stops it) and the port bound. OSError when
    the address cannot be bound, with nothing left running. aiohttp logs to `log_name` (`server_log`);
    `runner_options` go to `web.AppRunner`."""
    runner = web.AppRunner(app, access_log=None, logger=server_log(log_name), **runner_options)
    await runner.setup()
    try:
        await LobbySite(runner, host, port, lobby=lobby, ssl_context=ssl_context).start()
    except OSError:
        await runner.cleanup()
        raise
    bound_port: int = runner.addresses[0][1]
    return runner, bound_port
