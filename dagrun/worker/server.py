"""What the WebSocket and HTTP worker servers share: the token, TLS, admission, the lobby and /health.

A worker server refuses to start without a shared token, serves TLS when given a certificate (and warns
when it serves a non-loopback address without), holds its unauthenticated connections in a `Lobby` and
its requests under `Admission`, and answers ``GET /health`` with `health_document`. Closing it drains:
no new work, running steps may finish within `grace_s`, then the transport closes what is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from typing import Any, ClassVar

from dagrun.errors import DagrunError, ExecutorError
from dagrun.serving.listening import is_loopback
from dagrun.serving.lobby import Lobby, is_authorized
from dagrun.serving.server import Server
from dagrun.worker.admission import MAX_QUEUE_WAIT_S, Admission
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings


class WorkerServer(Server):
    """Serves a ScriptWorker: ``async with SomeWorkerServer(worker) as server``; ExecutorError at once when
    the worker has no token or an unusable certificate, and from `start` when it cannot listen."""

    KIND: ClassVar[str]  # the transport, as messages name it: "ws", "http"
    SCHEMES: ClassVar[tuple[str, str]]  # its URL schemes, plain and TLS
    PROTOCOL: ClassVar[str]  # what it speaks, for the log: "websocket", "http"

    def __init__(self, worker: ScriptWorker, *, max_queue_wait_s: float = MAX_QUEUE_WAIT_S) -> None:
        settings = worker.settings
        self._worker = worker
        # each server logs under its own name (executors.websocket.server, ...), not under this base's
        self._logger = logging.getLogger(type(self).__module__)
        self._token = _require_token(settings, self.KIND)
        self._ssl = _ssl_context(settings, self._logger)
        super().__init__(settings.host, settings.port, scheme=self.SCHEMES[self._ssl is not None])
        self._admission = Admission(worker, max_queue_wait_s=max_queue_wait_s)
        self._lobby = Lobby(settings.lobby, name=f"worker {settings.worker_id}")

    async def start(self) -> None:
        """Listen; ExecutorError when the address cannot be bound."""
        await super().start()
        self._logger.info("worker %s listening on %s", self._worker.settings.worker_id, self.url)

    async def _stop(self) -> None:
        """Take no new work, let running steps finish within grace_s, then close."""
        await self._admission.stop()
        await self._close()
        self._logger.info("worker %s: %s server closed", self._worker.settings.worker_id, self.PROTOCOL)

    async def _close(self) -> None:
        """Stop listening and close the connections, cancelling the requests they still hold."""
        raise NotImplementedError

    def _cannot_listen(self, message: str) -> DagrunError:
        return ExecutorError(message)

    def _authenticate(self, values: list[str], transport: asyncio.Transport | None) -> bool:
        """True when `values` (a request's Authorization headers) carry the token: the request's connection
        (`transport`) leaves the lobby."""
        if not is_authorized(values, self._token):
            return False
        self._lobby.leave(transport)
        return True

    def _log_refused_token(self, what: str) -> None:
        self._logger.warning("worker %s: refused %s: missing or wrong token", self._worker.settings.worker_id, what)

    def health_document(self) -> dict[str, Any]:
        """What ``GET /health`` answers (JSON): the worker's status, its Limits and whether it is stopping."""
        document = dataclasses.asdict(self._worker.status())
        document.update(limits=self._admission.limits.to_json(), stopping=self._worker.stopping)
        return document


def _require_token(settings: WorkerSettings, kind: str) -> str:
    """The token a worker server checks; ExecutorError when there is none."""
    if not settings.token:
        raise ExecutorError(
            f"worker {settings.worker_id}: a {kind} worker needs a shared token; "
            "start it with --token-file FILE (the same token as the orchestrator's)"
        )
    return settings.token


def _ssl_context(settings: WorkerSettings, logger: logging.Logger) -> ssl.SSLContext | None:
    """The TLS context of a worker server, or None for plain text; ExecutorError when unusable."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None:
        if key is not None:
            raise ExecutorError(f"worker {settings.worker_id}: --tls-key needs --tls-cert")
        if not is_loopback(settings.host):
            logger.warning(
                "worker %s: serving without TLS on %s: the token crosses the network in clear text; "
                "use --tls-cert and --tls-key",
                settings.worker_id,
                settings.host,
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror or str(exc)
        raise ExecutorError(f"worker {settings.worker_id}: cannot load TLS certificate {cert!r}: {reason}") from exc
    return context
