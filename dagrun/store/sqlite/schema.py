"""The SQLite store's file layout: tables, migrations, the write statements and the read queries.

    runs(run_id PK, flow_name, status, flow JSON, inputs JSON, created_at, started_at, finished_at, error)
    steps(run_id, step_id, position, status, attempt, started_at, finished_at, outputs JSON, error JSON,
          logs, worker_id, elapsed_ms; PK(run_id, step_id))  position is the step's place in the flow
    context(run_id PK, value JSON)
    events(run_id, seq, at, kind, status, step_id, attempt, message; PK(run_id, seq))
    commands(run_id, seq, at, kind, step_id, signal_values JSON; PK(run_id, seq))
    notices(cursor INTEGER PK, run_id, kind)                  only the newest MAX_NOTICES are kept
    leases(run_id PK, owner, expires_at, epoch)               expires_at is time.time(); a released lease
                                                              keeps its row (owner '', expires_at 0) and epoch

Per-run seqs (events, commands) are assigned inside the write transaction, one past the run's last, so
every process that writes to a run continues one gap-free sequence. JSON columns hold text, so
`sqlite3 dagrun.db` and SQLite's json functions can read them. ``PRAGMA user_version`` counts the
migrations applied; opening a file applies the missing ones, and a file written by a newer dagrun is
refused, not guessed at. Reads run on the reader thread and see committed data only; writes run on the
writer thread, inside its transaction.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dagrun.contract.context import ContextOp
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import RunNotFound, StoreError
from dagrun.store.base import Command, CommandKind, Event, Lease, Notice, NoticeKind, RunRecord, StepRecord
from dagrun.store.codec import EMPTY_OBJECT, decode_error, decode_json, merge_context

MAX_NOTICES = 10_000  # the notice log keeps the newest; readers rescan rather than rely on every notice

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
)
SCHEMA_VERSION = len(_MIGRATIONS)

# The writer's statements; the row tuples are built on the event loop in these column orders.
INSERT_RUN = "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
UPDATE_RUN = (
    "UPDATE runs SET status = ?, started_at = COALESCE(started_at, ?), finished_at = ?, error = ? WHERE run_id = ?"
)
UPSERT_CONTEXT = "INSERT OR REPLACE INTO context VALUES (?, ?)"
INSERT_NOTICE = "INSERT INTO notices (run_id, kind) VALUES (?, ?)"
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
    logs, worker_id, elapsed_ms)""",
    12,
    """ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
    started_at = excluded.started_at, finished_at = excluded.finished_at, outputs = excluded.outputs,
    error = excluded.error, logs = excluded.logs, worker_id = excluded.worker_id, elapsed_ms = excluded.elapsed_ms""",
)
# Event rows come from the loop without their seq; the writer appends it (see `LAST_EVENT_SEQ`).
INSERT_EVENTS = RowsStatement("INSERT INTO events (run_id, at, kind, status, step_id, attempt, message, seq)", 8)

_RUN_COLUMNS = "run_id, flow_name, status, flow, inputs, created_at, started_at, finished_at, error"
_STEP_COLUMNS = "step_id, status, attempt, started_at, finished_at, outputs, error, logs, worker_id, elapsed_ms"


def connect(path: Path, *, busy_timeout_s: float, options: str = "mode=rw") -> sqlite3.Connection:
    """A connection to the existing file at `path` (the default `options`, SQLite's URI parameters, never
    create one) in autocommit mode (transactions are explicit), usable from the thread that owns it."""
    return sqlite3.connect(
        f"{path.as_uri()}?{options}", uri=True, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )


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


# --- writes of commands, notices and leases, on the writer thread inside its transaction -------------


def append_notices(conn: sqlite3.Connection, rows: list[tuple[str, NoticeKind]]) -> None:
    """Append (run_id, kind) notices and trim the log to its newest MAX_NOTICES."""
    conn.executemany(INSERT_NOTICE, rows)
    conn.execute("DELETE FROM notices WHERE cursor <= (SELECT MAX(cursor) FROM notices) - ?", (MAX_NOTICES,))


def append_command(
    conn: sqlite3.Connection, run_id: str, at: float, kind: CommandKind, step_id: str | None, values_json: str
) -> int | None:
    """Append a command, one past the run's last seq, and its notice; its seq, or None when there is no
    such run (not an exception: that would undo the whole transaction)."""
    row = conn.execute(
        """INSERT INTO commands (run_id, seq, at, kind, step_id, signal_values)
        SELECT run_id, (SELECT COALESCE(MAX(seq), 0) + 1 FROM commands WHERE run_id = :run_id),
            :at, :kind, :step_id, :values FROM runs WHERE run_id = :run_id
        RETURNING seq""",
        {"run_id": run_id, "at": at, "kind": kind, "step_id": step_id, "values": values_json},
    ).fetchone()
    if row is None:
        return None
    append_notices(conn, [(run_id, NoticeKind.COMMAND)])
    seq: int = row[0]
    return seq


def claim_leases(
    conn: sqlite3.Connection, run_ids: list[str], held: list[int], owner: str, *, now: float, ttl_s: float
) -> list[int]:
    """Take or renew each lease, one statement each: it changes a row only when the lease is `owner`'s and
    live, or free or lapsed, and then for a lapsed one that `owner` held (its `held` epoch, else 0) only
    if nobody claimed it since. The epoch of each lease claimed, 0 for the others (see `fencing`)."""
    return [
        _claim_lease(conn, run_id, epoch, owner, now=now, ttl_s=ttl_s)
        for run_id, epoch in zip(run_ids, held, strict=True)
    ]


def _claim_lease(conn: sqlite3.Connection, run_id: str, held: int, owner: str, *, now: float, ttl_s: float) -> int:
    claimed = conn.execute(
        """INSERT INTO leases (run_id, owner, expires_at, epoch) VALUES (:run_id, :owner, :expires_at, 1)
        ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at,
            epoch = CASE WHEN :held > 0 OR (leases.owner = excluded.owner AND leases.expires_at > :now)
                THEN leases.epoch ELSE leases.epoch + 1 END
        WHERE (leases.owner = excluded.owner AND leases.expires_at > :now)
            OR (leases.expires_at <= :now AND (:held = 0 OR leases.epoch = :held))
        RETURNING epoch""",
        {"run_id": run_id, "owner": owner, "expires_at": now + ttl_s, "now": now, "held": held},
    ).fetchone()
    return 0 if claimed is None else int(claimed[0])


def apply_context(
    conn: sqlite3.Connection, run_id: str, ops: tuple[ContextOp, ...], fence: int
) -> tuple[dict[str, Any], list[str]] | int | None:
    """Merge `ops` into the run's context as the file holds it; no other process writes in between, as
    the transaction holds the write lock. The new value and the rejected operations' messages; the run's
    lease epoch when it has passed `fence` (the write is refused: see `fencing`); None when there is no
    such run. (Not exceptions: those would undo the whole transaction.)"""
    refused = refused_runs(conn, {run_id: fence})
    if refused:
        return refused[run_id]
    row = conn.execute("SELECT value FROM context WHERE run_id = ?", (run_id,)).fetchone()
    if row is None and not run_exists(conn, run_id):
        return None
    text, value, rejected = merge_context(EMPTY_OBJECT if row is None else row[0], ops, run_id=run_id)
    conn.execute(UPSERT_CONTEXT, (run_id, text))
    return value, rejected


def release_lease(conn: sqlite3.Connection, run_id: str, owner: str, *, notify: bool) -> None:
    """Give the lease up if `owner` holds it (lapsed or not), keeping its epoch; with `notify`, append a
    RELEASED notice then."""
    released = conn.execute(
        "UPDATE leases SET owner = '', expires_at = 0 WHERE run_id = ? AND owner = ?", (run_id, owner)
    ).rowcount
    if released and notify:
        append_notices(conn, [(run_id, NoticeKind.RELEASED)])


def refused_runs(conn: sqlite3.Connection, fences: dict[str, int]) -> dict[str, int]:
    """The runs among `fences` (run id -> the epoch its writes carry) whose lease epoch has passed it, with
    that epoch: their writes are refused. One statement, each run an index seek."""
    if len(fences) == 1:  # the common case (one run per commit), without a JSON document to parse
        ((run_id, fence),) = fences.items()
        row = conn.execute("SELECT epoch FROM leases WHERE run_id = ?", (run_id,)).fetchone()
        return {run_id: row[0]} if row is not None and row[0] > fence else {}
    rows = conn.execute(
        "SELECT key, value, (SELECT epoch FROM leases WHERE run_id = key) FROM json_each(?)",
        (orjson.dumps(fences).decode(),),
    )
    return {run_id: epoch for run_id, fence, epoch in rows if epoch is not None and epoch > fence}


# --- reads, on the reader thread --------------------------------------------------------------------


def run_exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None


def require_run(conn: sqlite3.Connection, run_id: str) -> None:
    """RunNotFound when there is no such run."""
    if not run_exists(conn, run_id):
        raise RunNotFound(run_id)


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
    if not steps:
        require_run(conn, run_id)
    return steps


def read_context(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT value FROM context WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        require_run(conn, run_id)
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
    if not events:
        require_run(conn, run_id)
    return events


def read_run_state(conn: sqlite3.Connection, run_id: str) -> tuple[dict[str, int], str]:
    """What the writing side caches per run: each step's position and the context text."""
    conn.execute("BEGIN")  # one snapshot for the three reads
    try:
        require_run(conn, run_id)
        positions = dict(conn.execute("SELECT step_id, position FROM steps WHERE run_id = ?", (run_id,)).fetchall())
        row = conn.execute("SELECT value FROM context WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        conn.execute("COMMIT")
    return positions, EMPTY_OBJECT if row is None else row[0]


def read_commands(conn: sqlite3.Connection, run_id: str, after_seq: int) -> list[Command]:
    rows = conn.execute(
        "SELECT seq, at, kind, step_id, signal_values FROM commands WHERE run_id = ? AND seq > ? ORDER BY seq",
        (run_id, after_seq),
    )
    commands = [
        Command(seq, run_id, at, CommandKind(kind), step_id, decode_json(values))
        for seq, at, kind, step_id, values in rows
    ]
    if not commands:
        require_run(conn, run_id)
    return commands


def read_notices(conn: sqlite3.Connection, after: int) -> list[Notice]:
    rows = conn.execute("SELECT cursor, run_id, kind FROM notices WHERE cursor > ? ORDER BY cursor", (after,))
    return [Notice(cursor, run_id, NoticeKind(kind)) for cursor, run_id, kind in rows]


def read_notice_cursor(conn: sqlite3.Connection) -> int:
    cursor: int = conn.execute("SELECT COALESCE(MAX(cursor), 0) FROM notices").fetchone()[0]
    return cursor


def read_marks(conn: sqlite3.Connection, run_ids: list[str], notices: bool) -> tuple[dict[str, int], int]:
    """Each run's last event seq (runs without events left out), and the last notice cursor if `notices`
    (else 0): what the commit watcher compares with what its waiters have seen. One statement for all the
    runs, each an index seek."""
    last_seqs: dict[str, int] = {}
    if run_ids:
        rows = conn.execute(
            "SELECT value, (SELECT MAX(seq) FROM events WHERE run_id = value) FROM json_each(?)",
            (orjson.dumps(run_ids).decode(),),
        )
        last_seqs = {run_id: seq for run_id, seq in rows if seq is not None}
    return last_seqs, read_notice_cursor(conn) if notices else 0


def read_lease(conn: sqlite3.Connection, run_id: str, now: float) -> Lease | None:
    """The lease unless it lapsed before `now`."""
    sql = "SELECT owner, expires_at, epoch FROM leases WHERE run_id = ? AND expires_at > ?"
    row = conn.execute(sql, (run_id, now)).fetchone()
    return None if row is None else Lease(*row)


def read_data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection, this process's writer included, commits to the file."""
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return version


def _step_from_row(run_id: str, row: tuple[Any, ...]) -> StepRecord:
    step_id, status, attempt, started_at, finished_at, outputs, error, logs, worker_id, elapsed_ms = row
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
        elapsed_ms=elapsed_ms,
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
