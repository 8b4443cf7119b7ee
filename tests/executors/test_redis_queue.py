"""The Redis transport against a real redis-server: round trips, routing, bounds, acknowledgements,
clean-up, malformed entries, liveness, queue timeouts, credentials and the worker command."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.exceptions

from dagrun import ErrorKind, ExecutorError, RunStatus, StepRequest, StepStatus
from dagrun.contract.envelope import encode_request, encode_result
from dagrun.contract.executor import StepResult, script_hash
from dagrun.contract.transport import open_executor
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from executors.redis_queue import QueueSettings, RedisExecutor, list_workers, transport
from executors.redis_queue.cancellation import withdraw_commands
from executors.redis_queue.connection import GROUP, DedicatedConnection
from executors.redis_queue.consumer import Consumer
from executors.redis_queue.replies import HeldEntry, ReplyWriter
from tests.conftest import RedisServers, free_port, write_token_file
from tests.executors.conftest import SPIN, Gate, dagrun_command, no_step_running
from tests.executors.redis_support import (
    OPTIONS,
    REPO,
    SIGNER,
    TOKEN,
    RedisWorkers,
    busy_step,
    eventually,
    redis_client,
    remote_flow,
    request_entry,
    run_remote,
)


def request(script: str = "outputs['v'] = 1", **fields: object) -> StepRequest:
    values: dict[str, object] = {"run_id": "run-1", "step_id": "s", "attempt": 1, "inputs": {}, "context": {}}
    values.update(fields)
    return StepRequest(script=script, script_hash=script_hash(script), **values)  # type: ignore[arg-type]


# --- settings ---


def test_settings_take_dagrun_parameters_out_of_the_url() -> None:
    url = "rediss://user:pw@example.org:6380/2?prefix=app:&queue_timeout_s=5&prefetch=0&socket_timeout=3"
    settings = QueueSettings.from_url(url)
    assert settings.prefix == "app:" and settings.queue_timeout_s == 5 and settings.prefetch == 0
    assert settings.redis_url == "rediss://user:pw@example.org:6380/2?socket_timeout=3"
    assert settings.where == "rediss://***@example.org:6380/2"
    assert settings.keys.requests("eu") == "app:q:eu"
    assert settings.keys.heartbeat_pattern() == "app:w:*"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://u:hunter2@host/0?queue_timeout_s=-1", "queue_timeout_s must be a positive number"),
        ("redis://u:hunter2@host/0?prefetch=many", "prefetch must be a whole number"),
        ("redis://u:hunter2@host/0?heartbeat_s=5&heartbeat_ttl_s=2", "heartbeat_ttl_s must be longer"),
        ("http://u:hunter2@host/0", "is not a Redis URL: redis://HOST"),
        ("", "needs a Redis URL: redis://HOST"),
    ],
)
def test_bad_url_is_an_executor_error_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(ExecutorError, match=complaint) as raised:
        QueueSettings.from_url(url)
    assert "hunter2" not in str(raised.value)


def test_redis_urls_open_the_redis_executor(redis_url: str) -> None:
    assert isinstance(open_executor(redis_url, OPTIONS), RedisExecutor)


# --- round trips ---


async def test_flow_runs_on_an_in_process_worker(redis_workers: RedisWorkers) -> None:
    await redis_workers.start()
    flow = remote_flow(
        {"id": "a", "script": "outputs['v'] = 1"},
        {"id": "b", "depends_on": ["a"], "script": "outputs['v'] = inputs['x'] + 1", "inputs": {"x": "${steps.a.v}"}},
        {"id": "c", "depends_on": ["a"], "script": "context.incr('n', 5)\noutputs['v'] = 10"},
        {"id": "d", "depends_on": ["b", "c"], "script": "fail('on purpose')", "run_if": "all_success"},
    )
    result, _ = await run_remote(redis_workers.url, flow)
    assert result.steps["b"].outputs == {"v": 2}
    assert result.context == {"n": 5}
    failed = result.steps["d"]
    assert failed.status == StepStatus.FAILED and failed.error is not None
    assert failed.error.kind == ErrorKind.FAIL and "on purpose" in failed.error.message


async def test_flow_runs_on_worker_processes(redis_workers: RedisWorkers) -> None:
    first, second = redis_workers.spawn(concurrency=1), redis_workers.spawn(concurrency=1)
    await redis_workers.wait_ready(first.worker_id)
    await redis_workers.wait_ready(second.worker_id)
    steps = [{"id": f"s{i}", "script": f"outputs['v'] = {i} * 2"} for i in range(20)]
    result, _ = await run_remote(redis_workers.url, remote_flow(*steps))
    assert result.status == RunStatus.SUCCEEDED
    assert all(result.steps[f"s{i}"].outputs == {"v": i * 2} for i in range(20))
    first.kill(signal.SIGTERM)
    assert first.wait() == 0
    log = first.log_text()
    assert f"worker {first.worker_id} serving contexts default from redis at redis://127.0.0.1:" in log
    assert "Traceback" not in log
    workers_left = await list_workers(redis_workers.url)
    assert [status.worker_id for status in workers_left] == [second.worker_id]


async def test_steps_go_only_to_workers_of_their_context(redis_workers: RedisWorkers) -> None:
    europe = await redis_workers.start(contexts=("eu",))
    default = await redis_workers.start()
    steps = [{"id": f"eu{i}", "context_id": "eu", "script": "outputs['where'] = context_id"} for i in range(4)]
    steps += [{"id": f"any{i}", "script": "outputs['where'] = context_id"} for i in range(3)]
    result, _ = await run_remote(redis_workers.url, remote_flow(*steps))
    assert result.status == RunStatus.SUCCEEDED
    assert europe.worker.status().steps_done == 4
    assert default.worker.status().steps_done == 3
    assert {result.steps[f"eu{i}"].outputs["where"] for i in range(4)} == {"eu"}


async def test_a_worker_runs_at_most_concurrency_steps_at_once(redis_workers: RedisWorkers) -> None:
    await redis_workers.start(concurrency=2)
    result, _ = await run_remote(redis_workers.url, remote_flow(*(busy_step(f"s{i}", 0.25) for i in range(6))))
    assert result.status == RunStatus.SUCCEEDED
    spans = [(outcome.outputs["started"], outcome.outputs["ended"]) for outcome in result.steps.values()]
    most = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert most == 2


async def test_entries_are_acknowledged_and_deleted_after_a_run(redis_workers: RedisWorkers) -> None:
    await redis_workers.start()
    result, _ = await run_remote(
        redis_workers.url, remote_flow(*({"id": f"s{i}", "script": "pass"} for i in range(30)))
    )
    assert result.status == RunStatus.SUCCEEDED
    stream = QueueSettings.from_url(redis_workers.url).keys.requests("default")
    client = redis_client(redis_workers.url)
    try:
        assert (await client.xpending(stream, GROUP))["pending"] == 0
        assert await client.xlen(stream) == 0
    finally:
        await client.aclose()


async def test_a_batch_of_replies_is_written_and_its_entries_deleted_in_one_script(redis_url: str) -> None:
    """Two callers (one gone), two request streams: each live caller gets one reply entry, a gone one's
    stream stays gone (NOMKSTREAM), and every entry is acknowledged and deleted."""
    settings = QueueSettings.from_url(redis_url)
    keys = settings.keys
    live, gone = keys.replies("live"), keys.replies("gone")
    client = redis_client(redis_url)
    writer = ReplyWriter(client, keys, SIGNER, worker_id="w")
    try:
        for stream in ("a", "b"):
            await client.xgroup_create(keys.requests(stream), GROUP, id="0", mkstream=True)
        marker = await client.xadd(live, {".": "live"})
        entries = []
        for stream, request_id, reply_to in [("a", b"r1", live), ("b", b"r2", live), ("a", b"r3", gone)]:
            entry_id = await client.xadd(keys.requests(stream), {"id": request_id, "reply": reply_to, "req": b"{}"})
            entries.append(HeldEntry(keys.requests(stream), entry_id, {b"id": request_id, b"reply": reply_to.encode()}))
            entries[-1].reply = b"result-" + request_id
        await client.xreadgroup(GROUP, "w", {keys.requests("a"): ">", keys.requests("b"): ">"})
        await writer.write(entries)
        assert [fields for _, fields in await client.xrange(live, f"({marker.decode()}")] == [
            {
                b"r1": SIGNER.seal_result(live.encode(), b"r1", b"result-r1"),
                b"r2": SIGNER.seal_result(live.encode(), b"r2", b"result-r2"),
            }
        ]
        assert await client.exists(gone) == 0
        for stream in ("a", "b"):
            assert (await client.xpending(keys.requests(stream), GROUP))["pending"] == 0
            assert await client.xlen(keys.requests(stream)) == 0
    finally:
        await writer.aclose()
        await client.aclose()


async def test_aclose_deletes_the_reply_stream_and_closes(redis_workers: RedisWorkers) -> None:
    await redis_workers.start()
    executor = RedisExecutor(QueueSettings.from_url(redis_workers.url), OPTIONS)
    assert (await executor.call(request())).ok
    client = redis_client(redis_workers.url)
    try:
        assert await client.exists(executor.reply_stream) == 1
        assert await client.ttl(executor.reply_stream) > 0  # an abandoned one expires
        await executor.aclose()
        await executor.aclose()
        assert await client.exists(executor.reply_stream) == 0
    finally:
        await client.aclose()
    with pytest.raises(RuntimeError, match="RedisExecutor is closed"):
        await executor.call(request())


async def test_malformed_entries_are_answered_or_dropped_and_the_worker_goes_on(redis_workers: RedisWorkers) -> None:
    await redis_workers.start()
    keys = QueueSettings.from_url(redis_workers.url).keys
    reply_stream, stream = keys.replies("test"), keys.requests("default")
    client = redis_client(redis_workers.url)
    try:
        first_id = await client.xadd(reply_stream, {".": "test"})
        await client.xadd(stream, request_entry(stream, b"bad-1", reply_stream, b'{"v": 1, "run_id": 3}'))
        await client.xadd(stream, {"no": "fields we know"})
        await client.xadd(stream, request_entry(stream, b"bad-2", "elsewhere", b"{}"))
        no_id = request_entry(stream, b"", reply_stream, b"{}")  # signed, but with no request id to answer
        del no_id[b"id"]
        await client.xadd(stream, no_id)
        replies: Any = await client.xread({reply_stream: first_id}, block=10_000)
        ((_, [(_, fields)]),) = replies
        result = SIGNER.open_result(reply_stream.encode(), b"bad-1", fields[b"bad-1"])
        assert result is not None and b'"ok":false' in result and b"malformed request envelope" in result
        executor = RedisExecutor(QueueSettings.from_url(redis_workers.url), OPTIONS)
        try:
            assert (await executor.call(request())).ok
        finally:
            await executor.aclose()
        assert (await client.xpending(stream, GROUP))["pending"] == 0
    finally:
        await client.aclose()


async def test_late_and_duplicate_results_are_ignored(redis_url: str) -> None:
    """A fake worker answers twice and answers a request nobody made: the first answer counts."""
    keys = QueueSettings.from_url(redis_url).keys
    client = redis_client(redis_url)
    executor = RedisExecutor(QueueSettings.from_url(redis_url), OPTIONS)

    async def fake_worker() -> None:
        await client.xgroup_create(keys.requests("default"), GROUP, id="0", mkstream=True)
        for _ in range(2):
            delivered: Any = await client.xreadgroup(GROUP, "fake", {keys.requests("default"): ">"}, block=10_000)
            ((_, [(_, fields)]),) = delivered
            reply_stream, request_id = fields[b"reply"], fields[b"id"]
            first = SIGNER.seal_result(reply_stream, request_id, encode_result(StepResult(ok=True, outputs={"n": 1})))
            second = SIGNER.seal_result(reply_stream, request_id, encode_result(StepResult(ok=True, outputs={"n": 2})))
            await client.xadd(reply_stream, {request_id: first})
            await client.xadd(reply_stream, {request_id: second, b"unknown/x#1/99": second})

    try:
        faking = asyncio.create_task(fake_worker())
        assert (await executor.call(request(step_id="a"))).outputs == {"n": 1}
        assert (await executor.call(request(step_id="b"))).outputs == {"n": 1}
        await faking
    finally:
        await executor.aclose()
        await client.aclose()


# --- liveness ---


async def test_list_workers_shows_live_workers(redis_workers: RedisWorkers) -> None:
    europe = await redis_workers.start(contexts=("eu", "default"), worker_id="a-eu")
    await redis_workers.start(worker_id="b-default")
    statuses = await list_workers(redis_workers.url)
    assert [status.worker_id for status in statuses] == ["a-eu", "b-default"]
    assert statuses[0].contexts == ("eu", "default")
    assert statuses[0].heartbeat_at > time.time() - 10
    await europe.aclose()
    assert [status.worker_id for status in await list_workers(redis_workers.url)] == ["b-default"]


async def test_dagrun_workers_lists_live_workers_from_redis(redis_workers: RedisWorkers) -> None:
    await redis_workers.start(contexts=("eu",), worker_id="w-eu")
    code, out, err = await dagrun_command("workers", "--redis", redis_workers.url, "--json")
    assert code == 0, err
    [status] = orjson.loads(out)
    assert (status["worker_id"], status["contexts"], status["steps_done"]) == ("w-eu", ["eu"], 0)
    code, out, _ = await dagrun_command("workers", redis_workers.url)
    assert code == 0
    assert b"w-eu" in out and b"s ago" in out


async def test_without_a_live_worker_the_step_fails_after_the_queue_timeout(redis_url: str) -> None:
    flow = remote_flow({"id": "lonely", "context_id": "nobody", "script": "pass"})
    started = time.monotonic()
    result, _ = await run_remote(f"{redis_url}&queue_timeout_s=1", flow)
    assert time.monotonic() - started < 5
    error = result.steps["lonely"].error
    assert error is not None and error.type == "WorkerUnavailable"
    assert "no live worker serves context 'nobody'" in error.message
    assert "--context nobody" in error.message


async def test_the_queue_timeout_waits_while_a_worker_is_busy(redis_workers: RedisWorkers) -> None:
    await redis_workers.start(concurrency=1)
    steps = [busy_step(f"s{i}", 0.8) for i in range(3)]
    result, _ = await run_remote(f"{redis_workers.url}&queue_timeout_s=1", remote_flow(*steps))
    assert result.status == RunStatus.SUCCEEDED


# --- connections and credentials ---


async def test_unreachable_redis_is_an_executor_error_without_credentials() -> None:
    url = f"redis://alice:hunter2@127.0.0.1:{free_port()}/0"
    executor = open_executor(url, OPTIONS)
    try:
        with pytest.raises(ExecutorError, match=r"cannot connect to redis at redis://\*\*\*@127\.0\.0\.1") as raised:
            await executor.call(request())
        assert "hunter2" not in str(raised.value)
    finally:
        await executor.aclose()
    worker = ScriptWorker(WorkerSettings(url=url, concurrency=1, token=TOKEN))
    with pytest.raises(ExecutorError, match="cannot connect to redis") as raised:
        await transport.serve_worker(worker, asyncio.Event())
    assert "hunter2" not in str(raised.value)


def test_worker_command_exits_non_zero_when_redis_is_unreachable(tmp_path: Path) -> None:
    url = f"redis://alice:hunter2@127.0.0.1:{free_port()}/0"
    token = write_token_file(tmp_path / "token", TOKEN)
    args = [sys.executable, "-m", "dagrun", "worker", "redis", url, "--concurrency", "1", "--token-file", str(token)]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "dagrun: cannot connect to redis at redis://***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


async def test_password_and_acl_user_urls_work(redis_servers: RedisServers, tmp_path: Path) -> None:
    server = redis_servers("--requirepass", "s3cret-pass", "--user", "alice", "on", ">wonder-land", "~*", "&*", "+@all")
    flow = remote_flow({"id": "a", "script": "outputs['v'] = 1"})
    for credentials in (":s3cret-pass", "alice:wonder-land"):
        url = f"redis://{credentials}@127.0.0.1:{server.port}/0?prefix=auth:"
        factory = RedisWorkers(url, tmp_path)
        try:
            await factory.start()
            result, _ = await run_remote(url, flow)
            assert result.steps["a"].outputs == {"v": 1}
        finally:
            await factory.close_all()
    executor = open_executor(f"redis://alice:wrong-pass@127.0.0.1:{server.port}/0", OPTIONS)
    try:
        with pytest.raises(ExecutorError, match="cannot connect to redis") as raised:
            await executor.call(request())
        assert "wrong-pass" not in str(raised.value)
    finally:
        await executor.aclose()


async def test_a_cancelled_call_withdraws_its_entry_and_sends_a_cancel_notice(redis_url: str) -> None:
    executor = RedisExecutor(QueueSettings.from_url(redis_url), OPTIONS)
    client = redis_client(redis_url)
    keys = QueueSettings.from_url(redis_url).keys
    stream = keys.requests("default")
    try:
        waiting = asyncio.create_task(executor.call(request()))
        closing = asyncio.create_task(executor.call(request(step_id="t")))  # still waiting at aclose

        async def queued() -> bool:
            return bool(await client.xlen(stream) == 2)

        async def withdrawn() -> bool:
            return bool(await client.xlen(stream) == 1)

        await eventually(queued, timeout_s=10, what="the requests are queued")
        first_id, second_id = [entry_id for entry_id, _ in await client.xrange(stream)]
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await eventually(withdrawn, timeout_s=10, what="the request is withdrawn")
        assert [fields[b"entry"] for _, fields in await client.xrange(keys.cancels("default"))] == [first_id]
    finally:
        await executor.aclose()
    with pytest.raises(ExecutorError, match="closed"):
        await closing
    try:
        assert await client.xlen(stream) == 0  # aclose withdrew the other one too
        notices = [fields for _, fields in await client.xrange(keys.cancels("default"))]
        assert [notice[b"entry"] for notice in notices] == [first_id, second_id]
        assert all(len(notice[b"sig"]) == 32 for notice in notices)
    finally:
        await client.aclose()


async def test_a_dedicated_connection_survives_a_refusal_and_reconnects_after_a_drop(redis_url: str) -> None:
    client = redis_client(redis_url)
    connection = DedicatedConnection(client)
    try:
        client_id = await connection.execute("CLIENT", "ID")
        with pytest.raises(redis.exceptions.ResponseError):
            await connection.execute("XADD", "only-a-key")
        assert await connection.execute("CLIENT", "ID") == client_id  # a refusal keeps the connection
        assert await client.client_kill_filter(_id=client_id) == 1
        with pytest.raises(redis.exceptions.ConnectionError):
            await connection.execute("PING")
        assert await connection.execute("CLIENT", "ID") != client_id  # connected again
    finally:
        await connection.aclose()
        await client.aclose()


async def test_a_cancelled_blocking_read_leaves_nothing_on_its_connection(redis_url: str) -> None:
    """The reply the cancelled read would have got must not be read as the next command's reply."""
    client = redis_client(redis_url)
    connection = DedicatedConnection(client)
    stream = QueueSettings.from_url(redis_url).keys.replies("cancelled-read")
    try:
        client_id = await connection.execute("CLIENT", "ID")
        reading = asyncio.create_task(connection.execute("XREAD", "BLOCK", 10_000, "STREAMS", stream, "$"))

        async def blocked() -> bool:
            return b"cmd=xread" in await client.execute_command("CLIENT", "LIST", "ID", client_id)

        await eventually(blocked, timeout_s=10, what="the read blocks")
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await client.xadd(stream, {"late": "entry"})  # what the cancelled read would have returned
        assert await connection.execute("PING") == b"PONG"
        assert await connection.execute("CLIENT", "ID") != client_id
    finally:
        await connection.aclose()
        await client.aclose()


async def test_a_worker_stopping_hands_back_what_it_did_not_finish(redis_workers: RedisWorkers) -> None:
    quitter = await redis_workers.start(concurrency=1, grace_s=0.2)
    running = asyncio.create_task(run_remote(redis_workers.url, remote_flow(busy_step("slow", 2.0))))
    await asyncio.sleep(1.0)
    await quitter.aclose()  # the grace period ends long before the step
    assert quitter.worker.status().steps_done == 0
    heir = await redis_workers.start(concurrency=1)
    result, _ = await asyncio.wait_for(running, timeout=30)
    assert result.status == RunStatus.SUCCEEDED
    assert heir.worker.status().steps_done == 1


async def test_sigterm_lets_the_running_step_finish(redis_workers: RedisWorkers) -> None:
    process = redis_workers.spawn(concurrency=1, grace_s=20)
    await redis_workers.wait_ready(process.worker_id)
    running = asyncio.create_task(run_remote(redis_workers.url, remote_flow(busy_step("s", 1.5))))

    async def started() -> bool:
        return any(status.current for status in await list_workers(redis_workers.url))

    await eventually(started, timeout_s=20, what="the step starts")
    process.kill(signal.SIGTERM)
    result, _ = await asyncio.wait_for(running, timeout=30)
    assert result.status == RunStatus.SUCCEEDED
    assert await asyncio.to_thread(process.wait) == 0
    assert "draining 1 running steps" in process.log_text()
    assert await list_workers(redis_workers.url) == []


async def test_rediss_urls_speak_tls(redis_servers: RedisServers, tmp_path: Path) -> None:
    server = redis_servers(tls=True)
    assert server.tls is not None
    url = f"{server.url}?ssl_ca_certs={server.tls[0]}&prefix=tls:"
    factory = RedisWorkers(url, tmp_path)
    try:
        await factory.start()
        result, _ = await run_remote(url, remote_flow({"id": "a", "script": "outputs['v'] = 1"}))
        assert result.steps["a"].outputs == {"v": 1}
    finally:
        await factory.close_all()


# --- cancellation ---


async def test_a_cancelled_call_stops_its_step_on_the_worker(
    redis_workers: RedisWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate = Gate()
    handle = await redis_workers.start(concurrency=1, functions=gate.functions())  # one sandbox process
    settings = QueueSettings.from_url(redis_workers.url)
    client = redis_client(redis_workers.url)
    executor = RedisExecutor(settings, OPTIONS)
    try:
        first = await executor.call(request())
        calling = asyncio.create_task(executor.call(request(SPIN, step_id="spin", timeout_s=60)))
        await gate.started.wait()
        assert handle.worker.status().current == ("run-1/spin#1",)

        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        await no_step_running(handle.worker)
        after = await asyncio.wait_for(executor.call(request(step_id="after")), 10)  # the process is free again

        stream = settings.keys.requests("default")
        assert (await client.xpending(stream, GROUP))["pending"] == 0  # acknowledged: never run again
        assert await client.xlen(stream) == 0
    finally:
        await executor.aclose()
        await client.aclose()
    assert after.ok and after.worker_id != first.worker_id  # the spinning process was killed and replaced
    assert not os.path.exists(f"/proc/{first.worker_id.rsplit(':', 1)[1]}")
    assert "run run-1 step spin attempt 1 cancelled after" in caplog.text
    status = handle.worker.status()
    assert (status.steps_done, status.errors, status.current) == (2, 0, ())


async def test_cancel_notices_for_finished_or_unknown_entries_are_harmless(redis_workers: RedisWorkers) -> None:
    gate = Gate()
    handle = await redis_workers.start(concurrency=1, functions=gate.functions())
    keys = QueueSettings.from_url(redis_workers.url).keys
    reply_stream, stream = keys.replies("test"), keys.requests("default")
    client = redis_client(redis_workers.url)
    executor = RedisExecutor(QueueSettings.from_url(redis_workers.url), OPTIONS)
    try:
        first_id = await client.xadd(reply_stream, {".": "test"})
        finished = await client.xadd(stream, request_entry(stream, b"done/1", reply_stream, encode_request(request())))
        assert await client.xread({reply_stream: first_id}, block=10_000)  # answered
        for command in withdraw_commands(keys, SIGNER, [("default", finished), ("default", b"1-1")]):
            await client.execute_command(*command)

        # the worker read past those notices (they come first on its cancel stream) and still stops a step
        calling = asyncio.create_task(executor.call(request(SPIN, step_id="spin", timeout_s=60)))
        await gate.started.wait()
        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        await no_step_running(handle.worker)
        assert (await asyncio.wait_for(executor.call(request(step_id="after")), 10)).ok
    finally:
        await executor.aclose()
        await client.aclose()
    assert (handle.worker.status().steps_done, handle.worker.status().errors) == (2, 0)


async def test_an_entry_whose_cancel_notice_came_first_is_acknowledged_unrun(redis_url: str) -> None:
    """The notice and the entry come over different connections: the notice may be read first."""
    settings = QueueSettings.from_url(redis_url)
    keys = settings.keys
    stream, reply_stream = keys.requests("default"), keys.replies("caller")
    client = redis_client(redis_url)
    worker = ScriptWorker(WorkerSettings(url=redis_url, concurrency=1, token=TOKEN))
    consumer = Consumer(worker, client, settings)
    try:
        await consumer._create_groups()
        await client.xadd(reply_stream, {".": "caller"})
        entry_id = await client.xadd(stream, {"id": "r/1", "reply": reply_stream, "req": encode_request(request())})
        delivered: Any = await client.xreadgroup(GROUP, worker.settings.worker_id, {stream: ">"})
        ((_, entries),) = delivered

        consumer._cancel_withdrawn(stream, entry_id)
        consumer._take(stream, entries)
        assert not consumer._running  # nothing started
        await consumer._replies.write(consumer._ended)

        assert (await client.xpending(stream, GROUP))["pending"] == 0
        assert await client.xlen(reply_stream) == 1  # only its creation entry: no reply for a withdrawn request
    finally:
        await consumer.aclose()
        await client.aclose()
