"""Driving one run: a Scheduler decides what may start, executors run it, the store keeps every change.

Each started step is one task that runs its attempts (`step_runner`) or waits for its signal, records
every state change and, when it ends, hands the Scheduler its completion; whatever that unlocks starts at
once.
Nothing polls: the run ends when its TaskGroup has no task left. What the driver knows of each step is
one `StepState`; what a failure leads to (a retry, fail fast) it asks of `policy`.

A driver starts from a new run or from one read back from the store (crash recovery): completed steps
keep their outputs, steps that were running run again as a new attempt. Commands (cancel, pause,
resume, signal) come from the run's command log (`CommandLog`), replayed whole when the driver starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from dagrun.cancellation import cancel_and_wait
from dagrun.contract.executor import Executor
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.command_log import CommandLog
from dagrun.engine.conditions import decide_condition
from dagrun.engine.control import end_cancelled
from dagrun.engine.defaults import DEFAULT_MAX_MAP_ITEMS
from dagrun.engine.mapping import MapHost, run_map
from dagrun.engine.outcome import RunResult, StepListener
from dagrun.engine.pause import PauseGate
from dagrun.engine.policy import cancelled_by, step_failure
from dagrun.engine.scheduler import Scheduler
from dagrun.engine.step_runner import StepRunner
from dagrun.engine.step_state import StepState, SucceededOutputs
from dagrun.engine.subflows import ChildRuns, SubflowHost, run_subflow, tell_children
from dagrun.engine.takeover import StoredRun, take_over
from dagrun.engine.waiting_step import wait_for_signal
from dagrun.errors import LeaseLost, RunHandedBack
from dagrun.flow.instances import map_of
from dagrun.flow.model import Flow
from dagrun.flow.outputs import resolve_flow_outputs
from dagrun.store.base import Command, CommandKind, StepRecord, Store

logger = logging.getLogger(__name__)


class Stop(Enum):
    """Why a driver stops before its run has ended."""

    CANCEL = "cancelled"  # an operator cancelled the run: it ends cancelled
    HAND_BACK = "handed back"  # the lease was lost or the orchestrator shuts down: write nothing more


class RunDriver:
    """One run being driven: the Scheduler, the ready queue, a StepState per step, the pause gate."""

    def __init__(
        self,
        store: Store,
        executor_of: Callable[[str], Executor],
        flow: Flow,
        run_id: str,
        flow_inputs: dict[str, Any],
        *,
        max_parallel: int,
        fail_fast: bool,
        listener: StepListener | None,
        max_map_items: int = DEFAULT_MAX_MAP_ITEMS,
        children: ChildRuns | None = None,
    ) -> None:
        self.run_id = run_id
        self._store = store
        self._flow = flow
        self._flow_inputs = flow_inputs
        self._max_parallel, self._max_map_items = max_parallel, max_map_items
        self._fail_fast, self._listener = fail_fast, listener
        self._children = children  # None: no sub-flow step can run (a driver built without an orchestrator)
        self._states = {step.id: StepState(step) for step in flow.steps}
        self._outputs_of = SucceededOutputs(self._states)
        self._scheduler = Scheduler(flow)
        self._ready: deque[str] = deque()
        self._running = 0  # steps whose task is running
        self._first_failure: str | None = None  # the run's error
        self._initial = self._scheduler.roots()
        self._unrecorded_skips: list[str] = []  # skips that follow from a stored run but were never written
        self._unrecorded_cancels: list[str] = []  # likewise, cancellations of a fail-fast run's failure
        self._task_group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stop: Stop | None = None
        self._stopping: asyncio.Task[None] | None = None  # cancels the drive task until it ends
        self._stepping = False  # steps may be running: stopping must cancel them
        self._gate = PauseGate()
        self._commands = CommandLog(store, run_id)
        self._instances: dict[str, StepState] = {}  # the mapped steps' instances under way
        self._stored_instances: dict[str, StepRecord] = {}  # their records, read back by a takeover
        self._steps = self._step_runner(executor_of)

    def restore(self, stored: StoredRun) -> None:
        """Take up a run driven before from its stored state, before `drive`."""
        taken = take_over(self._states, self._scheduler, stored, fail_fast=self._fail_fast)
        for state in taken.failed:  # in flow order: the first to fail names the run's error
            self._failed(state)
        self._initial, self._unrecorded_skips = taken.ready, taken.unrecorded_skips
        self._unrecorded_cancels = taken.unrecorded_cancels
        self._steps.context = stored.context
        self._stored_instances = {step.step_id: step for step in stored.steps if step.step_id not in self._states}

    async def drive(self, *, stored_status: RunStatus) -> RunResult:
        """Run to the end and return the outcome. `stored_status` is the run's status in the store (PENDING
        for a new run). RunHandedBack when stopped by `stop(Stop.HAND_BACK)`, or when the store refused a
        write because another driver took the run's lease (LeaseLost: this one writes nothing more)."""
        try:
            return await self._drive(stored_status)
        except LeaseLost as exc:
            logger.error("run %s: %s; stopping here", self.run_id, exc)
            raise RunHandedBack(self.run_id) from exc

    async def _drive(self, stored_status: RunStatus) -> RunResult:
        self._task = asyncio.current_task()
        logger.info("run %s of flow %r: driving %d steps", self.run_id, self._flow.name, len(self._states))
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                await self._catch_up(stored_status)
                if self._stop is None:  # a cancel in the log, or a hand-back meanwhile: no step starts
                    await self._record_skips(self._unrecorded_skips)
                    await self._record_cancels(self._unrecorded_cancels)
                    if self._gate.is_closed:
                        self._gate.hold(task_group)
                    self._ready.extend(self._initial)
                    self._stepping = True
                    self._pump()
        except asyncio.CancelledError:
            return await self._stopped(cancelled=True)
        except BaseExceptionGroup as group:
            # A step task raises only on a bug or a store failure; end the run failed, then surface it.
            lost = group.subgroup(LeaseLost)
            if lost is not None:  # the run is another driver's now: write nothing
                raise lost.exceptions[0] from group
            cause = group.exceptions[0]
            await asyncio.shield(
                self._store.set_run_status(self.run_id, RunStatus.FAILED, at=time.time(), error=str(cause))
            )
            raise cause from group
        if self._stop is not None:  # stopped before any step started
            return await self._stopped(cancelled=False)
        status = RunStatus.FAILED if self._first_failure else RunStatus.SUCCEEDED
        await self._store.set_run_status(self.run_id, status, at=time.time(), error=self._first_failure)
        await self._store.flush()
        logger.info("run %s ended %s", self.run_id, status)
        return self._result(status)

    def stop(self, reason: Stop) -> None:
        """Stop driving: CANCEL ends the run cancelled; HAND_BACK leaves it as it is for another driver.
        Steps are stopped by cancelling the drive task; before any has started, `drive` sees the reason."""
        if self._stop is None:
            self._stop = reason
            if self._task is not None and self._stepping:
                self._stopping = asyncio.create_task(cancel_and_wait(self._task))

    # --- commands ----------------------------------------------------------------------------------

    async def apply_new_commands(self) -> None:
        """Apply the commands sent since the last call (called when a notice, a lease renewal or a local
        RunControl says so). Before `drive` has caught up with the log there is nothing to do: catching
        up reads them all."""
        if self._task_group is None or self._stop is not None:
            return
        await self._commands.apply_new(self._apply)

    async def _catch_up(self, stored_status: RunStatus) -> None:
        """Replay the whole command log, then write the run status it leads to once, rather than once per
        pause and resume."""
        await self._commands.apply_new(self._replay)
        status = RunStatus.PAUSED if self._gate.is_closed else RunStatus.RUNNING
        if status != stored_status and self._stop is None:
            await self._store.set_run_status(self.run_id, status, at=time.time())

    async def _apply(self, command: Command) -> None:
        logger.info("run %s: applying %s", self.run_id, command.kind)
        if command.kind == CommandKind.PAUSE:
            await self._pause()
        elif command.kind == CommandKind.RESUME:
            await self._resume()
        else:
            self._apply_at_once(command)
        if command.kind in (CommandKind.PAUSE, CommandKind.RESUME):  # a cancel reaches them as the run ends
            await self._tell_children(command.kind, [s.step.id for s in self._states.values() if s.task is not None])

    async def _replay(self, command: Command) -> None:
        """Catching up: a pause or resume only moves the gate (`_catch_up` writes the status once)."""
        if command.kind == CommandKind.PAUSE:
            self._gate.close()
        elif command.kind == CommandKind.RESUME:
            self._gate.open()
        else:
            self._apply_at_once(command)

    def _apply_at_once(self, command: Command) -> None:
        """Commands that need no write of their own: cancel (the stop writes) and signal."""
        if command.kind == CommandKind.CANCEL:
            self.stop(Stop.CANCEL)
        elif command.step_id in self._states and not self._scheduler.status[command.step_id].is_terminal:
            self._states[command.step_id].deliver_signal(command.values)

    async def _pause(self) -> None:
        """No step starts: those queued are withdrawn where no worker has taken them yet."""
        if self._gate.is_closed:
            return
        assert self._task_group is not None
        self._gate.close()
        self._gate.hold(self._task_group)
        await self._store.set_run_status(self.run_id, RunStatus.PAUSED, at=time.time())
        under_way = [*self._states.values(), *self._instances.values()]
        for dispatch in [state.dispatch for state in under_way if state.dispatch is not None]:
            dispatch.withdraw()

    async def _resume(self) -> None:
        """Open the gate. The status is written even when it was open: the event is the answer that
        `Orchestrator.resume` waits for, to tell a live driver from a dead one."""
        await self._store.set_run_status(self.run_id, RunStatus.RUNNING, at=time.time())
        if self._gate.is_closed:
            self._gate.open()
            self._pump()

    async def _stopped(self, *, cancelled: bool) -> RunResult:
        """The drive was stopped: by `stop`, or by a cancel from outside (which counts as a cancel)."""
        if self._stop is None:  # cancelled from outside (Ctrl-C, a caller's timeout): record it, re-raise
            await asyncio.shield(self._finish_cancelled("cancelled"))
            raise asyncio.CancelledError
        task = asyncio.current_task()
        if cancelled and task is not None:
            task.uncancel()  # the cancel came from `stop`, which says what follows
        if self._stop is Stop.HAND_BACK:
            logger.info("run %s handed back: this driver stopped without ending it", self.run_id)
            raise RunHandedBack(self.run_id)
        await asyncio.shield(self._finish_cancelled("cancelled by an operator"))
        logger.info("run %s ended cancelled", self.run_id)
        return self._result(RunStatus.CANCELLED)

    # --- steps -------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Start ready steps while there are free slots and the run is not paused."""
        assert self._task_group is not None
        while self._ready and self._running < self._max_parallel and not self._gate.is_closed and self._stop is None:
            state = self._states[self._ready.popleft()]
            self._scheduler.start(state.step.id)
            self._running += 1
            state.task = self._task_group.create_task(self._run_step(state))

    async def _run_step(self, state: StepState) -> None:
        status = await decide_condition(
            state, run_id=self.run_id, flow_inputs=self._flow_inputs, outputs_of=self._outputs_of, record=self._record
        )
        if status is None and state.step.map is not None:
            status = await run_map(state, self._map_host())
        elif status is None and state.step.flow is not None:
            status = await run_subflow(state, self._subflow_host())
        elif status is None and state.step.wait_for is None:
            status = await self._steps.until_done(state)
        elif status is None:
            status = await wait_for_signal(state, run_id=self.run_id, record=self._record, listener=self._listener)
        if status == StepStatus.FAILED:
            self._failed(state)
        state.task = None
        self._running -= 1
        decisions = self._scheduler.complete(state.step.id, status)
        await self._record_skips(decisions.skipped)
        cancelled, unlocked = cancelled_by(status, self._scheduler, fail_fast=self._fail_fast)
        if cancelled:
            await self._cancel_after_failure(cancelled)
            await self._record_skips(unlocked.skipped)
        self._ready.extend(decisions.ready + unlocked.ready)
        self._pump()

    def _failed(self, state: StepState) -> None:
        """The step failed: the first step to fail names the run's error."""
        self._first_failure = self._first_failure or step_failure(state.step.id, state.error)

    # --- records -----------------------------------------------------------------------------------

    async def _record(self, record: StepRecord, message: str = "") -> None:
        if self._stop is not None:
            # Stopped: the cancel on its way may be lost (see dagrun.cancellation); a step writes nothing more.
            raise asyncio.CancelledError
        await self._store.record_step(record, message=message)
        if self._listener is not None:
            self._listener(record)

    async def _record_skips(self, skipped: list[str]) -> None:
        now = time.time()
        for step_id in skipped:
            record = StepRecord(self.run_id, step_id, StepStatus.SKIPPED, 0, None, now)
            await self._record(record, message=f"run_if {self._states[step_id].step.run_if} not met")

    async def _cancel_after_failure(self, step_ids: list[str]) -> None:
        """Fail fast: stop the running steps among `step_ids` and end them all cancelled."""
        dropped = set(step_ids)
        self._ready = deque(step_id for step_id in self._ready if step_id not in dropped)  # clean-ups stay
        stopping = []
        for step_id in step_ids:
            state = self._states[step_id]
            if state.task is not None:
                stopping.append(state.task)
                state.task = None
                self._running -= 1
        await cancel_and_wait(*stopping)  # stopped before a clean-up step starts
        await self._tell_children(CommandKind.CANCEL, step_ids)
        await self._record_cancels(step_ids + self._instances_of(step_ids))

    async def _record_cancels(self, step_ids: list[str]) -> None:
        now = time.time()
        for step_id in step_ids:
            await self._record(self._cancelled(step_id, now), message="cancelled after a failure (fail fast)")

    async def _finish_cancelled(self, reason: str) -> None:
        now = time.time()
        ended = self._scheduler.cancel_rest()
        await self._tell_children(CommandKind.CANCEL, ended)
        cancelled = [self._cancelled(step_id, now) for step_id in ended + self._instances_of(ended)]
        await end_cancelled(self._store, self.run_id, cancelled, reason, now)
        if self._listener is not None:
            for record in cancelled:
                self._listener(record)

    def _cancelled(self, step_id: str, now: float) -> StepRecord:
        state = self._states.get(step_id) or self._instances.pop(step_id)
        return StepRecord(self.run_id, step_id, StepStatus.CANCELLED, state.attempt, None, now)

    def _instances_of(self, step_ids: list[str]) -> list[str]:
        """The instances under way of those of `step_ids` that are mapped steps (a cancel left them so)."""
        mapped = {step_id for step_id in step_ids if self._states[step_id].step.map is not None}
        return [instance for instance in self._instances if map_of(instance) in mapped]

    def _map_host(self) -> MapHost:
        return MapHost(
            self.run_id, self._flow_inputs, self._outputs_of, self._steps.until_done, self._gate.wait_open,
            self._record, self._instances, self._stored_instances, self._max_parallel, self._max_map_items,
        )  # fmt: skip

    def _subflow_host(self) -> SubflowHost:
        assert self._children is not None, "a sub-flow step runs under an orchestrator"
        return SubflowHost(
            self.run_id,
            self._flow_inputs,
            self._outputs_of,
            self._record,
            self._children.run,
            self._store,
            lambda: self._gate.is_closed,
        )

    async def _tell_children(self, kind: CommandKind, step_ids: list[str]) -> None:
        """Send a command of the run on to the child runs of those of `step_ids` that run a flow."""
        if self._children is not None:
            await tell_children(self._children.control, self.run_id, self._flow, step_ids, kind)

    def _result(self, status: RunStatus) -> RunResult:
        steps = {step_id: state.outcome(self._scheduler.status[step_id]) for step_id, state in self._states.items()}
        outputs = resolve_flow_outputs(self._flow.outputs, self._outputs_of)
        return RunResult(self.run_id, status, self._steps.context, steps, outputs)

    def _step_runner(self, executor_of: Callable[[str], Executor]) -> StepRunner:
        return StepRunner(
            self._store, executor_of, self.run_id, self._flow_inputs, self._outputs_of, gate=self._gate,
            record=self._record, spawn=lambda write: self._group().create_task(write),
        )  # fmt: skip

    def _group(self) -> asyncio.TaskGroup:
        assert self._task_group is not None, "steps run only while the run is driven"
        return self._task_group
