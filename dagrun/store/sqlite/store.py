"""The SQLite store, the embedded default: one file in WAL mode, one writer thread, group commits.

Writes never wait for I/O: each call builds its rows (in the column orders of `schema`) on the event loop
and queues them for the writer thread (`writer`), which commits them in groups, in call order, numbering
events in the database so that every process writing to a run continues one gap-free sequence. Each run
this process drives (holds the live lease of) has a small cache (`cache`: step positions, context); a run
driven elsewhere, or whose lease lapsed, is read from the file, and its context merged in the writer's
transaction. Commands and leases (`control`) are answered by the writer once committed. Every read first
awaits `flush()`, then queries (`query`, `control`) through its own connection on a reader thread
(`reader`), so it sees every write made before it; other processes read the committed state of the file.
SQLite cannot wake another process, so one watcher per store (`wait`) checks ``PRAGMA data_version`` every
20 ms while anyone waits, and wakes only the waiters whose channel moved. Where the file is, how it is made
and opened, is in `file`. A store opened `read_only` has no writer: it creates nothing, and its writes
raise StoreError.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self, TypeVar

from dagrun.contract.context import ContextOp
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import LeaseLost, RunNotFound, StoreError, redact
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
)
from dagrun.store.codec import EMPTY_OBJECT, decode_json, encode_json, merge_context
from dagrun.store.fencing import Fences
from dagrun.store.sqlite import control, query, schema
from dagrun.store.sqlite.cache import RunCache, RunState
from dagrun.store.sqlite.file import open_for_reading, open_for_writing
from dagrun.store.sqlite.reader import NOTICES, Reader, run_channel
from dagrun.store.sqlite.writer import Writer

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteStore:
    """`async with SqliteStore.open("~/.dagrun") as store: ...`; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        commit_interval_s: float = 0.002,
        busy_timeout_s: float = 10.0,
    ) -> None:
        """Open (creating if needed) the store at `path`: a ``.db`` file, or a directory that holds
        ``dagrun.db``. StoreError, with the path, when it cannot be created, opened or written, or when
        the file is not a store (an empty file is a damaged store, not a new one).

        With `read_only`, an existing store is opened to be read, also where nothing can be written;
        StoreNotFound when there is none, as nothing is created. `commit_interval_s` is the shortest time
        between two commits unless a flush waits; `busy_timeout_s` is how long a statement waits for
        another process's lock before the store reports an error.
        """
        self._fences = Fences()
        self._writer: Writer | None = None
        made_wal_files = False  # by reading: removed at close, so that reading leaves no file behind
        if read_only:
            self.path, reader_conn, made_wal_files = open_for_reading(path, busy_timeout_s=busy_timeout_s)
        else:
            self.path, write_conn, reader_conn = open_for_writing(path, busy_timeout_s=busy_timeout_s)
            self._writer = Writer(write_conn, self.path, interval_s=commit_interval_s, on_refused=self._refused)
        self._reader = Reader(reader_conn, self.path, made_wal_files=made_wal_files)
        self._cache = RunCache(self._writer)
        self._load_lock = asyncio.Lock()  # one cache load or run creation at a time
        self._closed = False
        self._failure_reported = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        commit_interval_s: float = 0.002,
        busy_timeout_s: float = 10.0,
    ) -> Self:
        """Same as the constructor; reads well in ``async with SqliteStore.open(path) as store``."""
        return cls(path, read_only=read_only, commit_interval_s=commit_interval_s, busy_timeout_s=busy_timeout_s)

    @classmethod
    def from_url(
        cls, url: str, *, read_only: bool = False, commit_interval_s: float = 0.002, busy_timeout_s: float = 10.0
    ) -> Self:
        """``sqlite:///abs/path/dagrun.db`` or ``sqlite:///abs/dir``; ``sqlite://rel/path`` is relative."""
        scheme, sep, rest = url.partition("://")
        if scheme.lower() != "sqlite" or not sep or not rest:
            raise StoreError(f"{redact(url)!r} is not a SQLite store URL; expected sqlite:///path/to/dagrun.db")
        return cls(rest, read_only=read_only, commit_interval_s=commit_interval_s, busy_timeout_s=busy_timeout_s)

    @property
    def commits(self) -> int:
        """Transactions committed so far by the writer thread."""
        return 0 if self._writer is None else self._writer.commits

    async def __aenter__(self) -> Self:
        self._check_usable()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- writes: queued; the driver's never wait for I/O --------------------------------------------

    async def create_run(self, run: RunRecord, step_ids: Sequence[str], reuse: Reuse | None = None) -> None:
        writer = self._writable()
        run_id = run.run_id
        run_row = schema.run_row(run)
        positions: dict[str, int] = {}
        for step_id in step_ids:
            positions.setdefault(step_id, len(positions))
        reused = {step.step_id: step for step in reuse.steps} if reuse else {}
        step_rows = [
            schema.step_row(reused.get(step_id) or StepRecord(run_id, step_id, StepStatus.PENDING), position)
            for step_id, position in positions.items()
        ]
        context = encode_json(reuse.context, where=f"run {run_id!r} context") if reuse else EMPTY_OBJECT
        async with self._load_lock:
            if self._cache.knows(run_id) or await self._reader.read(schema.run_exists, run_id):
                raise StoreError(f"run {run_id!r} already exists")
            self._check_usable()  # closed while we read?
            # An orchestrator claims the lease first; a run submitted for another process to drive is not cached.
            if self._cache.drives(run_id):
                self._cache.add(run_id, positions, context)
            else:
                self._cache.remember_queued(run_id)
            writer.add_run(run_row, step_rows, (run_id, context), (run_id, NoticeKind.SUBMITTED))

    async def set_run_status(self, run_id: str, status: RunStatus, *, at: float, error: str | None = None) -> None:
        """Needs no cache: a process that only controls a run (a cancel) does not load one."""
        writer = self._writable(run_id)
        if self._cache.get(run_id) is None:
            await self._query(schema.require_run, run_id)
            self._check_usable(run_id)  # rows are queued next: not if the store closed while we read
        is_terminal = status.is_terminal
        writer.add_run_update(
            (status, at if status == RunStatus.RUNNING else None, at if is_terminal else None, error, run_id),
            (run_id, at, "run", status, None, 0, error or ""),
            self._fences.epochs.get(run_id, 0),
        )
        if is_terminal:
            self._cache.forget(run_id)
            await self.flush()
            self._fences.check(run_id)

    async def record_step(self, step: StepRecord, *, message: str = "") -> None:
        run_id = step.run_id
        writer = self._writer
        if writer is None or self._closed or writer.failure is not None or run_id in self._fences.refused:
            writer = self._writable(run_id)
        if self._cache.drives(run_id):
            positions = (self._cache.get(run_id) or await self._load_state(run_id)).positions
        else:  # another process may have added steps since: the file knows
            positions, _ = await self._query(query.read_run_state, run_id)
            self._check_usable(run_id)  # rows are queued next: not if the store closed while we read
        step_id = step.step_id
        position = positions.get(step_id)
        if position is None:  # a step the run was not created with: it goes last
            position = positions[step_id] = len(positions)
        writer.add_step(
            schema.step_row(step, position),
            (run_id, time.time(), "step", step.status, step_id, step.attempt, message),
            self._fences.epochs.get(run_id, 0),
            schema.attempt_log_row(step),
        )  # fmt: skip

    async def apply_context(self, run_id: str, ops: tuple[ContextOp, ...]) -> ContextChange:
        """Merged into the cached context with no await in between when this process drives the run, else
        into the file's in the writer's transaction: either way concurrent callers never lose updates."""
        writer = self._writable(run_id)
        fence = self._fences.epochs.get(run_id, 0)
        if not self._cache.drives(run_id):
            apply = functools.partial(schema.apply_context, run_id=run_id, ops=ops, fence=fence)
            merged = await self._write_now(apply)
            if merged is None:
                raise RunNotFound(run_id)
            if isinstance(merged, int):
                self._refused(run_id, merged)
                raise LeaseLost(run_id, epoch=merged, held=fence)
            return merged
        state = self._cache.get(run_id) or await self._load_state(run_id)
        state.context, change = merge_context(state.context, ops, run_id=run_id)
        writer.add_context((run_id, state.context), fence)
        return change

    # --- reads: flush, then query committed data ----------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        return await self._query(query.read_run, run_id)

    async def list_runs(
        self, *, status: RunStatus | None = None, flow_name: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RunRecord]:
        return await self._query(query.read_runs, status, flow_name, limit, offset)

    async def find_run_ids(self, prefix: str, *, limit: int) -> list[str]:
        return await self._query(query.read_run_ids, prefix, limit)

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        return await self._query(query.read_steps, run_id)

    async def count_steps(self, run_id: str) -> dict[StepStatus, int]:
        return await self._query(query.count_steps, run_id)

    async def get_logs(
        self, run_id: str, *, step_id: str | None = None, attempt: int | None = None
    ) -> list[AttemptLog]:
        return await self._query(query.read_logs, run_id, step_id, attempt)

    async def get_context(self, run_id: str) -> dict[str, Any]:
        """From the cache when this process drives the run (the same value, without a flush); else what
        the file holds, which other processes may have written."""
        self._check_usable()
        state = self._cache.get(run_id) if self._cache.drives(run_id) else None
        if state is not None:
            value: dict[str, Any] = decode_json(state.context)
            return value
        return await self._query(query.read_context, run_id)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        return await self._query(query.read_events, run_id, after_seq, limit)

    async def last_event_seq(self, run_id: str) -> int:
        return await self._query(query.read_last_event_seq, run_id)

    async def wait_events(self, run_id: str, *, after_seq: int, timeout_s: float) -> list[Event]:
        channel = run_channel(run_id)
        return await self._wait(channel, after_seq, query.read_events, run_id, after_seq, None, timeout_s=timeout_s)

    async def get_commands(self, run_id: str, *, after_seq: int = 0) -> list[Command]:
        return await self._query(control.read_commands, run_id, after_seq)

    async def notice_cursor(self) -> int:
        return await self._query(control.read_notice_cursor)

    async def wait_notices(self, *, after: int, timeout_s: float) -> list[Notice]:
        return await self._wait(NOTICES, after, control.read_notices, after, timeout_s=timeout_s)

    async def get_lease(self, run_id: str) -> Lease | None:
        return await self._query(control.read_lease, run_id, time.time())

    # --- commands and leases: written at once, answered once committed -----------------------------

    async def send_command(
        self,
        run_id: str,
        kind: CommandKind,
        *,
        at: float,
        step_id: str | None = None,
        values: dict[str, Any] | None = None,
    ) -> Command:
        """Committed before it returns, with its COMMAND notice; RunNotFound when there is no such run."""
        kind = CommandKind(kind)
        values_json = encode_json(values or {}, where=f"run {run_id!r} signal values")
        append = functools.partial(
            control.append_command, run_id=run_id, at=at, kind=kind, step_id=step_id, values_json=values_json
        )
        seq = await self._write_now(append)
        if seq is None:
            raise RunNotFound(run_id)
        return Command(seq, run_id, at, kind, step_id, decode_json(values_json))

    async def claim_lease(self, run_id: str, owner: str, *, ttl_s: float) -> bool:
        (claimed,) = await self.claim_leases([run_id], owner, ttl_s=ttl_s)
        return claimed

    async def claim_leases(self, run_ids: Sequence[str], owner: str, *, ttl_s: float) -> list[bool]:
        """One writer call for all; a claim that does not renew a live lease of this process drops the
        run's cache."""
        now = time.time()
        run_ids = list(run_ids)
        held = [self._fences.held_by(run_id, owner) for run_id in run_ids]
        claim = functools.partial(control.claim_leases, run_ids=run_ids, held=held, owner=owner, now=now, ttl_s=ttl_s)
        epochs = await self._write_now(claim)
        for run_id, epoch in zip(run_ids, epochs, strict=True):
            if epoch:
                self._cache.claimed(run_id, now=now, ttl_s=ttl_s)
                self._fences.claimed(run_id, owner, epoch)
        return [epoch > 0 for epoch in epochs]

    async def release_lease(self, run_id: str, owner: str, *, notify: bool = False) -> None:
        self._fences.released(run_id, owner)
        await self._write_now(functools.partial(control.release_lease, run_id=run_id, owner=owner, notify=notify))
        self._cache.forget(run_id)

    async def flush(self) -> None:
        """Return once every write made before the call is committed; StoreError if a commit failed."""
        self._check_usable()
        if self._writer is not None:
            await self._reporting(self._writer.flush())

    async def aclose(self) -> None:
        """Flush, stop the writer and close the connections; StoreError if writes were lost and no call
        has said so yet. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        already_reported = self._failure_reported
        try:
            await self._reader.stop_reading()  # its waiters wake and find the store closed
            if self._writer is not None:
                await self._reporting(self._writer.flush())
        except StoreError:
            if not already_reported:
                raise
        finally:
            if self._writer is not None:
                await self._writer.stop()
            await self._reader.aclose()
            self._cache.clear()

    # --- internals ----------------------------------------------------------------------------------

    async def _reporting(self, waiting: Awaitable[T]) -> T:
        """Await the writer, remembering when its failure reaches a caller (aclose then stays quiet)."""
        try:
            return await waiting
        except StoreError:
            self._failure_reported = True
            raise

    async def _write_now(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """`function`'s result on the writer thread, committed together with every write made before."""
        return await self._reporting(self._writable().call(function))

    async def _query(self, reading: Callable[..., T], *args: Any) -> T:
        """`reading` (from `query` or `control`) on the reader thread after a flush, so that it sees every
        write made before the call."""
        await self.flush()
        return await self._reader.read(reading, *args)

    async def _wait(
        self, channel: str, after: int, reading: Callable[..., list[T]], *args: Any, timeout_s: float
    ) -> list[T]:
        """`reading`'s rows once there are some, or [] after `timeout_s` (see `Reader.wait`)."""
        deadline = time.monotonic() + timeout_s
        await self.flush()  # the first query sees every write made before the call; later ones, every commit
        if timeout_s <= 0:
            return await self._reader.read(reading, *args)
        return await self._reader.wait(channel, after, reading, *args, deadline=deadline)

    async def _load_state(self, run_id: str) -> RunState:
        """The run's cache, read from the file after a flush; RunNotFound when there is no such run."""
        async with self._load_lock:
            state = self._cache.get(run_id)
            if state is None:
                self._check_usable()
                # The run may have been evicted with rows still queued.
                positions, context = await self._query(query.read_run_state, run_id)
                state = self._cache.add(run_id, positions, context)
        self._check_usable()  # the caller queues rows next: not if the store closed while we waited
        return state

    def _refused(self, run_id: str, epoch: int) -> None:
        """On the writer thread: the run's writes were refused. (A dict write, atomic under the GIL.)"""
        self._fences.refused[run_id] = epoch

    def _check_usable(self, run_id: str | None = None) -> None:
        """RuntimeError once closed, the writer's StoreError once a commit failed, and LeaseLost for a run
        whose writes were refused."""
        if self._closed:
            raise RuntimeError("SqliteStore is closed")
        if self._writer is not None and self._writer.failure is not None:
            self._failure_reported = True
            raise self._writer.failure_error()
        if run_id is not None:
            self._fences.check(run_id)

    def _writable(self, run_id: str | None = None) -> Writer:
        """The writer, once the store is found usable (for writes of `run_id`: see `_check_usable`);
        StoreError when it was opened read-only."""
        self._check_usable(run_id)
        if self._writer is None:
            raise StoreError(f"{self.path}: the store was opened read-only, so it cannot be written")
        return self._writer
