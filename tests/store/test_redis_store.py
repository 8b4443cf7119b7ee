"""What the Redis store adds to the contract: many clients (as if on many machines) share runs, the context
stays exact under concurrent writers, waits block without starving anything and ride out restarts,
credentials and unreachable servers give clear, redacted errors."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import RunNotFound, StoreError
from dagrun.store import RedisStore, StepRecord, Store, open_store
from dagrun.store.base import CommandKind, NoticeKind
from dagrun.store.redis.layout import CREATE_RUN, MAX_NOTICES, SEND_COMMAND, STATUSES, WRITE_BATCH, Keys
from dagrun.store.redis.records import PENDING_STEP
from dagrun.store.redis.store import MAX_CONNECTIONS
from tests.conftest import RedisServer, RedisServers, free_port
from tests.store.conftest import StoreFactory, create

INCR, APPEND = ContextOpKind.INCR, ContextOpKind.APPEND


async def test_two_clients_see_each_others_runs_steps_and_events(redis_store: StoreFactory) -> None:
    here, there = redis_store(), redis_store()
    await create(here, "r1", ["a", "b"], flow_name="etl")
    await here.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    await here.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, attempt=1, outputs={"rows": 3}))
    await here.flush()

    assert [run.run_id for run in await there.list_runs(flow_name="etl", status=RunStatus.RUNNING)] == ["r1"]
    assert (await there.get_steps("r1"))[0].outputs == {"rows": 3}
    assert [(e.seq, e.kind, e.status) for e in await there.get_events("r1")] == [
        (1, "run", "running"),
        (2, "step", "succeeded"),
    ]
    await create(there, "r2", ["x"])
    assert {run.run_id for run in await here.list_runs()} == {"r1", "r2"}


async def test_a_run_cancelled_from_another_client_keeps_one_gap_free_event_order(redis_store: StoreFactory) -> None:
    driver, controller = redis_store(), redis_store()
    await create(driver, "r1", ["a", "b"])
    await driver.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    await driver.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
    await driver.flush()
    await controller.set_run_status("r1", RunStatus.CANCELLED, at=2.0, error="cancelled by user")
    await controller.flush()
    await driver.record_step(StepRecord("r1", "a", StepStatus.CANCELLED, attempt=1), message="run cancelled")

    events = await driver.get_events("r1")
    assert [(e.seq, e.kind, e.status) for e in events] == [
        (1, "run", "running"),
        (2, "step", "running"),
        (3, "run", "cancelled"),
        (4, "step", "cancelled"),
    ]
    run = await driver.get_run("r1")
    assert (run.status, run.finished_at, run.error) == (RunStatus.CANCELLED, 2.0, "cancelled by user")
    assert [r.run_id for r in await driver.list_runs(status=RunStatus.CANCELLED)] == ["r1"]
    assert await driver.list_runs(status=RunStatus.RUNNING) == []


async def test_a_watcher_reads_new_events_after_the_last_seq_it_saw(redis_store: StoreFactory) -> None:
    writer, watcher = redis_store(), redis_store()
    await create(writer, "r1", ["a"])
    seen: list[int] = []
    for status in (StepStatus.READY, StepStatus.RUNNING, StepStatus.SUCCEEDED):
        await writer.record_step(StepRecord("r1", "a", status))
        await writer.flush()
        seen += [event.seq for event in await watcher.get_events("r1", after_seq=seen[-1] if seen else 0)]
    assert seen == [1, 2, 3]


async def test_concurrent_context_increments_from_two_clients_are_not_lost(redis_store: StoreFactory) -> None:
    clients = [redis_store(), redis_store()]
    await create(clients[0], "r1")

    async def increment(store: Store, who: int) -> None:
        for _ in range(20):
            await store.apply_context("r1", (ContextOp(INCR, "total", 1), ContextOp(APPEND, "who", who)))

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for index, client in enumerate(clients):  # 2 clients x 10 tasks x 20 = 400, many in flight at once
            for _ in range(10):
                group.create_task(increment(client, index))
    context = await clients[1].get_context("r1")
    assert context["total"] == 400
    assert sorted(context["who"]) == [0] * 200 + [1] * 200
    assert time.monotonic() - started < 20


async def test_data_survives_closing_and_reopening_the_store(redis_store: StoreFactory) -> None:
    first = redis_store()
    await create(first, "r1", ["a", "b"])
    await first.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    await first.record_step(StepRecord("r1", "b", StepStatus.SUCCEEDED, attempt=1, outputs={"v": [1, "é"]}))
    await first.apply_context("r1", (ContextOp(INCR, "n", 2),))
    await first.aclose()

    again = redis_store()
    assert (await again.get_run("r1")).status == RunStatus.RUNNING
    assert [(s.step_id, s.status, s.outputs) for s in await again.get_steps("r1")] == [
        ("a", StepStatus.PENDING, {}),
        ("b", StepStatus.SUCCEEDED, {"v": [1, "é"]}),
    ]
    assert await again.get_context("r1") == {"n": 2}
    await again.record_step(StepRecord("r1", "a", StepStatus.RUNNING))  # the seq goes on from the server's
    assert [e.seq for e in await again.get_events("r1")] == [1, 2, 3]
    assert (await again.apply_context("r1", (ContextOp(INCR, "n", 1),))).context == {"n": 3}


async def test_prefixes_keep_stores_apart(redis_server: RedisServer, redis_prefix: str) -> None:
    async with (
        RedisStore.from_url(f"{redis_server.url}?prefix={redis_prefix}one:") as one,
        RedisStore.from_url(f"{redis_server.url}?prefix={redis_prefix}two:") as two,
    ):
        await create(one, "r1")
        assert await two.list_runs() == []
        with pytest.raises(RunNotFound):
            await two.get_run("r1")
        assert one.keys.run("r1") == f"{redis_prefix}one:run:r1"


async def test_record_step_is_sent_in_batches_not_one_round_trip_per_call(redis_store: StoreFactory) -> None:
    store = redis_store()
    assert isinstance(store, RedisStore)
    await create(store, "r1", [f"s{i}" for i in range(500)])
    for i in range(500):
        await store.record_step(StepRecord("r1", f"s{i}", StepStatus.RUNNING, attempt=1))
        await store.record_step(StepRecord("r1", f"s{i}", StepStatus.SUCCEEDED, attempt=1, outputs={"i": i}))
    await store.flush()
    assert store.batches_sent <= 3
    events = await store.get_events("r1", after_seq=990)
    assert [e.seq for e in events] == list(range(991, 1001))
    assert [e.seq for e in await store.get_events("r1", after_seq=10, limit=3)] == [11, 12, 13]
    assert (await store.get_steps("r1"))[499].outputs == {"i": 499}


async def test_a_batch_sent_twice_is_applied_once(redis_server: RedisServer, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    async with RedisStore.from_url(f"{redis_server.url}?prefix={redis_prefix}") as store:
        await create(store, "r1", ["a"])
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        script_keys = [keys.writer("w"), *(keys.runs_with_status(s) for s in STATUSES)]
        script_keys += [keys.run("r1"), keys.steps("r1"), keys.events("r1"), keys.step_order("r1"), keys.epoch("r1")]
        args = ["7", str(len(STATUSES)), *STATUSES, "9", "0", "S", "a", '["running",1,null,null,{},null,"",""]', "[]"]
        args += ["C", "", "w.1", '{"n":1}']
        first = await WRITE_BATCH(client, script_keys, args)
        again = await WRITE_BATCH(client, script_keys, args)  # as after a reply lost on a broken connection
        assert first == again == [[1]]
        assert await client.xlen(keys.events("r1")) == 1
    finally:
        await client.aclose()


async def test_open_store_opens_a_redis_store_with_the_url_prefix(redis_url: str) -> None:
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    async with store:
        assert store.keys.prefix == redis_url.partition("?prefix=")[2]


async def test_a_password_protected_server_needs_the_password_in_the_url(redis_servers: RedisServers) -> None:
    server = redis_servers("--requirepass", "s3cret-pw")
    with_password = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
    async with RedisStore.from_url(with_password) as store:
        await create(store, "r1", ["a"])
        await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING))  # the writer's connection too
        assert [event.seq for event in await store.get_events("r1")] == [1]

    for url in (server.url, f"redis://:wrong-pw@127.0.0.1:{server.port}/0"):
        store = RedisStore.from_url(url)
        with pytest.raises(StoreError) as caught:
            await store.__aenter__()
        await store.aclose()
        message = str(caught.value)
        assert f"127.0.0.1:{server.port}" in message and "connecting to Redis failed" in message
        assert "auth" in message.lower() or "password" in message.lower()
        assert "pw" not in message


async def test_an_acl_user_in_the_url_is_used(redis_servers: RedisServers) -> None:
    server = redis_servers("--user", "default", "off", "--user", "runner", "on", ">runner-pw", "~*", "&*", "+@all")
    async with RedisStore.from_url(f"redis://runner:runner-pw@127.0.0.1:{server.port}/0") as store:
        await create(store, "r1")
        await store.set_run_status("r1", RunStatus.RUNNING, at=1.0)
        assert [run.run_id for run in await store.list_runs(status=RunStatus.RUNNING)] == ["r1"]


async def test_an_unreachable_server_raises_store_error_naming_the_redacted_url() -> None:
    url = f"redis://admin:hunter2@127.0.0.1:{free_port()}/0"
    store = RedisStore.from_url(url)
    with pytest.raises(StoreError) as caught:
        await store.__aenter__()
    with pytest.raises(StoreError):  # without `async with`, the first call says the same
        await store.get_run("r1")
    await store.aclose()
    message = str(caught.value)
    assert "redis://***@127.0.0.1:" in message and "connecting to Redis failed" in message
    assert "hunter2" not in message


def test_a_url_that_is_not_redis_is_refused_without_credentials() -> None:
    with pytest.raises(StoreError) as caught:
        RedisStore("http://user:hunter2@example.com")
    assert "hunter2" not in str(caught.value)


async def test_the_writer_reconnects_after_a_server_restart(redis_servers: RedisServers) -> None:
    server = redis_servers(appendonly=True)
    async with RedisStore.from_url(server.url) as store:
        await create(store, "r1", ["a"])
        await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING))
        await store.flush()
        server.restart()  # the writer's connection breaks under it
        await store.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED))
        await store.apply_context("r1", (ContextOp(INCR, "n", 1),))
        assert [(e.seq, e.status) for e in await store.get_events("r1")] == [(1, "running"), (2, "succeeded")]
        assert await store.get_context("r1") == {"n": 1}


async def test_writes_to_a_server_that_went_away_fail_loudly(redis_servers: RedisServers) -> None:
    server = redis_servers()
    store = RedisStore.from_url(server.url)
    try:
        await create(store, "r1", ["a"])
        server.stop()
        await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING))  # queued: no I/O yet
        with pytest.raises(StoreError, match="writing to Redis failed"):
            await store.flush()
        with pytest.raises(StoreError, match="no more are accepted"):
            await store.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED))
    finally:
        await store.aclose()  # the failure was reported: closing does not raise it again


async def test_a_create_or_command_resent_after_a_lost_reply_is_applied_once(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    create_keys = (
        keys.run("r1"), keys.steps("r1"), keys.step_order("r1"), keys.runs, keys.runs_with_status("pending"),
        keys.runs_of_flow("etl"), keys.run_counter, keys.notices, keys.notice_counter, keys.run_ids,
    )  # fmt: skip
    create_args = (
        "r1", "etl", "pending", "{}", "{}", "1.0", "", "", "0", "", "w.1", PENDING_STEP, "submitted",
        "{}", "", "{}", "a",
    )  # fmt: skip
    command_keys = (keys.run("r1"), keys.commands("r1"), keys.notices, keys.notice_counter)
    command_args = ('[1.0,"cancel",null,{}]', "w.2", "r1", "command")
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for _ in range(2):  # the second time as after a reply lost on a broken connection
            assert await CREATE_RUN(client, create_keys, create_args) == 1
            assert await SEND_COMMAND(client, command_keys, command_args) == 1
    finally:
        await client.aclose()
    async with RedisStore.from_url(f"{redis_server.url}?prefix={redis_prefix}") as store:
        assert [c.seq for c in await store.get_commands("r1")] == [1]
        notices = await store.wait_notices(after=0, timeout_s=0)
        assert [n.kind for n in notices] == [NoticeKind.SUBMITTED, NoticeKind.COMMAND]


async def test_runs_created_before_the_run_ids_set_are_found_by_prefix(
    redis_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = redis_store()
    assert isinstance(store, RedisStore)
    for n in range(2500):  # more than one page of `_index_run_ids`
        await create(store, f"run-{n:04d}", ["a"])
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.delete(store.keys.run_ids)  # as a dagrun that kept no such set left it
        assert await redis_store().find_run_ids("run-123", limit=20) == [f"run-123{n}" for n in range(10)]
        assert await client.zcard(store.keys.run_ids) == 2500
        await client.zrem(store.keys.run_ids, "run-2499")  # created by such a dagrun since
        assert await redis_store().find_run_ids("run-2499", limit=2) == ["run-2499"]
    finally:
        await client.aclose()


async def test_the_notice_log_keeps_about_max_notices_and_the_cursor_goes_on(
    redis_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = redis_store()
    assert isinstance(store, RedisStore)
    await create(store, "r1")
    await store.send_command("r1", CommandKind.PAUSE, at=1.0)  # loads the script
    keys = store.keys
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:  # the same script call as send_command's, pipelined for speed
        pipe = client.pipeline(transaction=False)
        for i in range(MAX_NOTICES + 300):
            args = ('[1.0,"pause",null,{}]', f"t.{i}", "r1", "command")
            pipe.evalsha(
                SEND_COMMAND.sha, 4, keys.run("r1"), keys.commands("r1"), keys.notices, keys.notice_counter, *args
            )
        await pipe.execute()
    finally:
        await client.aclose()
    await store.send_command("r1", CommandKind.RESUME, at=2.0)
    newest = MAX_NOTICES + 303

    notices = await store.wait_notices(after=0, timeout_s=0)
    assert MAX_NOTICES <= len(notices) < MAX_NOTICES + 300
    assert notices[-1].cursor == newest == await store.notice_cursor()
    assert [n.cursor for n in notices] == list(range(newest - len(notices) + 1, newest + 1))
    assert len(await store.get_commands("r1")) == MAX_NOTICES + 302  # commands are not trimmed


async def test_step_states_written_before_elapsed_ms_was_kept_still_read(
    redis_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = redis_store()
    assert isinstance(store, RedisStore)
    await create(store, "r1", ["a"])
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.hset(store.keys.steps("r1"), "a", '["running",2,1.5,null,{},null,"log","w1"]')
    finally:
        await client.aclose()
    assert (await store.get_steps("r1"))[0] == StepRecord(
        "r1", "a", StepStatus.RUNNING, 2, 1.5, logs="log", worker_id="w1"
    )


async def test_a_released_run_shows_every_write_its_driver_made(redis_store: StoreFactory) -> None:
    driver, other = redis_store(), redis_store()
    await create(driver, "r1", ["a"])
    cursor = await other.notice_cursor()
    assert await driver.claim_lease("r1", "orch-a", ttl_s=30)
    await driver.record_step(StepRecord("r1", "a", StepStatus.SUCCEEDED, 1, outputs={"n": 1}), message="done")
    await driver.release_lease("r1", "orch-a", notify=True)  # no flush before it: the release flushes

    assert [n.kind for n in await other.wait_notices(after=cursor, timeout_s=5)] == [NoticeKind.RELEASED]
    assert (await other.get_steps("r1"))[0].outputs == {"n": 1}
    assert await other.claim_lease("r1", "orch-b", ttl_s=30)


async def test_waiters_do_not_hold_up_writes_reads_or_each_other(redis_store: StoreFactory) -> None:
    store = redis_store()
    await create(store, "r1", ["a"])
    cursor = await store.notice_cursor()
    notice_waits = [asyncio.create_task(store.wait_notices(after=cursor, timeout_s=30)) for _ in range(10)]
    event_waits = [asyncio.create_task(store.wait_events("r1", after_seq=0, timeout_s=30)) for _ in range(10)]
    await asyncio.sleep(0.1)

    started = time.monotonic()
    await store.apply_context("r1", (ContextOp(INCR, "n", 1),))
    await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING, 1))
    assert [e.seq for e in await store.get_events("r1")] == [1]
    await store.send_command("r1", CommandKind.CANCEL, at=1.0)
    notices = await asyncio.wait_for(asyncio.gather(*notice_waits), 5)
    events = await asyncio.wait_for(asyncio.gather(*event_waits), 5)
    assert time.monotonic() - started < 2.0
    assert {tuple(n.kind for n in found) for found in notices} == {(NoticeKind.COMMAND,)}
    assert {tuple(e.seq for e in found) for found in events} == {(1,)}


async def test_more_waits_than_a_pool_has_connections_hold_up_no_other_wait(redis_store: StoreFactory) -> None:
    store = redis_store()
    quiet = [f"q{i}" for i in range(MAX_CONNECTIONS + 16)]
    for run_id in [*quiet, "r1"]:
        await create(store, run_id, ["a"])
    cursor = await store.notice_cursor()
    quiet_waits = [asyncio.create_task(store.wait_events(run_id, after_seq=0, timeout_s=30)) for run_id in quiet]
    await asyncio.sleep(0.2)  # all of them wait, on streams nothing is written to

    # These come while a blocking read is in flight that does not name their streams.
    notice_wait = asyncio.create_task(store.wait_notices(after=cursor, timeout_s=30))
    event_wait = asyncio.create_task(store.wait_events("r1", after_seq=0, timeout_s=30))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await store.send_command("r1", CommandKind.CANCEL, at=1.0)
    await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING, 1))

    # With a connection per wait, these queued behind the quiet waits until their 30 s blocks ended.
    assert [n.kind for n in await asyncio.wait_for(notice_wait, 5)] == [NoticeKind.COMMAND]
    assert [e.seq for e in await asyncio.wait_for(event_wait, 5)] == [1]
    assert time.monotonic() - started < 2.0
    assert not any(wait.done() for wait in quiet_waits)
    for wait in quiet_waits:
        wait.cancel()
    await asyncio.wait(quiet_waits)


async def test_waits_on_one_stream_from_different_points_each_get_what_follows_theirs(
    redis_store: StoreFactory,
) -> None:
    store = redis_store()
    await create(store, "r1")
    cursor = await store.notice_cursor()
    await store.send_command("r1", CommandKind.PAUSE, at=1.0)
    behind = asyncio.create_task(store.wait_notices(after=cursor, timeout_s=30))
    level = asyncio.create_task(store.wait_notices(after=cursor + 1, timeout_s=30))

    assert [n.kind for n in await asyncio.wait_for(behind, 5)] == [NoticeKind.COMMAND]
    await asyncio.sleep(0.1)
    assert not level.done()  # the read that answered `behind` had nothing after `level`'s point
    await store.send_command("r1", CommandKind.RESUME, at=2.0)
    assert [n.cursor for n in await asyncio.wait_for(level, 5)] == [cursor + 2]


async def test_a_cancelled_wait_leaves_no_reply_behind_for_the_next(redis_store: StoreFactory) -> None:
    store = redis_store()
    await create(store, "r1", ["a"])
    cursor = await store.notice_cursor()
    waiting = asyncio.create_task(store.wait_notices(after=cursor, timeout_s=30))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    # If the cancelled read's connection were reused, this wait would read the notice the old XREAD gets.
    next_wait = asyncio.create_task(store.wait_events("r1", after_seq=0, timeout_s=30))
    await asyncio.sleep(0.05)
    await store.send_command("r1", CommandKind.PAUSE, at=1.0)
    await asyncio.sleep(0.1)
    assert not next_wait.done()
    await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING, 1))
    assert [(e.seq, e.step_id) for e in await asyncio.wait_for(next_wait, 5)] == [(1, "a")]
    assert [n.kind for n in await store.wait_notices(after=cursor, timeout_s=1)] == [NoticeKind.COMMAND]


async def test_closing_the_store_ends_its_waits(redis_store: StoreFactory) -> None:
    store = redis_store()
    await create(store, "r1")
    waits = [
        asyncio.create_task(store.wait_notices(after=await store.notice_cursor(), timeout_s=30)),
        asyncio.create_task(store.wait_events("r1", after_seq=0, timeout_s=30)),
    ]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await store.aclose()
    for wait in waits:
        with pytest.raises(RuntimeError, match="RedisStore is closed"):
            await wait
    assert time.monotonic() - started < 1.0
    with pytest.raises(RuntimeError, match="RedisStore is closed"):
        await store.wait_notices(after=0, timeout_s=1)


async def test_a_wait_rides_out_a_server_restart(redis_servers: RedisServers) -> None:
    server = redis_servers(appendonly=True)
    async with RedisStore.from_url(server.url) as waiter, RedisStore.from_url(server.url) as writer:
        await create(writer, "r1", ["a"])
        cursor = await waiter.notice_cursor()
        notices = asyncio.create_task(waiter.wait_notices(after=cursor, timeout_s=30))
        events = asyncio.create_task(waiter.wait_events("r1", after_seq=0, timeout_s=30))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(server.restart)  # the waits' connections break; they reconnect with backoff

        await writer.send_command("r1", CommandKind.CANCEL, at=1.0)
        await writer.record_step(StepRecord("r1", "a", StepStatus.CANCELLED, 1))
        await writer.flush()
        assert [n.kind for n in await asyncio.wait_for(notices, 15)] == [NoticeKind.COMMAND]
        assert [e.status for e in await asyncio.wait_for(events, 15)] == [StepStatus.CANCELLED]


@pytest.mark.slow
async def test_waits_outlast_a_socket_timeout_shorter_than_a_blocking_read(redis_url: str) -> None:
    # redis-py 8 times sockets out after 5 s by default, half a blocking read: each read must block for less
    # than the socket timeout, or a quiet wait fails once its reconnecting retries (about 5 s) run out.
    store = RedisStore(f"{redis_url}&socket_timeout=0.2")
    async with store:
        await create(store, "r1", ["a"])
        events_seen = len(await store.get_events("r1"))
        cursor = await store.notice_cursor()
        started = time.monotonic()
        events, notices = await asyncio.gather(
            store.wait_events("r1", after_seq=events_seen, timeout_s=7.0),
            store.wait_notices(after=cursor, timeout_s=7.0),
        )
        assert (events, notices) == ([], [])
        assert time.monotonic() - started >= 6.9

        waiting = asyncio.ensure_future(store.wait_events("r1", after_seq=events_seen, timeout_s=7.0))
        await asyncio.sleep(0.3)
        await store.record_step(StepRecord("r1", "a", StepStatus.RUNNING, attempt=1))
        assert [event.status for event in await asyncio.wait_for(waiting, 2.0)] == ["running"]
