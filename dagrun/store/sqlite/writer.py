"""The SQLite store's writer: one thread owns the write connection and commits queued rows in groups.

The event loop appends row tuples to the current batch under a lock (no I/O, no await) and the writer
swaps the batch out and commits it in one transaction, a few multi-row statements per table. It
commits everything pending, at most every `interval_s`, at once when a flush or a call waits. Event
seqs are assigned in that transaction, which holds the file's write lock, so writers in other processes
continue the same sequence. Batches are committed in the order they were queued, so writes are applied
in the order they were made. A failed commit is kept and turned into a StoreError for every later call:
writes are never lost silently. So is a commit to a file that has since been deleted or replaced, which
SQLite does not notice: each commit is followed by one stat of the path (`file.check_same_file`).
Run writes are fenced (`fencing`): each carries the lease epoch its store holds, and the transaction drops
those of runs whose epoch has passed it, telling `on_refused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dagrun.errors import StoreError
from dagrun.store.sqlite import control, schema
from dagrun.store.sqlite.file import check_same_file, file_id

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]
CHUNK_ROWS = 128  # rows per INSERT: 128 x 12 columns stays far below SQLite's 32766 parameters
_STEP_KEY = operator.itemgetter(0, 1)  # (run_id, step_id)
_RUN_KEY = operator.itemgetter(0)  # run_id, in context and event rows

T = TypeVar("T")


@dataclass(slots=True)
class _Call:
    """A function run on the writer thread after its batch's rows, in their transaction."""

    function: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]  # gets the result once the transaction is committed
    result: Any = None


class _Batch:
    """Rows and calls queued since the last swap, one list per statement, each in write order."""

    __slots__ = (
        "calls", "contexts", "events", "fences", "logs", "notices", "run_inserts", "run_updates", "steps", "waiters",
    )  # fmt: skip

    def __init__(self) -> None:
        self.run_inserts: list[Row] = []
        self.run_updates: list[Row] = []
        self.steps: list[Row] = []
        self.logs: list[Row] = []  # attempts' logs, each with the step row that ends its attempt
        self.contexts: list[Row] = []
        self.events: list[Row] = []  # without their seq: see _numbered
        self.notices: list[Row] = []
        self.calls: list[_Call] = []
        self.fences: dict[str, int] = {}  # run id -> the lease epoch its writes in this batch carry
        self.waiters: list[asyncio.Future[None]] = []  # flushes waiting for this batch's commit

    def size(self) -> int:
        """What needs a transaction: rows and calls."""
        return (
            len(self.run_inserts) + len(self.run_updates) + len(self.steps) + len(self.logs) + len(self.contexts)
            + len(self.events) + len(self.notices) + len(self.calls)
        )  # fmt: skip


class Writer:
    """The writer thread and its queue. Methods without a leading underscore are called on the loop."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, *, interval_s: float, on_refused: Callable[[str, int], None]
    ) -> None:
        """`on_refused(run_id, epoch)` is called on the writer thread for a run whose writes were refused."""
        self.failure: Exception | None = None  # the first failed commit; nothing is written after it
        self.commits = 0  # transactions committed, for metrics and tests
        # Batches are numbered from 0 in queue order: rows added now go to batch number `batches_queued`,
        # and batch n is written (or refused after a failure) once `batches_committed` > n.
        self.batches_queued = 0
        self.batches_committed = 0
        self._conn = conn
        self._path = path
        self._file_id = file_id(path)  # the file `conn` opened, as the path named it just now
        self._interval_s = interval_s
        self._on_refused = on_refused
        # The lock guards _batch and _idle: the loop appends, the writer swaps the batch out.
        self._lock = threading.Lock()
        self._batch = _Batch()
        self._idle = False  # the writer waits for rows; the next append must wake it
        self._closing = False
        self._wake = threading.Event()
        self._next_commit_at = 0.0
        self._thread = threading.Thread(target=self._run, name=f"dagrun-sqlite-writer {path}", daemon=True)
        self._thread.start()

    # --- on the event loop -------------------------------------------------------------------------

    def add_run(self, run: Row, steps: list[Row], context: Row, notice: Row) -> None:
        with self._lock:
            batch = self._batch
            batch.run_inserts.append(run)
            batch.steps.extend(steps)
            batch.contexts.append(context)
            batch.notices.append(notice)
            wake, self._idle = self._idle, False
        if wake:
            self._wake.set()

    def add_run_update(self, update: Row, event: Row, fence: int) -> None:
        with self._lock:
            batch = self._batch
            batch.run_updates.append(update)
            batch.events.append(event)
            batch.fences[event[0]] = fence
            wake, self._idle = self._idle, False
        if wake:
            self._wake.set()

    def add_step(self, step: Row, event: Row, fence: int, log: Row | None = None) -> None:
        """The hot path (several calls per step), hence the bare acquire/release: half the cost of `with`.
        `log`: the attempt's logs, when `step` ends an attempt that printed (committed with it)."""
        lock = self._lock
        lock.acquire()
        try:
            batch = self._batch
            batch.steps.append(step)
            batch.events.append(event)
            if log is not None:
                batch.logs.append(log)
            batch.fences[step[0]] = fence
            wake = self._idle
            if wake:
                self._idle = False
        finally:
            lock.release()
        if wake:
            self._wake.set()

    def add_context(self, context: Row, fence: int) -> None:
        with self._lock:
            self._batch.contexts.append(context)
            self._batch.fences[context[0]] = fence
            wake, self._idle = self._idle, False
        if wake:
            self._wake.set()

    async def flush(self) -> None:
        """Return once every row added before the call is committed; StoreError if a commit failed."""
        if self.failure is not None:
            raise self.failure_error()
        with self._lock:
            self._check_open()
            if self._idle:  # an idle writer has an empty batch and nothing in flight
                return
            waiter = asyncio.get_running_loop().create_future()
            self._batch.waiters.append(waiter)
        self._wake.set()
        await waiter

    async def call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run `function` on the writer thread, after the rows added before the call and in their
        transaction, and return its result once that is committed; StoreError if a commit failed.
        `function` raises only on a database error, which fails the store like any failed commit."""
        if self.failure is not None:
            raise self.failure_error()
        with self._lock:
            self._check_open()
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._batch.calls.append(_Call(function, future))
            self._idle = False  # so that a flush after this call waits for it
        self._wake.set()
        return await future

    async def stop(self) -> None:
        """Commit what is queued, then end the thread, which closes the write connection."""
        self._closing = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)

    def _check_open(self) -> None:
        """Under the lock: after stop() a new waiter might never be settled."""
        if self._closing:
            raise RuntimeError("SqliteStore is closed")

    def failure_error(self) -> StoreError:
        if isinstance(self.failure, StoreError):  # found by the writer, not SQLite: its message says it all
            error = StoreError(str(self.failure))
        else:
            error = StoreError(
                f"{self._path}: writing to the store failed ({self.failure}); writes since the last commit are lost"
                " and no more are accepted: reopen the store once the cause is fixed"
            )
        error.__cause__ = self.failure
        return error

    # --- on the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._take()) is not None:
                self._commit(batch)
        finally:
            self._conn.close()

    def _take(self) -> _Batch | None:
        """Wait until the current batch is due and swap it out; None once closing with nothing left."""
        while True:
            self._wake.clear()
            with self._lock:
                batch = self._batch
                timeout: float | None = None
                if batch.size() == 0 and not batch.waiters:
                    if self._closing:
                        return None
                    self._idle = True
                else:
                    timeout = self._next_commit_at - time.monotonic()
                    if timeout <= 0 or batch.waiters or batch.calls or self._closing:
                        self._batch = _Batch()
                        self.batches_queued += 1
                        return batch
            # Woken by the first row after idling, a flush or stop(); else when the interval is over.
            self._wake.wait(timeout)

    def _commit(self, batch: _Batch) -> None:
        if self.failure is None and batch.size():  # a batch of flush waiters only needs no transaction
            try:
                self._write(batch)
                check_same_file(self._path, self._file_id)
            except Exception as exc:  # becomes the StoreError of every later call
                logger.error("sqlite store %s: commit of %d rows failed: %s", self._path, batch.size(), exc)
                self.failure = exc
        self.batches_committed += 1
        self._next_commit_at = time.monotonic() + self._interval_s
        outcomes = [(waiter, None) for waiter in batch.waiters] + [(call.future, call.result) for call in batch.calls]
        if outcomes:
            error = None if self.failure is None else self.failure_error
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                outcomes[0][0].get_loop().call_soon_threadsafe(_settle, outcomes, error)

    def _write(self, batch: _Batch) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch.fences:  # under the write lock: no claim can come between the check and the writes
                self._drop_refused(batch, schema.refused_runs(conn, batch.fences))
            # Runs first: an update may follow the insert of the same run in this batch.
            if batch.run_inserts:
                conn.executemany(schema.INSERT_RUN, batch.run_inserts)
            if batch.run_updates:
                conn.executemany(schema.UPDATE_RUN, batch.run_updates)
            # Within one transaction only the last state of a step and of a context can ever be seen.
            if batch.steps:
                _insert_rows(conn, schema.UPSERT_STEPS, _last_by_key(batch.steps, _STEP_KEY))
            if batch.logs:
                _insert_rows(conn, schema.UPSERT_LOGS, batch.logs)
            if batch.contexts:
                conn.executemany(schema.UPSERT_CONTEXT, _last_by_key(batch.contexts, _RUN_KEY))
            if batch.events:
                _insert_rows(conn, schema.INSERT_EVENTS, _numbered(conn, batch.events))
            if batch.notices:
                control.append_notices(conn, batch.notices)
            for call in batch.calls:
                call.result = call.function(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.commits += 1

    def _drop_refused(self, batch: _Batch, refused: dict[str, int]) -> None:
        """Drop the writes of runs whose lease passed to another driver, and say so."""
        if not refused:
            return
        batch.run_updates = [row for row in batch.run_updates if row[-1] not in refused]
        batch.steps = [row for row in batch.steps if row[0] not in refused]
        batch.logs = [row for row in batch.logs if row[0] not in refused]
        batch.contexts = [row for row in batch.contexts if row[0] not in refused]
        batch.events = [row for row in batch.events if row[0] not in refused]
        for run_id, epoch in refused.items():
            logger.warning(
                "sqlite store %s: run %s: writes refused, its lease passed to another driver (epoch %d > %d)",
                self._path, run_id, epoch, batch.fences[run_id],
            )  # fmt: skip
            self._on_refused(run_id, epoch)


def _last_by_key(rows: list[Row], key: Callable[[Row], Any]) -> list[Row]:
    """The last row of each key, in the order the keys first appear."""
    return list(dict(zip(map(key, rows), rows, strict=True)).values()) if len(rows) > 1 else rows


def _numbered(conn: sqlite3.Connection, events: list[Row]) -> list[Row]:
    """Each event row with its seq appended, counting on from its run's last seq in the file. Called in
    the write transaction, whose lock keeps other processes from taking the same seqs meanwhile."""
    counters = {
        run_id: itertools.count(conn.execute(schema.LAST_EVENT_SEQ, (run_id,)).fetchone()[0] + 1)
        for run_id in dict.fromkeys(map(_RUN_KEY, events))
    }
    return [(*row, next(counters[row[0]])) for row in events]


def _insert_rows(conn: sqlite3.Connection, statement: schema.RowsStatement, rows: list[Row]) -> None:
    """Insert in chunks of CHUNK_ROWS, the rest in power-of-two pieces: few distinct statements to
    cache, and few calls into SQLite, each of which gives the GIL back to the event loop only once."""
    start, size, count = 0, CHUNK_ROWS, len(rows)
    while start < count:
        while size > count - start:
            size //= 2
        conn.execute(statement.sql(size), list(itertools.chain.from_iterable(rows[start : start + size])))
        start += size


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any]], error: Callable[[], StoreError] | None) -> None:
    """Give each waiting future its result, or the commit's error."""
    for future, result in outcomes:
        if future.done():  # its caller was cancelled
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error())
