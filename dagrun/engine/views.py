"""What reading a run shows: the views `RunControl` returns (a run with its steps, a checkpoint, its
failures, its pending steps, its metrics) and the JSON of each, and of the store's records (attempts'
logs included), as the CLI and the REST API print them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from dagrun.contract.context import ContextOp
from dagrun.contract.executor import StepError
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.flow.instances import map_of
from dagrun.flow.outputs import resolve_flow_outputs
from dagrun.store.base import AttemptLog, Command, Event, RunRecord, StepRecord


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as persisted: its record, its steps in flow order, its context, and who drives it."""

    run: RunRecord
    steps: tuple[StepRecord, ...]
    context: dict[str, Any]
    driver: str | None  # the owner of the run's live lease; None when nobody drives it
    last_event_seq: int  # read before the rest: the events after it bring a reader up to date

    def to_json(self) -> dict[str, Any]:
        return run_json(self.run) | {
            "last_event_seq": self.last_event_seq,
            "driver": self.driver,
            "context": self.context,
            "outputs": stored_outputs(self.run.flow.get("outputs", {}), self.steps),
            "steps": {step.step_id: step_json(step) for step in self.steps},
        }


def stored_outputs(flow_outputs: Mapping[str, str], steps: Iterable[StepRecord]) -> dict[str, Any]:
    """A run's declared outputs from its stored steps (a run stores none of its own)."""
    return resolve_flow_outputs(flow_outputs, {step.step_id: step.outputs for step in steps if step.status.has_outputs})


def parent_step(run: RunRecord) -> tuple[str, str] | None:
    """The run and step a child run runs for, from its `parent` ('RUN/STEP'; a step id may hold a '/'): its id
    is 'RUN.STEP', so the two differ only where the run's id ends."""
    if run.parent is None:
        return None
    differ = (i for i, (a, b) in enumerate(zip(run.run_id, run.parent, strict=False)) if a != b)
    at = next(differ, run.parent.find("/"))  # where '.' in the id is '/' in `parent`
    return run.parent[:at], run.parent[at + 1 :]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything a run resumes from, read after a flush: the view, the event log's end, the commands."""

    view: RunView
    last_event_seq: int
    commands: tuple[Command, ...]

    def to_json(self) -> dict[str, Any]:
        return self.view.to_json() | {
            "last_event_seq": self.last_event_seq,
            "commands": [command_json(command) for command in self.commands],
        }


class StepFailure(NamedTuple):
    """A step whose last attempt failed: its error, the script line it names as written, that attempt's logs."""

    step_id: str
    attempt: int
    error: StepError
    logs: str
    worker_id: str
    source_line: str | None  # the script's line `error.line` as the run ran it, when the error names one

    def to_json(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "attempt": self.attempt,
            "error": self.error.to_json(),
            "source_line": self.source_line,
            "logs": self.logs,
            "worker_id": self.worker_id,
        }


def step_failure(run: RunRecord, step: StepRecord, error: StepError) -> StepFailure:
    """The failure of `step`, its source line read from the script the run holds (the flow as submitted,
    scripts inlined), so it is the line that ran even if the flow's files changed since."""
    return StepFailure(
        step.step_id, step.attempt, error, step.logs, step.worker_id, script_line(run.flow, step.step_id, error.line)
    )


def script_line(flow: dict[str, Any], step_id: str, line: int | None) -> str | None:
    """Line `line` (from 1) of the script of step `step_id` (or of the mapped step whose instance it is) in a
    flow document, stripped; None when there is no such line."""
    if line is None or line < 1:
        return None
    ids = (step_id, map_of(step_id))
    for step in flow.get("steps", ()):
        if isinstance(step, dict) and step.get("id") in ids and isinstance(step.get("script"), str):
            lines = step["script"].splitlines()
            return lines[line - 1].strip() if line <= len(lines) else None
    return None


class PendingStep(NamedTuple):
    """A step that has not ended: what it is doing and since when."""

    step_id: str
    status: StepStatus
    attempt: int
    since: float | None  # when its current attempt was queued, or started (or it began waiting)
    waiting_for: tuple[str, ...]  # the fields a `wait_for` step needs; () for a script step

    def to_json(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "status": self.status.value,
            "attempt": self.attempt,
            "since": self.since,
            "waiting_for": list(self.waiting_for),
        }


class StepMetrics(NamedTuple):
    step_id: str
    status: StepStatus
    attempts: int
    retries: int
    duration_s: float | None  # wall time of its last attempt, dispatch to end
    run_s: float | None  # how long its script ran in that attempt, by the executor's clock
    queue_wait_s: float | None  # queued: from dispatch until a worker or sandbox process started it

    def to_json(self) -> dict[str, Any]:
        return self._asdict() | {"status": self.status.value}


@dataclass(frozen=True, slots=True)
class RunMetrics:
    run_id: str
    status: RunStatus
    wall_s: float | None  # start to end (to now while it runs)
    steps: tuple[StepMetrics, ...]

    @property
    def attempts(self) -> int:
        return sum(step.attempts for step in self.steps)

    @property
    def retries(self) -> int:
        return sum(step.retries for step in self.steps)

    def total(self, field: str) -> float:
        """The sum of one StepMetrics duration field over the steps that have it."""
        values: list[float | None] = [getattr(step, field) for step in self.steps]
        return sum(value for value in values if value is not None)

    def to_json(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for step in self.steps:
            by_status[step.status.value] = by_status.get(step.status.value, 0) + 1
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "wall_s": self.wall_s,
            "steps_by_status": by_status,
            "attempts": self.attempts,
            "retries": self.retries,
            "step_s": self.total("duration_s"),
            "run_s": self.total("run_s"),
            "queue_wait_s": self.total("queue_wait_s"),
            "steps": [step.to_json() for step in self.steps],
        }


def pending_step(step: StepRecord, waiting_for: tuple[str, ...]) -> PendingStep:
    """A step that has not ended: running (or waiting) since it started, queued since it was dispatched."""
    since = step.started_at if step.started_at is not None else step.queued_at
    return PendingStep(step.step_id, step.status, step.attempt, since, waiting_for)


def step_metrics(step: StepRecord) -> StepMetrics:
    duration_s = run_s = queue_wait_s = None
    dispatched_at = step.queued_at if step.queued_at is not None else step.started_at
    if dispatched_at is not None and step.finished_at is not None:
        duration_s = step.finished_at - dispatched_at
        run_s = step.elapsed_ms / 1000 if step.elapsed_ms else None
    if step.queued_at is not None and step.started_at is not None:
        queue_wait_s = max(step.started_at - step.queued_at, 0.0)
    elif duration_s is not None and run_s is not None:  # recorded before steps were queued: the rest of it
        queue_wait_s = max(duration_s - run_s, 0.0)
    return StepMetrics(
        step.step_id, step.status, step.attempt, max(step.attempt - 1, 0), duration_s, run_s, queue_wait_s
    )


def run_json(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "flow": run.flow_name,
        "status": run.status.value,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
        "inputs": run.inputs,
        "rerun_of": run.rerun_of,
        "parent": run.parent,
    }


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "status": step.status.value,
        "attempts": step.attempt,
        "outputs": step.outputs,
        "error": step.error.to_json() if step.error else None,
        "queued_at": step.queued_at,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "elapsed_ms": step.elapsed_ms,
        "worker_id": step.worker_id,
        "logs": step.logs,
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at,
        "kind": event.kind,
        "status": event.status,
        "step_id": event.step_id,
        "attempt": event.attempt,
        "message": event.message,
    }


def attempt_log_json(log: AttemptLog, flow: dict[str, Any]) -> dict[str, Any]:
    """An attempt's logs, context writes and error, with the script line it failed on from the run's `flow`."""
    error = log.error
    return log._asdict() | {
        "context_ops": [context_op_json(op) for op in log.context_ops],
        "error": None if error is None else error.to_json(),
        "source_line": None if error is None else script_line(flow, log.step_id, error.line),
    }


def context_op_json(op: ContextOp) -> dict[str, Any]:
    return {"op": op.kind.value, "key": op.key, "value": op.value}


def command_json(command: Command) -> dict[str, Any]:
    return {
        "seq": command.seq,
        "at": command.at,
        "kind": command.kind.value,
        "step_id": command.step_id,
        "values": command.values,
    }
