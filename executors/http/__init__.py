"""The HTTP transport: one ``POST /execute`` per step over a pooled keep-alive session.

    POST /execute   request envelope -> 200 result envelope
    POST /withdraw  take back the request whose Dagrun-Request-Id this names, unless it started -> 204
    GET  /health    the worker's status, its Limits and whether it is stopping (JSON)

A step still running 50 ms after it started has its 200 headers sent ahead with ``Dagrun-Started: true``
(its caller learns it started) and its result envelope after. A request its caller takes back before it
started is answered 409 taken_back (nothing ran).

Every request needs ``Authorization: Bearer <token>``, checked by a middleware before the body is read;
a declared Content-Length over the limit is refused before reading too (aiohttp's client_max_size is
the backstop for chunked bodies). Refusals are JSON ``{"error": message, "code": code}``: 401
unauthorized, 413 too_large, 400 malformed (bad JSON, wrong protocol version; nothing ran), 503 busy
(no pool slot freed up in time: the client sends it again after a backoff, unless it is wanted back),
503 stopping, or 409 taken_back. The client
probes /health once (token and reachability fail early and clearly; the limits it reads cap its
requests in flight and their size) and gives each request the deadline `Window.deadline_s`. A call that
is cancelled (or gives up) closes its connection, and the worker stops the step: closing the connection
cancels its handler, whose cancelled step has its sandbox process killed and replaced. A worker that
answered and then refuses connections or says it is stopping is likely restarting: a call tries again
with backoff for `reconnect_s` (the WebSocket client's window, `executors.reconnection`) before it fails.
URL: ``http[s]://HOST:PORT[/prefix]?connections=64&reconnect_s=5&ca_file=/path/ca.pem``.
"""

from __future__ import annotations

import asyncio

from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import WorkerStatus
from dagrun.worker.script_worker import ScriptWorker
from executors.http.client import HttpExecutor
from executors.http.server import HttpWorkerServer

__all__ = ["HttpExecutor", "HttpTransport", "HttpWorkerServer", "transport"]


class HttpTransport:
    queues_by_context = False  # a worker runs whatever it is sent

    def open_executor(self, url: str, options: ExecutorOptions) -> HttpExecutor:
        return HttpExecutor(url, options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        async with HttpWorkerServer(worker):
            await stop.wait()

    async def list_workers(self, url: str, options: ExecutorOptions) -> list[WorkerStatus]:
        """The one worker at `url`, as its /health reports it."""
        async with HttpExecutor(url, options) as executor:
            return [await executor.worker_status()]


transport = HttpTransport()
