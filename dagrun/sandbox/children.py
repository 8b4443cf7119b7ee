"""Children: the life of a pool's sandbox child processes: started, replaced, killed, reaped.

The pool keeps `settings.processes` children: each is forked by the pool's zygote (`spawner`) and counts once
it has confined itself and said ready. A child given up (its step timed out, it died, its step was cancelled,
its run's turn ended) is killed, reaped in the background and replaced by a fresh fork. Every child forked is
reaped, even one that became ready after the pool closed; `aclose` ends the zygote last.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence

from dagrun.errors import ExecutorError
from dagrun.sandbox import confinement
from dagrun.sandbox.process import CallHandler, ChildEvents, ChildProcess, Job, spawn_child
from dagrun.sandbox.settings import SandboxSettings
from dagrun.sandbox.spawner import Spawner

logger = logging.getLogger(__name__)


class Children:
    """`ready` are the children that serve; `on_ready` is called when one joins them, `on_hopeless` (with
    the reason) when none is left and none is coming."""

    def __init__(
        self, settings: SandboxSettings, *, functions: Sequence[str], events: ChildEvents, calls: CallHandler,
        on_ready: Callable[[], None], on_hopeless: Callable[[str], None],
    ) -> None:  # fmt: skip
        check_privileges(settings)
        self._settings = settings
        self._events = events
        self._calls = calls
        self._on_ready = on_ready
        self._on_hopeless = on_hopeless
        self._spawner = Spawner(settings, functions)
        self.ready: list[ChildProcess] = []  # ready and not retired
        self._spawning: set[asyncio.Task[Exception | None]] = set()
        self._dying: set[ChildProcess] = set()  # killed or exiting, not reaped yet
        self._reaping: set[asyncio.Task[None]] = set()
        self._spawn_error: Exception | None = None
        self._unconfined: set[str] = set()  # OS confinement layers a child lacked, already warned about
        self._is_closed = False

    @property
    def is_short(self) -> bool:
        """Fewer children ready or coming than the pool keeps (their start failed)."""
        return len(self.ready) + len(self._spawning) < self._settings.processes

    async def start(self) -> None:
        """Spawn the missing children concurrently and wait until they are ready; ExecutorError when one
        cannot be started."""
        results = await asyncio.gather(*self.top_up())
        errors = [error for error in results if error is not None]
        if errors:
            raise ExecutorError(f"sandbox pool: a child process could not be started: {errors[0]}") from errors[0]

    def top_up(self) -> list[asyncio.Task[Exception | None]]:
        """Start forking the children missing; the tasks return the error of a child that could not start."""
        missing = self._settings.processes - len(self.ready) - len(self._spawning)
        tasks = [asyncio.ensure_future(self._add()) for _ in range(max(missing, 0))]
        self._spawning.update(tasks)
        return tasks

    def replace(self, child: ChildProcess) -> None:
        """Kill a child that holds no job any more, reap it in the background and fork a replacement."""
        if child in self.ready:
            self.ready.remove(child)
        child.kill()
        child.outbox.clear()
        self._dying.add(child)
        task = asyncio.ensure_future(self._reap(child))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)
        if not self._is_closed:
            self.top_up()

    def kill_all(self) -> list[Job]:
        """Stop starting children and kill every one; the jobs they held, for the caller to fail."""
        self._is_closed = True
        for task in self._spawning:
            task.cancel()
        jobs: list[Job] = []
        for child in self.ready:
            jobs += child.jobs
            child.jobs.clear()
            child.kill()
            self._dying.add(child)
        self.ready.clear()
        return jobs

    async def aclose(self) -> None:
        """After `kill_all`: wait until every child is reaped, then end the zygote."""
        await asyncio.gather(*self._spawning, *self._reaping, return_exceptions=True)
        await asyncio.gather(*(child.wait_closed() for child in list(self._dying)))
        self._dying.clear()
        await self._spawner.aclose()

    async def _reap(self, child: ChildProcess) -> None:
        await child.wait_closed()
        self._dying.discard(child)

    async def _add(self) -> Exception | None:
        child: ChildProcess | None = None
        error: Exception | None = None
        try:
            child = await spawn_child(self._events, self._calls, self._settings, self._spawner)
        except Exception as exc:
            logger.error("sandbox pool: a child process could not be started: %s", exc)
            self._spawn_error = error = exc
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._spawning.discard(current)
        if child is None:
            if not self.ready and not self._spawning and not self._is_closed:
                self._on_hopeless(f"no sandbox child could be started: {self._spawn_error}")
            return error
        if self._is_closed:
            child.kill()
            await child.wait_closed()
            return None
        self._warn_unconfined(child)
        self.ready.append(child)
        self._on_ready()
        return None

    def _warn_unconfined(self, child: ChildProcess) -> None:
        logger.info("sandbox child %s started, confined by %s", child.worker_id, ", ".join(child.layers) or "rlimits")
        for layer in confinement.missing(child.layers):
            if layer not in self._unconfined:  # said once per pool, never silently
                self._unconfined.add(layer)
                logger.warning("sandbox: no %s: %s", layer, confinement.WITHOUT[layer])


def check_privileges(settings: SandboxSettings) -> None:
    """ValueError when the children cannot switch to the uid asked for; a warning when they stay root."""
    drop_to = settings.drop_to
    if drop_to is None and os.geteuid() == 0:
        logger.warning("sandbox children will run as root (drop_to_uid=None): rlimits alone do not confine root")
    elif drop_to is not None and os.geteuid() != 0 and drop_to != (os.geteuid(), os.getegid()):
        raise ValueError(f"drop_to_uid={drop_to[0]} and drop_to_gid={drop_to[1]} need a parent running as root")
