"""The SQLite store's control plane: each run's command log, the store-wide notice log, and run leases.

The writes run on the writer thread inside its transaction (the store awaits them through `Writer.call`, so
each is answered once committed, with every write made before it); the reads run on the reader thread.
Invariant: a command is appended with its COMMAND notice, and a lease released with `notify` with its RELEASED
notice, in one transaction, so no reader sees one without the other. A write for a run that does not exist
answers None rather than raising: an exception would undo the whole transaction, other callers' rows included.
"""

from __future__ import annotations

import sqlite3

from dagrun.store.base import Command, CommandKind, Lease, Notice, NoticeKind
from dagrun.store.codec import decode_json
from dagrun.store.sqlite.schema import require_run

MAX_NOTICES = 10_000  # the notice log keeps the newest; readers rescan rather than rely on every notice

_INSERT_NOTICE = "INSERT INTO notices (run_id, kind) VALUES (?, ?)"


# --- on the writer thread, inside its transaction ---------------------------------------------------


def append_notices(conn: sqlite3.Connection, rows: list[tuple[str, NoticeKind]]) -> None:
    """Append (run_id, kind) notices and trim the log to its newest MAX_NOTICES."""
    conn.executemany(_INSERT_NOTICE, rows)
    conn.execute("DELETE FROM notices WHERE cursor <= (SELECT MAX(cursor) FROM notices) - ?", (MAX_NOTICES,))


def append_command(
    conn: sqlite3.Connection, run_id: str, at: float, kind: CommandKind, step_id: str | None, values_json: str
) -> int | None:
    """Append a command, one past the run's last seq, and its notice; its seq, or None when there is no
    such run."""
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


def release_lease(conn: sqlite3.Connection, run_id: str, owner: str, *, notify: bool) -> None:
    """Give the lease up if `owner` holds it (lapsed or not), keeping its epoch; with `notify`, append a
    RELEASED notice then."""
    released = conn.execute(
        "UPDATE leases SET owner = '', expires_at = 0 WHERE run_id = ? AND owner = ?", (run_id, owner)
    ).rowcount
    if released and notify:
        append_notices(conn, [(run_id, NoticeKind.RELEASED)])


# --- on the reader thread ---------------------------------------------------------------------------


def read_commands(conn: sqlite3.Connection, run_id: str, after_seq: int) -> list[Command]:
    """The run's commands with seq > after_seq, oldest first; RunNotFound when there is no such run."""
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


def read_lease(conn: sqlite3.Connection, run_id: str, now: float) -> Lease | None:
    """The lease unless it lapsed before `now`."""
    sql = "SELECT owner, expires_at, epoch FROM leases WHERE run_id = ? AND expires_at > ?"
    row = conn.execute(sql, (run_id, now)).fetchone()
    return None if row is None else Lease(*row)
