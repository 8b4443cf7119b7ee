"""Waiting on a SQLite file: one watcher per store asks it whether anything was committed, for every waiter.

SQLite cannot wake a connection when another one commits (another process's, or the store's own writer),
so while anyone waits the watcher reads ``PRAGMA data_version`` once per interval: one query per store per
tick, however many wait. When the version changed it resolves one future per channel waited on (a run's
events, the notices), and only then do the woken waiters run their own queries again. Invariant: a waiter
that enters `watch()` before its query is woken by the first tick that sees a commit made after that query
started, because the watcher read its first version before the query and reads each next one after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from dagrun.errors import StoreError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Channel:
    changed: asyncio.Future[None]  # resolved, then replaced, by the next tick that sees a commit
    waiters: int = 0  # the channel is dropped when its last waiter leaves


class CommitWatcher:
    """Wakes a store's waiters when the file changes; runs only while someone waits."""

    def __init__(self, read_version: Callable[[], Awaitable[int]], *, interval_s: float, owner: str) -> None:
        """`read_version` reads ``PRAGMA data_version`` on the connection the waiters query through (the
        version is per connection); `owner` names the store in "... is closed"."""
        self._read_version = read_version
        self._interval_s = interval_s
        self._owner = owner
        self._channels: dict[str, _Channel] = {}
        self._task: asyncio.Task[None] | None = None  # the ticks, while anyone waits
        self._start_lock = asyncio.Lock()  # one first version read at a time: concurrent waiters share it
        self._closed = False

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[asyncio.Future[None]]:
        """A future resolved by the first commit seen after entering: query inside, then await it.
        RuntimeError once closed; StoreError when the first version cannot be read."""
        if self._closed:
            raise RuntimeError(f"{self._owner} is closed")
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel(asyncio.get_running_loop().create_future())
        entry.waiters += 1
        try:
            await self._start()
            yield entry.changed
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and self._channels.get(channel) is entry:
                del self._channels[channel]
            if not self._channels:
                await self._stop()

    async def aclose(self) -> None:
        """Wake every waiter (its next step finds the store closed) and stop; safe to call twice."""
        self._closed = True
        self._wake_all()
        await self._stop()

    async def _start(self) -> None:
        """Return once ticks run from a version read before now, so the caller's next query is covered."""
        if self._task is not None and not self._task.done():
            return
        async with self._start_lock:
            if self._task is None or self._task.done():
                version = await self._read_version()
                if self._closed:  # closed while we read: start nothing that aclose would not stop
                    raise RuntimeError(f"{self._owner} is closed")
                self._task = asyncio.create_task(self._tick(version), name=f"{self._owner} commit watcher")

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))  # not `await task`: its CancelledError is not ours to raise

    async def _tick(self, version: int) -> None:
        while True:
            # A clock, not an event: nothing in SQLite wakes this connection when another one commits (it may
            # be in another process), so the file is asked at an interval, once for all of the store's waiters.
            await asyncio.sleep(self._interval_s)
            try:
                latest = await self._read_version()
            except (StoreError, RuntimeError) as exc:
                # The waiters' own queries report the failure, or that the store closed; the next one to
                # wait starts the watcher again.
                logger.debug("%s commit watcher: reading the data version failed: %s", self._owner, exc)
                self._wake_all()
                return
            if latest != version:
                version = latest
                self._wake_all()

    def _wake_all(self) -> None:
        """data_version does not say what changed: every channel's waiters query again."""
        loop = asyncio.get_running_loop()
        for entry in self._channels.values():
            if not entry.changed.done():
                entry.changed.set_result(None)
            entry.changed = loop.create_future()
