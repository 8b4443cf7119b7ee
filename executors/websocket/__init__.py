"""The WebSocket transport: many step requests multiplexed on one connection, matched by id.

Every message is binary: ``id`` (8 bytes, big-endian, chosen by the client) + ``kind`` (1 byte) + payload.

    client -> worker   Q  request envelope   run this step
                       C  -                  cancel it: the caller gave up
                       W  -                  withdraw it unless it started: its run was paused
    worker -> client   S  -                  it started (sent once it has run a while: `StartedNotice`)
                       T  -                  taken back before it started (after W); nothing ran
                       R  result envelope    the step ran (or failed in the sandbox)
                       E  UTF-8 message      refused: malformed, wrong protocol version ...; nothing ran
                       B  -                  busy: no pool slot freed up in time; nothing ran, send later
                       G  -                  going away: the worker is stopping; nothing ran

``GET /health`` with the token answers the worker's status as JSON instead of upgrading (the same document
as an HTTP worker's /health; `dagrun workers ws://...` reads it). The handshake must carry
``Authorization: Bearer <token>`` or is refused (401) before the upgrade; the
response announces the worker's Limits as ``Dagrun-*`` headers (capacity: the most requests a client
keeps in flight; max-message-bytes ...). A text message or one too short for an id closes the
connection (1003), one over the limit closes it (1009). Compression is off: deflate costs more than it
saves on small envelopes. Keepalive pings detect dead peers. When the connection drops, the client
reconnects with backoff (for `reconnect_s`: ``ws://HOST:PORT?reconnect_s=5``) and sends again the
requests whose results never came; the worker cancels the steps of a connection that dropped.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import WorkerStatus
from dagrun.worker.script_worker import ScriptWorker
from executors.http import transport as http_transport
from executors.websocket.client import WebSocketExecutor
from executors.websocket.server import WebSocketWorkerServer

__all__ = ["WebSocketExecutor", "WebSocketTransport", "WebSocketWorkerServer", "transport"]


class WebSocketTransport:
    queues_by_context = False  # a worker runs whatever it is sent

    def open_executor(self, url: str, options: ExecutorOptions) -> WebSocketExecutor:
        return WebSocketExecutor(url, options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        async with WebSocketWorkerServer(worker):
            await stop.wait()

    async def list_workers(self, url: str, options: ExecutorOptions) -> list[WorkerStatus]:
        """The one worker at `url`, as its ``GET /health`` reports it (asked over HTTP, as of an HTTP worker)."""
        return await http_transport.list_workers(_health_url(url), options)


def _health_url(url: str) -> str:
    """The worker's URL as the HTTP client takes it: http[s]://, without the WebSocket-only options."""
    parts = urlsplit(url)
    query = urlencode([(name, value) for name, value in parse_qsl(parts.query) if name == "ca_file"])
    scheme = "https" if parts.scheme.lower() == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, parts.path, query, ""))


transport = WebSocketTransport()
