"""The SQLite store's file layout: tables, schema version, the write statements and the read queries.

    runs(run_id PK, flow_name, status, flow JSON, inputs JSON, created_at, started_at, finished_at, error)
    steps(run_id, step_id, position, status, attempt, started_at, finished_at, outputs JSON, error JSON,
          logs, worker_id; PK(run_id, step_id))          position is the step's place in the flow
    context(run_id PK, value JSON)
    events(run_id, seq, at, kind, status, step_id, attempt, message; PK(run_id, seq))

JSON columns hold text, so `sqlite3 dagrun.db` and SQLite's json functions can read them. The schema
version lives in ``PRAGMA user_version``; a file written by a newer dagrun is refused, not guessed at.
Read functions run on the reader thread with its own connection and see committed data only.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagrun.errors import RunNotFound, StoreError
from dagrun.states import RunStatus, StepStatus
from dagrun.store.base import Event, RunRecord, StepRecord
from dagrun.store.codec import EMPTY_OBJECT, decode_error, decode_json

SCHEMA_VERSION = 1

_SCHEMA = (
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
)

# The writer's statements; the row tuples are built on the event loop in these column orders.
INSERT_RUN = "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
UPDATE_RUN = (
    "UPDATE runs SET status = ?, started_at = COALESCE(started_at, ?), finished_at = ?, error = ? WHERE run_id = ?"
)
UPSERT_CONTEXT = "INSERT OR REPLACE INTO context VALUES (?, ?)"


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
    "INSERT INTO steps",
    11,
    """ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
    started_at = excluded.started_at, finished_at = excluded.finished_at, outputs = excluded.outputs,
    error = excluded.error, logs = excluded.logs, worker_id = excluded.worker_id""",
)
INSERT_EVENTS = RowsStatement("INSERT INTO events", 8)

_RUN_COLUMNS = "run_id, flow_name, status, flow, inputs, created_at, started_at, finished_at, error"
_STEP_COLUMNS = "step_id, status, attempt, started_at, finished_at, outputs, error, logs, worker_id"


def connect(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), usable from the thread that owns it."""
    return sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Switch the file to WAL and create or check the schema; StoreError when it is not ours to use."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot switch the SQLite store to WAL mode (it stays in {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    if _version(conn, path) == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _version(conn, path) == 0:  # another process may have created it while we waited for the lock
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} was written by a newer dagrun (this one reads {SCHEMA_VERSION});"
            " upgrade dagrun"
        )
    return version


# --- reads, on the reader thread --------------------------------------------------------------------


def run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def read_run(conn: sqlite3.Connection, run_id: str) -> RunRecord:
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    return _run_from_row(row)


def read_runs(conn: sqlite3.Connection, status: RunStatus | None, flow_name: str | None, limit: int) -> list[RunRecord]:
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if flow_name is not None:
        where.append("flow_name = ?")
        params.append(flow_name)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    # rowid breaks ties between runs created at the same instant: the later insert is newer.
    sql = f"SELECT {_RUN_COLUMNS} FROM runs {clause} ORDER BY created_at DESC, rowid DESC LIMIT ?"
    return [_run_from_row(row) for row in conn.execute(sql, (*params, max(limit, 0)))]


def read_steps(conn: sqlite3.Connection, run_id: str) -> list[StepRecord]:
    rows = conn.execute(f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
    steps = [_step_from_row(run_id, row) for row in rows]
    if not steps and not run_exists(conn, run_id):
        raise RunNotFound(run_id)
    return steps


def read_context(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT value FROM context WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        if not run_exists(conn, run_id):
            raise RunNotFound(run_id)
        return {}
    value: dict[str, Any] = decode_json(row[0])
    return value


def read_events(conn: sqlite3.Connection, run_id: str, after_seq: int, limit: int | None) -> list[Event]:
    rows = conn.execute(
        "SELECT seq, at, kind, status, step_id, attempt, message FROM events"
        " WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (run_id, after_seq, -1 if limit is None else max(limit, 0)),
    )
    events = [
        Event(seq, run_id, at, kind, status, step_id, attempt, message)
        for seq, at, kind, status, step_id, attempt, message in rows
    ]
    if not events and not run_exists(conn, run_id):
        raise RunNotFound(run_id)
    return events


def read_run_state(conn: sqlite3.Connection, run_id: str) -> tuple[int, dict[str, int], str]:
    """What the writing side caches per run: the last event seq, each step's position, the context text."""
    conn.execute("BEGIN")  # one snapshot for the three reads
    try:
        if not run_exists(conn, run_id):
            raise RunNotFound(run_id)
        last_seq = conn.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0] or 0
        positions = dict(conn.execute("SELECT step_id, position FROM steps WHERE run_id = ?", (run_id,)).fetchall())
        row = conn.execute("SELECT value FROM context WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        conn.execute("COMMIT")
    return last_seq, positions, EMPTY_OBJECT if row is None else row[0]


def _step_from_row(run_id: str, row: tuple[Any, ...]) -> StepRecord:
    step_id, status, attempt, started_at, finished_at, outputs, error, logs, worker_id = row
    return StepRecord(
        run_id=run_id,
        step_id=step_id,
        status=StepStatus(status),
        attempt=attempt,
        started_at=started_at,
        finished_at=finished_at,
        outputs=decode_json(outputs),
        error=decode_error(error),
        logs=logs,
        worker_id=worker_id,
    )


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    run_id, flow_name, status, flow, inputs, created_at, started_at, finished_at, error = row
    return RunRecord(
        run_id=run_id,
        flow_name=flow_name,
        status=RunStatus(status),
        flow=decode_json(flow),
        inputs=decode_json(inputs),
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        error=error,
    )
