"""Trust in the Redis transport: requests, results and cancel notices are signed with the workers' shared
token, and whoever can write to Redis without it can neither run a step, forge or move a result, nor stop a
step. Refusals are logged without the entries' contents."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from dagrun import ExecutorError, RunStatus, StepRequest
from dagrun.contract.envelope import encode_request, encode_result
from dagrun.contract.executor import ExecutorOptions, StepResult, script_hash
from dagrun.contract.transport import open_executor
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from executors.redis_queue import QueueSettings, RedisExecutor, list_workers, transport
from executors.redis_queue.cancellation import ENTRY_FIELD
from executors.redis_queue.connection import GROUP
from executors.redis_queue.signing import KEY_LABEL, NOTICE, REQUEST, SIGNATURE_FIELD, Signer
from tests.conftest import RedisServers, free_port
from tests.executors.conftest import Gate, dagrun_command
from tests.executors.redis_support import (
    OPTIONS,
    SIGNER,
    RedisWorkers,
    eventually,
    redis_client,
    remote_flow,
    request_entry,
    run_remote,
)

# The README's Redis user for workers and callers: dagrun's keys only, the transport's commands only.
ACL_RULES = (
    "resetkeys ~dagrun:* resetchannels -@all +@stream +@connection +@transaction"
    " +eval +evalsha +set +mget +exists +expire +del +scan"
)
OTHER = Signer.from_token("another-token-0123456789", who="the tests")
SECRET = "FORGED-SECRET-PAYLOAD"  # in every forged entry: must never reach a log line or a result
WAIT = "outputs['v'] = wait_release()"  # a step that runs until the test releases it


def request(script: str = "outputs['v'] = 1", step_id: str = "s") -> StepRequest:
    return StepRequest("run-1", step_id, 1, script, script_hash(script), {}, {})


def forged_result() -> bytes:
    return encode_result(StepResult(ok=True, outputs={"v": SECRET}))


async def log_says(caplog: pytest.LogCaptureFixture, text: str) -> None:
    async def said() -> bool:
        return text in caplog.text

    await eventually(said, timeout_s=10, what=f"a log line saying {text!r}")


def test_a_signature_covers_each_part_and_its_boundaries() -> None:
    signature = SIGNER.sign(REQUEST, b"ab", b"c")
    assert SIGNER.is_signed(signature, REQUEST, b"ab", b"c")
    assert not SIGNER.is_signed(signature, REQUEST, b"a", b"bc")  # parts are length-prefixed
    assert not SIGNER.is_signed(signature, b"result", b"ab", b"c")  # a request's MAC is no result's
    assert not OTHER.is_signed(signature, REQUEST, b"ab", b"c")
    assert not SIGNER.is_signed(None, REQUEST, b"ab", b"c")
    assert Signer.from_token("t" * 16, who="x").sign(REQUEST) != Signer(b"t" * 16).sign(REQUEST)  # a derived key
    assert KEY_LABEL.startswith(b"dagrun redis")


async def test_without_a_token_neither_a_worker_nor_a_caller_starts(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match=r"needs the workers' shared token.*--token-file FILE"):
        open_executor(redis_url, ExecutorOptions())
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # refused before it connects
    async with ScriptWorker(WorkerSettings(url=unreachable, concurrency=1, worker_id="tokenless")) as worker:
        with pytest.raises(ExecutorError, match="worker tokenless: the redis transport needs the workers' shared"):
            await transport.serve_worker(worker, asyncio.Event())
    code, _, err = await dagrun_command("worker", "redis", redis_url, "--concurrency", "1")
    assert code != 0
    assert b"--token-file" in err and len(err.strip().splitlines()) == 1, err


async def test_a_forged_request_is_never_run(redis_workers: RedisWorkers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gate = Gate()
    handle = await redis_workers.start(concurrency=1, functions=gate.functions())
    keys = QueueSettings.from_url(redis_workers.url).keys
    stream, elsewhere, reply_stream = keys.requests("default"), keys.requests("other"), keys.replies("forger")
    envelope = encode_request(request(f"mark_started()\noutputs['v'] = {SECRET!r}"))
    client = redis_client(redis_workers.url)
    try:
        marker = await client.xadd(reply_stream, {".": "forger"})
        unsigned = await client.xadd(stream, {"id": "f/1", "reply": reply_stream, "req": envelope})
        other_token = await client.xadd(stream, request_entry(stream, b"f/2", reply_stream, envelope, signer=OTHER))
        moved = await client.xadd(stream, request_entry(elsewhere, b"f/3", reply_stream, envelope))  # another context
        redirected = request_entry(stream, b"f/4", reply_stream, envelope)
        redirected[b"reply"] = keys.replies("victim").encode()
        await client.xadd(stream, redirected)

        async def all_refused() -> bool:
            return await client.xlen(stream) == 0 and (await client.xpending(stream, GROUP))["pending"] == 0

        await eventually(all_refused, timeout_s=10, what="the forged entries are acknowledged and deleted")
        async with RedisExecutor(QueueSettings.from_url(redis_workers.url), OPTIONS) as executor:
            assert (await executor.call(request())).outputs == {"v": 1}  # the worker goes on serving
        assert await client.xrange(reply_stream, f"({marker.decode()}") == []  # no reply to a forger
        assert await client.exists(keys.replies("victim")) == 0
    finally:
        await client.aclose()
    assert gate.entered == 0 and handle.worker.status().steps_done == 1
    assert f"refusing entry {unsigned.decode()} of {stream}: it is not signed" in caplog.text
    assert f"refusing entry {other_token.decode()} of {stream}: its signature does not match" in caplog.text
    assert caplog.text.count("its signature does not match") == 3  # another token, another context, redirected
    assert f"refusing entry {moved.decode()}" in caplog.text
    assert SECRET not in caplog.text


async def test_a_forged_reply_is_refused_and_the_real_result_wins(
    redis_workers: RedisWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate = Gate()
    await redis_workers.start(concurrency=1, functions=gate.functions())
    settings = QueueSettings.from_url(redis_workers.url)
    client = redis_client(redis_workers.url)
    try:
        async with RedisExecutor(settings, OPTIONS) as executor:
            calling = asyncio.create_task(executor.call(request(WAIT)))
            await gate.started.wait()
            [(_, fields)] = await client.xrange(settings.keys.requests("default"))  # held while the step runs
            request_id = fields[b"id"]
            await client.xadd(executor.reply_stream, {request_id: forged_result()})
            await client.xadd(executor.reply_stream, {request_id: OTHER.seal_result(fields[b"reply"], request_id, b"")})
            await log_says(caplog, "its result for run-1/s#1/1 is not signed with this caller's token")
            assert not calling.done()
            gate.release.set()
            result = await asyncio.wait_for(calling, 10)
    finally:
        await client.aclose()
    assert result.ok and result.outputs == {"v": "released"}
    assert caplog.text.count(f"redis caller {executor.caller_id}: refusing entry") == 2
    assert SECRET not in caplog.text


async def test_a_signed_result_replayed_for_another_request_is_refused(
    redis_workers: RedisWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate = Gate()
    await redis_workers.start(concurrency=1, functions=gate.functions())
    settings = QueueSettings.from_url(redis_workers.url)
    client = redis_client(redis_workers.url)
    try:
        async with (
            RedisExecutor(settings, OPTIONS) as executor,
            RedisExecutor(settings, OPTIONS) as other_caller,
        ):
            first = await executor.call(request("outputs['v'] = 'first'", step_id="first"))
            [(_, answer)] = [(i, f) for i, f in await client.xrange(executor.reply_stream) if b"." not in f]
            [sealed] = answer.values()  # the real, signed result of the first request
            later = asyncio.create_task(executor.call(request(WAIT, step_id="later")))
            elsewhere = asyncio.create_task(other_caller.call(request(WAIT, step_id="first")))
            stream = settings.keys.requests("default")

            async def both_sent() -> bool:
                return bool(await client.xlen(stream) == 2)  # so both callers read their streams by now

            await eventually(both_sent, timeout_s=10, what="both requests are queued")
            await client.xadd(executor.reply_stream, {b"run-1/later#1/2": sealed})  # under another request id
            await client.xadd(other_caller.reply_stream, {b"run-1/first#1/1": sealed})  # to another caller
            await log_says(caplog, "its result for run-1/later#1/2 is not signed")
            await log_says(caplog, "its result for run-1/first#1/1 is not signed")
            assert not later.done() and not elsewhere.done()
            gate.release.set()
            results = await asyncio.wait_for(asyncio.gather(later, elsewhere), 20)
    finally:
        await client.aclose()
    assert first.outputs == {"v": "first"}
    assert [result.outputs for result in results] == [{"v": "released"}, {"v": "released"}]


async def test_a_forged_cancel_notice_does_not_stop_a_step(
    redis_workers: RedisWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gate = Gate()
    await redis_workers.start(concurrency=1, functions=gate.functions())
    keys = QueueSettings.from_url(redis_workers.url).keys
    client = redis_client(redis_workers.url)
    try:
        async with RedisExecutor(QueueSettings.from_url(redis_workers.url), OPTIONS) as executor:
            calling = asyncio.create_task(executor.call(request(WAIT)))
            await gate.started.wait()
            [(entry_id, _)] = await client.xrange(keys.requests("default"))
            cancels = keys.cancels("default")
            await client.xadd(cancels, {ENTRY_FIELD: entry_id})
            other_signature = OTHER.sign(NOTICE, cancels.encode(), entry_id)
            await client.xadd(cancels, {ENTRY_FIELD: entry_id, SIGNATURE_FIELD: other_signature})
            await log_says(caplog, f"of {cancels}: its signature does not match")
            assert f"of {cancels}: it is not signed" in caplog.text
            gate.release.set()
            result = await asyncio.wait_for(calling, 10)
    finally:
        await client.aclose()
    assert result.outputs == {"v": "released"}


async def test_a_caller_with_another_token_fails_its_step_clearly(
    redis_workers: RedisWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    handle = await redis_workers.start(concurrency=1)
    started = time.monotonic()
    flow = remote_flow({"id": "a", "script": "outputs['v'] = 1"})
    result, _ = await run_remote(f"{redis_workers.url}&queue_timeout_s=1", flow, token="not-the-workers-token")
    assert time.monotonic() - started < 10
    error: Any = result.steps["a"].error
    assert error is not None and error.type == "ExecutorError"
    assert "was deleted with no reply: a worker refused it (does its --token-file hold this caller's" in error.message
    assert f"worker {handle.worker_id}: refusing entry" in caplog.text
    assert "its signature does not match (signed with another token" in caplog.text
    assert handle.worker.status().steps_done == 0


async def test_a_redis_user_limited_to_the_prefix_and_the_transport_commands_is_enough(
    redis_servers: RedisServers, tmp_path: Path
) -> None:
    server = redis_servers("--user", "default", "off", "--user", "dagrun", "on", ">dagrun-pass", *ACL_RULES.split())
    url = f"redis://dagrun:dagrun-pass@127.0.0.1:{server.port}/0"
    factory = RedisWorkers(url, tmp_path)
    client = redis_client(url)
    try:
        await factory.start(worker_id="acl-worker")
        result, _ = await run_remote(url, remote_flow({"id": "a", "script": "outputs['v'] = 1"}))
        assert result.status == RunStatus.SUCCEEDED and result.steps["a"].outputs == {"v": 1}
        assert [status.worker_id for status in await list_workers(url)] == ["acl-worker"]
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.set("elsewhere:key", "x")  # outside the prefix
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.flushall()
    finally:
        await client.aclose()
        await factory.close_all()
