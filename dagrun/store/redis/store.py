"""The Redis store: every machine that reaches one Redis lists, watches and controls the same runs.

The keys it writes, and what each holds, are described in `layout`.

Writes are queued on the loop and sent in batches by one task (`writer`), one Lua script call per
batch, so record_step costs no round trip. Event seqs are assigned in that script from the run's `seq`: a
run driven here and cancelled from another machine still gets one gap-free order. The context is merged
here with the shared codec (the exact rules of `apply_ops`) and written by compare-and-set on its token in
the same script; a lost race re-merges on the server's value, so no update is ever lost. Every read first
awaits `flush()`, so it sees every write made before it; the reads are in `query`.

Commands, notices and leases (`control`) are never queued: each call is one script, answered before
it returns, and a script that appends a command or creates a run appends its notice in the same call.
`send_command` and `release_lease` flush first, so whoever acts on them sees every write made before. The
store's clients, and how their errors reach callers, are in `connection`; all of its waits share one
XREAD BLOCK on a client of its own (a blocked connection serves no one else): see `wait`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import orjson

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
)
from dagrun.store.codec import EMPTY_OBJECT, encode_json, merge_context
from dagrun.store.fencing import Fences
from dagrun.store.redis import control, query
from dagrun.store.redis.connection import MAX_CONNECTIONS as MAX_CONNECTIONS  # re-exported: tests size their load by it
from dagrun.store.redis.connection import RedisConnection
from dagrun.store.redis.layout import CREATE_RUN
from dagrun.store.redis.records import PENDING_STEP, encode_attempt_log, encode_command, encode_step_state, number_arg
from dagrun.store.redis.writer import STEP_OP_ARGS, Writer, pack, pack_step

logger = logging.getLogger(__name__)

MAX_CONTEXT_ATTEMPTS = 1000  # compare-and-set rounds lost to other clients before apply_context gives up
_dumps = orjson.dumps


@dataclass(slots=True)
class _RunState:
    """What this process knows of a run it writes to: the context as last merged here, and its token."""

    context: str
    token: str


class RedisStore:
    """`async with RedisStore.from_url("redis://host:6379/0") as store: ...`; see the module docstring."""

    def __init__(self, url: str, *, prefix: str | None = None, max_batch_ops: int = 512) -> None:
        """A store on the Redis at `url` (``redis://[[user]:password@]host[:port][/db][?prefix=p]``,
        ``rediss://`` for TLS). Nothing connects yet: `async with` (or the first call) does, and raises
        StoreError, with the URL redacted, when Redis cannot be reached or refuses the credentials.
        """
        self._id = os.urandom(8).hex()  # this store's writer and wake stream id; also makes context tokens unique
        self._redis = RedisConnection(url, prefix=prefix, store_id=self._id)
        self.where = self._redis.where
        self.keys = self._redis.keys
        self._tokens = itertools.count(1)
        self._fences = Fences()
        self._writer = Writer(
            self._redis.writer_pool,
            self.keys,
            writer_id=self._id,
            where=self.where,
            max_batch_ops=max_batch_ops,
            on_context=self._resync_context,
            on_missing=self._forget,
            on_refused=self._fences.refused.__setitem__,
        )
        self._states: dict[str, _RunState] = {}
        self._load_lock = asyncio.Lock()  # one cache load at a time
        self._closed = False
        self._failure_reported = False

    @classmethod
    def from_url(cls, url: str, *, max_batch_ops: int = 512) -> Self:
        """Same as the constructor, the prefix coming from the URL; reads well in ``async with``."""
        return cls(url, max_batch_ops=max_batch_ops)

    @property
    def batches_sent(self) -> int:
        """Write batches (script calls) sent so far, for metrics and tests."""
        return self._writer.batches_sent

    async def __aenter__(self) -> Self:
        """Connect and check the credentials; StoreError naming the redacted URL if that fails."""
        self._check_usable()
        await self._redis.call(self._redis.client.ping(), doing="connecting to Redis")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- writes: queued, never waiting for I/O (create_run waits for its answer) --------------------------

    async def create_run(self, run: RunRecord, step_ids: Sequence[str], reuse: Reuse | None = None) -> None:
        self._check_usable()
        run_id = run.run_id
        where = f"run {run_id!r}"
        flow = encode_json(run.flow, where=f"{where} flow")
        inputs = encode_json(run.inputs, where=f"{where} inputs")
        context = encode_json(reuse.context, where=f"{where} context") if reuse else EMPTY_OBJECT
        reused = _dumps({step.step_id: encode_step_state(step).decode() for step in reuse.steps} if reuse else {})
        keys = self.keys
        script_keys = (
            keys.run(run_id), keys.steps(run_id), keys.step_order(run_id), keys.runs,
            keys.runs_with_status(run.status), keys.runs_of_flow(run.flow_name), keys.run_counter, keys.notices,
            keys.notice_counter, keys.run_ids,
        )  # fmt: skip
        args = (
            run_id, run.flow_name, run.status, flow, inputs, number_arg(run.created_at), number_arg(run.started_at),
            number_arg(run.finished_at), "0" if run.error is None else "1", run.error or "", self._new_token(),
            PENDING_STEP, NoticeKind.SUBMITTED, context, run.rerun_of or "", reused, run.parent or "",
            *dict.fromkeys(step_ids),
        )  # fmt: skip
        creating = CREATE_RUN(self._redis.client, script_keys, args)
        created = await self._redis.call(creating, doing=f"creating run {run_id!r}")
        if not created:
            raise StoreError(f"run {run_id!r} already exists")
        self._check_usable()  # closed while we waited?
        self._states[run_id] = _RunState(context, "")

    async def set_run_status(self, run_id: str, status: RunStatus, *, at: float, error: str | None = None) -> None:
        self._check_usable(run_id)
        if run_id not in self._states:
            await self._load_state(run_id)
        is_terminal = status.is_terminal
        event = _dumps((at, "run", status, None, 0, error or ""))
        started_at = number_arg(at) if status == RunStatus.RUNNING else ""
        finished_at = number_arg(at) if is_terminal else ""
        has_error = "0" if error is None else "1"
        fence = self._fences.epochs.get(run_id, 0)
        self._writer.add(run_id, pack("R", status, started_at, finished_at, has_error, error or "", event), 7, fence)
        if is_terminal:  # the run is done: drop its cache, it is reloaded if written to again
            self._states.pop(run_id, None)
            await self.flush()
            self._fences.check(run_id)

    async def record_step(self, step: StepRecord, *, message: str = "") -> None:
        run_id = step.run_id
        if self._closed or self._writer.failure is not None or run_id in self._fences.refused:
            self._check_usable(run_id)
        if run_id not in self._states:
            await self._load_state(run_id)
        status = step.status
        attempt = step.attempt
        state = encode_step_state(step)
        event = _dumps((time.time(), "step", status, step.step_id, attempt, message))
        packed, args = pack_step(step.step_id, state, event), STEP_OP_ARGS
        log = attempt_log(step)
        if log is not None:  # one add with the step's op: never split from it into another batch
            packed += pack("L", *encode_attempt_log(run_id, log))
            args += 3
        self._writer.add(run_id, packed, args, self._fences.epochs.get(run_id, 0))

    async def apply_context(self, run_id: str, ops: tuple[ContextOp, ...]) -> ContextChange:
        """Merged here, written by compare-and-set; merged again on the server's value when another client
        wrote first, so concurrent callers on any machine never lose updates."""
        self._check_usable(run_id)
        for _ in range(MAX_CONTEXT_ATTEMPTS):
            state = self._states.get(run_id) or await self._load_state(run_id)
            text, change = merge_context(state.context, ops, run_id=run_id)
            token = self._new_token()
            expected, state.context, state.token = state.token, text, token
            try:
                applied = await self._writer.compare_and_set(
                    run_id, expected, token, text, self._fences.epochs.get(run_id, 0)
                )
            except StoreError:
                self._failure_reported = True
                raise
            if applied:
                return change
            self._check_usable()
        raise StoreError(f"run {run_id!r} context: still written by other clients after {MAX_CONTEXT_ATTEMPTS} tries")

    # --- reads: flush, then read what Redis holds (`query`) -------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        await self.flush()
        return await query.read_run(self._redis, run_id)

    async def list_runs(
        self, *, status: RunStatus | None = None, flow_name: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RunRecord]:
        await self.flush()
        return await query.list_runs(self._redis, status=status, flow_name=flow_name, limit=limit, offset=offset)

    async def find_run_ids(self, prefix: str, *, limit: int) -> list[str]:
        await self.flush()
        return await query.find_run_ids(self._redis, prefix, limit=limit)

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        await self.flush()
        return await query.read_steps(self._redis, run_id)

    async def count_steps(self, run_id: str) -> dict[StepStatus, int]:
        await self.flush()
        return await query.count_steps(self._redis, run_id)

    async def get_logs(
        self, run_id: str, *, step_id: str | None = None, attempt: int | None = None
    ) -> list[AttemptLog]:
        await self.flush()
        return await query.read_logs(self._redis, run_id, step_id=step_id, attempt=attempt)

    async def get_context(self, run_id: str) -> dict[str, Any]:
        """What Redis holds now, written here or by any other client."""
        await self.flush()
        return await query.read_context(self._redis, run_id)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        await self.flush()
        return await query.read_events(self._redis, run_id, after_seq=after_seq, limit=limit)

    async def last_event_seq(self, run_id: str) -> int:
        await self.flush()
        return await query.read_last_event_seq(self._redis, run_id)

    async def wait_events(self, run_id: str, *, after_seq: int, timeout_s: float) -> list[Event]:
        """Blocks on the run's events stream, so a write from any client ends the wait at once."""
        events = await self.get_events(run_id, after_seq=after_seq)
        if events or timeout_s <= 0:
            return events
        return await query.wait_events(self._redis, run_id, after_seq=after_seq, timeout_s=timeout_s)

    # --- commands, notices and leases: never queued, one call each, answered before it returns (`control`)

    async def send_command(
        self,
        run_id: str,
        kind: CommandKind,
        *,
        at: float,
        step_id: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> Command:
        """Sent after the writes queued before it, with its COMMAND notice, by one script."""
        kind = CommandKind(kind)
        text = encode_command(run_id, at, kind, step_id, values or {})
        await self.flush()
        return await control.send_command(self._redis, run_id, kind, text, token=self._new_token())

    async def get_commands(self, run_id: str, *, after_seq: int = 0) -> list[Command]:
        await self.flush()
        return await control.read_commands(self._redis, run_id, after_seq=after_seq)

    async def claim_lease(self, run_id: str, owner: str, *, ttl_s: float) -> bool:
        (claimed,) = await self.claim_leases([run_id], owner, ttl_s=ttl_s)
        return claimed

    async def claim_leases(self, run_ids: Sequence[str], owner: str, *, ttl_s: float) -> list[bool]:
        """One script call for all the leases."""
        self._check_usable()
        held = [self._fences.held_by(run_id, owner) for run_id in run_ids]
        epochs = await control.claim_leases(self._redis, run_ids, held, owner, ttl_s=ttl_s)
        for run_id, epoch in zip(run_ids, epochs, strict=True):
            self._fences.claimed(run_id, owner, epoch)
        return [epoch > 0 for epoch in epochs]

    async def release_lease(self, run_id: str, owner: str, *, notify: bool = False) -> None:
        """Released after the writes queued before it: the next driver resumes from them."""
        self._fences.released(run_id, owner)
        await self.flush()
        await control.release_lease(self._redis, run_id, owner, notify=notify)

    async def get_lease(self, run_id: str) -> Lease | None:
        """The expiry is the server's remaining ttl from our clock now, so clocks need not agree."""
        self._check_usable()
        return await control.read_lease(self._redis, run_id)

    async def notice_cursor(self) -> int:
        self._check_usable()
        return await control.read_notice_cursor(self._redis)

    async def wait_notices(self, *, after: int, timeout_s: float) -> list[Notice]:
        self._check_usable()
        return await control.wait_notices(self._redis, after=after, timeout_s=timeout_s)

    async def flush(self) -> None:
        """Return once every write made before the call is applied in Redis; StoreError if a batch failed."""
        self._check_usable()
        await self._flush()

    async def aclose(self) -> None:
        """Flush, stop the writer and close the connections; StoreError if writes were lost and no call has
        said so yet. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._redis.close()  # at once, before any await: waiting callers get RuntimeError
        already_reported = self._failure_reported
        try:
            await self._flush()
        except StoreError:
            if not already_reported:
                raise
        finally:
            try:
                await self._writer.stop()
            finally:
                self._states.clear()
                await self._redis.aclose()

    # --- internals ---------------------------------------------------------------------------------------

    def _new_token(self) -> str:
        """A token no other write of any client carries: this store's id and a count."""
        return f"{self._id}.{next(self._tokens)}"

    async def _flush(self) -> None:
        try:
            await self._writer.flush()
        except StoreError:
            self._failure_reported = True
            raise

    async def _load_state(self, run_id: str) -> _RunState:
        """The run's cache, read from Redis after a flush; RunNotFound when there is no such run."""
        async with self._load_lock:
            state = self._states.get(run_id)
            if state is None:
                self._check_usable()
                await self._flush()  # the run may have been evicted with writes still queued
                found, token, context = await self._redis.call(
                    self._redis.client.hmget(self.keys.run(run_id), ("run_id", "context_token", "context")),
                    doing=f"reading run {run_id!r}",
                )
                if found is None:
                    raise RunNotFound(run_id)
                state = self._states[run_id] = _RunState(context or "{}", token or "")
        self._check_usable()  # the caller queues writes next: not if the store closed while we waited
        return state

    def _resync_context(self, run_id: str, token: str, context: str) -> None:
        state = self._states.get(run_id)
        if state is not None:
            state.token, state.context = token, context

    def _forget(self, run_id: str) -> None:
        self._states.pop(run_id, None)

    def _check_usable(self, run_id: str | None = None) -> None:
        """RuntimeError once closed, the writer's StoreError once a batch failed, and LeaseLost for a run
        whose writes were refused."""
        if self._closed:
            raise RuntimeError("RedisStore is closed")
        if self._writer.failure is not None:
            self._failure_reported = True
            raise self._writer.failure_error()
        if run_id is not None:
            self._fences.check(run_id)
