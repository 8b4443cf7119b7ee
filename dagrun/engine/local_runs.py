"""The runs driven in this process, per store object, so that any `RunControl` on that store object
reaches them directly: the run's driver applies a command before the call that sent it returns (instead
of when the store's notice reaches its orchestrator's watcher), and waiting for a run driven here in
the background waits for its drive to end, lease given up, not only for its last event.

Orchestrators add their drivers and background drives and take them out when they end. The table is
kept per store object, weakly: the entry of a store that nobody holds any more goes with it.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Protocol

from dagrun.store.base import Store


class CommandTaker(Protocol):
    async def apply_new_commands(self) -> None:
        """Apply the commands sent to the run since the last call."""


class LocalRuns:
    def __init__(self) -> None:
        self._drivers: dict[str, CommandTaker] = {}
        self._drives: dict[str, asyncio.Task[Any]] = {}  # the background tasks driving runs, until they end

    def driving(self, run_id: str, driver: CommandTaker) -> None:
        self._drivers[run_id] = driver

    def done_driving(self, run_id: str, driver: CommandTaker) -> None:
        if self._drivers.get(run_id) is driver:  # not another orchestrator's, which took the run over
            del self._drivers[run_id]

    def in_background(self, run_id: str, drive: asyncio.Task[Any]) -> None:
        """`drive` drives the run (or tries to) until it ends."""
        self._drives[run_id] = drive
        drive.add_done_callback(lambda done: self._drive_ended(run_id, done))

    async def deliver(self, run_id: str) -> None:
        """Have the run's driver here, if there is one, apply the commands it has not applied yet."""
        driver = self._drivers.get(run_id)
        if driver is not None:
            await driver.apply_new_commands()

    async def wait_for_drive(self, run_id: str, *, timeout_s: float | None) -> bool:
        """Whether the run is driven here in the background; if so, return once its drive has ended, or
        when `timeout_s` has passed."""
        drive = self._drives.get(run_id)
        if drive is None:
            return False
        await asyncio.wait([drive], timeout=timeout_s)
        return True

    def _drive_ended(self, run_id: str, drive: asyncio.Task[Any]) -> None:
        if self._drives.get(run_id) is drive:
            del self._drives[run_id]


_BY_STORE: weakref.WeakKeyDictionary[Store, LocalRuns] = weakref.WeakKeyDictionary()


def local_runs(store: Store) -> LocalRuns:
    """The runs driven in this process on `store` (the same object for every caller)."""
    found = _BY_STORE.get(store)
    if found is None:
        found = _BY_STORE[store] = LocalRuns()
    return found
