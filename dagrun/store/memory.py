"""The in-memory store: the Store contract without persistence, for tests and short-lived embedding.

It keeps the SQLite store's semantics: values are copied through JSON on the way in and out, steps
keep the order they were created in, events get a per-run seq from 1 without gaps, and every call
naming an unknown run raises RunNotFound. Nothing is buffered, so `flush()` has nothing to wait for.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from dagrun.context import ContextOp
from dagrun.errors import RunNotFound, StoreError
from dagrun.states import RunStatus, StepStatus
from dagrun.store.base import Event, RunRecord, StepRecord
from dagrun.store.codec import EMPTY_OBJECT, copy_json, decode_json, merge_context

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Run:
    record: RunRecord
    steps: dict[str, StepRecord]  # insertion order is the flow's order
    events: list[Event]  # events[i].seq == i + 1
    context: str  # JSON text, so that no caller holds a reference into it


class MemoryStore:
    """Runs, steps, context and events in dicts; `async with MemoryStore() as store: ...`."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def create_run(self, run: RunRecord, step_ids: Sequence[str]) -> None:
        self._check_open()
        if run.run_id in self._runs:
            raise StoreError(f"run {run.run_id!r} already exists")
        where = f"run {run.run_id!r}"
        record = dataclasses.replace(
            run, flow=copy_json(run.flow, where=f"{where} flow"), inputs=copy_json(run.inputs, where=f"{where} inputs")
        )
        steps: dict[str, StepRecord] = {}
        for step_id in step_ids:
            steps.setdefault(step_id, StepRecord(run.run_id, step_id, StepStatus.PENDING))
        self._runs[run.run_id] = _Run(record, steps, [], EMPTY_OBJECT)

    async def set_run_status(self, run_id: str, status: RunStatus, *, at: float, error: str | None = None) -> None:
        self._check_open()
        entry = self._entry(run_id)
        record = entry.record
        started_at = at if record.started_at is None and status == RunStatus.RUNNING else record.started_at
        finished_at = at if status.is_terminal else None
        entry.record = dataclasses.replace(
            record, status=status, started_at=started_at, finished_at=finished_at, error=error
        )
        entry.events.append(Event(len(entry.events) + 1, run_id, at, "run", str(status), None, 0, error or ""))

    async def record_step(self, step: StepRecord, *, message: str = "") -> None:
        self._check_open()
        entry = self._entry(step.run_id)
        outputs = copy_json(step.outputs, where=f"run {step.run_id!r} step {step.step_id!r} outputs")
        entry.steps[step.step_id] = step._replace(outputs=outputs)
        seq = len(entry.events) + 1
        at = time.time()
        entry.events.append(Event(seq, step.run_id, at, "step", str(step.status), step.step_id, step.attempt, message))

    async def apply_context(self, run_id: str, ops: tuple[ContextOp, ...]) -> tuple[dict[str, Any], list[str]]:
        self._check_open()
        entry = self._entry(run_id)
        entry.context, value, rejected = merge_context(entry.context, ops, run_id=run_id)
        return value, rejected

    async def get_run(self, run_id: str) -> RunRecord:
        self._check_open()
        return _copy_run(self._entry(run_id).record)

    async def list_runs(
        self, *, status: RunStatus | None = None, flow_name: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        self._check_open()
        # Newest first; runs created at the same instant come newest-inserted first, as in SQLite.
        ordered = sorted(enumerate(self._runs.values()), key=lambda pair: (pair[1].record.created_at, pair[0]))
        found: list[RunRecord] = []
        for _, entry in reversed(ordered):
            if len(found) >= limit:
                break
            record = entry.record
            if (status is None or record.status == status) and (flow_name is None or record.flow_name == flow_name):
                found.append(_copy_run(record))
        return found

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        self._check_open()
        steps = self._entry(run_id).steps.values()
        return [step._replace(outputs=copy_json(step.outputs, where="outputs")) for step in steps]

    async def get_context(self, run_id: str) -> dict[str, Any]:
        self._check_open()
        value: dict[str, Any] = decode_json(self._entry(run_id).context)
        return value

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        self._check_open()
        events = self._entry(run_id).events
        start = max(after_seq, 0)
        return events[start:] if limit is None else events[start : start + max(limit, 0)]

    async def flush(self) -> None:
        self._check_open()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._runs.clear()

    def _entry(self, run_id: str) -> _Run:
        entry = self._runs.get(run_id)
        if entry is None:
            raise RunNotFound(run_id)
        return entry

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("MemoryStore is closed")


def _copy_run(record: RunRecord) -> RunRecord:
    return dataclasses.replace(
        record, flow=copy_json(record.flow, where="flow"), inputs=copy_json(record.inputs, where="inputs")
    )
