"""Reading and controlling runs through the store alone, from any machine.

This is what `dagrun status|pause|resume|cancel|signal|wait|errors|metrics`, the REST API and Python
callers use (an Orchestrator's is `orchestrator.control`). A command is checked against the run's state,
appended to the run's command log, and applied by the orchestrator that drives the run: at once when it
drives it in this process on the same store object (`local_runs`), else when the store's notice reaches
it. A run that nobody drives (not picked up yet, or its orchestrator died) gets the command's effect on
its status here, under the run's lease, so that `status` shows it at once; whoever drives the run later
replays the whole log and reaches the same state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.local_runs import local_runs
from dagrun.engine.signals import check_signal_fields, counted_signal, wait_for_fields
from dagrun.engine.views import (
    Checkpoint,
    PendingStep,
    RunMetrics,
    RunView,
    StepFailure,
    pending_step,
    step_failure,
    step_metrics,
)
from dagrun.errors import ControlError
from dagrun.store.base import AttemptLog, Command, CommandKind, Event, RunRecord, StepRecord, Store

if TYPE_CHECKING:
    from dagrun.flow.model import Flow  # a caller that submits a flow has loaded the flow model

logger = logging.getLogger(__name__)

CONTROL_LEASE_S = 10.0  # how long a control call holds an undriven run's lease while it updates it
# With 3 bytes, two of 500 runs submitted in one second shared an id (and the second submission failed)
# in about one such second out of 130; with 6, in one out of two billion.
RUN_ID_RANDOM_BYTES = 6
FOLLOW_WAIT_S = 5.0  # one blocking wait of `follow_events`; it loops until the run ends
# The step states whose record ends an attempt, and so carries its logs (see `store.base.attempt_log`).
ATTEMPT_ENDS = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.READY})


def new_run_id() -> str:
    """Sortable by creation time and readable: ``20261123-153012-4f9a2c81d0e3``."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(RUN_ID_RANDOM_BYTES)


def new_owner_id(role: str) -> str:
    """Who holds a lease, for people reading `status`: ``orchestrator:host:pid:random``."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def new_run_record(
    run_id: str, flow: Flow, flow_inputs: dict[str, Any], *, rerun_of: str | None = None, parent: str | None = None
) -> RunRecord:
    return RunRecord(
        run_id, flow.name, RunStatus.PENDING, flow.to_json(), flow_inputs, time.time(), rerun_of=rerun_of, parent=parent
    )


class RunControl:
    """Submit, read and control runs in one store; see the module docstring."""

    def __init__(self, store: Store, *, owner: str | None = None) -> None:
        self.store = store
        self.owner = owner or new_owner_id("control")
        self._local = local_runs(store)

    async def submit(self, flow: Flow, *, inputs: Mapping[str, Any] | None = None) -> str:
        """Record a run of `flow` for an orchestrator sharing the store to drive; return its id.
        FlowError for inputs the flow does not declare (nothing is recorded then)."""
        flow_inputs = flow.inputs_with(inputs or {})
        run_id = new_run_id()
        await self.store.create_run(new_run_record(run_id, flow, flow_inputs), [step.id for step in flow.steps])
        await self.store.flush()
        logger.info("run %s of flow %r submitted", run_id, flow.name)
        return run_id

    async def status(self, run_id: str) -> RunView:
        """RunNotFound when there is no such run. The last event's seq is read first, so that following the
        events after it misses no change made while the rest was read."""
        run = await self.store.get_run(run_id)
        last_event_seq = await self.store.last_event_seq(run_id)
        steps = await self.store.get_steps(run_id)
        context = await self.store.get_context(run_id)
        lease = await self.store.get_lease(run_id)
        return RunView(run, tuple(steps), context, None if lease is None else lease.owner, last_event_seq)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        flow_name: str | None = None,
        limit: int = 50,
        offset: int = 0,
        id_prefix: str | None = None,
        among: int = 1000,
    ) -> list[RunRecord]:
        """Newest first, past the `offset` newest that match. With `id_prefix`, among the `among` runs whose
        ids start with it (an index seek, then a read of each)."""
        if id_prefix is None:
            return await self.store.list_runs(status=status, flow_name=flow_name, limit=limit, offset=offset)
        run_ids = await self.store.find_run_ids(id_prefix, limit=among)
        runs = await asyncio.gather(*(self.store.get_run(run_id) for run_id in run_ids))
        matching = [
            run
            for run in sorted(runs, key=lambda run: (run.created_at, run.run_id), reverse=True)
            if (status is None or run.status == status) and (flow_name is None or run.flow_name == flow_name)
        ]
        return matching[offset : offset + limit]

    async def step_counts(self, run_id: str) -> dict[str, int]:
        """How many of the run's steps are in each state (by its name)."""
        return {status.value: count for status, count in (await self.store.count_steps(run_id)).items()}

    async def checkpoint(self, run_id: str) -> Checkpoint:
        """The state a run would resume from, after every write made before the call is durable."""
        await self.store.flush()
        view = await self.status(run_id)
        last_event_seq = await self.store.last_event_seq(run_id)
        commands = await self.store.get_commands(run_id)
        return Checkpoint(view, last_event_seq, tuple(commands))

    async def errors(self, run_id: str) -> list[StepFailure]:
        """The error of each step whose last attempt failed, in flow order, with its script line and logs."""
        run = await self.store.get_run(run_id)
        return [
            step_failure(run, step, step.error) for step in await self.store.get_steps(run_id) if step.error is not None
        ]

    async def follow_logs(
        self, run_id: str, *, step_id: str | None = None, attempt: int | None = None
    ) -> AsyncIterator[AttemptLog]:
        """The attempts' logs there are (as `RunReader.get_logs`), then each attempt's as it ends, until the
        run ends: an attempt's logs come with its result, so they arrive whole when it ends. Driven by the
        run's events (`follow_events`): the logs of an attempt are read when the event that ends it comes."""
        # The run and its events are read before the logs: an attempt that ends in between is in both, and
        # `seen` keeps its logs from coming twice; a run that had ended has nothing more to follow.
        ended = (await self.store.get_run(run_id)).status.is_terminal
        last_seq = 0 if ended else await self.store.last_event_seq(run_id)
        seen: set[tuple[str, int]] = set()
        for log in await self.store.get_logs(run_id, step_id=step_id, attempt=attempt):
            seen.add((log.step_id, log.attempt))
            yield log
        if ended:
            return
        async for event in self.follow_events(run_id, after_seq=last_seq):
            if not _ends_attempt(event, step_id, attempt):
                continue
            for log in await self.store.get_logs(run_id, step_id=event.step_id, attempt=event.attempt):
                if (log.step_id, log.attempt) not in seen:
                    seen.add((log.step_id, log.attempt))
                    yield log

    async def metrics(self, run_id: str) -> RunMetrics:
        run = await self.store.get_run(run_id)
        steps = tuple(step_metrics(step) for step in await self.store.get_steps(run_id))
        end = run.finished_at if run.finished_at is not None else time.time()
        return RunMetrics(run_id, run.status, None if run.started_at is None else end - run.started_at, steps)

    async def pending_work(self, run_id: str) -> list[PendingStep]:
        """The steps that have not ended, in flow order."""
        run = await self.store.get_run(run_id)
        fields = wait_for_fields(run)
        return [
            pending_step(step, fields.get(step.step_id, ()))
            for step in await self.store.get_steps(run_id)
            if not step.status.is_terminal
        ]

    async def cancel(self, run_id: str) -> Command:
        """Ask for the run to end `cancelled`: queued steps are dropped, running ones told to stop."""
        return await self._send(run_id, CommandKind.CANCEL)

    async def pause(self, run_id: str) -> Command:
        """Ask for no new step to start until `resume`; running steps finish."""
        return await self._send(run_id, CommandKind.PAUSE)

    async def resume(self, run_id: str) -> Command:
        """Undo `pause`. A run that nobody drives is handed to a serving orchestrator (a RELEASED notice)."""
        return await self._send(run_id, CommandKind.RESUME)

    async def signal(self, run_id: str, step_id: str, values: Mapping[str, Any]) -> Command:
        """Complete the `wait_for` step `step_id` with `values` as its outputs (or, when it has not
        started waiting yet, as soon as it does). The first signal to a step is the one that counts
        (drivers and takeovers apply it): a repeat with the same values returns that first command and
        sends nothing. ControlError when the step does not wait for a signal, `values` does not hold
        exactly its fields, the step already has a signal with other values (the message names it),
        or the run or step has ended."""
        command = await self._signal(run_id, step_id, values)
        await self._local.deliver(run_id)
        return command

    async def _signal(self, run_id: str, step_id: str, values: Mapping[str, Any]) -> Command:
        """Send the signal unless the step has one already; the one that counts."""
        run = await self.store.get_run(run_id)
        steps = {step.step_id: step for step in await self.store.get_steps(run_id)}
        check_signal_fields(run, step_id, tuple(steps), values)
        first = await self._first_signal(run_id, step_id)
        if first is not None:
            return counted_signal(first, values)
        if run.status.is_terminal:
            raise ControlError(run_id, f"it already ended {run.status}")
        if steps[step_id].status.is_terminal:
            raise ControlError(run_id, f"step {step_id!r} already ended {steps[step_id].status}")
        sent = await self.store.send_command(
            run_id, CommandKind.SIGNAL, at=time.time(), step_id=step_id, values=dict(values)
        )
        # Another client may have signalled the step between our read and our send: the first in the
        # log counts, and ours, if it came second, has no effect (unless it holds the same values).
        first = await self._first_signal(run_id, step_id)
        return counted_signal(first or sent, values)

    async def _first_signal(self, run_id: str, step_id: str) -> Command | None:
        """The signal to the step that counts (the first in the run's command log), if any."""
        for command in await self.store.get_commands(run_id):
            if command.kind == CommandKind.SIGNAL and command.step_id == step_id:
                return command
        return None

    async def wait_for_completion(self, run_id: str, *, timeout_s: float | None = None) -> RunRecord:
        """The run's record once it has ended, or as it is when `timeout_s` passes (check `is_terminal`).
        A run driven here in the background: once its drive has ended (its lease given up), however."""
        if await self._local.wait_for_drive(run_id, timeout_s=timeout_s):
            return await self.store.get_run(run_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        after_seq = 0
        while True:
            run = await self.store.get_run(run_id)
            remaining = FOLLOW_WAIT_S if deadline is None else deadline - time.monotonic()
            if run.status.is_terminal or remaining <= 0:
                return run
            events = await self.store.wait_events(run_id, after_seq=after_seq, timeout_s=min(remaining, FOLLOW_WAIT_S))
            after_seq = events[-1].seq if events else after_seq

    async def follow_events(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[Event]:
        """The run's events from `after_seq` on, as they happen, until the event that ends the run."""
        while True:
            events = await self.store.wait_events(run_id, after_seq=after_seq, timeout_s=FOLLOW_WAIT_S)
            for event in events:
                yield event
                if event.kind == "run" and RunStatus(event.status).is_terminal:
                    return
            if events:
                after_seq = events[-1].seq
            elif (await self.store.get_run(run_id)).status.is_terminal:
                # it ended while we waited: what it wrote meanwhile has come in by now
                for event in await self.store.get_events(run_id, after_seq=after_seq):
                    yield event
                return

    async def _send(self, run_id: str, kind: CommandKind) -> Command:
        await self._live_run(run_id)
        command = await self.store.send_command(run_id, kind, at=time.time())
        if await self.store.claim_lease(run_id, self.owner, ttl_s=CONTROL_LEASE_S):
            # Nobody drives the run: show the command's effect now; a later driver replays the log.
            try:
                await apply_to_undriven_run(self.store, run_id, kind)
            finally:
                await self.store.release_lease(run_id, self.owner, notify=kind == CommandKind.RESUME)
        logger.info("run %s: %s sent", run_id, kind)
        await self._local.deliver(run_id)  # a run driven here applies it now, not when the notice comes
        return command

    async def _live_run(self, run_id: str) -> RunRecord:
        run = await self.store.get_run(run_id)
        if run.status.is_terminal:
            raise ControlError(run_id, f"it already ended {run.status}")
        return run


def _ends_attempt(event: Event, step_id: str | None, attempt: int | None) -> bool:
    """Whether `event` ends an attempt of `step_id` (any step when None) numbered `attempt` (any when None)."""
    return (
        event.step_id is not None
        and event.status in ATTEMPT_ENDS
        and step_id in (None, event.step_id)
        and attempt in (None, event.attempt)
    )


async def apply_to_undriven_run(store: Store, run_id: str, kind: CommandKind) -> None:
    """What a command does to the status of a run whose caller holds its lease and drives nothing."""
    run = await store.get_run(run_id)
    now = time.time()
    if run.status.is_terminal:
        return
    if kind == CommandKind.CANCEL:
        cancelled = [
            StepRecord(run_id, step.step_id, StepStatus.CANCELLED, step.attempt, step.started_at, now)
            for step in await store.get_steps(run_id)
            if not step.status.is_terminal
        ]
        await end_cancelled(store, run_id, cancelled, "cancelled by an operator", now)
    elif kind == CommandKind.PAUSE and run.status != RunStatus.PAUSED:
        await store.set_run_status(run_id, RunStatus.PAUSED, at=now)
    elif kind == CommandKind.RESUME and run.status == RunStatus.PAUSED:
        status = RunStatus.PENDING if run.started_at is None else RunStatus.RUNNING
        await store.set_run_status(run_id, status, at=now)
    await store.flush()


async def end_cancelled(store: Store, run_id: str, cancelled: list[StepRecord], reason: str, at: float) -> None:
    """Record the steps that had not ended as `cancelled`, then the run, and make it durable."""
    for record in cancelled:
        await store.record_step(record, message=f"run {reason}")
    await store.set_run_status(run_id, RunStatus.CANCELLED, at=at, error=reason)
    await store.flush()
