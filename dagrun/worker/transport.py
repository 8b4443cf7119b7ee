"""A transport as a worker sees it: the server or consumer that feeds a `ScriptWorker`.

The same entry-point object (`dagrun.contract.transport.load_transport`) has the client side the engine
uses; this is the other half, kept here so the contract never refers to the worker.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from dagrun.contract.transport import load_transport
from dagrun.worker.script_worker import ScriptWorker


class WorkerTransport(Protocol):
    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        """Serve steps with `worker` until `stop` is set; then take no new work, let in-flight steps
        finish within `worker.settings.grace_s` (handing back the rest), and return. ExecutorError
        when it cannot connect or bind."""


def find_worker_transport(scheme: str) -> WorkerTransport:
    """The worker side of the transport registered for a URL scheme (``redis``, ``ws``, ``http``)."""
    transport: WorkerTransport = load_transport(scheme)
    return transport
