"""The API server: the application on a TCP site, as an async context manager.

    async with ApiServer(control, token=token, settings=ApiSettings(port=0)) as server:
        print(server.url)

`aclose` stops accepting, ends the event streams (clients resume them by Last-Event-ID), lets other
requests finish within `shutdown_timeout_s`, then closes. Connections pass through the app's lobby
(`dagrun.serving.lobby`): those without the token are capped and must send their headers in time. A
request too malformed to parse (a NUL byte in a header) gets aiohttp's 400 and one line in the log.
"""

from __future__ import annotations

import logging

from aiohttp import web

from dagrun.api.app import LOBBY, create_app
from dagrun.api.settings import ApiSettings
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.errors import DagrunError
from dagrun.serving.listening import is_loopback
from dagrun.serving.lobby_site import start_app
from dagrun.serving.server import Server

logger = logging.getLogger(__name__)


class ApiServer(Server):
    def __init__(
        self,
        control: RunControl,
        *,
        token: str,
        orchestrator: Orchestrator | None = None,
        settings: ApiSettings | None = None,
    ) -> None:
        self.settings = settings or ApiSettings()
        super().__init__(self.settings.host, self.settings.port, scheme="http")
        self._app = create_app(control, token=token, orchestrator=orchestrator, settings=self.settings)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; DagrunError, in one line, when the address cannot be bound."""
        await super().start()
        if not is_loopback(self.host):
            logger.warning(
                "api: serving plain HTTP on %s: the token crosses the network in clear text; "
                "put a TLS-terminating proxy in front",
                self.host,
            )
        logger.info("api: listening on %s (the dashboard: %s/ui/)", self.url, self.url)

    async def _listen(self) -> int:
        shutdown_timeout_s = self.settings.shutdown_timeout_s
        lobby = self._app[LOBBY]
        self._runner, port = await start_app(
            self._app,
            self.host,
            self._requested_port,
            lobby=lobby,
            shutdown_timeout=shutdown_timeout_s,
            log_name=f"{__name__}.http",
        )
        return port

    async def _stop(self) -> None:
        assert self._runner is not None  # set by `_listen`
        await self._runner.cleanup()
        logger.info("api: stopped")

    def _cannot_listen(self, message: str) -> DagrunError:
        return DagrunError(f"api: {message}")
