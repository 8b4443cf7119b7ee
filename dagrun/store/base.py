"""The Store contract: runs, step states, outputs, the shared context and an append-only event log.

The store is the source of truth: a run can be resumed from it alone. Writes may be buffered and
committed in groups, but they are applied in the order they were made, and `flush()` returns once
everything written before it is durable. Every state change of a step appends one event.

It is also how processes that share runs talk to each other, without polling where the backend allows:
- **commands** (cancel, pause, resume, signal) are appended to the run's command log by whoever
  controls the run, and applied by whoever drives it; a driver that takes over replays the whole log;
- **notices** are one store-wide log of wake-ups ("a run was submitted", "a run got a command"), read
  with a blocking wait by the orchestrators sharing the store; they may be trimmed, so a reader also
  rescans now and then and never relies on seeing every notice;
- **leases**: a run is driven by one orchestrator at a time, the one holding its lease; a lease that
  is not renewed lapses, and then any orchestrator may claim the run. Leases **fence** writes (`fencing`):
  each new claim raises the run's lease epoch, and the store refuses a run write (step state, context,
  run status, events) made under an older epoch than the run's with LeaseLost, so a driver that lost its
  lease cannot write even before it notices. (The memory store serves one process: it has nothing to fence.)

`Store` is those jobs' roles together: `RunWriter` (what drivers write), `RunReader` (what views read),
`EventLog`, `CommandLog` (commands and notices) and `Leases`; a part that plays one role is typed with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from dagrun.contract.context import ContextOp
from dagrun.contract.executor import NO_OUTPUTS, StepError
from dagrun.contract.states import RunStatus, StepStatus


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    flow_name: str
    status: RunStatus
    flow: dict[str, Any]  # the flow as submitted (scripts inlined), enough to run it again
    inputs: dict[str, Any]  # the flow inputs after --input overrides
    created_at: float  # time.time()
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None  # why the run failed or was cancelled, when known
    rerun_of: str | None = None  # the run this one reruns (`engine.rerun`)
    parent: str | None = None  # 'RUN/STEP': the sub-flow step this run is the child run of (`engine.subflows`)


class StepRecord(NamedTuple):
    """One state of one step; a NamedTuple like the other per-step records (see dagrun.contract.executor)."""

    run_id: str
    step_id: str
    status: StepStatus
    attempt: int = 0  # 0 until the first attempt starts
    started_at: float | None = None
    finished_at: float | None = None
    outputs: dict[str, Any] = NO_OUTPUTS
    error: StepError | None = None
    logs: str = ""
    worker_id: str = ""
    elapsed_ms: float = 0.0  # how long the script ran, by the executor's clock
    queued_at: float | None = None  # when its attempt was handed to an executor; started_at is when it started
    # The context writes of the attempt this record ends (succeeded), as applied: kept as its AttemptLog's,
    # not with the step (`get_steps` reads none back).
    context_ops: tuple[ContextOp, ...] = ()


class AttemptLog(NamedTuple):
    """What one attempt of a step printed (`log()` and `print`), wrote to the run's context, and failed with:
    kept for every attempt, a retried step's earlier ones included, while its StepRecord holds only the latest
    attempt's. The writes are those the store applied (`ContextChange.applied`), in order; a store written
    before writes and errors were kept reads back none."""

    step_id: str
    attempt: int
    worker_id: str
    at: float  # time.time() when the attempt ended
    text: str
    context_ops: tuple[ContextOp, ...] = ()
    error: StepError | None = None  # why the attempt failed


def attempt_log(step: StepRecord) -> AttemptLog | None:
    """The logs, context writes and error a step record carries as its attempt's: only the record that ends an
    attempt (succeeded, failed, or ready to be tried again) carries any, so each store writes them with that
    record, in the same write. None when the attempt printed, wrote and failed with nothing (nothing is
    stored)."""
    if not step.logs and not step.context_ops and step.error is None:
        return None
    at = step.finished_at if step.finished_at is not None else time.time()
    return AttemptLog(step.step_id, step.attempt, step.worker_id, at, step.logs, step.context_ops, step.error)


def select_logs(logs: Iterable[AttemptLog], step_id: str | None, attempt: int | None) -> list[AttemptLog]:
    """The logs of `step_id` (every step when None) and `attempt` (every one when None), in the order of
    `RunReader.get_logs`: by attempt end, ties by step and attempt."""
    return sorted(
        (
            log
            for log in logs
            if (step_id is None or log.step_id == step_id) and (attempt is None or log.attempt == attempt)
        ),
        key=_log_order,
    )


def _log_order(log: AttemptLog) -> tuple[float, str, int]:
    return log.at, log.step_id, log.attempt


class ContextChange(NamedTuple):
    """What `RunWriter.apply_context` did: the context it left, and which operations it applied (in order) or
    rejected (their messages: an operation that does not fit the current value, or whose value is not JSON)."""

    context: dict[str, Any]
    applied: tuple[ContextOp, ...]
    rejected: list[str]


class Event(NamedTuple):
    seq: int  # per run, from 1, gap-free and in write order
    run_id: str
    at: float  # time.time()
    kind: str  # "run" or "step"
    status: str  # the RunStatus or StepStatus entered
    step_id: str | None = None
    attempt: int = 0
    message: str = ""


class CommandKind(StrEnum):
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    SIGNAL = "signal"  # completes a `wait_for` step with `values` as its outputs


class Command(NamedTuple):
    seq: int  # per run, from 1, in the order the store received them
    run_id: str
    at: float  # time.time() when sent
    kind: CommandKind
    step_id: str | None = None  # for signals
    values: dict[str, Any] = NO_OUTPUTS  # for signals


class NoticeKind(StrEnum):
    SUBMITTED = "submitted"  # a run was created and waits for a driver
    COMMAND = "command"  # a command was sent to a run
    RELEASED = "released"  # a run's lease was released before the run ended (its driver stopped)


class Notice(NamedTuple):
    cursor: int  # store-wide, increasing; pass the last one seen to `wait_notices`
    run_id: str
    kind: NoticeKind


class Lease(NamedTuple):
    owner: str
    expires_at: float  # time.time() when it lapses unless renewed
    epoch: int = 0  # the fencing token: raised by every claim that is not a renewal


class Reuse(NamedTuple):
    """What a rerun starts from, taken from the run it reruns: the steps it does not run again (`reused`,
    with their outputs) and the shared context."""

    steps: Sequence[StepRecord]
    context: dict[str, Any]


class RunWriter(Protocol):
    """Run records, step states and the shared context, written by the driver of a run (`engine.driver`);
    `create_run` by whoever submits one (the orchestrator, `engine.control.RunControl`), `set_run_status` also
    by whoever ends a run nobody drives. Writes may be queued: `flush` returns once they are durable (the
    CLI reports a step only then)."""

    async def create_run(self, run: RunRecord, step_ids: Sequence[str], reuse: Reuse | None = None) -> None:
        """Record a new run and its steps, in that order, and a SUBMITTED notice, all at once: the steps
        `reuse` holds as it holds them (its context too), the others `pending`. StoreError if the id exists."""

    async def set_run_status(self, run_id: str, status: RunStatus, *, at: float, error: str | None = None) -> None:
        """Move the run to `status` (setting started_at/finished_at) and append a run event. A terminal
        status returns once durable, and raises LeaseLost when it was refused (see the module docstring)."""

    async def record_step(self, step: StepRecord, *, message: str = "") -> None:
        """Upsert the step's state and append a step event carrying `message`; a record with logs, context
        writes or an error also keeps them as its attempt's (`attempt_log`), in the same write."""

    async def apply_context(self, run_id: str, ops: tuple[ContextOp, ...]) -> ContextChange:
        """Apply context operations atomically; the new context, the ops applied and the rejected ops' messages."""

    async def flush(self) -> None:
        """Return once every write made before the call is durable."""


class RunReader(Protocol):
    """What the views show: runs, their steps, their attempts' logs and their context, read by the API, the CLI
    (`runs`, `status`, `outputs`, `logs`, and the run ids typed in part), `RunControl`, the orchestrator when it
    resumes a run, and its watcher when it rescans for runs nobody drives. Each read sees every write made
    through the same store object before it."""

    async def get_run(self, run_id: str) -> RunRecord:
        """RunNotFound when there is no such run."""

    async def list_runs(
        self, *, status: RunStatus | None = None, flow_name: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RunRecord]:
        """Newest first, past the `offset` newest that match (a page of a long list)."""

    async def find_run_ids(self, prefix: str, *, limit: int) -> list[str]:
        """The ids of the runs that start with `prefix`, in id order, at most `limit`: how the CLI makes a
        run id typed in part one run. An index seek where the backend has one, not a scan of every run."""

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        """Every step of the run, in the flow's order; RunNotFound when there is no such run."""

    async def count_steps(self, run_id: str) -> dict[StepStatus, int]:
        """How many of the run's steps are in each state (the states none is in left out), without reading
        their records: what a list of runs shows beside each; RunNotFound when there is no such run."""

    async def get_context(self, run_id: str) -> dict[str, Any]:
        """The run's shared context now; RunNotFound when there is no such run."""

    async def get_logs(
        self, run_id: str, *, step_id: str | None = None, attempt: int | None = None
    ) -> list[AttemptLog]:
        """The logs of each attempt that printed, wrote context or failed, of `step_id` and `attempt` when given,
        in the order the attempts ended (ties by step and attempt); RunNotFound when there is no such run."""


class EventLog(Protocol):
    """Each run's append-only event log (one event per state change, appended by the `RunWriter` calls), read
    by the API's event streams and the CLI's `events`; `RunControl` waits on it to follow a run to its end."""

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """Events with seq > after_seq, oldest first; RunNotFound when there is no such run."""

    async def last_event_seq(self, run_id: str) -> int:
        """The seq of the run's newest event (0 for none), without reading the log; RunNotFound for an
        unknown run."""

    async def wait_events(self, run_id: str, *, after_seq: int, timeout_s: float) -> list[Event]:
        """Like `get_events` (no limit), but when there are none yet, wait up to `timeout_s` for some."""


class CommandLog(Protocol):
    """Commands and notices: `RunControl` sends commands (cancel, pause, resume, signal) and the driver of the
    run reads them (a driver that takes over replays them all); the orchestrator's watcher waits on the
    notices to hear of submitted runs, commands and released leases."""

    async def send_command(
        self,
        run_id: str,
        kind: CommandKind,
        *,
        at: float,
        step_id: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> Command:
        """Append a command to the run's log and a COMMAND notice; RunNotFound when there is no such run."""

    async def get_commands(self, run_id: str, *, after_seq: int = 0) -> list[Command]:
        """The run's commands with seq > after_seq, oldest first; RunNotFound when there is no such run."""

    async def notice_cursor(self) -> int:
        """The cursor of the newest notice (0 when none): `wait_notices` after it returns only new ones."""

    async def wait_notices(self, *, after: int, timeout_s: float) -> list[Notice]:
        """Notices with cursor > after, oldest first, waiting up to `timeout_s` when there are none yet."""


class Leases(Protocol):
    """Who drives a run: the orchestrator claims a run's lease before driving it, its watcher renews them all
    and releases them, `RunControl` claims one for a moment to apply a command to a run nobody drives, and
    the CLI reads them to tell whether a run is driven. A claim also fences: this store object's later writes
    of the run carry the lease's epoch (see the module docstring)."""

    async def claim_lease(self, run_id: str, owner: str, *, ttl_s: float) -> bool:
        """Take or renew the run's lease for `ttl_s` when it is free, lapsed or already `owner`'s; a lapsed
        lease of `owner`'s is renewed only if nobody claimed it since. This store's later writes of the run
        carry the lease's epoch."""

    async def claim_leases(self, run_ids: Sequence[str], owner: str, *, ttl_s: float) -> list[bool]:
        """`claim_lease` for each run, in one store call however many there are (an orchestrator renews
        every lease it holds at once, and a call per run queued behind all other traffic); in order."""

    async def release_lease(self, run_id: str, owner: str, *, notify: bool = False) -> None:
        """Give the lease up if `owner` holds it; with `notify`, append a RELEASED notice so that another
        orchestrator can pick the run up at once."""

    async def get_lease(self, run_id: str) -> Lease | None:
        """The run's live lease; None when it is free or lapsed."""


class Store(RunWriter, RunReader, EventLog, CommandLog, Leases, Protocol):
    """Every role, opened and closed as one: what `open_store` returns and the orchestrator is given. A part
    that plays one role is typed with that role (a view that only reads takes a `RunReader`)."""

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def aclose(self) -> None:
        """Flush and release; safe to call twice. Later use raises RuntimeError."""
