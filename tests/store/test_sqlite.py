"""What only the SQLite store promises: durability, other readers, group commits, clear errors."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.executor import ErrorKind, StepError
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import StoreError, StoreNotFound
from dagrun.store import SqliteStore, StepRecord, Store, open_store
from dagrun.store.base import CommandKind, NoticeKind
from dagrun.store.sqlite import control, query, schema
from dagrun.store.sqlite import file as store_file
from tests.store.conftest import StoreFactory, create, make_run

INCR = ContextOpKind.INCR


async def create_driven(s: Store, run_ids: Sequence[str], steps: Sequence[str]) -> None:
    """Create runs as an orchestrator does, under their leases: this store drives them, so it caches
    them and queues its writes to them without waiting for I/O."""
    assert all(await s.claim_leases(run_ids, "orch-test", ttl_s=600))
    for run_id in run_ids:
        await create(s, run_id, steps)


async def test_data_survives_close_and_reopen(sqlite_store: StoreFactory) -> None:
    first = sqlite_store()
    await create(first, "r1", ["a", "b"])
    await first.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    error = StepError(ErrorKind.FAIL, "Fail", "no rows", line=2)
    await first.record_step(StepRecord("r1", "b", StepStatus.FAILED, attempt=1, error=error, logs="x"))
    await first.apply_context("r1", (ContextOp(INCR, "n", 5),))
    await first.aclose()

    second = sqlite_store()
    run = await second.get_run("r1")
    assert (run.status, run.started_at, run.inputs) == (RunStatus.RUNNING, 1.0, {"region": "eu"})
    steps = await second.get_steps("r1")
    assert [(s.step_id, s.status, s.error) for s in steps] == [("a", StepStatus.PENDING, None), ("b", "failed", error)]
    assert await second.get_context("r1") == {"n": 5}
    assert [e.seq for e in await second.get_events("r1")] == [1, 2]

    # A resumed run carries on where the file left it: seqs, step order and context.
    await second.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
    await second.record_step(StepRecord("r1", "new", StepStatus.RUNNING, attempt=1))
    assert (await second.apply_context("r1", (ContextOp(INCR, "n", 1),))).context == {"n": 6}
    assert [e.seq for e in await second.get_events("r1")] == [1, 2, 3, 4]
    assert [s.step_id for s in await second.get_steps("r1")] == ["a", "b", "new"]
    with pytest.raises(StoreError, match="already exists"):
        await create(second, "r1")


async def test_file_is_in_wal_mode_with_a_schema_version(sqlite_store: StoreFactory) -> None:
    s = sqlite_store()
    await create(s, "r1")
    await s.flush()
    with sqlite3.connect(sqlite_store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        # JSON columns are text, readable by other tools.
        assert conn.execute("SELECT json_extract(inputs, '$.region') FROM runs").fetchone()[0] == "eu"


def test_run_ids_by_prefix_are_a_range_of_the_primary_key_not_a_scan(tmp_path: Path) -> None:
    path = tmp_path / "dagrun.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        schema.prepare(conn, path)
        plans: list[str] = []
        conn.set_trace_callback(plans.append)
        query.read_run_ids(conn, "20261123-15", 10)
        conn.set_trace_callback(None)
        (sql,) = plans
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "USING COVERING INDEX sqlite_autoindex_runs_1 (run_id>? AND run_id<?)" in plan, plan


# The layout of schema version 1, verbatim: files written by dagrun before commands, notices and leases.
_SCHEMA_V1 = (
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
    "PRAGMA user_version = 1",
)


async def test_a_file_from_schema_version_1_is_migrated_and_its_runs_carry_on(tmp_path: Path) -> None:
    path = tmp_path / "dagrun.db"
    with sqlite3.connect(path) as conn:
        for statement in _SCHEMA_V1:
            conn.execute(statement)
        conn.execute("INSERT INTO runs VALUES ('r1', 'etl', 'running', '{}', '{}', 1.0, 1.0, NULL, NULL)")
        conn.execute("INSERT INTO steps VALUES ('r1', 'a', 0, 'succeeded', 1, 1.0, 2.0, '{\"v\": 1}', NULL, '', 'w1')")
        events = [(1, "running"), (2, "succeeded")]  # seqs numbered by the process that wrote them
        conn.executemany("INSERT INTO events VALUES ('r1', ?, 1.0, 'step', ?, 'a', 1, '')", events)

    async with SqliteStore.open(path) as s:
        step = (await s.get_steps("r1"))[0]
        assert (step.status, step.outputs, step.worker_id, step.elapsed_ms) == ("succeeded", {"v": 1}, "w1", 0.0)
        await s.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, attempt=2, elapsed_ms=5.0))
        assert [e.seq for e in await s.get_events("r1")] == [1, 2, 3]  # the old seqs carry on
        assert (await s.get_steps("r1"))[0].elapsed_ms == 5.0
        assert (await s.send_command("r1", CommandKind.CANCEL, at=2.0)).seq == 1
        assert [n.kind for n in await s.wait_notices(after=0, timeout_s=0)] == [NoticeKind.COMMAND]
        assert await s.claim_lease("r1", "orch-a", ttl_s=30)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    async with SqliteStore.open(path) as s:  # the migrated file reopens with what was written to it
        assert [c.kind for c in await s.get_commands("r1")] == [CommandKind.CANCEL]
        lease = await s.get_lease("r1")
        assert lease is not None and lease.owner == "orch-a"


async def test_the_notice_log_keeps_only_the_newest(
    sqlite_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "MAX_NOTICES", 3)
    s = sqlite_store()
    for i in range(4):
        await create(s, f"r{i}")
    await s.flush()
    await create(s, "r4")
    notices = await s.wait_notices(after=0, timeout_s=0)
    assert [n.run_id for n in notices] == ["r2", "r3", "r4"]
    assert [n.cursor for n in notices] == [3, 4, 5] and await s.notice_cursor() == 5


async def test_a_driver_rereads_a_run_that_another_process_drove_meanwhile(sqlite_store: StoreFactory) -> None:
    a, b = sqlite_store(), sqlite_store()
    await create(a, "r1", ["s"])
    assert await a.claim_lease("r1", "orch-a", ttl_s=0.2)
    await a.apply_context("r1", (ContextOp(INCR, "n", 1),))
    await asyncio.sleep(0.3)  # a's lease lapses and b takes the run over
    assert await b.claim_lease("r1", "orch-b", ttl_s=30)
    await b.apply_context("r1", (ContextOp(INCR, "n", 10),))
    await b.release_lease("r1", "orch-b")
    assert not await a.claim_lease("r1", "orch-a", ttl_s=30)  # its lapsed lease was claimed since: not renewed
    await a.release_lease("r1", "orch-a")  # as its driver does when it stops

    assert await a.claim_lease("r1", "orch-a", ttl_s=30)
    assert (await a.apply_context("r1", (ContextOp(INCR, "n", 100),)))[0] == {"n": 111}
    await a.release_lease("r1", "orch-a")
    assert await b.claim_lease("r1", "orch-b", ttl_s=30)
    assert await b.get_context("r1") == {"n": 111}


async def test_a_process_that_does_not_drive_a_run_reads_what_its_driver_committed(
    sqlite_store: StoreFactory,
) -> None:
    api, driver = sqlite_store(), sqlite_store()  # two processes on one file
    await create(api, "r1", ["a"])  # submitted, as the API does, for an orchestrator elsewhere to drive
    await api.flush()
    assert await driver.claim_lease("r1", "orch-a", ttl_s=0.5)
    await driver.apply_context("r1", (ContextOp(INCR, "n", 1),))
    await driver.flush()
    assert await api.get_context("r1") == {"n": 1}

    await asyncio.sleep(0.6)  # the driver's lease lapses; another one takes the run over
    assert await api.claim_lease("r1", "orch-b", ttl_s=30)
    await api.apply_context("r1", (ContextOp(INCR, "n", 10),))
    await api.flush()
    assert await driver.get_context("r1") == {"n": 11}  # not what it cached while it drove the run


async def test_writes_of_a_later_lease_holder_build_on_what_the_file_holds(sqlite_store: StoreFactory) -> None:
    control, driver = sqlite_store(), sqlite_store()
    await create(control, "r1", ["a"])
    await control.flush()
    assert await driver.claim_lease("r1", "orch-a", ttl_s=30)
    await driver.apply_context("r1", (ContextOp(INCR, "n", 1),))
    await driver.record_step(StepRecord("r1", "late", StepStatus.SKIPPED))  # not created with the run: goes last
    await driver.release_lease("r1", "orch-a")
    assert await control.claim_lease("r1", "control", ttl_s=30)  # as a cancel of an undriven run does

    assert (await control.apply_context("r1", (ContextOp(INCR, "n", 10),))).context == {"n": 11}
    await control.record_step(StepRecord("r1", "later", StepStatus.SKIPPED))
    await control.flush()
    with sqlite3.connect(control.path) as conn:
        positions = conn.execute("SELECT step_id, position FROM steps ORDER BY position").fetchall()
    assert positions == [("a", 0), ("late", 1), ("later", 2)]
    assert await driver.get_context("r1") == {"n": 11}


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dagrun.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer dagrun") as caught:
        SqliteStore.open(path)
    assert str(path) in str(caught.value)


async def test_writes_of_the_driver_return_without_suspending(sqlite_store: StoreFactory) -> None:
    s = sqlite_store()
    await create_driven(s, ["r1"], ["a"])
    write = s.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
    with pytest.raises(StopIteration):  # the coroutine finished at its first step: it never awaited I/O
        write.send(None)


async def test_commits_wait_for_the_interval_unless_flushed(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path, commit_interval_s=60.0) as s:
        await create_driven(s, ["r1"], ["a"])
        await s.flush()
        commits = s.commits
        for attempt in range(1, 101):
            await s.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=attempt))
        await asyncio.sleep(0.05)
        with sqlite3.connect(s.path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        await s.flush()
        assert s.commits == commits + 1
        with sqlite3.connect(s.path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 100


async def test_writes_are_committed_in_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[str] = []  # every statement SQLite executes, as its trace callback reports them
    real_connect = store_file.connect

    def traced_connect(path: Path, *, busy_timeout_s: float, **options: str) -> sqlite3.Connection:
        conn = real_connect(path, busy_timeout_s=busy_timeout_s, **options)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(store_file, "connect", traced_connect)
    calls = 2000
    async with SqliteStore.open(tmp_path) as s:
        await create_driven(s, ["r1"], [f"s{i}" for i in range(calls // 2)])
        await s.flush()
        statements.clear()
        for i in range(calls // 2):
            await s.record_step(StepRecord("r1", f"s{i}", StepStatus.RUNNING, attempt=1))
            await s.record_step(StepRecord("r1", f"s{i}", StepStatus.SUCCEEDED, attempt=1, outputs={"v": i}))
        await s.flush()

    begins = [i for i, sql in enumerate(statements) if sql == "BEGIN IMMEDIATE"]
    commits = [i for i, sql in enumerate(statements) if sql == "COMMIT"]
    writes = [i for i, sql in enumerate(statements) if sql.startswith(("INSERT", "UPDATE"))]
    assert len(begins) == len(commits)
    assert 1 <= len(commits) <= calls // 100, f"{len(commits)} commits for {calls} calls"
    transactions = list(zip(begins, commits, strict=True))
    assert writes and all(any(begin < i < commit for begin, commit in transactions) for i in writes)
    with sqlite3.connect(tmp_path / "dagrun.db") as conn:  # and every call's rows are there
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == calls
        assert conn.execute("SELECT COUNT(*) FROM steps WHERE status = 'succeeded'").fetchone()[0] == calls // 2


_READER = """
import asyncio, json, sys, time
from dagrun.store import SqliteStore

async def main():
    seen, last_seq, gap_free = [], 0, True
    async with SqliteStore.open(sys.argv[1]) as store:
        deadline = time.monotonic() + 20
        while len(set(seen)) < 4 and time.monotonic() < deadline:
            events = await store.get_events("r1", after_seq=last_seq)
            gap_free &= [e.seq for e in events] == list(range(last_seq + 1, last_seq + 1 + len(events)))
            last_seq += len(events)
            seen.append(last_seq)
            await store.get_run("r1")
            await asyncio.sleep(0.01)  # watching another process's writes: nothing to wait on but time
    print(json.dumps({"seen": seen, "gap_free": gap_free}))

asyncio.run(main())
"""


async def test_another_process_reads_while_a_run_writes(sqlite_store: StoreFactory) -> None:
    s = sqlite_store()
    await create_driven(s, ["r1"], [f"s{i}" for i in range(50)])
    await s.flush()
    stop = asyncio.Event()

    async def write() -> int:
        calls = 0
        while not stop.is_set():
            await s.record_step(StepRecord("r1", f"s{calls % 50}", StepStatus.RUNNING, attempt=calls))
            calls += 1
            if calls % 20 == 0:
                await s.flush()  # also lets the loop serve the subprocess's pipes
        return calls

    writer = asyncio.create_task(write())
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _READER,
        str(sqlite_store.path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await reader.communicate()
    stop.set()
    written = await writer

    assert reader.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["gap_free"]
    assert len(set(report["seen"])) >= 4, report  # it saw the run grow while it was being written
    assert report["seen"] == sorted(report["seen"])
    assert 0 < report["seen"][-1] <= written


def test_a_directory_path_holds_dagrun_db(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path / "state" / ".dagrun")
    try:
        assert store.path == tmp_path / "state" / ".dagrun" / "dagrun.db"
        assert store.path.is_file()
    finally:
        asyncio.run(store.aclose())


async def test_reading_a_path_without_a_store_creates_nothing_and_says_so(tmp_path: Path) -> None:
    for path in (tmp_path / "nothing" / "here", tmp_path / "runs.db"):
        with pytest.raises(StoreNotFound) as caught:
            SqliteStore.open(path, read_only=True)
        assert str(caught.value).startswith(f"{path if path.suffix else path / 'dagrun.db'}: there is no store here")
    with pytest.raises(StoreNotFound):
        open_store(str(tmp_path / "nothing"), read_only=True)
    assert os.listdir(tmp_path) == []


async def test_a_store_opened_read_only_reads_what_others_write_and_leaves_no_file(sqlite_store: StoreFactory) -> None:
    writer = sqlite_store()
    await create(writer, "r1", ["a"])
    await writer.aclose()  # the last connection: SQLite removes the WAL's files
    assert os.listdir(sqlite_store.path.parent) == ["dagrun.db"]

    async with SqliteStore.open(sqlite_store.path, read_only=True) as reader:
        assert [run.run_id for run in await reader.list_runs()] == ["r1"]
        waiting = asyncio.create_task(reader.wait_events("r1", after_seq=0, timeout_s=10))
        async with SqliteStore.open(sqlite_store.path) as other:  # a writer starts while it reads
            await other.apply_context("r1", (ContextOp(INCR, "n", 1),))
            await other.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
            await other.flush()
            assert [event.step_id for event in await asyncio.wait_for(waiting, 5)] == ["a"]
            assert await reader.get_context("r1") == {"n": 1}
        writes = [
            reader.create_run(make_run("r2"), ["a"]),
            reader.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED)),
            reader.apply_context("r1", (ContextOp(INCR, "n", 1),)),
            reader.set_run_status("r1", RunStatus.FAILED, at=1.0),
            reader.send_command("r1", CommandKind.CANCEL, at=1.0),
            reader.claim_lease("r1", "orch-a", ttl_s=30),
        ]
        for write in writes:
            with pytest.raises(StoreError, match="opened read-only, so it cannot be written"):
                await write
        await reader.flush()  # nothing to flush
    assert os.listdir(sqlite_store.path.parent) == ["dagrun.db"]


async def test_reading_a_store_of_an_older_dagrun_upgrades_it_first(tmp_path: Path) -> None:
    path = tmp_path / "dagrun.db"
    with sqlite3.connect(path) as conn:
        for statement in _SCHEMA_V1:
            conn.execute(statement)
        conn.execute("INSERT INTO runs VALUES ('r1', 'etl', 'running', '{}', '{}', 1.0, 1.0, NULL, NULL)")
        conn.execute("INSERT INTO steps VALUES ('r1', 'a', 0, 'succeeded', 1, 1.0, 2.0, '{}', NULL, '', 'w1')")
    async with SqliteStore.open(path, read_only=True) as reader:
        assert [step.elapsed_ms for step in await reader.get_steps("r1")] == [0.0]
        assert await reader.get_commands("r1") == []


def test_reading_a_sqlite_database_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="without dagrun's tables, so not a dagrun store") as caught:
        SqliteStore.open(path, read_only=True)
    assert str(path) in str(caught.value)


def test_from_url_takes_an_absolute_path(tmp_path: Path) -> None:
    store = SqliteStore.from_url(f"sqlite://{tmp_path}/runs.db")
    try:
        assert store.path == tmp_path / "runs.db"
    finally:
        asyncio.run(store.aclose())
    with pytest.raises(StoreError, match="not a SQLite store URL"):
        SqliteStore.from_url("memory://")


def _path_under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "plain").write_text("a file, not a directory")
    return tmp_path / "plain" / "sub" / "dagrun.db"


def _file_in_place_of_the_directory(tmp_path: Path) -> Path:
    (tmp_path / "plain").write_text("a file, not a directory")
    return tmp_path / "plain" / "dagrun.db"


def _not_a_database(tmp_path: Path) -> Path:
    (tmp_path / "notes.db").write_bytes(b"these are not the pages you are looking for" * 100)
    return tmp_path / "notes.db"


def _empty_file(tmp_path: Path) -> Path:
    (tmp_path / "dagrun.db").touch()
    return tmp_path / "dagrun.db"


@pytest.mark.parametrize(
    "make_path", [_path_under_a_file, _file_in_place_of_the_directory, _not_a_database, _empty_file]
)
def test_an_unusable_path_raises_store_error_naming_it(tmp_path: Path, make_path: object) -> None:
    path: Path = make_path(tmp_path)  # type: ignore[operator]
    with pytest.raises(StoreError) as caught:
        SqliteStore.open(path)
    message = str(caught.value)
    assert str(path.parent) in message
    assert "\n" not in message


def test_an_empty_file_is_refused_as_a_damaged_store_and_left_alone(tmp_path: Path) -> None:
    path = _empty_file(tmp_path)
    with pytest.raises(StoreError) as caught:
        SqliteStore.open(tmp_path)
    assert str(caught.value) == (
        f"{path}: the store file is empty (0 bytes), so it is a damaged store, not a new one; restore it from a"
        " backup, or remove it to start an empty store"
    )
    assert path.stat().st_size == 0 and os.listdir(tmp_path) == ["dagrun.db"]
    with pytest.raises(StoreError, match="not a SQLite database, so not a dagrun store"):
        SqliteStore.open(_not_a_database(tmp_path))


def test_stores_opened_at_once_on_a_new_path_all_open_one_new_store(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dagrun.db"
    count = 6
    barrier = threading.Barrier(count)

    def open_store(_: int) -> SqliteStore:
        barrier.wait()  # all at once: none may find a store still being made (an empty file) and refuse it
        return SqliteStore.open(path)

    with ThreadPoolExecutor(count) as pool:
        opened = [pool.submit(open_store, i) for i in range(count)]
    stores = [future.result() for future in opened if future.exception() is None]

    async def use_and_close() -> None:
        await create(stores[0], "r1")
        await stores[0].flush()
        for store in stores:
            assert (await store.get_run("r1")).run_id == "r1"
            await store.aclose()

    asyncio.run(use_and_close())
    assert [future.exception() for future in opened] == [None] * count
    assert os.listdir(path.parent) == ["dagrun.db"]  # no draft left behind


def test_a_new_store_is_made_where_files_cannot_be_hard_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hard_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    store = SqliteStore.open(tmp_path)
    asyncio.run(store.aclose())
    assert os.listdir(tmp_path) == ["dagrun.db"]


def test_a_read_only_directory_raises_store_error_naming_it(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through file modes; nobody can create anything in /proc
        locked = Path("/proc/self")
        with pytest.raises(StoreError, match=str(locked)):
            SqliteStore.open(locked / "runs" / "dagrun.db")
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreError, match=str(locked)):
            SqliteStore.open(locked / "runs" / "dagrun.db")
        with pytest.raises(StoreError, match=str(locked)):
            SqliteStore.open(locked / "dagrun.db")
    finally:
        locked.chmod(0o700)


def _tiny_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection gets a file size limit of 64 pages, so a big write fails as on a full disk."""
    real_connect = store_file.connect

    def connect(path: Path, *, busy_timeout_s: float, **options: str) -> sqlite3.Connection:
        conn = real_connect(path, busy_timeout_s=busy_timeout_s, **options)
        conn.execute("PRAGMA max_page_count = 64")
        return conn

    monkeypatch.setattr(store_file, "connect", connect)


async def test_a_writer_failure_surfaces_as_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_disk(monkeypatch)
    store = SqliteStore.open(tmp_path)
    await create(store, "r1", ["a"])
    await store.flush()
    await store.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, logs="x" * 1_000_000))  # queued: fine
    with pytest.raises(StoreError, match="full") as caught:
        await store.flush()
    assert str(store.path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    with pytest.raises(StoreError, match="full"):  # and every later call says so too
        await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING))
    with pytest.raises(StoreError, match="full"):
        await store.get_run("r1")
    await store.aclose()  # already reported: closing releases quietly
    await store.aclose()


@pytest.mark.parametrize("what", ["was deleted", "was replaced by another file"])
async def test_a_store_file_deleted_or_replaced_while_open_fails_the_next_commit(tmp_path: Path, what: str) -> None:
    store = SqliteStore.open(tmp_path)
    await create_driven(store, ["r1"], ["a"])
    await store.flush()
    backup = tmp_path / "backup.db"
    with sqlite3.connect(store.path) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    for name in ("dagrun.db", "dagrun.db-wal", "dagrun.db-shm"):
        (tmp_path / name).unlink()
    if what.startswith("was replaced"):
        backup.rename(store.path)  # restored from a backup under the running store
    await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
    message = f"{store.path}: the store file {what} while in use; what was written to it is lost, and no more writes"
    with pytest.raises(StoreError) as caught:
        await store.flush()
    assert str(caught.value) == message + " are accepted"
    with pytest.raises(StoreError, match=what):  # and every later call says so too
        await store.get_run("r1")
    await store.aclose()


async def test_closing_reports_a_writer_failure_nobody_saw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_disk(monkeypatch)
    store = SqliteStore.open(tmp_path)
    await create(store, "r1", ["a"])
    await store.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, logs="x" * 1_000_000))
    with pytest.raises(StoreError, match="full"):
        await store.aclose()
    with pytest.raises(RuntimeError, match="SqliteStore is closed"):
        await store.flush()


def _counting(calls: dict[str, int], name: str, query: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any) -> Any:
        calls[name] += 1
        return query(*args)

    return counted


async def test_waiters_share_one_watcher_that_wakes_them_all_on_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"read_data_version": 0, "read_events": 0}  # counted on the store's one reader thread
    for name in calls:
        monkeypatch.setattr(query, name, _counting(calls, name, getattr(query, name)))
    run_ids = [f"r{i}" for i in range(200)]

    async with SqliteStore.open(tmp_path, commit_interval_s=60.0) as s:  # commits only when flushed
        await create_driven(s, run_ids, ["a"])

        async def checks_per_tick(waiting: list[str]) -> float:
            """data_version checks per 20 ms while one wait_events per run in `waiting` times out."""
            checks, started = calls["read_data_version"], time.monotonic()
            found = await asyncio.gather(*(s.wait_events(run_id, after_seq=0, timeout_s=0.4) for run_id in waiting))
            assert found == [[]] * len(waiting)
            return (calls["read_data_version"] - checks) / ((time.monotonic() - started) / 0.02)

        one = await checks_per_tick(run_ids[:1])
        many = await checks_per_tick(run_ids)
        assert one < 1.5 and many < 1.5 * max(one, 1.0), (one, many)  # a poll per waiter would be ~200 per tick

        queries = calls["read_events"]
        waits = [asyncio.create_task(s.wait_events(run_id, after_seq=0, timeout_s=10)) for run_id in run_ids]
        await asyncio.sleep(0.1)
        assert not any(wait.done() for wait in waits)
        commits = s.commits
        for run_id in run_ids:
            await s.record_step(StepRecord(run_id, "a", StepStatus.RUNNING, attempt=1))
        await s.flush()
        assert s.commits == commits + 1
        woken = await asyncio.wait_for(asyncio.gather(*waits), 2)
        assert [[(e.run_id, e.seq) for e in events] for events in woken] == [[(run_id, 1)] for run_id in run_ids]
        assert calls["read_events"] - queries == 2 * len(run_ids)  # once before the commit, once after it

        checks = calls["read_data_version"]
        await asyncio.sleep(0.1)
        assert calls["read_data_version"] == checks  # nobody waits: the watcher stopped


async def test_a_commit_wakes_only_the_waiters_of_the_runs_it_wrote_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"read_events": 0, "read_marks": 0}  # counted on the store's one reader thread
    for name in calls:
        monkeypatch.setattr(query, name, _counting(calls, name, getattr(query, name)))
    run_ids = [f"r{i}" for i in range(200)]

    async with SqliteStore.open(tmp_path) as s:
        await create_driven(s, run_ids, ["a"])
        waits = {run_id: asyncio.create_task(s.wait_events(run_id, after_seq=0, timeout_s=10)) for run_id in run_ids}
        async with asyncio.timeout(5):  # a loaded machine may take a while to start 200 waiters
            while calls["read_events"] < len(run_ids):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert calls["read_events"] == len(run_ids)  # each waiter queried once, found nothing, and waits
        marks = calls["read_marks"]

        await s.record_step(StepRecord("r7", "a", StepStatus.RUNNING, attempt=1))
        await s.flush()
        events = await asyncio.wait_for(waits.pop("r7"), 2)
        await asyncio.sleep(0.1)  # a few more ticks: nothing else was committed

        assert [(event.run_id, event.seq) for event in events] == [("r7", 1)]
        assert calls["read_events"] == len(run_ids) + 1  # the woken waiter's query; waking all was 200 more
        assert calls["read_marks"] == marks + 1  # one query for every channel waited on
        assert not any(wait.done() for wait in waits.values())
        for wait in waits.values():
            wait.cancel()
        await asyncio.wait(waits.values())


async def test_calls_racing_aclose_finish_or_say_closed(sqlite_store: StoreFactory) -> None:
    s = sqlite_store()
    await create(s, "cached", ["a"])
    await create(s, "ended", ["a"])
    await s.set_run_status("ended", RunStatus.SUCCEEDED, at=1.0)  # no longer cached: its next write loads
    calls = [
        s.get_run("cached"),
        s.get_steps("cached"),
        s.get_events("cached"),
        s.list_runs(),
        s.record_step(StepRecord("ended", "a", StepStatus.SUCCEEDED)),
        s.apply_context("ended", (ContextOp(INCR, "n", 1),)),
        s.set_run_status("ended", RunStatus.FAILED, at=2.0),
        s.send_command("cached", CommandKind.CANCEL, at=2.0),
        s.claim_lease("cached", "orch-a", ttl_s=30),
        s.release_lease("cached", "orch-a", notify=True),
        s.wait_events("cached", after_seq=0, timeout_s=0.5),
        s.wait_notices(after=10, timeout_s=0.5),
        s.flush(),
    ]
    results = await asyncio.wait_for(asyncio.gather(*calls, s.aclose(), return_exceptions=True), timeout=10)
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, RuntimeError) and str(result) == "SqliteStore is closed", repr(result)
