"""The Store contract, run against every implementation through the `store` fixture."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections import Counter
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagrun.contract.context import ContextOp, ContextOpKind, apply_ops
from dagrun.contract.executor import ErrorKind, StepError
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import RunNotFound, StoreError
from dagrun.store import StepRecord, Store
from dagrun.store.base import AttemptLog, Reuse
from dagrun.store.redis.layout import Keys
from tests.store.conftest import StoreFactory, create, make_run

SET, INCR, APPEND = ContextOpKind.SET, ContextOpKind.INCR, ContextOpKind.APPEND


async def test_created_run_reads_back_with_its_steps_pending(store: StoreFactory) -> None:
    s = store()
    run = make_run("r1", created_at=100.0)
    await s.create_run(run, ["extract", "load"])

    assert await s.get_run("r1") == run
    steps = await s.get_steps("r1")
    assert [(step.step_id, step.status, step.attempt) for step in steps] == [
        ("extract", StepStatus.PENDING, 0),
        ("load", StepStatus.PENDING, 0),
    ]
    assert await s.get_context("r1") == {}
    assert await s.get_events("r1") == []


async def test_a_rerun_is_created_with_its_reused_steps_context_and_origin_at_once(store: StoreFactory) -> None:
    s = store()
    run = dataclasses.replace(make_run("r2", created_at=100.0), rerun_of="r1")
    reused = StepRecord("r2", "extract", StepStatus.REUSED, outputs={"rows": [1, 2]})
    await s.create_run(run, ["extract", "load"], Reuse([reused], {"seen": 2}))

    await s.flush()
    for reader in (s,) if store.kind == "memory" else (s, store()):  # and a process that reads it afresh
        assert await reader.get_run("r2") == run
        assert await reader.get_steps("r2") == [reused, StepRecord("r2", "load", StepStatus.PENDING)]
        assert await reader.get_context("r2") == {"seen": 2}
    assert (await s.apply_context("r2", (ContextOp(INCR, "seen", 1),))).context == {"seen": 3}
    assert await s.get_events("r2") == []  # states a run is created with are not changes


async def test_a_child_run_is_read_back_with_its_parent_step(store: StoreFactory) -> None:
    s = store()
    run = dataclasses.replace(make_run("p1.load", created_at=100.0), parent="p1/load")
    await s.create_run(run, ["extract"])

    await s.flush()
    for reader in (s,) if store.kind == "memory" else (s, store()):  # and a process that reads it afresh
        assert (await reader.get_run("p1.load")).parent == "p1/load"
        assert [r.parent for r in await reader.list_runs()] == ["p1/load"]


async def test_list_runs_is_newest_first_with_filters_and_limit(store: StoreFactory) -> None:
    s = store()
    await create(s, "old", flow_name="etl", created_at=1.0)
    await create(s, "mid", flow_name="report", created_at=2.0)
    await create(s, "new", flow_name="etl", created_at=3.0)
    await create(s, "tie", flow_name="etl", created_at=3.0)  # same instant: the later insert is newer
    await s.set_run_status("mid", RunStatus.RUNNING, at=5.0)
    await s.set_run_status("new", RunStatus.RUNNING, at=5.0)

    assert [r.run_id for r in await s.list_runs()] == ["tie", "new", "mid", "old"]
    assert [r.run_id for r in await s.list_runs(limit=2)] == ["tie", "new"]
    assert [r.run_id for r in await s.list_runs(status=RunStatus.RUNNING)] == ["new", "mid"]
    assert [r.run_id for r in await s.list_runs(flow_name="etl")] == ["tie", "new", "old"]
    assert [r.run_id for r in await s.list_runs(status=RunStatus.RUNNING, flow_name="etl")] == ["new"]
    assert await s.list_runs(flow_name="nope") == []
    assert await s.list_runs(limit=0) == []


async def test_list_runs_pages_by_offset_with_and_without_filters(store: StoreFactory) -> None:
    s = store()
    for n in range(7):
        await create(s, f"r{n}", flow_name="etl" if n % 2 else "report", created_at=float(n))
        if n >= 3:
            await s.set_run_status(f"r{n}", RunStatus.RUNNING, at=10.0)

    assert [r.run_id for r in await s.list_runs(limit=3, offset=2)] == ["r4", "r3", "r2"]
    assert [r.run_id for r in await s.list_runs(limit=3, offset=6)] == ["r0"]
    assert await s.list_runs(offset=7) == []
    assert [r.run_id for r in await s.list_runs(flow_name="etl", limit=2, offset=1)] == ["r3", "r1"]
    both = await s.list_runs(status=RunStatus.RUNNING, flow_name="etl", limit=5, offset=1)
    assert [r.run_id for r in both] == ["r3"]


async def test_count_steps_counts_each_state_without_reading_the_records(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a", "b", "c", "d"])
    await create(s, "empty", [])
    error = StepError(ErrorKind.SCRIPT, "ValueError", 'a "quoted" message', line=1)
    await s.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, 1, 1.0, 2.0, {"out": '"x", "y"'}, logs="ok"))
    await s.record_step(StepRecord("r1", "b", StepStatus.FAILED, 1, 1.0, 2.0, error=error))
    await s.record_step(StepRecord("r1", "c", StepStatus.RUNNING, 1, 1.0))

    expected = {StepStatus.SUCCEEDED: 1, StepStatus.FAILED: 1, StepStatus.RUNNING: 1, StepStatus.PENDING: 1}
    assert await s.count_steps("r1") == expected
    assert await s.count_steps("r1") == dict(Counter(step.status for step in await s.get_steps("r1")))
    assert await s.count_steps("empty") == {}
    with pytest.raises(RunNotFound):
        await s.count_steps("nope")


async def test_find_run_ids_lists_the_ids_that_start_with_a_prefix_in_id_order(store: StoreFactory) -> None:
    s = store()
    ids = ["20261123-153012-4f9a", "20261123-153012-0b1c", "20261123-160000-aaaa", "2026112", "x-1", "é1", "ê"]
    for run_id in ids:
        await create(s, run_id, ["a"])
    await create(s, "a\U0010ffffb", ["a"])  # the greatest character: nothing sorts between it and the next one

    assert await s.find_run_ids("20261123-1530", limit=10) == ["20261123-153012-0b1c", "20261123-153012-4f9a"]
    assert await s.find_run_ids("20261123", limit=2) == ["20261123-153012-0b1c", "20261123-153012-4f9a"]
    assert await s.find_run_ids("2026112", limit=10) == sorted(ids[:4])  # a whole id comes first
    assert await s.find_run_ids("20261123-153012-4f9a", limit=10) == ["20261123-153012-4f9a"]
    assert await s.find_run_ids("é", limit=10) == ["é1"]
    assert await s.find_run_ids("a\U0010ffff", limit=10) == ["a\U0010ffffb"]
    assert await s.find_run_ids("", limit=100) == sorted([*ids, "a\U0010ffffb"])
    assert await s.find_run_ids("20261124", limit=10) == []
    assert await s.find_run_ids("x-1", limit=0) == []


async def test_creating_a_run_twice_raises_store_error(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    with pytest.raises(StoreError, match="'r1' already exists"):
        await create(s, "r1")
    await s.set_run_status("r1", RunStatus.SUCCEEDED, at=1.0)  # an ended run is still there
    with pytest.raises(StoreError, match="already exists"):
        await create(s, "r1")
    await s.flush()
    with pytest.raises(StoreError, match="already exists"):
        await create(s, "r1")


@pytest.mark.parametrize(
    "call",
    [
        "get_run",
        "get_steps",
        "get_context",
        "get_events",
        "last_event_seq",
        "get_logs",
        "set_run_status",
        "record_step",
        "apply_context",
    ],
)
async def test_every_call_on_an_unknown_run_raises_run_not_found(store: StoreFactory, call: str) -> None:
    s = store()
    await create(s, "known")
    calls: dict[str, Any] = {
        "get_run": lambda: s.get_run("ghost"),
        "get_steps": lambda: s.get_steps("ghost"),
        "get_context": lambda: s.get_context("ghost"),
        "get_events": lambda: s.get_events("ghost", after_seq=3),
        "get_logs": lambda: s.get_logs("ghost", step_id="a"),
        "last_event_seq": lambda: s.last_event_seq("ghost"),
        "set_run_status": lambda: s.set_run_status("ghost", RunStatus.RUNNING, at=1.0),
        "record_step": lambda: s.record_step(StepRecord("ghost", "a", StepStatus.RUNNING)),
        "apply_context": lambda: s.apply_context("ghost", (ContextOp(SET, "k", 1),)),
    }
    with pytest.raises(RunNotFound) as caught:
        await calls[call]()
    assert caught.value.run_id == "ghost"
    assert "'ghost'" in str(caught.value)


async def test_the_last_event_seq_is_that_of_the_newest_event_written(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    assert await s.last_event_seq("r1") == 0
    await s.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
    await s.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    assert await s.last_event_seq("r1") == 2
    if store.kind != "memory":  # and as another process reads it
        await s.flush()
        assert await store().last_event_seq("r1") == 2


async def test_step_upserts_keep_the_latest_state_in_flow_order(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a", "b", "c"])
    await s.record_step(StepRecord("r1", "c", StepStatus.RUNNING, attempt=1, started_at=10.0))
    await s.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1, started_at=11.0))
    await s.record_step(StepRecord("r1", "c", StepStatus.FAILED, attempt=1, started_at=10.0, finished_at=12.0))
    await s.record_step(StepRecord("r1", "c", StepStatus.RUNNING, attempt=2, started_at=13.0))
    await s.record_step(StepRecord("r1", "extra", StepStatus.SKIPPED))  # not created with the run: goes last

    steps = await s.get_steps("r1")
    assert [(x.step_id, x.status, x.attempt, x.started_at) for x in steps] == [
        ("a", StepStatus.RUNNING, 1, 11.0),
        ("b", StepStatus.PENDING, 0, None),
        ("c", StepStatus.RUNNING, 2, 13.0),
        ("extra", StepStatus.SKIPPED, 0, None),
    ]
    assert steps[2].finished_at is None


async def test_outputs_errors_and_logs_round_trip(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["ok", "bad"])
    ok = StepRecord(
        "r1", "ok", StepStatus.SUCCEEDED, attempt=1, started_at=1.5, finished_at=2.5,
        outputs={"rows": 3, "names": ["é", "b"], "nested": {"x": None, "pi": 3.25, "yes": True}},
        logs="line 1\nline 2 ✓\n", worker_id="w-1",
    )  # fmt: skip
    error = StepError(ErrorKind.SCRIPT, "ZeroDivisionError", "division by zero", line=3)
    bad = StepRecord("r1", "bad", StepStatus.FAILED, attempt=2, error=error, logs="boom")
    no_line = StepError(ErrorKind.TIMEOUT, "TimeoutError", "step ran past 5 s")
    await s.record_step(ok)
    await s.record_step(bad)

    assert await s.get_steps("r1") == [ok, bad]
    await s.record_step(StepRecord("r1", "bad", StepStatus.FAILED, attempt=3, error=no_line))
    assert (await s.get_steps("r1"))[1].error == no_line


async def test_every_attempt_keeps_its_logs_in_the_order_the_attempts_ended(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["load", "report", "quiet"])
    error = StepError(ErrorKind.SCRIPT, "ValueError", "bad row", line=2)
    await s.record_step(StepRecord("r1", "load", StepStatus.QUEUED, attempt=1, queued_at=1.0))
    await s.record_step(
        StepRecord("r1", "load", StepStatus.READY, 1, 1.0, 2.0, error=error, logs="try 1\n", worker_id="w-1")
    )
    await s.record_step(StepRecord("r1", "report", StepStatus.SUCCEEDED, 1, 1.5, 3.0, logs="report ✓\n"))
    await s.record_step(StepRecord("r1", "quiet", StepStatus.SUCCEEDED, 1, 1.5, 3.5))  # printed nothing
    silent_error = StepError(ErrorKind.TIMEOUT, "TimeoutError", "ran over 5 s")  # failed without a line printed
    await s.record_step(StepRecord("r1", "quiet", StepStatus.FAILED, 2, 3.6, 3.8, error=silent_error))
    await s.record_step(StepRecord("r1", "load", StepStatus.SUCCEEDED, 2, 3.0, 4.0, logs="try 2\n", worker_id="w-2"))
    # the same record written again (a retried write) keeps one entry
    await s.record_step(StepRecord("r1", "load", StepStatus.SUCCEEDED, 2, 3.0, 4.0, logs="try 2\n", worker_id="w-2"))

    first = AttemptLog("load", 1, "w-1", 2.0, "try 1\n", error=error)  # each attempt keeps its error
    second = AttemptLog("load", 2, "w-2", 4.0, "try 2\n")
    report = AttemptLog("report", 1, "", 3.0, "report ✓\n")
    quiet = AttemptLog("quiet", 2, "", 3.8, "", error=silent_error)
    assert await s.get_logs("r1") == [first, report, quiet, second]
    assert await s.get_logs("r1", step_id="load") == [first, second]
    assert await s.get_logs("r1", step_id="load", attempt=2) == [second]
    assert await s.get_logs("r1", attempt=1) == [first, report]
    assert await s.get_logs("r1", step_id="quiet") == [quiet]
    assert await s.get_logs("r1", step_id="nope") == []
    assert (await s.get_steps("r1"))[0].logs == "try 2\n"  # the step itself holds its latest attempt's
    if store.kind != "memory":  # and another client of the store reads them too
        assert await store().get_logs("r1", step_id="load") == [first, second]


async def test_each_attempt_keeps_its_context_writes_with_its_logs(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["extract", "count"])
    rows: list[int] = [1, 2]
    extracted = (ContextOp(SET, "extracted", 30), ContextOp(APPEND, "seen", {"rows": rows}))
    await s.record_step(
        StepRecord("r1", "extract", StepStatus.SUCCEEDED, 1, 1.0, 2.0, logs="30 rows\n", context_ops=extracted)
    )
    counted = (ContextOp(INCR, "transformed", 10),)  # an attempt that printed nothing but wrote context is kept
    await s.record_step(
        StepRecord("r1", "count", StepStatus.SUCCEEDED, 1, 1.5, 3.0, worker_id="w-1", context_ops=counted)
    )
    rows.append(3)  # written values are copied on the way in

    kept = (ContextOp(SET, "extracted", 30), ContextOp(APPEND, "seen", {"rows": [1, 2]}))
    extract = AttemptLog("extract", 1, "", 2.0, "30 rows\n", kept)
    count = AttemptLog("count", 1, "w-1", 3.0, "", counted)
    await s.flush()
    for reader in (s,) if store.kind == "memory" else (s, store()):  # and a process that reads it afresh
        assert await reader.get_logs("r1") == [extract, count]
        assert await reader.get_logs("r1", step_id="count") == [count]
        assert [step.context_ops for step in await reader.get_steps("r1")] == [(), ()]  # kept per attempt only
    (read,) = await s.get_logs("r1", step_id="extract")
    assert [type(op.kind) for op in read.context_ops] == [ContextOpKind, ContextOpKind]
    read.context_ops[1].value["rows"].append(4)  # and on the way out
    assert await s.get_logs("r1", step_id="extract") == [extract]


async def _as_written_before_context_writes(clients: StoreFactory, run_id: str) -> None:
    """Leave the run's kept attempts as a dagrun that kept no context writes or errors wrote them."""
    if clients.kind == "sqlite":  # the file as schema version 7 laid it out: migration 8 adds the columns
        with sqlite3.connect(clients.path) as conn:
            conn.execute("ALTER TABLE attempt_logs DROP COLUMN context_ops")
            conn.execute("ALTER TABLE attempt_logs DROP COLUMN error")
            conn.execute("PRAGMA user_version = 7")
        return
    url, _, prefix = clients.redis_url.partition("?prefix=")
    logs = Keys(prefix).logs(run_id)
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        for field, value in (await client.hgetall(logs)).items():  # each value was [worker_id, at, text]
            await client.hset(logs, field, json.dumps(json.loads(value)[:3]))
    finally:
        await client.aclose()


async def test_attempts_kept_before_context_writes_and_errors_were_read_back_with_none(clients: StoreFactory) -> None:
    old = clients()
    await create(old, "r1", ["a"])
    error = StepError(ErrorKind.SCRIPT, "ValueError", "bad", line=1)
    await old.record_step(
        StepRecord("r1", "a", StepStatus.READY, 1, 1.0, 2.0, error=error, logs="try 1\n", worker_id="w-1")
    )
    await old.aclose()
    await _as_written_before_context_writes(clients, "r1")

    s = clients()  # opening the SQLite file migrates it
    assert await s.get_logs("r1") == [AttemptLog("a", 1, "w-1", 2.0, "try 1\n")]
    written = (ContextOp(INCR, "n", 1),)
    await s.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, 2, 3.0, 4.0, context_ops=written))
    assert [log.context_ops for log in await s.get_logs("r1")] == [(), written]


async def test_events_have_gap_free_seqs_in_write_order(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    await create(s, "r2", ["a"])
    await s.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    for attempt, status in enumerate([StepStatus.READY, StepStatus.RUNNING, StepStatus.SUCCEEDED]):
        await s.record_step(StepRecord("r1", "a", status, attempt=attempt), message=f"m{attempt}")
        await s.record_step(StepRecord("r2", "a", status))
    await s.set_run_status("r1", RunStatus.SUCCEEDED, at=2.0)

    events = await s.get_events("r1")
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [(e.kind, e.status, e.step_id) for e in events] == [
        ("run", "running", None),
        ("step", "ready", "a"),
        ("step", "running", "a"),
        ("step", "succeeded", "a"),
        ("run", "succeeded", None),
    ]
    assert [e.message for e in events[1:4]] == ["m0", "m1", "m2"]
    assert [e.attempt for e in events[1:4]] == [0, 1, 2]
    assert all(e.run_id == "r1" for e in events)
    assert [e.seq for e in await s.get_events("r2")] == [1, 2, 3]
    assert [e.seq for e in await s.get_events("r1", after_seq=2)] == [3, 4, 5]
    assert [e.seq for e in await s.get_events("r1", after_seq=1, limit=2)] == [2, 3]
    assert await s.get_events("r1", after_seq=5) == []
    assert await s.get_events("r1", limit=0) == []


async def test_writes_after_a_run_ended_continue_its_seq(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    await s.set_run_status("r1", RunStatus.CANCELLED, at=1.0, error="cancelled by user")
    await s.record_step(StepRecord("r1", "a", StepStatus.CANCELLED), message="run cancelled")
    await s.apply_context("r1", (ContextOp(SET, "late", True),))
    await s.set_run_status("r1", RunStatus.RUNNING, at=2.0)  # resumed after the end, e.g. a retry

    assert [e.seq for e in await s.get_events("r1")] == [1, 2, 3]
    assert await s.get_context("r1") == {"late": True}
    assert (await s.get_steps("r1"))[0].status == StepStatus.CANCELLED


async def test_run_status_transitions_set_timestamps_and_append_run_events(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    await s.set_run_status("r1", RunStatus.RUNNING, at=10.0)
    run = await s.get_run("r1")
    assert (run.status, run.started_at, run.finished_at, run.error) == (RunStatus.RUNNING, 10.0, None, None)

    await s.set_run_status("r1", RunStatus.PAUSED, at=11.0)
    await s.set_run_status("r1", RunStatus.RUNNING, at=12.0)  # resuming keeps the first start
    assert (await s.get_run("r1")).started_at == 10.0

    await s.set_run_status("r1", RunStatus.FAILED, at=13.0, error="step 'b' failed")
    run = await s.get_run("r1")
    assert (run.status, run.started_at, run.finished_at, run.error) == (RunStatus.FAILED, 10.0, 13.0, "step 'b' failed")

    events = await s.get_events("r1")
    assert [(e.kind, e.status, e.at, e.message) for e in events] == [
        ("run", "running", 10.0, ""),
        ("run", "paused", 11.0, ""),
        ("run", "running", 12.0, ""),
        ("run", "failed", 13.0, "step 'b' failed"),
    ]


async def test_a_run_cancelled_before_it_started_has_no_start(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    await s.set_run_status("r1", RunStatus.CANCELLED, at=5.0)
    run = await s.get_run("r1")
    assert (run.status, run.started_at, run.finished_at) == (RunStatus.CANCELLED, None, 5.0)


async def test_context_ops_merge_in_order(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    first = (ContextOp(SET, "name", "eu"), ContextOp(INCR, "n", 2), ContextOp(APPEND, "seen", "a"))
    assert await s.apply_context("r1", first) == ({"name": "eu", "n": 2, "seen": ["a"]}, first, [])
    then = (ContextOp(INCR, "n", 0.5), ContextOp(APPEND, "seen", {"b": 1}), ContextOp(SET, "name", None))
    value, applied, rejected = await s.apply_context("r1", then)
    assert (value, applied, rejected) == ({"name": None, "n": 2.5, "seen": ["a", {"b": 1}]}, then, [])
    assert await s.get_context("r1") == value


async def test_concurrent_context_increments_are_not_lost(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")

    async def worker(index: int) -> None:
        for _ in range(20):
            await s.apply_context("r1", (ContextOp(INCR, "total", 1), ContextOp(APPEND, "who", index)))
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        for index in range(10):
            group.create_task(worker(index))
    context = await s.get_context("r1")
    assert context["total"] == 200
    assert sorted(context["who"]) == sorted(list(range(10)) * 20)


async def test_rejected_context_ops_are_reported_and_left_out(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    value, applied, rejected = await s.apply_context(
        "r1",
        (
            ContextOp(SET, "name", "eu"),
            ContextOp(INCR, "name", 1),  # incr on a string
            ContextOp(APPEND, "name", 1),  # append to a string
            ContextOp(SET, "bad", {1, 2}),  # not a JSON value
            ContextOp(INCR, "n", 1),
        ),
    )
    assert value == {"name": "eu", "n": 1}
    assert applied == (ContextOp(SET, "name", "eu"), ContextOp(INCR, "n", 1))
    assert len(rejected) == 3
    assert "cannot incr 'eu'" in rejected[0]
    assert "cannot append to str" in rejected[1]
    assert "'bad'" in rejected[2] and "JSON" in rejected[2]
    assert await s.get_context("r1") == {"name": "eu", "n": 1}


async def test_values_are_copied_on_the_way_in_and_out(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    outputs: dict[str, Any] = {"rows": [1, 2]}
    item: list[int] = [1]
    await s.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, outputs=outputs))
    value = (await s.apply_context("r1", (ContextOp(APPEND, "items", item),))).context
    outputs["rows"].append(3)
    item.append(2)
    value["items"].append("mutated")
    (await s.get_steps("r1"))[0].outputs["rows"].append(4)
    (await s.get_context("r1"))["items"].append("mutated")
    (await s.get_run("r1")).inputs["region"] = "us"

    assert (await s.get_steps("r1"))[0].outputs == {"rows": [1, 2]}
    assert await s.get_context("r1") == {"items": [[1]]}
    assert (await s.get_run("r1")).inputs == {"region": "eu"}


async def test_values_that_are_not_json_raise_store_error(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    with pytest.raises(StoreError, match="run 'r1' step 'a' outputs: not a JSON value"):
        await s.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, outputs={"when": object()}))
    bad_run = make_run("r2")
    bad_run.inputs["x"] = {1, 2}
    with pytest.raises(StoreError, match="run 'r2' inputs: not a JSON value"):
        await s.create_run(bad_run, ["a"])
    with pytest.raises(RunNotFound):
        await s.get_run("r2")
    bad_write = (ContextOp(SET, "when", object()),)
    with pytest.raises(StoreError, match="run 'r1' step 'a' context writes: not a JSON value"):
        await s.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, attempt=1, context_ops=bad_write))
    assert await s.get_logs("r1") == []
    await s.record_step(StepRecord("r1", "a", StepStatus.RUNNING))  # the refused writes took no seq
    assert [e.seq for e in await s.get_events("r1")] == [1]


async def test_async_with_closes_the_store(store: StoreFactory) -> None:
    s = store()
    async with s as entered:  # type: ignore[attr-defined]
        assert entered is s
        await create(s, "r1")
    with pytest.raises(RuntimeError, match="Store is closed"):
        await s.get_run("r1")


async def test_aclose_twice_is_fine_and_later_use_raises_runtime_error(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    await s.aclose()
    await s.aclose()
    name = type(s).__name__
    calls: list[Any] = [
        lambda: s.create_run(make_run("r2"), ["a"]),
        lambda: s.set_run_status("r1", RunStatus.RUNNING, at=1.0),
        lambda: s.record_step(StepRecord("r1", "a", StepStatus.RUNNING)),
        lambda: s.apply_context("r1", (ContextOp(SET, "k", 1),)),
        lambda: s.get_run("r1"),
        lambda: s.list_runs(),
        lambda: s.find_run_ids("r", limit=1),
        lambda: s.get_steps("r1"),
        lambda: s.get_context("r1"),
        lambda: s.get_events("r1"),
        lambda: s.flush(),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=f"^{name} is closed$"):
            await call()


_json_scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5)
_ops = st.lists(
    st.builds(ContextOp, st.sampled_from([SET, INCR, APPEND]), st.sampled_from(["a", "b", "c"]), _json_scalars),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(_ops, max_size=4))
async def test_context_matches_applying_the_ops_to_a_dict(store: StoreFactory, batches: list[list[ContextOp]]) -> None:
    s: Store = store()  # a fresh store per example (the same file for sqlite, so a fresh run id too)
    run_id = f"r{len(store.opened)}"
    try:
        await create(s, run_id)
        expected: dict[str, Any] = {}
        for ops in batches:
            misfits = [apply_ops(expected, (op,)) for op in ops]  # one op at a time: which ones applied
            expected_applied = tuple(op for op, misfit in zip(ops, misfits, strict=True) if not misfit)
            expected_rejected = [message for misfit in misfits for message in misfit]
            assert await s.apply_context(run_id, tuple(ops)) == (expected, expected_applied, expected_rejected)
        assert await s.get_context(run_id) == expected
    finally:
        await s.aclose()
