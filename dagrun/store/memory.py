"""The in-memory store: the Store contract without persistence, for tests and short-lived embedding.

It keeps the SQLite store's semantics: values are copied through JSON on the way in and out, steps
keep the order they were created in, events get a per-run seq from 1 without gaps, and every call
naming an unknown run raises RunNotFound. Nothing is buffered, so `flush()` has nothing to wait for.
Waiters sleep on a future per channel (a run's events, the notices) that the next write to it
resolves: no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from dagrun.contract.context import ContextOp
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import RunNotFound, StoreError
from dagrun.store.base import (
    AttemptLog,
    Command,
    CommandKind,
    ContextChange,
    Event,
    Lease,
    Notice,
    NoticeKind,
    Reuse,
    RunRecord,
    StepRecord,
    attempt_log,
    select_logs,
)
from dagrun.store.codec import (
    EMPTY_OBJECT,
    context_ops_json,
    context_ops_of,
    copy_json,
    decode_json,
    encode_json,
    merge_context,
)

logger = logging.getLogger(__name__)

MAX_NOTICES = 10_000  # the notice log keeps this many; readers rescan rather than rely on every notice
_T = TypeVar("_T")
_NOTICES = ""  # the notices' waiting channel; a run's events wait on its run id


@dataclass(slots=True)
class _Run:
    record: RunRecord
    steps: dict[str, StepRecord]  # insertion order is the flow's order
    events: list[Event]  # events[i].seq == i + 1
    context: str  # JSON text, so that no caller holds a reference into it
    commands: list[Command] = field(default_factory=list)  # commands[i].seq == i + 1
    logs: dict[tuple[str, int], AttemptLog] = field(default_factory=dict)  # (step id, attempt) -> its logs


class MemoryStore:
    """Runs, steps, context and events in dicts; `async with MemoryStore() as store: ...`."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._notices: deque[Notice] = deque(maxlen=MAX_NOTICES)
        self._leases: dict[str, Lease] = {}
        self._epochs: dict[str, int] = {}  # run id -> its lease epoch; one process, so no write is fenced
        self._changed: dict[str, asyncio.Future[None]] = {}  # channel -> resolved by its next write
        self._closed = False

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def create_run(self, run: RunRecord, step_ids: Sequence[str], reuse: Reuse | None = None) -> None:
        self._check_open()
        if run.run_id in self._runs:
            raise StoreError(f"run {run.run_id!r} already exists")
        where = f"run {run.run_id!r}"
        record = dataclasses.replace(
            run, flow=copy_json(run.flow, where=f"{where} flow"), inputs=copy_json(run.inputs, where=f"{where} inputs")
        )
        reused = {step.step_id: step for step in reuse.steps} if reuse else {}
        steps: dict[str, StepRecord] = {}
        for step_id in step_ids:
            step = reused.get(step_id) or StepRecord(run.run_id, step_id, StepStatus.PENDING)
            steps.setdefault(step_id, step._replace(outputs=copy_json(step.outputs, where=f"{where} step {step_id!r}")))
        context = encode_json(reuse.context, where=f"{where} context") if reuse else EMPTY_OBJECT
        self._runs[run.run_id] = _Run(record, steps, [], context)
        self._notice(run.run_id, NoticeKind.SUBMITTED)

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
        self._wake(run_id)

    async def record_step(self, step: StepRecord, *, message: str = "") -> None:
        self._check_open()
        entry = self._entry(step.run_id)
        outputs = copy_json(step.outputs, where=f"run {step.run_id!r} step {step.step_id!r} outputs")
        log = attempt_log(step)
        if log is not None:
            where = f"run {step.run_id!r} step {step.step_id!r} context writes"
            entry.logs[step.step_id, step.attempt] = log._replace(context_ops=_copy_ops(log.context_ops, where=where))
        entry.steps[step.step_id] = step._replace(outputs=outputs, context_ops=())
        seq = len(entry.events) + 1
        at = time.time()
        entry.events.append(Event(seq, step.run_id, at, "step", str(step.status), step.step_id, step.attempt, message))
        if self._changed:
            self._wake(step.run_id)

    async def apply_context(self, run_id: str, ops: tuple[ContextOp, ...]) -> ContextChange:
        self._check_open()
        entry = self._entry(run_id)
        entry.context, change = merge_context(entry.context, ops, run_id=run_id)
        return change

    async def get_run(self, run_id: str) -> RunRecord:
        self._check_open()
        return _copy_run(self._entry(run_id).record)

    async def list_runs(
        self, *, status: RunStatus | None = None, flow_name: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RunRecord]:
        self._check_open()
        # Newest first; runs created at the same instant come newest-inserted first, as in SQLite.
        ordered = sorted(enumerate(self._runs.values()), key=lambda pair: (pair[1].record.created_at, pair[0]))
        found: list[RunRecord] = []
        for _, entry in reversed(ordered):
            if len(found) >= offset + limit:
                break
            record = entry.record
            if (status is None or record.status == status) and (flow_name is None or record.flow_name == flow_name):
                found.append(record)
        return [_copy_run(record) for record in found[offset:]]

    async def find_run_ids(self, prefix: str, *, limit: int) -> list[str]:
        self._check_open()
        return sorted(run_id for run_id in self._runs if run_id.startswith(prefix))[: max(limit, 0)]

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        self._check_open()
        steps = self._entry(run_id).steps.values()
        return [step._replace(outputs=copy_json(step.outputs, where="outputs")) for step in steps]

    async def count_steps(self, run_id: str) -> dict[StepStatus, int]:
        self._check_open()
        return dict(Counter(step.status for step in self._entry(run_id).steps.values()))

    async def get_context(self, run_id: str) -> dict[str, Any]:
        self._check_open()
        value: dict[str, Any] = decode_json(self._entry(run_id).context)
        return value

    async def get_logs(
        self, run_id: str, *, step_id: str | None = None, attempt: int | None = None
    ) -> list[AttemptLog]:
        self._check_open()
        logs = select_logs(self._entry(run_id).logs.values(), step_id, attempt)
        return [log._replace(context_ops=_copy_ops(log.context_ops, where="context writes")) for log in logs]

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        self._check_open()
        events = self._entry(run_id).events
        start = max(after_seq, 0)
        return events[start:] if limit is None else events[start : start + max(limit, 0)]

    async def last_event_seq(self, run_id: str) -> int:
        self._check_open()
        return len(self._entry(run_id).events)

    async def wait_events(self, run_id: str, *, after_seq: int, timeout_s: float) -> list[Event]:
        return await self._wait(run_id, lambda: self._entry(run_id).events[max(after_seq, 0) :], timeout_s)

    async def send_command(
        self,
        run_id: str,
        kind: CommandKind,
        *,
        at: float,
        step_id: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> Command:
        self._check_open()
        entry = self._entry(run_id)
        copied = copy_json(values or {}, where=f"run {run_id!r} signal values")
        command = Command(len(entry.commands) + 1, run_id, at, CommandKind(kind), step_id, copied)
        entry.commands.append(command)
        self._notice(run_id, NoticeKind.COMMAND)
        return command._replace(values=copy_json(copied, where="values"))

    async def get_commands(self, run_id: str, *, after_seq: int = 0) -> list[Command]:
        self._check_open()
        commands = self._entry(run_id).commands[max(after_seq, 0) :]
        return [command._replace(values=copy_json(command.values, where="values")) for command in commands]

    async def notice_cursor(self) -> int:
        self._check_open()
        return self._notices[-1].cursor if self._notices else 0

    async def wait_notices(self, *, after: int, timeout_s: float) -> list[Notice]:
        return await self._wait(_NOTICES, lambda: self._notices_after(after), timeout_s)

    async def claim_lease(self, run_id: str, owner: str, *, ttl_s: float) -> bool:
        (claimed,) = await self.claim_leases([run_id], owner, ttl_s=ttl_s)
        return claimed

    async def claim_leases(self, run_ids: Sequence[str], owner: str, *, ttl_s: float) -> list[bool]:
        self._check_open()
        now = time.time()
        claimed = []
        for run_id in run_ids:
            lease = self._leases.get(run_id)
            is_free = lease is None or lease.owner == owner or lease.expires_at <= now
            if is_free:
                epoch = self._epochs.get(run_id, 0)
                if lease is None or lease.owner != owner:
                    epoch = self._epochs[run_id] = epoch + 1
                self._leases[run_id] = Lease(owner, now + ttl_s, epoch)
            claimed.append(is_free)
        return claimed

    async def release_lease(self, run_id: str, owner: str, *, notify: bool = False) -> None:
        self._check_open()
        lease = self._leases.get(run_id)
        if lease is not None and lease.owner == owner:
            del self._leases[run_id]
            if notify:
                self._notice(run_id, NoticeKind.RELEASED)

    async def get_lease(self, run_id: str) -> Lease | None:
        self._check_open()
        lease = self._leases.get(run_id)
        return lease if lease is not None and lease.expires_at > time.time() else None

    async def flush(self) -> None:
        self._check_open()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._runs.clear()
            for channel in list(self._changed):
                self._wake(channel)

    def _notice(self, run_id: str, kind: NoticeKind) -> None:
        cursor = self._notices[-1].cursor + 1 if self._notices else 1
        self._notices.append(Notice(cursor, run_id, kind))
        self._wake(_NOTICES)

    def _notices_after(self, after: int) -> list[Notice]:
        if not self._notices:
            return []
        start = max(after - self._notices[0].cursor + 1, 0)  # cursors in the deque are consecutive
        return list(itertools.islice(self._notices, start, None))

    def _wake(self, channel: str) -> None:
        changed = self._changed.pop(channel, None)
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _wait(self, channel: str, found: Callable[[], list[_T]], timeout_s: float) -> list[_T]:
        """`found()` once it is not empty, re-checked after each write to `channel`, or [] after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_open()
            result = found()
            remaining = deadline - time.monotonic()
            if result or remaining <= 0:
                return result
            changed = self._changed.get(channel)
            if changed is None:
                changed = self._changed[channel] = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(changed), remaining)

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


def _copy_ops(ops: tuple[ContextOp, ...], *, where: str) -> tuple[ContextOp, ...]:
    return context_ops_of(copy_json(context_ops_json(ops), where=where)) if ops else ops
