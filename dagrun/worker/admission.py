"""Admission control of a worker server (WebSocket, HTTP): how many requests it holds, and for how long.

A request is admitted at once or refused (the server answers busy): at most `Limits.capacity` are held.
An admitted request runs when one of the `Limits.running` pool slots frees up, or is refused as `Busy`
after `max_queue_wait_s` (never more than MAX_QUEUE_WAIT_S: clients count on it), or as `Stopping` once
the server stops. Either refusal means nothing ran, so the client may send the request again. A request
its caller takes back while it waits for a slot (a pause) ends Withdrawn, unrun.
"""

from __future__ import annotations

import asyncio
import logging

from dagrun.contract.dispatch import Dispatch, acquire_unless_withdrawn
from dagrun.contract.executor import StepRequest
from dagrun.worker.limits import Limits
from dagrun.worker.script_worker import ScriptWorker

logger = logging.getLogger(__name__)

MAX_QUEUE_WAIT_S = 5.0  # an admitted request that cannot start by then is refused as busy


class Busy(Exception):
    """No pool slot freed up within MAX_QUEUE_WAIT_S: nothing ran; the client may send it again."""


class Stopping(Exception):
    """The worker is stopping: nothing ran; the client should go elsewhere or wait for a restart."""


class Admission:
    """Bounds what a worker server holds: `admit` a request at once or not, `run` it when a pool slot
    frees up (Busy, Stopping when none does), `release` it when done, whatever happened to it."""

    def __init__(self, worker: ScriptWorker, *, max_queue_wait_s: float = MAX_QUEUE_WAIT_S) -> None:
        self.worker = worker
        self.limits = Limits.of(worker.settings)
        self.max_queue_wait_s = min(max_queue_wait_s, MAX_QUEUE_WAIT_S)  # clients count on no more
        self._running = asyncio.Semaphore(self.limits.running)
        self._held = 0
        self._waiting: set[asyncio.Timeout] = set()  # deadlines of requests queued for a pool slot
        self._idle = asyncio.Event()
        self._idle.set()
        self.is_closed = False

    def admit(self) -> bool:
        """Take the request if there is room and the server is not stopping."""
        if self.is_closed or self._held >= self.limits.capacity:
            return False
        self._held += 1
        self._idle.clear()
        return True

    def release(self) -> None:
        self._held -= 1
        if self._held == 0:
            self._idle.set()

    async def run(self, request: StepRequest, dispatch: Dispatch | None = None) -> bytes:
        """The result envelope of an admitted request (`ScriptWorker.answer_request`), once a pool slot is free;
        Busy after max_queue_wait_s, Stopping once the server stops; Withdrawn when `dispatch` takes it
        back before it started."""
        await self._acquire(dispatch)
        try:
            return await self.worker.answer_request(request, dispatch)
        finally:
            self._running.release()

    async def _acquire(self, dispatch: Dispatch | None) -> None:
        if self.is_closed:
            raise Stopping
        if self._running.locked():
            try:
                async with asyncio.timeout(self.max_queue_wait_s) as deadline:
                    self._waiting.add(deadline)
                    try:
                        await acquire_unless_withdrawn(self._running, dispatch)
                    finally:
                        self._waiting.discard(deadline)
            except TimeoutError:
                raise (Stopping if self.is_closed else Busy) from None
        else:
            await self._running.acquire()  # free: returns at once
        if self.is_closed:
            self._running.release()
            raise Stopping

    async def stop(self) -> None:
        """Take no new work (the worker's `stopping`; queued requests get Stopping now) and wait up to
        the worker's grace_s for the running ones."""
        settings = self.worker.settings
        self.worker.stopping = True
        self.is_closed = True
        now = asyncio.get_running_loop().time()
        for deadline in list(self._waiting):
            deadline.reschedule(now)
        try:
            async with asyncio.timeout(settings.grace_s):
                await self._idle.wait()
        except TimeoutError:
            logger.warning(
                "worker %s: %d requests still held after the %.0f s grace period; cancelling them",
                settings.worker_id,
                self._held,
                settings.grace_s,
            )
