"""The SQLite store's reading side: one connection on a thread of its own, and the waits for commits.

Every query of the store runs through `Reader.read` on that thread, so the event loop never waits for the
file, and a sqlite3 error there becomes a StoreError naming the path (the writer has its own connection and
thread: `writer`). A wait queries until it finds rows, and queries again whenever the store's commit
watcher (`wait`) sees a commit move its channel: a run's events (whose mark is the run's last seq) or the
notices (the last cursor). Invariant: once `stop_reading` is called every read raises RuntimeError, so no
read reaches a connection that is being closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dagrun.errors import StoreError
from dagrun.store.sqlite import query
from dagrun.store.sqlite.file import remove_wal_files
from dagrun.store.sqlite.wait import CommitWatcher

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.02  # how often the watcher asks the file whether anything was committed
NOTICES = "notices"  # the notices' waiting channel, its mark the last cursor
_RUN_CHANNEL = "run:"  # + a run id: the waiting channel of the run's events, its mark the run's last seq

T = TypeVar("T")


def run_channel(run_id: str) -> str:
    """The waiting channel of the run's events."""
    return _RUN_CHANNEL + run_id


class Reader:
    """The store's reading connection and its thread; `aclose` closes both."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, made_wal_files: bool) -> None:
        """`conn` reads the store at `path`; `made_wal_files` when opening it made the WAL's files, which
        `aclose` then removes, so that reading leaves no file behind."""
        self._conn = conn
        self._path = path
        self._made_wal_files = made_wal_files
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dagrun-sqlite-reader")
        self._watcher = CommitWatcher(
            self._read_version, self._read_marks, interval_s=CHECK_INTERVAL_S, owner="SqliteStore"
        )
        self._closed = False

    async def read(self, function: Callable[..., T], *args: Any) -> T:
        """`function(conn, *args)` (a read of `query` or `control`) on the reader thread; StoreError when
        SQLite fails, RuntimeError once closed."""
        if self._closed:  # closed while the caller awaited a flush: the thread may be gone
            raise RuntimeError("SqliteStore is closed")
        call = functools.partial(function, self._conn, *args)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: reading the store failed: {exc}") from exc

    async def wait(
        self, channel: str, after: int, function: Callable[..., list[T]], *args: Any, deadline: float
    ) -> list[T]:
        """`function`'s rows once there are some, or [] at `deadline` (`time.monotonic()`); run again when the
        watcher sees a commit move the channel's mark past `after`. Waiters on one channel share one wake-up;
        RuntimeError when the store closes meanwhile."""
        while True:
            async with self._watcher.watch(channel, after) as changed:  # entered first: a commit after it is not missed
                found = await self.read(function, *args)
                if found:
                    return found
                done, _ = await asyncio.wait((changed,), timeout=deadline - time.monotonic())
                if not done:
                    return found

    async def stop_reading(self) -> None:
        """Every read raises RuntimeError from now on; the waiters wake, and find the store closed."""
        self._closed = True
        await self._watcher.aclose()

    async def aclose(self) -> None:
        """Stop reading, close the connection once the read in flight ends, and stop the thread."""
        await self.stop_reading()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._conn.close)
        self._thread.shutdown(wait=True)
        if self._made_wal_files:
            await asyncio.to_thread(remove_wal_files, self._path)

    async def _read_version(self) -> int:
        return await self.read(query.read_data_version)

    async def _read_marks(self, channels: list[str]) -> dict[str, int]:
        """Each channel's mark, in one reader call however many runs are waited on."""
        run_ids = [channel.removeprefix(_RUN_CHANNEL) for channel in channels if channel.startswith(_RUN_CHANNEL)]
        last_seqs, notice_cursor = await self.read(query.read_marks, run_ids, NOTICES in channels)
        marks = {_RUN_CHANNEL + run_id: seq for run_id, seq in last_seqs.items()}
        if NOTICES in channels:
            marks[NOTICES] = notice_cursor
        return marks
