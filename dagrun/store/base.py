"""The Store contract: runs, step states, outputs, the shared context and an append-only event log.

The store is the source of truth: a run can be resumed from it alone. Writes may be buffered and
committed in groups, but they are applied in the order they were made, and `flush()` returns once
everything written before it is durable. Every state change of a step appends one event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dagrun.context import ContextOp
from dagrun.executor import NO_OUTPUTS, StepError
from dagrun.states import RunStatus, StepStatus


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


class StepRecord(NamedTuple):
    """One state of one step; a NamedTuple like the other per-step records (see dagrun.executor)."""

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


class Event(NamedTuple):
    seq: int  # per run, from 1, gap-free and in write order
    run_id: str
    at: float  # time.time()
    kind: str  # "run" or "step"
    status: str  # the RunStatus or StepStatus entered
    step_id: str | None = None
    attempt: int = 0
    message: str = ""


class Store(Protocol):
    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def create_run(self, run: RunRecord, step_ids: Sequence[str]) -> None:
        """Record a new run and its steps, all `pending`, in that order; StoreError if the id exists."""

    async def set_run_status(self, run_id: str, status: RunStatus, *, at: float, error: str | None = None) -> None:
        """Move the run to `status` (setting started_at/finished_at) and append a run event."""

    async def record_step(self, step: StepRecord, *, message: str = "") -> None:
        """Upsert the step's state and append a step event carrying `message`."""

    async def apply_context(self, run_id: str, ops: tuple[ContextOp, ...]) -> tuple[dict[str, Any], list[str]]:
        """Apply context operations atomically; return the new context and the rejected ops' messages."""

    async def get_run(self, run_id: str) -> RunRecord:
        """RunNotFound when there is no such run."""

    async def list_runs(
        self, *, status: RunStatus | None = None, flow_name: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """Newest first."""

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        """Every step of the run, in the flow's order; RunNotFound when there is no such run."""

    async def get_context(self, run_id: str) -> dict[str, Any]:
        """The run's shared context now; RunNotFound when there is no such run."""

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """Events with seq > after_seq, oldest first; RunNotFound when there is no such run."""

    async def flush(self) -> None:
        """Return once every write made before the call is durable."""

    async def aclose(self) -> None:
        """Flush and release; safe to call twice. Later use raises RuntimeError."""
