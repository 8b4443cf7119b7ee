"""The orchestrator: drives runs (a `RunDriver` each) under leases. Its `control` (a `RunControl` on the
same store) reads and controls them; the drivers here hear its commands at once (`local_runs`).

One store can be shared by many orchestrators, on many machines. Each run is driven by the one that
holds its lease; a `Watcher` renews the leases, hands commands from the store to the drivers here and,
for a serving orchestrator (`serve`), adopts runs that were submitted or whose driver died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dagrun.contract.executor import Executor, ExecutorOptions, HostFunction
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import RunControl, new_owner_id, new_run_id, new_run_record
from dagrun.engine.defaults import DEFAULT_LEASE_S, DEFAULT_MAX_MAP_ITEMS, DEFAULT_MAX_PARALLEL
from dagrun.engine.driver import RunDriver, Stop
from dagrun.engine.executors import Executors
from dagrun.engine.local_runs import local_runs
from dagrun.engine.outcome import RunResult, StepListener, StepOutcome
from dagrun.engine.rerun import plan_rerun
from dagrun.engine.stored_flow import flow_of
from dagrun.engine.subflows import ChildRuns
from dagrun.engine.takeover import StoredRun
from dagrun.engine.watcher import Watcher
from dagrun.errors import ControlError, ExecutorError, FlowError, RunHandedBack, RunLost, RunNotFound, StoreError
from dagrun.flow.model import Flow
from dagrun.flow.schema import DEFAULT_EXECUTOR
from dagrun.store.base import Reuse, RunRecord, StepRecord, Store

__all__ = ["DEFAULT_LEASE_S", "DEFAULT_MAX_PARALLEL", "Orchestrator", "RunResult", "StepListener", "StepOutcome"]

logger = logging.getLogger(__name__)

HOLDER_ANSWER_S = 2.0  # how long `resume` waits for the driver of a run to answer its command


class Orchestrator:
    """Runs flows against one store. Executors are named (`executors`): ``local`` is always there; others
    are given as Executor objects (owned by the caller) or URLs (opened here, closed by `aclose`)."""

    def __init__(
        self,
        store: Store,
        *,
        executors: Mapping[str, Executor | str] | None = None,
        functions: Mapping[str, HostFunction] | None = None,
        processes: int | None = None,
        token: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        fail_fast: bool = False,
        max_map_items: int = DEFAULT_MAX_MAP_ITEMS,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        self.store = store
        self.owner = new_owner_id("orchestrator")
        self.control = RunControl(store)  # reads and commands; a run driven here hears its commands at once
        self._local = local_runs(store)
        options = ExecutorOptions(functions=dict(functions or {}), token=token, processes=processes)
        self.executors = Executors({DEFAULT_EXECUTOR: DEFAULT_EXECUTOR, **(executors or {})}, options)
        self._lease_s = lease_s
        self._max_parallel = max_parallel
        self._fail_fast = fail_fast
        self._max_map_items = max_map_items
        self._drivers: dict[str, RunDriver] = {}
        self._background: dict[str, asyncio.Task[RunResult | None]] = {}
        self._watcher = Watcher(store, self.owner, lease_s=lease_s, drivers=self._drivers, adopt=self._adopt)
        self._closed = False

    async def __aenter__(self) -> Orchestrator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Hand back the runs driven here (another orchestrator may take them over), then close the
        executors opened here (not the store, not executors passed in); safe twice."""
        if self._closed:
            return
        self._closed = True
        self.hand_back()
        await asyncio.gather(*self._background.values(), return_exceptions=True)
        await self._watcher.aclose()
        await self.executors.aclose()

    def hand_back(self) -> None:
        """Stop driving the runs driven here, leaving them to be resumed (what Ctrl-C does to `dagrun run`):
        their `run` or `drive` calls raise RunHandedBack once the drivers have stopped; their leases are
        given up with a notice, so a serving orchestrator takes them up at once, or `dagrun resume` does."""
        for driver in list(self._drivers.values()):
            driver.stop(Stop.HAND_BACK)

    # --- starting and driving runs -----------------------------------------------------------------

    async def run(
        self,
        flow: Flow,
        *,
        inputs: Mapping[str, Any] | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
        listener: StepListener | None = None,
    ) -> RunResult:
        """Run `flow` here to its end and return the outcome (`max_parallel` and `fail_fast` default to
        the orchestrator's). Before anything is persisted: FlowError for unknown inputs or executor names,
        ExecutorError for an executor that cannot be opened. A failing step never raises, it fails the
        run. Cancelling the call ends the run cancelled; RunHandedBack when `aclose` interrupts it; RunLost
        when the store loses the run meanwhile."""
        self._check_usable(max_parallel)
        record = new_run_record(new_run_id(), flow, flow.inputs_with(inputs or {}))
        driver = await self._begin(flow, record, None, listener, max_parallel=max_parallel, fail_fast=fail_fast)
        return await self._drive(driver, RunStatus.PENDING)

    async def rerun(
        self,
        run_id: str,
        *,
        from_steps: Sequence[str] = (),
        inputs: Mapping[str, Any] | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
        listener: StepListener | None = None,
    ) -> RunResult:
        """Rerun an ended run here from where it failed (`engine.rerun`): a new run of its flow, with its
        inputs overridden by `inputs`, that reuses the outputs of the steps that succeeded and runs the
        others, the `from_steps` and every step downstream of them. The listener hears the reused steps
        first. ControlError when the run has not ended, has no such step or leaves nothing to run again;
        otherwise raises like `run`."""
        self._check_usable(max_parallel)
        rerun = await plan_rerun(self.store, run_id, from_steps=from_steps, inputs=inputs)
        driver = await self._begin(
            rerun.flow, rerun.record, rerun.reuse, listener, max_parallel=max_parallel, fail_fast=fail_fast
        )
        return await self._drive(driver, RunStatus.PENDING)

    async def start_run(
        self,
        flow: Flow,
        *,
        inputs: Mapping[str, Any] | None = None,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
    ) -> str:
        """Record a run of `flow` and drive it here in the background; return its id at once (the run
        is in the store when this returns). Raises like `run`."""
        self._check_usable(max_parallel)
        record = new_run_record(new_run_id(), flow, flow.inputs_with(inputs or {}))
        driver = await self._begin(flow, record, None, None, max_parallel=max_parallel, fail_fast=fail_fast)
        self._in_background(driver.run_id, self._drive_or_none(driver, RunStatus.PENDING))
        return driver.run_id

    async def drive(
        self, run_id: str, *, wait_for_lease: bool = False, listener: StepListener | None = None
    ) -> RunResult | None:
        """Drive a recorded run here to its end: one submitted, or one whose driver died (completed steps
        keep their outputs; steps that were running run again). None when the run has ended or another
        live orchestrator holds its lease; with `wait_for_lease`, a lease that lapses unrenewed is waited
        for and taken. FlowError when the run needs an executor this orchestrator does not have; RunLost
        when the store loses the run while it is driven."""
        if self._drives(run_id):
            return None
        return await self._drive_claimed(run_id, await self._claim(run_id, wait=wait_for_lease), listener)

    async def resume(self, run_id: str, *, listener: StepListener | None = None) -> RunResult | None:
        """Undo a pause of the run and, when nobody drives it, drive it here to its end (`dagrun resume`,
        crash recovery). None when a live orchestrator drives it: its driver answers the resume with a run
        event at once, waited for HOLDER_ANSWER_S; a holder that stays silent is taken for dead and its lease
        waited out. ControlError when the run has ended; otherwise raises like `drive`."""
        seen = await self.store.last_event_seq(run_id)
        await self.control.resume(run_id)
        if self._drives(run_id):
            return None
        claimed = await self._claim(run_id, wait=True, answer_after=seen)
        return await self._drive_claimed(run_id, claimed, listener)

    def _drives(self, run_id: str) -> bool:
        """Whether this orchestrator drives the run, or is about to: claiming it would renew its own lease."""
        return run_id in self._drivers or run_id in self._background

    async def _drive_claimed(self, run_id: str, claimed: bool, listener: StepListener | None) -> RunResult | None:
        if not claimed:
            return None
        try:
            run = await self.store.get_run(run_id)
            if run.status.is_terminal:
                await self.store.release_lease(run_id, self.owner)
                return None
            driver = await self._restore(run, listener)
        except BaseException:
            await self.store.release_lease(run_id, self.owner)
            raise
        return await self._drive_or_none(driver, run.status)

    async def serve(self, stop: asyncio.Event, *, where: str = "its store") -> None:
        """Drive every run submitted to the store, and every run whose driver died, until `stop` is set;
        then hand back the runs driven here (see `aclose`). `where` names the store in the start-up line
        (no secret in it)."""
        logger.info("orchestrator %s serving the runs of %s (lease %g s)", self.owner, where, self._lease_s)
        self._watcher.serve()
        try:
            await stop.wait()
        finally:
            await self.aclose()

    def _check_usable(self, max_parallel: int | None) -> None:
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        if self._closed:
            raise RuntimeError("Orchestrator is closed")

    async def _begin(
        self,
        flow: Flow,
        record: RunRecord,
        reuse: Reuse | None,
        listener: StepListener | None,
        *,
        max_parallel: int | None,
        fail_fast: bool | None,
    ) -> RunDriver:
        """Record the run (with what it reuses, for a rerun) and its driver here."""
        self.executors.check(flow)  # a bad URL fails here, before anything is persisted
        run_id = record.run_id
        await self.store.claim_lease(run_id, self.owner, ttl_s=self._lease_s)  # before a server could adopt it
        step_ids = [step.id for step in flow.steps]
        await self.store.create_run(record, step_ids, reuse)
        driver = self._driver(
            flow, run_id, dict(record.inputs), listener, max_parallel=max_parallel, fail_fast=fail_fast
        )
        if reuse is not None:
            reused = {step.step_id: step for step in reuse.steps}
            pending = [reused.get(step_id) or StepRecord(run_id, step_id, StepStatus.PENDING) for step_id in step_ids]
            driver.restore(StoredRun(pending, reuse.context))
            if listener is not None:
                for step in reuse.steps:
                    listener(step)
        return driver

    async def _restore(self, run: RunRecord, listener: StepListener | None) -> RunDriver:
        flow = flow_of(run)
        try:
            self.executors.check(flow)
        except (FlowError, ExecutorError) as exc:
            message = f"orchestrator {self.owner} cannot drive it: {exc}"
            await self.store.set_run_status(run.run_id, RunStatus.FAILED, at=time.time(), error=message)
            await self.store.flush()
            raise
        stored = StoredRun(await self.store.get_steps(run.run_id), await self.store.get_context(run.run_id))
        driver = self._driver(flow, run.run_id, dict(run.inputs), listener)
        driver.restore(stored)
        return driver

    def _driver(
        self,
        flow: Flow,
        run_id: str,
        flow_inputs: dict[str, Any],
        listener: StepListener | None,
        *,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
    ) -> RunDriver:
        return RunDriver(
            self.store, self.executors.get, flow, run_id, flow_inputs,
            max_parallel=self._max_parallel if max_parallel is None else max_parallel,
            fail_fast=self._fail_fast if fail_fast is None else fail_fast,
            listener=listener, max_map_items=self._max_map_items, children=ChildRuns(self._run_child, self.control),
        )  # fmt: skip

    async def _run_child(self, flow: Flow, record: RunRecord, parent_paused: Callable[[], bool]) -> RunRecord:
        """A sub-flow step's child run (`engine.subflows`), driven here in the background, or, when it exists
        already (its parent was taken over), taken up here once its lease is free unless a live orchestrator
        drives it. Its record once it has ended, wherever it was driven."""
        run_id = record.run_id
        try:
            driver = await self._begin(flow, record, None, None, max_parallel=None, fail_fast=None)
        except StoreError as exc:  # it exists already, or the store failed
            await self._find_child(run_id, exc)
        else:
            if parent_paused():  # paused since the step started: that pause found no child to reach
                await self.control.pause(run_id)
            self._in_background(run_id, self._drive_or_none(driver, RunStatus.PENDING))
        ended = await self.control.wait_for_completion(run_id)
        while not ended.status.is_terminal:  # handed back, or taken up elsewhere: it ends where it is driven
            ended = await self.control.wait_for_completion(run_id)
        return ended

    async def _find_child(self, run_id: str, refused: StoreError) -> None:
        """A child run that exists already: take it up here unless it is driven here. Its parent runs (no step
        starts in a paused run), so a pause the parent passed on to it is over."""
        try:
            child = await self.store.get_run(run_id)
        except RunNotFound:
            raise refused from None  # it does not exist: the store failed
        if child.status == RunStatus.PAUSED:
            with contextlib.suppress(ControlError):  # it ended meanwhile
                await self.control.resume(run_id)
        if not self._drives(run_id):
            self._in_background(run_id, self._take_up(run_id, wait=True))

    async def _drive(self, driver: RunDriver, stored_status: RunStatus) -> RunResult:
        run_id = driver.run_id
        self._drivers[run_id] = driver
        self._local.driving(run_id, driver)
        self._watcher.driving(run_id)
        if self._closed:  # `aclose` handed back the drivers there were while this one was being made
            driver.stop(Stop.HAND_BACK)
        handed_back = False
        try:
            return await driver.drive(stored_status=stored_status)
        except RunHandedBack as exc:
            handed_back = True
            await self._raise_if_lost(run_id, exc)
            raise
        except RunNotFound as exc:
            if exc.run_id != run_id:
                raise
            # It was there when the driver started: the store lost it (not a caller's unknown id).
            raise RunLost(run_id) from exc
        finally:
            del self._drivers[run_id]
            self._local.done_driving(run_id, driver)
            await asyncio.shield(self._watcher.done_with(run_id, handed_back=handed_back))

    async def _raise_if_lost(self, run_id: str, handed_back: RunHandedBack) -> None:
        """RunLost when a run handed back is gone from the store (its lease went with it: a Redis without
        persistence restarted), rather than resumable."""
        try:
            await self.store.get_run(run_id)
        except RunNotFound:
            raise RunLost(run_id) from handed_back
        except Exception as exc:  # the store cannot say: the hand-back stands
            logger.warning("run %s: could not check that it still exists: %s", run_id, exc)

    async def _drive_or_none(self, driver: RunDriver, stored_status: RunStatus) -> RunResult | None:
        """`_drive` for runs driven in the background: a hand-back is logged there, not raised."""
        try:
            return await self._drive(driver, stored_status)
        except RunHandedBack:
            return None

    async def _claim(self, run_id: str, *, wait: bool, answer_after: int | None = None) -> bool:
        """Take the run's lease; with `wait`, wait while its holder lets it lapse (a dead holder). With
        `answer_after` (the run's last event seq before a command was sent), a holder whose driver writes an
        event within HOLDER_ANSWER_S is alive: it is not waited for."""
        last_expiry: float | None = None
        while not await self.store.claim_lease(run_id, self.owner, ttl_s=self._lease_s):
            lease = await self.store.get_lease(run_id)
            if lease is None:
                continue
            if not wait or (last_expiry is not None and lease.expires_at > last_expiry):
                return False  # renewed since we looked: its holder is alive
            answered = last_expiry is None and answer_after is not None and await self._answered(run_id, answer_after)
            if answered:
                return False  # its driver wrote an event since the command: it is alive
            last_expiry = lease.expires_at
            logger.info("run %s: waiting for the lease of %s to lapse", run_id, lease.owner)
            await asyncio.sleep(max(lease.expires_at - time.time(), 0) + 0.05)  # a deadline, not a poll
        return True

    async def _answered(self, run_id: str, after_seq: int) -> bool:
        return bool(await self.store.wait_events(run_id, after_seq=after_seq, timeout_s=HOLDER_ANSWER_S))

    def _adopt(self, run_id: str) -> None:
        """Drive a run found by the watcher (submitted, or its driver gone) in the background."""
        if not self._drives(run_id) and not self._closed:
            self._in_background(run_id, self._take_up(run_id))

    async def _take_up(self, run_id: str, *, wait: bool = False) -> RunResult | None:
        return await self._drive_claimed(run_id, await self._claim(run_id, wait=wait), None)

    def _in_background(self, run_id: str, drive: Any) -> None:
        task: asyncio.Task[RunResult | None] = asyncio.create_task(drive, name=f"dagrun run {run_id}")
        self._background[run_id] = task
        self._local.in_background(run_id, task)
        task.add_done_callback(lambda done: self._background_done(run_id, done))

    def _background_done(self, run_id: str, task: asyncio.Task[RunResult | None]) -> None:
        self._background.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("run %s: its driver failed: %s", run_id, task.exception())
