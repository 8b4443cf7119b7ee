"""How the SQLite store lays runs out in its file: the tables, their migrations, and the statements that write them.

    runs(run_id PK, flow_name, status, flow JSON, inputs JSON, created_at, started_at, finished_at, error, rerun_of,
        parent)
    steps(run_id, step_id, position, status, attempt, started_at, finished_at, outputs JSON, error JSON,
          logs, worker_id, elapsed_ms, queued_at; PK(run_id, step_id))  position: the step's place in the flow
    context(run_id PK, value JSON)
    events(run_id, seq, at, kind, status, step_id, attempt, message; PK(run_id, seq))
    commands(run_id, seq, at, kind, step_id, signal_values JSON; PK(run_id, seq))
    attempt_logs(run_id, step_id, attempt, worker_id, at, text, context_ops JSON, error JSON;
                 PK(run_id, step_id, attempt))
                                                              each attempt's logs (`steps.logs`: the latest's)
                                                              and context writes ([[op, key, value], ...])
    notices(cursor INTEGER PK, run_id, kind)                  only the newest MAX_NOTICES are kept
    leases(run_id PK, owner, expires_at, epoch)               expires_at is time.time(); a released lease
                                                              keeps its row (owner '', expires_at 0) and epoch

Per-run seqs (events, commands) are assigned inside the write transaction, one past the run's last, so
every process that writes to a run continues one gap-free sequence. JSON columns hold text, so
`sqlite3 dagrun.db` and SQLite's json functions can read them. ``PRAGMA user_version`` counts the
migrations applied; opening a file applies the missing ones, and a file written by a newer dagrun is
refused, not guessed at. The writes here run on the writer thread, inside its transaction; the reads are
in `query`, and the commands, notices and leases in `control` (the Redis store's `layout` is the same
concept for Redis).
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dagrun.contract.context import ContextOp
from dagrun.errors import RunNotFound, StoreError
from dagrun.store.base import ContextChange, RunRecord, StepRecord, attempt_log
from dagrun.store.codec import EMPTY_OBJECT, context_ops_json, encode_error, encode_json, merge_context

# Migration n takes a file from user_version n - 1 to n. A new file runs them all, so new and upgraded
# files have one layout; a migration that has shipped is never edited, a change is a new one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, flow_name TEXT NOT NULL, status TEXT NOT NULL, flow TEXT NOT NULL,
            inputs TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT)""",
        "CREATE INDEX runs_by_created ON runs (created_at)",
        "CREATE INDEX runs_by_status ON runs (status, created_at)",
        "CREATE INDEX runs_by_flow ON runs (flow_name, created_at)",
        """CREATE TABLE steps (
            run_id TEXT NOT NULL, step_id TEXT NOT NULL, position INTEGER NOT NULL, status TEXT NOT NULL,
            attempt INTEGER NOT NULL, started_at REAL, finished_at REAL, outputs TEXT NOT NULL, error TEXT,
            logs TEXT NOT NULL, worker_id TEXT NOT NULL, PRIMARY KEY (run_id, step_id))""",
        "CREATE TABLE context (run_id TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE events (
            run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
            step_id TEXT, attempt INTEGER NOT NULL, message TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID""",
    ),
    (  # sharing runs between processes; events keep their table, only who numbers them changed
        "ALTER TABLE steps ADD COLUMN elapsed_ms REAL NOT NULL DEFAULT 0",
        """CREATE TABLE commands (
            run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, step_id TEXT,
            signal_values TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID""",
        # No AUTOINCREMENT: trimming never removes the newest row, so a new cursor is always the largest.
        "CREATE TABLE notices (cursor INTEGER PRIMARY KEY, run_id TEXT NOT NULL, kind TEXT NOT NULL)",
        "CREATE TABLE leases (run_id TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL)",
    ),
    (  # fencing: each claim that is not a renewal raises the run's epoch, which writes are checked against
        "ALTER TABLE leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
    ),
    ("ALTER TABLE steps ADD COLUMN queued_at REAL",),  # the queued state: dispatched, not yet started
    ("ALTER TABLE runs ADD COLUMN rerun_of TEXT",),  # reruns: the run a run reruns
    (  # every attempt's logs, not only the latest's; a rowid table, as a log can be long
        """CREATE TABLE attempt_logs (
            run_id TEXT NOT NULL, step_id TEXT NOT NULL, attempt INTEGER NOT NULL, worker_id TEXT NOT NULL,
            at REAL NOT NULL, text TEXT NOT NULL, PRIMARY KEY (run_id, step_id, attempt))""",
    ),
    ("ALTER TABLE runs ADD COLUMN parent TEXT",),  # sub-flows: the step a child run runs for, 'RUN/STEP'
    (  # each attempt's context writes and error; the rows kept before have none
        "ALTER TABLE attempt_logs ADD COLUMN context_ops TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE attempt_logs ADD COLUMN error TEXT",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# The writer's statements; the row tuples are built on the event loop in these column orders.
INSERT_RUN = "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
UPDATE_RUN = (
    "UPDATE runs SET status = ?, started_at = COALESCE(started_at, ?), finished_at = ?, error = ? WHERE run_id = ?"
)
UPSERT_CONTEXT = "INSERT OR REPLACE INTO context VALUES (?, ?)"
LAST_EVENT_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?"


@dataclass(frozen=True, slots=True)
class RowsStatement:
    """An INSERT that takes many rows in one VALUES list, so one sqlite3 call writes a whole chunk."""

    head: str
    width: int  # columns per row
    tail: str = ""

    def sql(self, rows: int) -> str:
        return _values_sql(self.head, self.width, self.tail, rows)


@functools.cache
def _values_sql(head: str, width: int, tail: str, rows: int) -> str:
    row = f"({', '.join('?' * width)})"
    return f"{head} VALUES {', '.join([row] * rows)} {tail}"


# position is kept from the first insert: it is the step's place in the flow.
UPSERT_STEPS = RowsStatement(
    """INSERT INTO steps (run_id, step_id, position, status, attempt, started_at, finished_at, outputs, error,
    logs, worker_id, elapsed_ms, queued_at)""",
    13,
    """ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
    started_at = excluded.started_at, finished_at = excluded.finished_at, outputs = excluded.outputs,
    error = excluded.error, logs = excluded.logs, worker_id = excluded.worker_id, elapsed_ms = excluded.elapsed_ms,
    queued_at = excluded.queued_at""",
)


def run_row(run: RunRecord) -> tuple[Any, ...]:
    """The `runs` row of a new run, in INSERT_RUN's column order."""
    where = f"run {run.run_id!r}"
    return (
        run.run_id, run.flow_name, run.status, encode_json(run.flow, where=f"{where} flow"),
        encode_json(run.inputs, where=f"{where} inputs"), run.created_at, run.started_at, run.finished_at,
        run.error, run.rerun_of, run.parent,
    )  # fmt: skip


def step_row(step: StepRecord, position: int) -> tuple[Any, ...]:
    """The `steps` row of a step's state, in UPSERT_STEPS's column order."""
    outputs = step.outputs
    try:
        outputs_json = orjson.dumps(outputs).decode() if outputs else EMPTY_OBJECT
    except TypeError as exc:
        raise StoreError(f"run {step.run_id!r} step {step.step_id!r} outputs: not a JSON value: {exc}") from exc
    error = step.error
    return (
        step.run_id, step.step_id, position, step.status, step.attempt, step.started_at, step.finished_at,
        outputs_json, None if error is None else encode_error(error), step.logs, step.worker_id, step.elapsed_ms,
        step.queued_at,
    )  # fmt: skip


# An attempt recorded again (the same record written twice) keeps one row.
UPSERT_LOGS = RowsStatement(
    "INSERT OR REPLACE INTO attempt_logs (run_id, step_id, attempt, worker_id, at, text, context_ops, error)", 8
)


def attempt_log_row(step: StepRecord) -> tuple[Any, ...] | None:
    """The UPSERT_LOGS row of the attempt `step` ends, None when it printed, wrote and failed with nothing
    (`base.attempt_log`); StoreError when a context write's value is not JSON."""
    log = attempt_log(step)
    if log is None:
        return None
    where = f"run {step.run_id!r} step {step.step_id!r} context writes"
    ops = encode_json(context_ops_json(log.context_ops), where=where)
    return step.run_id, log.step_id, log.attempt, log.worker_id, log.at, log.text, ops, encode_error(log.error)


# Event rows come from the loop without their seq; the writer appends it (see `LAST_EVENT_SEQ`).
INSERT_EVENTS = RowsStatement("INSERT INTO events (run_id, at, kind, status, step_id, attempt, message, seq)", 8)


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Switch the file to WAL and create or migrate the schema; StoreError when it is not ours to use."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot switch the SQLite store to WAL mode (it stays in {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    if _version(conn, path) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated the file while we waited.
        for statements in _MIGRATIONS[_version(conn, path) :]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def is_current(conn: sqlite3.Connection, path: Path) -> bool:
    """Whether the file has this dagrun's schema (else an older one's); StoreError when a newer dagrun
    wrote it, or when it is a SQLite database of something else."""
    version = _version(conn, path)
    if version == 0:  # dagrun writes its schema version in the transaction that makes a store
        raise StoreError(f"{path}: a SQLite database without dagrun's tables, so not a dagrun store; check the path")
    return version == SCHEMA_VERSION


def _version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} was written by a newer dagrun (this one reads {SCHEMA_VERSION});"
            " upgrade dagrun"
        )
    return version


def run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def require_run(conn: sqlite3.Connection, run_id: str) -> None:
    """RunNotFound when there is no such run."""
    if not run_exists(conn, run_id):
        raise RunNotFound(run_id)


# --- on the writer thread, inside its transaction ---------------------------------------------------


def refused_runs(conn: sqlite3.Connection, fences: dict[str, int]) -> dict[str, int]:
    """The runs among `fences` (run id -> the epoch its writes carry) whose lease epoch has passed it, with
    that epoch: their writes are refused (see `fencing`). One statement, each run an index seek."""
    if len(fences) == 1:  # the common case (one run per commit), without a JSON document to parse
        ((run_id, fence),) = fences.items()
        row = conn.execute("SELECT epoch FROM leases WHERE run_id = ?", (run_id,)).fetchone()
        return {run_id: row[0]} if row is not None and row[0] > fence else {}
    rows = conn.execute(
        "SELECT key, value, (SELECT epoch FROM leases WHERE run_id = key) FROM json_each(?)",
        (orjson.dumps(fences).decode(),),
    )
    return {run_id: epoch for run_id, fence, epoch in rows if epoch is not None and epoch > fence}


def apply_context(
    conn: sqlite3.Connection, run_id: str, ops: tuple[ContextOp, ...], fence: int
) -> ContextChange | int | None:
    """Merge `ops` into the run's context as the file holds it; no other process writes in between, as
    the transaction holds the write lock. What changed; the run's lease epoch when it has passed `fence`
    (the write is refused: see `fencing`); None when there is no such run. (Not exceptions: those would
    undo the whole transaction.)"""
    refused = refused_runs(conn, {run_id: fence})
    if refused:
        return refused[run_id]
    row = conn.execute("SELECT value FROM context WHERE run_id = ?", (run_id,)).fetchone()
    if row is None and not run_exists(conn, run_id):
        return None
    text, change = merge_context(EMPTY_OBJECT if row is None else row[0], ops, run_id=run_id)
    conn.execute(UPSERT_CONTEXT, (run_id, text))
    return change
