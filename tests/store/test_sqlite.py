"""What only the SQLite store promises: durability, other readers, group commits, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from dagrun.context import ContextOp, ContextOpKind
from dagrun.errors import StoreError
from dagrun.executor import ErrorKind, StepError
from dagrun.states import RunStatus, StepStatus
from dagrun.store import SqliteStore, StepRecord
from dagrun.store import sqlite_schema as schema
from tests.store.conftest import StoreFactory, create

INCR = ContextOpKind.INCR


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
    value, _ = await second.apply_context("r1", (ContextOp(INCR, "n", 1),))
    assert value == {"n": 6}
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


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dagrun.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer dagrun") as caught:
        SqliteStore.open(path)
    assert str(path) in str(caught.value)


async def test_writes_return_without_suspending(sqlite_store: StoreFactory) -> None:
    s = sqlite_store()
    await create(s, "r1", ["a"])
    write = s.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
    with pytest.raises(StopIteration):  # the coroutine finished at its first step: it never awaited I/O
        write.send(None)


async def test_commits_wait_for_the_interval_unless_flushed(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path, commit_interval_s=60.0) as s:
        await create(s, "r1", ["a"])
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
    real_connect = schema.connect

    def traced_connect(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
        conn = real_connect(path, busy_timeout_s=busy_timeout_s)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(schema, "connect", traced_connect)
    calls = 2000
    async with SqliteStore.open(tmp_path) as s:
        await create(s, "r1", [f"s{i}" for i in range(calls // 2)])
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
    await create(s, "r1", [f"s{i}" for i in range(50)])
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


@pytest.mark.parametrize("make_path", [_path_under_a_file, _file_in_place_of_the_directory, _not_a_database])
def test_an_unusable_path_raises_store_error_naming_it(tmp_path: Path, make_path: object) -> None:
    path: Path = make_path(tmp_path)  # type: ignore[operator]
    with pytest.raises(StoreError) as caught:
        SqliteStore.open(path)
    message = str(caught.value)
    assert str(path.parent) in message
    assert "\n" not in message


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
    real_connect = schema.connect

    def connect(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
        conn = real_connect(path, busy_timeout_s=busy_timeout_s)
        conn.execute("PRAGMA max_page_count = 64")
        return conn

    monkeypatch.setattr(schema, "connect", connect)


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


async def test_closing_reports_a_writer_failure_nobody_saw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_disk(monkeypatch)
    store = SqliteStore.open(tmp_path)
    await create(store, "r1", ["a"])
    await store.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, logs="x" * 1_000_000))
    with pytest.raises(StoreError, match="full"):
        await store.aclose()
    with pytest.raises(RuntimeError, match="SqliteStore is closed"):
        await store.flush()


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
        s.flush(),
    ]
    results = await asyncio.wait_for(asyncio.gather(*calls, s.aclose(), return_exceptions=True), timeout=10)
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, RuntimeError) and str(result) == "SqliteStore is closed", repr(result)
