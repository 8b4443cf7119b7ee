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
from aiohttp.http_exceptions import HttpProcessingError

from dagrun.api.app import LOBBY, create_app
from dagrun.api.settings import ApiSettings
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.errors import DagrunError
from dagrun.serving.listening import is_loopback
from dagrun.serving.lobby_site import start_app
from dagrun.serving.server import Server

logger = logging.getLogger(__name__)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its parser refuses with a traceback, though the client got its 400: one bad
    request is one warning line instead. It names what was wrong but not the offending line, which can
    hold the token. Other records, a bug's traceback included, pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if isinstance(refused, HttpProcessingError) and refused.code < 500:
            what = refused.message.strip().partition("\n")[0].partition(":")[0][:100]
            record.msg, record.args = "%s: malformed request (%d %s)", (record.getMessage(), refused.code, what)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


# aiohttp's server log for the API's connections, apart from "aiohttp.server" so that the filter is the API's
http_logger = logging.getLogger(f"{__name__}.http")
http_logger.addFilter(MalformedRequestFilter())


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
        logger.info("api: listening on %s", self.url)

    async def _listen(self) -> int:
        shutdown_timeout_s = self.settings.shutdown_timeout_s
        lobby = self._app[LOBBY]
        self._runner, port = await start_app(
            self._app,
            self.host,
            self._requested_port,
            lobby=lobby,
            shutdown_timeout=shutdown_timeout_s,
            logger=http_logger,
        )
        return port

    async def _stop(self) -> None:
        assert self._runner is not None  # set by `_listen`
        await self._runner.cleanup()
        logger.info("api: stopped")

    def _cannot_listen(self, message: str) -> DagrunError:
        return DagrunError(f"api: {message}")
