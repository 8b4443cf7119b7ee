"""Waiting on a SQLite file: one watcher per store finds which waited channels moved, and wakes only those.

SQLite cannot wake a connection when another one commits (another process's, or the store's own writer),
so while anyone waits the watcher reads ``PRAGMA data_version`` once per interval. When it changed, one more
query reads the mark of every channel waited on (a run's last event seq, the notices' last cursor), and only
the waiters of a channel whose mark passed what they have seen are woken to query again: a commit costs two
queries plus one per channel it moved, however many wait (waking them all made 500 event streams run 500
queries per commit). Invariant: a waiter that enters `watch()` before its query is woken by the first tick
that sees a commit made after that query started and moving its mark past `after`, because the watcher read
its first version before the query, and reads each next one, then the marks, after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from dagrun.errors import StoreError

logger = logging.getLogger(__name__)

ReadMarks = Callable[[list[str]], Awaitable[dict[str, int]]]


@dataclass(slots=True)
class _Channel:
    changed: asyncio.Future[None]  # resolved, then replaced, by the next tick that sees the mark pass
    afters: list[int] = field(default_factory=list)  # what each waiter has seen; the channel goes with the last


class CommitWatcher:
    """Wakes a store's waiters when their channel moves; runs only while someone waits."""

    def __init__(
        self, read_version: Callable[[], Awaitable[int]], read_marks: ReadMarks, *, interval_s: float, owner: str
    ) -> None:
        """`read_version` reads ``PRAGMA data_version`` on the connection the waiters query through (the
        version is per connection); `read_marks` reads the given channels' marks, each an integer that grows
        with what a waiter of the channel would find (a channel it leaves out counts as 0); `owner` names the
        store in "... is closed"."""
        self._read_version = read_version
        self._read_marks = read_marks
        self._interval_s = interval_s
        self._owner = owner
        self._channels: dict[str, _Channel] = {}
        self._task: asyncio.Task[None] | None = None  # the ticks, while anyone waits
        self._start_lock = asyncio.Lock()  # one first version read at a time: concurrent waiters share it
        self._closed = False

    @contextlib.asynccontextmanager
    async def watch(self, channel: str, after: int) -> AsyncIterator[asyncio.Future[None]]:
        """A future resolved by the first commit seen after entering that moves the channel's mark past
        `after`: query inside, then await it. RuntimeError once closed; StoreError when the first version
        cannot be read."""
        if self._closed:
            raise RuntimeError(f"{self._owner} is closed")
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel(asyncio.get_running_loop().create_future())
        entry.afters.append(after)
        try:
            await self._start()
            yield entry.changed
        finally:
            entry.afters.remove(after)
            if not entry.afters and self._channels.get(channel) is entry:
                del self._channels[channel]
            if not self._channels:
                await self._stop()

    async def aclose(self) -> None:
        """Wake every waiter (its next step finds the store closed) and stop; safe to call twice."""
        self._closed = True
        for entry in self._channels.values():
            _wake(entry)
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
                if latest == version:
                    continue
                version = latest
                marks = await self._read_marks(list(self._channels))
            except (StoreError, RuntimeError) as exc:
                # The waiters' own queries report the failure, or that the store closed; the next one to
                # wait starts the watcher again.
                logger.debug("%s commit watcher: reading what changed failed: %s", self._owner, exc)
                for entry in self._channels.values():
                    _wake(entry)
                return
            for name, entry in self._channels.items():
                if marks.get(name, 0) > min(entry.afters):
                    _wake(entry)


def _wake(entry: _Channel) -> None:
    """The channel's waiters query again; later ones wait on a new future."""
    if not entry.changed.done():
        entry.changed.set_result(None)
    entry.changed = asyncio.get_running_loop().create_future()
