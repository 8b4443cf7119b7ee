"""The watcher: one per orchestrator, three loops that wait on the store's notices and on two clocks.

It renews the lease of every run driven here (every third of the lease time, in one store call), hands
each run's new commands to its driver as soon as their notice arrives (and once per lease period looks
for commands whose notice was trimmed), and stops a driver whose lease it could not renew in time (a
timer per run, so that a store call that hangs cannot delay it), before another orchestrator may take
the run. A serving orchestrator's watcher also adopts runs that nobody drives: on their notice
(submitted, or handed back) and by a rescan once per lease period, which finds runs whose driver died
without a word and any notice that was trimmed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from dagrun.cancellation import cancel_and_wait
from dagrun.contract.states import RunStatus
from dagrun.engine.driver import RunDriver, Stop
from dagrun.store.base import NoticeKind, Store

logger = logging.getLogger(__name__)

UNFINISHED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PAUSED)
SCAN_LIMIT = 1000  # runs per status looked at by one rescan
STALE_FRACTION = 0.8  # a driver stops when its lease was last renewed this much of the lease time ago
RETRY_S = 1.0  # wait after the store failed, before trying again


class Watcher:
    def __init__(
        self,
        store: Store,
        owner: str,
        *,
        lease_s: float,
        drivers: Mapping[str, RunDriver],
        adopt: Callable[[str], None],
    ) -> None:
        self._store = store
        self._owner = owner
        self._lease_s = lease_s
        self._renew_every_s = lease_s / 3
        self._drivers = drivers
        self._adopt = adopt
        self._deadlines: dict[str, asyncio.TimerHandle] = {}  # run id -> stops its driver unless renewed
        self._serving = False
        self._tasks: list[asyncio.Task[None]] = []  # the loops, while there is something to watch

    def driving(self, run_id: str) -> None:
        """A run is now driven here, under a lease just claimed."""
        self._renewed(run_id)
        self._start()

    async def done_with(self, run_id: str, *, handed_back: bool) -> None:
        """A run is no longer driven here: give its lease up (with a notice when it did not end, so that
        a serving orchestrator takes it at once)."""
        deadline = self._deadlines.pop(run_id, None)
        if deadline is not None:
            deadline.cancel()
        try:
            await self._store.release_lease(run_id, self._owner, notify=handed_back)
        except Exception as exc:  # the lease lapses by itself
            logger.warning("run %s: could not release its lease: %s", run_id, exc)
        if not self._deadlines and not self._serving:
            await self._stop_loops()

    def serve(self) -> None:
        """Also adopt runs that nobody drives, from now on."""
        self._serving = True
        self._start()

    async def aclose(self) -> None:
        self._serving = False
        await self._stop_loops()

    def _start(self) -> None:
        # Loops of their own, so that renewing leases never waits behind notices or a recheck of every
        # run's commands (with 1500 runs, the recheck outlasted the leases), nor the other way round.
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen(), name="dagrun watcher: notices"),
                asyncio.create_task(self._keep_leases(), name="dagrun watcher: leases"),
                asyncio.create_task(self._recheck_commands(), name="dagrun watcher: commands"),
            ]

    async def _stop_loops(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)

    async def _listen(self) -> None:
        """Hand notices to the drivers here (and, when serving, adopt runs); rescan once per lease period."""
        cursor = await _retrying(self._store.notice_cursor)
        next_scan = time.monotonic()
        while True:
            try:
                if self._serving and time.monotonic() >= next_scan:
                    await self._scan()
                    next_scan = time.monotonic() + self._lease_s
                wait_s = max(next_scan - time.monotonic(), 0) if self._serving else self._lease_s
                for notice in await self._store.wait_notices(after=cursor, timeout_s=wait_s):
                    cursor = notice.cursor
                    await self._take(notice.run_id, notice.kind)
            except Exception as exc:  # the store is down or failing; the leases' deadlines still run
                logger.warning("watcher: the store failed: %s; retrying in %.0f s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every_s)  # a heartbeat: leases are renewed on a clock
            try:
                await self._renew()
            except Exception as exc:  # the deadlines stop the drivers if this goes on
                logger.warning("watcher: renewing leases failed: %s", exc)

    async def _recheck_commands(self) -> None:
        """Once per lease period, apply any command whose notice was missed (notices may be trimmed), one
        run at a time: a safety net, which must not crowd out the store calls of the runs themselves."""
        while True:
            await asyncio.sleep(self._lease_s)  # a clock: this looks for what no notice announced
            for driver in self._held():
                try:
                    await driver.apply_new_commands()
                except Exception as exc:  # the next recheck, or the command's notice, tries again
                    logger.warning("run %s: reading its commands failed: %s", driver.run_id, exc)

    async def _take(self, run_id: str, kind: NoticeKind) -> None:
        driver = self._drivers.get(run_id)
        if driver is not None:
            if kind == NoticeKind.COMMAND:
                await driver.apply_new_commands()
        elif self._serving and kind in (NoticeKind.SUBMITTED, NoticeKind.RELEASED):
            self._adopt(run_id)

    async def _renew(self) -> None:
        """Renew every lease held here, all at once; a driver whose lease another orchestrator took stops
        at once."""
        held = self._held()
        if not held:
            return
        # One call for all: a call per run queued behind the store traffic of every run (and event stream).
        renewed = await self._store.claim_leases([driver.run_id for driver in held], self._owner, ttl_s=self._lease_s)
        for driver, is_ours in zip(held, renewed, strict=True):
            if is_ours:
                self._renewed(driver.run_id)
            else:
                logger.error("run %s: lost its lease to another orchestrator; stopping here", driver.run_id)
                driver.stop(Stop.HAND_BACK)

    def _held(self) -> list[RunDriver]:
        """The drivers of the runs whose leases are held here."""
        return [driver for run_id in self._deadlines if (driver := self._drivers.get(run_id)) is not None]

    def _renewed(self, run_id: str) -> None:
        """Re-arm the run's deadline: its driver stops before the lease could lapse unrenewed, since
        another orchestrator may take the run then, and two drivers must never write one run."""
        old = self._deadlines.get(run_id)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._deadlines[run_id] = loop.call_later(self._lease_s * STALE_FRACTION, self._lapse, run_id)

    def _lapse(self, run_id: str) -> None:
        driver = self._drivers.get(run_id)
        if driver is not None:
            logger.error("run %s: its lease could not be renewed in time; stopping here", run_id)
            driver.stop(Stop.HAND_BACK)

    async def _scan(self) -> None:
        for status in UNFINISHED:
            for run in await self._store.list_runs(status=status, limit=SCAN_LIMIT):
                if run.run_id not in self._drivers and await self._store.get_lease(run.run_id) is None:
                    self._adopt(run.run_id)


async def _retrying(call: Callable[[], Awaitable[int]]) -> int:
    """`call()` until the store answers."""
    while True:
        try:
            return await call()
        except Exception as exc:
            logger.warning("watcher: the store failed: %s; retrying in %.0f s", exc, RETRY_S)
            await asyncio.sleep(RETRY_S)
