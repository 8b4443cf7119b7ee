"""The SQLite store's reads of runs, steps, attempts' logs, contexts and event logs, and the rows they decode.

Each read runs on the store's reader thread (`reader`) and sees committed data only; the store flushes its
queued writes before calling any of these, so each sees every write made before it. Invariant: a read that
finds nothing for a run that does not exist raises RunNotFound, whatever it was asked for. The commit
watcher's reads (the data version, the channels' marks) are here too.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

import orjson

from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import RunNotFound
from dagrun.store.base import AttemptLog, Event, RunRecord, StepRecord
from dagrun.store.codec import EMPTY_OBJECT, context_ops_of, decode_error, decode_json
from dagrun.store.sqlite.control import read_notice_cursor
from dagrun.store.sqlite.schema import LAST_EVENT_SEQ, require_run

_RUN_COLUMNS = "run_id, flow_name, status, flow, inputs, created_at, started_at, finished_at, error, rerun_of, parent"
_STEP_COLUMNS = (
    "step_id, status, attempt, started_at, finished_at, outputs, error, logs, worker_id, elapsed_ms, queued_at"
)


def read_run(conn: sqlite3.Connection, run_id: str) -> RunRecord:
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(run_id)
    return _run_from_row(row)


def read_runs(
    conn: sqlite3.Connection, status: RunStatus | None, flow_name: str | None, limit: int, offset: int
) -> list[RunRecord]:
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
    sql = f"SELECT {_RUN_COLUMNS} FROM runs {clause} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?"
    return [_run_from_row(row) for row in conn.execute(sql, (*params, max(limit, 0), max(offset, 0)))]


def read_run_ids(conn: sqlite3.Connection, prefix: str, limit: int) -> list[str]:
    """The ids starting with `prefix`, in id order: a range of the primary key's index (LIKE would scan every
    run, for it ignores case)."""
    upper = _text_after(prefix)
    below = "" if upper is None else " AND run_id < ?"
    bounds = (prefix,) if upper is None else (prefix, upper)
    sql = f"SELECT run_id FROM runs WHERE run_id >= ?{below} ORDER BY run_id LIMIT ?"
    return [run_id for (run_id,) in conn.execute(sql, (*bounds, max(limit, 0)))]


def _text_after(prefix: str) -> str | None:
    """The least text above every text that starts with `prefix` (SQLite compares UTF-8 bytes, which order
    as the code points do); None when there is none: `prefix` is empty or only U+10FFFF."""
    stem = prefix.rstrip(chr(sys.maxunicode))
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no text: skip them
        following = 0xE000
    return stem[:-1] + chr(following)


def read_steps(conn: sqlite3.Connection, run_id: str) -> list[StepRecord]:
    rows = conn.execute(f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
    steps = [_step_from_row(run_id, row) for row in rows]
    if not steps:
        require_run(conn, run_id)
    return steps


def count_steps(conn: sqlite3.Connection, run_id: str) -> dict[StepStatus, int]:
    """One pass over the run's rows of the steps index, decoding nothing but their status."""
    rows = conn.execute("SELECT status, COUNT(*) FROM steps WHERE run_id = ? GROUP BY status", (run_id,))
    counts = {StepStatus(status): count for status, count in rows}
    if not counts:
        require_run(conn, run_id)
    return counts


def read_logs(conn: sqlite3.Connection, run_id: str, step_id: str | None, attempt: int | None) -> list[AttemptLog]:
    where = "run_id = ?"  # the primary key's prefix; the run's rows are then sorted
    params: list[Any] = [run_id]
    if step_id is not None:
        where += " AND step_id = ?"
        params.append(step_id)
    if attempt is not None:
        where += " AND attempt = ?"
        params.append(attempt)
    rows = conn.execute(
        f"SELECT step_id, attempt, worker_id, at, text, context_ops, error FROM attempt_logs WHERE {where}"
        " ORDER BY at, step_id, attempt",
        params,
    )
    logs = [
        AttemptLog(step_id, attempt, worker_id, at, text, context_ops_of(orjson.loads(ops)), decode_error(error))
        for step_id, attempt, worker_id, at, text, ops, error in rows
    ]
    if not logs:
        require_run(conn, run_id)
    return logs


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


def read_last_event_seq(conn: sqlite3.Connection, run_id: str) -> int:
    seq: int = conn.execute(LAST_EVENT_SEQ, (run_id,)).fetchone()[0]
    if not seq:
        require_run(conn, run_id)
    return seq


def read_run_state(conn: sqlite3.Connection, run_id: str) -> tuple[dict[str, int], str]:
    """What the writing side caches per run (`cache`): each step's position and the context text."""
    conn.execute("BEGIN")  # one snapshot for the three reads
    try:
        require_run(conn, run_id)
        positions = dict(conn.execute("SELECT step_id, position FROM steps WHERE run_id = ?", (run_id,)).fetchall())
        row = conn.execute("SELECT value FROM context WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        conn.execute("COMMIT")
    return positions, EMPTY_OBJECT if row is None else row[0]


# --- what the commit watcher reads (`wait`) ---------------------------------------------------------


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


def read_data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection, this process's writer included, commits to the file."""
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return version


# --- rows to records --------------------------------------------------------------------------------


def _step_from_row(run_id: str, row: tuple[Any, ...]) -> StepRecord:
    step_id, status, attempt, started_at, finished_at, outputs, error, logs, worker_id, elapsed_ms, queued_at = row
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
        queued_at=queued_at,
    )


def _run_from_row(row: tuple[Any, ...]) -> RunRecord:
    run_id, flow_name, status, flow, inputs, created_at, started_at, finished_at, error, rerun_of, parent = row
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
        rerun_of=rerun_of,
        parent=parent,
    )
