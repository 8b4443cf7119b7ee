"""Transports: found through the ``dagrun.executors`` entry-point group, keyed by URL scheme (``local``,
``redis``, ``ws`` ...), so the core never names one. A transport object has a client side (`Transport`)
and a worker side (`dagrun.worker.serving.WorkerTransport`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from dagrun.contract.executor import Executor, ExecutorOptions
from dagrun.errors import ExecutorSetupError

ENTRY_POINT_GROUP = "dagrun.executors"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What a liveness report says about a worker."""

    worker_id: str
    host: str
    pid: int
    contexts: tuple[str, ...]
    current: tuple[str, ...]  # "run_id/step_id#attempt" of the steps running now
    steps_done: int
    errors: int  # steps that ended failed
    started_at: float
    heartbeat_at: float


class Transport(Protocol):
    """An entry point of the ``dagrun.executors`` group: a transport's client side and its worker side."""

    # Whether its workers take only the steps of the contexts they serve (a queue per context), so that a
    # context no live worker serves leaves its steps waiting; else a worker runs whatever is sent to it.
    queues_by_context: bool

    def open_executor(self, url: str, options: ExecutorOptions) -> Executor: ...

    async def list_workers(self, url: str, options: ExecutorOptions) -> list[WorkerStatus] | None:
        """The live workers reachable through `url` (for `dagrun workers` and `Orchestrator.workers`);
        ExecutorError if none can be asked. None from a transport that has no workers to list, because its
        steps run in the process that calls it (``local``): so the core asks every transport, naming none."""


def load_transport(scheme: str) -> Any:
    """The object registered for a URL scheme (its client and worker sides); ExecutorError names the known ones."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if scheme not in found:
        known = ", ".join(sorted(found)) or "none (is dagrun installed?)"
        raise ExecutorSetupError(f"no executor for scheme {scheme!r}; installed: {known}")
    return found[scheme].load()


def find_transport(scheme: str) -> Transport:
    """The client side of the transport registered for a URL scheme."""
    transport: Transport = load_transport(scheme)
    return transport


def open_executor(url: str, options: ExecutorOptions | None = None) -> Executor:
    """Open the executor a URL names: ``local``, ``local://?processes=4``, ``redis://host/0`` ..."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    return find_transport(scheme.lower()).open_executor(url, options or ExecutorOptions())
