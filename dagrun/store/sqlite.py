"""The SQLite store, the embedded default: one file in WAL mode, one writer thread, group commits.

Writes never wait for I/O: each call builds its rows on the event loop and queues them for the writer
thread (`sqlite_writer`), which commits them in groups, in call order. Each run this process writes to
has a small cache (last event seq, step positions, context) so that event seqs are assigned at the
call, gap-free, and context operations are merged atomically: one process drives a run. Every read
first awaits `flush()`, then queries through its own connection on a reader thread, so it sees every
write made before it; other processes (``dagrun status``) read the committed state of the same file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson

from dagrun.context import ContextOp
from dagrun.errors import StoreError, redact
from dagrun.states import RunStatus, StepStatus
from dagrun.store import sqlite_schema as schema
from dagrun.store.base import Event, RunRecord, StepRecord
from dagrun.store.codec import EMPTY_OBJECT, decode_json, encode_error, encode_json, merge_context
from dagrun.store.sqlite_writer import Writer

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "dagrun.db"
_EVICTED_PRUNE_AT = 1024

T = TypeVar("T")


@dataclass(slots=True)
class _RunState:
    """What the writing side knows of a run it writes to; exact because one process drives a run."""

    seq: int  # the last event seq assigned
    positions: dict[str, int]  # step id -> place in the flow
    context: str  # the context's JSON text after every operation applied so far


class SqliteStore:
    """`async with SqliteStore.open("~/.dagrun") as store: ...`; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        commit_interval_s: float = 0.002,
        busy_timeout_s: float = 10.0,
    ) -> None:
        """Open (creating if needed) the store at `path`: a ``.db`` file, or a directory that holds
        ``dagrun.db``. StoreError, with the path, when it cannot be created, opened or written.

        `commit_interval_s` is the shortest time between two commits unless a flush waits; `busy_timeout_s`
        is how long a statement waits for another process's lock before the store reports an error.
        """
        self.path = _database_path(path)
        write_conn = _open_connection(self.path, busy_timeout_s=busy_timeout_s, prepare=True)
        try:
            self._reader_conn = _open_connection(self.path, busy_timeout_s=busy_timeout_s, prepare=False)
        except BaseException:
            write_conn.close()
            raise
        self._writer = Writer(write_conn, self.path, interval_s=commit_interval_s)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dagrun-sqlite-reader")
        self._states: dict[str, _RunState] = {}
        # Runs dropped from _states when they ended -> the writer's batch number then. While their rows
        # may be uncommitted, the file cannot tell that they exist; this can.
        self._evicted: dict[str, int] = {}
        self._load_lock = asyncio.Lock()  # one cache load or run creation at a time
        self._closed = False
        self._failure_reported = False

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, commit_interval_s: float = 0.002, busy_timeout_s: float = 10.0
    ) -> Self:
        """Same as the constructor; reads well in ``async with SqliteStore.open(path) as store``."""
        return cls(path, commit_interval_s=commit_interval_s, busy_timeout_s=busy_timeout_s)

    @classmethod
    def from_url(cls, url: str, *, commit_interval_s: float = 0.002, busy_timeout_s: float = 10.0) -> Self:
        """``sqlite:///abs/path/dagrun.db`` or ``sqlite:///abs/dir``; ``sqlite://rel/path`` is relative."""
        scheme, sep, rest = url.partition("://")
        if scheme.lower() != "sqlite" or not sep or not rest:
            raise StoreError(f"{redact(url)!r} is not a SQLite store URL; expected sqlite:///path/to/dagrun.db")
        return cls(rest, commit_interval_s=commit_interval_s, busy_timeout_s=busy_timeout_s)

    @property
    def commits(self) -> int:
        """Transactions committed so far by the writer thread."""
        return self._writer.commits

    async def __aenter__(self) -> Self:
        self._check_usable()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- writes: queued, never waiting for I/O ------------------------------------------------------

    async def create_run(self, run: RunRecord, step_ids: Sequence[str]) -> None:
        self._check_usable()
        run_id = run.run_id
        where = f"run {run_id!r}"
        run_row = (
            run_id, run.flow_name, run.status, encode_json(run.flow, where=f"{where} flow"),
            encode_json(run.inputs, where=f"{where} inputs"), run.created_at, run.started_at, run.finished_at,
            run.error,
        )  # fmt: skip
        positions: dict[str, int] = {}
        for step_id in step_ids:
            positions.setdefault(step_id, len(positions))
        step_rows = [
            (run_id, step_id, position, StepStatus.PENDING, 0, None, None, EMPTY_OBJECT, None, "", "")
            for step_id, position in positions.items()
        ]
        async with self._load_lock:
            if run_id in self._states or run_id in self._evicted or await self._read(schema.run_exists, run_id):
                raise StoreError(f"run {run_id!r} already exists")
            self._check_usable()  # closed while we read?
            self._states[run_id] = _RunState(0, positions, EMPTY_OBJECT)
            self._writer.add_run(run_row, step_rows, (run_id, EMPTY_OBJECT))

    async def set_run_status(self, run_id: str, status: RunStatus, *, at: float, error: str | None = None) -> None:
        self._check_usable()
        state = self._states.get(run_id) or await self._load_state(run_id)
        state.seq += 1
        is_terminal = status.is_terminal
        self._writer.add_run_update(
            (status, at if status == RunStatus.RUNNING else None, at if is_terminal else None, error, run_id),
            (run_id, state.seq, at, "run", status, None, 0, error or ""),
        )
        if is_terminal:  # the run is done: drop its cache, it is reloaded if written to again
            del self._states[run_id]
            self._evict(run_id)

    async def record_step(self, step: StepRecord, *, message: str = "") -> None:
        if self._closed or self._writer.failure is not None:
            self._check_usable()
        run_id = step.run_id
        state = self._states.get(run_id) or await self._load_state(run_id)
        step_id = step.step_id
        position = state.positions.get(step_id)
        if position is None:  # a step the run was not created with: it goes last
            position = state.positions[step_id] = len(state.positions)
        outputs = step.outputs
        try:
            outputs_json = orjson.dumps(outputs).decode() if outputs else EMPTY_OBJECT
        except TypeError as exc:
            raise StoreError(f"run {run_id!r} step {step_id!r} outputs: not a JSON value: {exc}") from exc
        error = step.error
        state.seq += 1
        status = step.status
        attempt = step.attempt
        self._writer.add_step(
            (
                run_id, step_id, position, status, attempt, step.started_at, step.finished_at, outputs_json,
                None if error is None else encode_error(error), step.logs, step.worker_id,
            ),
            (run_id, state.seq, time.time(), "step", status, step_id, attempt, message),
        )  # fmt: skip

    async def apply_context(self, run_id: str, ops: tuple[ContextOp, ...]) -> tuple[dict[str, Any], list[str]]:
        """Merged into the cached context with no await in between, so concurrent callers never lose updates."""
        self._check_usable()
        state = self._states.get(run_id) or await self._load_state(run_id)
        state.context, value, rejected = merge_context(state.context, ops, run_id=run_id)
        self._writer.add_context((run_id, state.context))
        return value, rejected

    # --- reads: flush, then query committed data ----------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        await self.flush()
        return await self._read(schema.read_run, run_id)

    async def list_runs(
        self, *, status: RunStatus | None = None, flow_name: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        await self.flush()
        return await self._read(schema.read_runs, status, flow_name, limit)

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        await self.flush()
        return await self._read(schema.read_steps, run_id)

    async def get_context(self, run_id: str) -> dict[str, Any]:
        """From the cache when this process writes the run (the same value, without a flush)."""
        self._check_usable()
        state = self._states.get(run_id)
        if state is not None:
            value: dict[str, Any] = decode_json(state.context)
            return value
        await self.flush()
        return await self._read(schema.read_context, run_id)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        await self.flush()
        return await self._read(schema.read_events, run_id, after_seq, limit)

    async def flush(self) -> None:
        """Return once every write made before the call is committed; StoreError if a commit failed."""
        self._check_usable()
        await self._flush()

    async def aclose(self) -> None:
        """Flush, stop the writer and close the connections; StoreError if writes were lost and no call
        has said so yet. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        already_reported = self._failure_reported
        try:
            await self._flush()
        except StoreError:
            if not already_reported:
                raise
        finally:
            await self._writer.stop()
            await asyncio.get_running_loop().run_in_executor(self._reader, self._reader_conn.close)
            self._reader.shutdown(wait=True)
            self._states.clear()

    # --- internals ----------------------------------------------------------------------------------

    async def _flush(self) -> None:
        try:
            await self._writer.flush()
        except StoreError:
            self._failure_reported = True
            raise

    async def _load_state(self, run_id: str) -> _RunState:
        """The run's cache, read from the file after a flush; RunNotFound when there is no such run."""
        async with self._load_lock:
            state = self._states.get(run_id)
            if state is None:
                self._check_usable()
                await self._flush()  # the run may have been evicted with rows still queued
                seq, positions, context = await self._read(schema.read_run_state, run_id)
                state = self._states[run_id] = _RunState(seq, positions, context)
        self._check_usable()  # the caller queues rows next: not if the store closed while we waited
        return state

    def _evict(self, run_id: str) -> None:
        self._evicted[run_id] = self._writer.batches_queued
        if len(self._evicted) >= _EVICTED_PRUNE_AT:
            committed = self._writer.batches_committed
            self._evicted = {key: batch for key, batch in self._evicted.items() if batch >= committed}

    async def _read(self, query: Callable[..., T], *args: Any) -> T:
        if self._closed:  # closed while the caller awaited a flush: the reader may be gone
            raise RuntimeError("SqliteStore is closed")
        call = functools.partial(query, self._reader_conn, *args)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, call)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: reading the store failed: {exc}") from exc

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("SqliteStore is closed")
        if self._writer.failure is not None:
            self._failure_reported = True
            raise self._writer.failure_error()


def _database_path(path: str | os.PathLike[str]) -> Path:
    """The database file for `path`, its directory created: an existing directory, a path ending in a
    separator or one without a suffix names a directory that holds ``dagrun.db``."""
    text = os.fspath(path)
    given = Path(text).expanduser()
    is_directory = given.is_dir() or (not given.exists() and (text.endswith(("/", os.sep)) or not given.suffix))
    file = given / DEFAULT_FILENAME if is_directory else given
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{file.parent}: cannot create the store directory: {exc.strerror or exc}") from exc
    return file.absolute()


def _open_connection(path: Path, *, busy_timeout_s: float, prepare: bool) -> sqlite3.Connection:
    try:
        conn = schema.connect(path, busy_timeout_s=busy_timeout_s)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the SQLite store: {exc}") from exc
    try:
        if prepare:
            schema.prepare(conn, path)
        else:
            conn.execute("PRAGMA query_only = ON")  # the reader never writes
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{path}: cannot open the SQLite store: {exc}") from exc
        raise
    return conn
