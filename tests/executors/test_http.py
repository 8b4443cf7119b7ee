"""The HTTP transport against real worker servers on 127.0.0.1: in process, and `dagrun worker http`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from dagrun import ErrorKind, ExecutorError, RunStatus, StepStatus, WorkerUnavailable
from dagrun.contract.envelope import encode_request
from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import open_executor
from executors.http import HttpExecutor, HttpWorkerServer, transport
from tests.conftest import free_port
from tests.executors.conftest import (
    ONE_AT_A_TIME,
    Certificate,
    Gate,
    RunRemote,
    ServerFactory,
    WorkerFactory,
    WorkerProcesses,
    dagrun_command,
    make_request,
    remote_flow,
    wait_listening,
)

DOUBLE = "outputs['v'] = inputs['x'] * 2"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def raw() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, for requests the executor would never send."""
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **JSON}


async def test_round_trip_returns_outputs_context_and_logs(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    worker = await workers()
    server = await servers("http", worker)
    script = "log('hello')\ncontext.incr('seen')\noutputs['v'] = inputs['x'] * 2"

    async with HttpExecutor(server.url, options) as executor:
        result = await executor.call(make_request(script, inputs={"x": 21}))

    assert result.ok, result.error
    assert result.outputs == {"v": 42}
    assert "hello" in result.logs
    assert [op.key for op in result.context_ops] == ["seen"]
    assert worker.status().steps_done == 1


async def test_many_concurrent_requests_over_the_pooled_session(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    worker = await workers()
    server = await servers("http", worker)
    executor = open_executor(server.url + "?connections=8", options)
    try:
        requests = [make_request(DOUBLE, step_id=f"s{n}", inputs={"x": n}) for n in range(200)]
        results = await asyncio.gather(*(executor.call(request) for request in requests))
    finally:
        await executor.aclose()

    assert isinstance(executor, HttpExecutor)
    assert [result.outputs["v"] for result in results] == [2 * n for n in range(200)]
    assert worker.status().steps_done == 200


async def test_failures_and_timeouts_are_failed_results(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    server = await servers("http", await workers())
    async with HttpExecutor(server.url, options) as executor:
        failed = await executor.call(make_request("x = 1 / 0"))
        timed_out = await executor.call(make_request("while True:\n    pass", timeout_s=0.5))
    assert failed.error is not None and failed.error.type == "ZeroDivisionError"
    assert timed_out.error is not None and timed_out.error.kind == ErrorKind.TIMEOUT


async def test_the_workers_host_functions_serve_remote_steps(
    workers: WorkerFactory, servers: ServerFactory, run_remote: RunRemote
) -> None:
    server = await servers("http", await workers(functions={"worker_side": lambda n: n + 100}))
    document = remote_flow([{"id": "a", "script": "outputs['v'] = worker_side(1)"}])
    result = await run_remote(server.url, document)
    assert result.status == RunStatus.SUCCEEDED, result.steps
    assert result.steps["a"].outputs == {"v": 101}


async def test_https_with_a_certificate_the_client_trusts(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions, certificate: Certificate
) -> None:
    worker = await workers(tls_cert_file=certificate.cert_file, tls_key_file=certificate.key_file)
    server = await servers("http", worker)
    assert server.url.startswith("https://")
    async with HttpExecutor(f"{server.url}?ca_file={certificate.cert_file}", options) as executor:
        result = await executor.call(make_request(DOUBLE, inputs={"x": 4}))
    assert result.outputs == {"v": 8}


async def test_health_reports_the_worker_status(
    workers: WorkerFactory, servers: ServerFactory, raw: aiohttp.ClientSession, token: str
) -> None:
    worker = await workers(worker_id="w-health")
    server = await servers("http", worker)
    async with raw.get(f"{server.url}/health", headers=bearer(token)) as response:
        assert response.status == 200
        health = await response.json()
    assert health["worker_id"] == "w-health"
    assert health["steps_done"] == 0 and health["stopping"] is False
    assert health["limits"] == {"running": 8, "pipeline_depth": 4, "capacity": 16, "max_message_bytes": 16 << 20}


# --- security --------------------------------------------------------------------------------------


async def test_requests_without_the_token_are_refused_before_the_body_is_read(
    workers: WorkerFactory, servers: ServerFactory, raw: aiohttp.ClientSession, token: str
) -> None:
    worker = await workers()
    server = await servers("http", worker)
    body = encode_request(make_request(DOUBLE, inputs={"x": 1}))
    for headers in (JSON, bearer("wrong-token-of-some-length"), {"Authorization": token, **JSON}):
        async with raw.post(f"{server.url}/execute", data=body, headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["code"] == "unauthorized"
    for path in ("/health", "/nowhere"):  # the token is checked before routing, too
        async with raw.get(f"{server.url}{path}") as response:
            assert response.status == 401
    assert worker.status().steps_done == 0


async def test_a_wrong_token_fails_the_call_clearly_and_never_shows_a_token(
    workers: WorkerFactory, servers: ServerFactory, token: str
) -> None:
    worker = await workers()
    server = await servers("http", worker)
    wrong = "wrong-" + token[::-1]
    async with HttpExecutor(server.url, ExecutorOptions(token=wrong)) as executor:
        with pytest.raises(ExecutorError, match="refused the token") as refused:
            await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    message = str(refused.value)
    assert server.url in message
    assert token not in message and wrong not in message
    assert worker.status().steps_done == 0


def test_an_executor_without_a_token_is_refused_at_open() -> None:
    with pytest.raises(ExecutorError, match="no token"):
        open_executor("https://127.0.0.1:9", ExecutorOptions())


async def test_a_worker_server_without_a_token_refuses_to_start(workers: WorkerFactory) -> None:
    worker = await workers(token=None)
    with pytest.raises(ExecutorError, match="needs a shared token"):
        HttpWorkerServer(worker)


async def test_a_port_in_use_is_a_clear_error(workers: WorkerFactory, servers: ServerFactory) -> None:
    first = await servers("http", await workers())
    second = await workers(port=first.port)
    with pytest.raises(ExecutorError, match=f"cannot listen on 127.0.0.1:{first.port}: address already in use"):
        await servers("http", second)


async def test_an_oversized_body_is_refused_with_413_and_runs_nothing(
    workers: WorkerFactory, servers: ServerFactory, raw: aiohttp.ClientSession, token: str, options: ExecutorOptions
) -> None:
    worker = await workers(max_message_bytes=1024)
    server = await servers("http", worker)
    body = encode_request(make_request(DOUBLE, inputs={"x": 1, "pad": "x" * 2000}))

    async with raw.post(f"{server.url}/execute", data=body, headers=bearer(token)) as declared:
        assert declared.status == 413
        assert "over the 1024-byte limit" in (await declared.json())["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: client_max_size stops it
        yield body

    async with raw.post(f"{server.url}/execute", data=chunks(), headers=bearer(token)) as chunked:
        assert chunked.status == 413
        assert (await chunked.json())["code"] == "too_large"

    async with HttpExecutor(server.url, options) as executor:
        with pytest.raises(ExecutorError, match="over the worker's 1024-byte limit"):
            await executor.call(make_request(DOUBLE, inputs={"x": 1, "pad": "x" * 2000}))
    assert worker.status().steps_done == 0


async def test_malformed_json_and_a_wrong_version_get_400_and_run_nothing(
    workers: WorkerFactory, servers: ServerFactory, raw: aiohttp.ClientSession, token: str
) -> None:
    worker = await workers()
    server = await servers("http", worker)
    wrong_version = orjson.loads(encode_request(make_request(DOUBLE, inputs={"x": 1})))
    wrong_version["v"] = 99

    for body, expected in ((b"{not json", "malformed request envelope"), (orjson.dumps(wrong_version), "v:")):
        async with raw.post(f"{server.url}/execute", data=body, headers=bearer(token)) as response:
            assert response.status == 400
            refusal = await response.json()
        assert refusal["code"] == "malformed" and expected in refusal["error"]
    assert worker.status().steps_done == 0


async def test_the_token_never_appears_in_logs(
    workers: WorkerFactory, servers: ServerFactory, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await servers("http", await workers())
    async with HttpExecutor(server.url, ExecutorOptions(token=token)) as executor:
        await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    async with HttpExecutor(server.url, ExecutorOptions(token=token + "-wrong")) as executor:
        with pytest.raises(ExecutorError):
            await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    assert "missing or wrong token" in caplog.text
    assert token not in caplog.text


async def test_a_busy_worker_answers_503_at_once_and_the_client_sends_again(
    workers: WorkerFactory, servers: ServerFactory, raw: aiohttp.ClientSession, token: str, options: ExecutorOptions
) -> None:
    gate = Gate()
    worker = await workers(functions=gate.functions(), sandbox=ONE_AT_A_TIME)
    server = await servers("http", worker, max_queue_wait_s=0.2)
    held = asyncio.ensure_future(
        raw.post(
            f"{server.url}/execute",
            data=encode_request(make_request("outputs['v'] = wait_release()")),
            headers=bearer(token),
        )
    )
    await gate.started.wait()
    body = encode_request(make_request(DOUBLE, inputs={"x": 1}))
    async with raw.post(f"{server.url}/execute", data=body, headers=bearer(token)) as busy:
        assert busy.status == 503 and (await busy.json())["code"] == "busy"

    async with HttpExecutor(server.url, options) as executor:
        queued = [asyncio.ensure_future(executor.call(make_request(DOUBLE, inputs={"x": n}))) for n in range(3)]
        await asyncio.sleep(0.5)  # long enough for busy refusals and resends
        gate.release.set()
        results = await asyncio.gather(*queued)
    (await held).release()

    assert [result.outputs["v"] for result in results] == [0, 2, 4]


# --- cancellation --------------------------------------------------------------------------------


# --- faults ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_worker_that_is_down_fails_steps_after_their_retries(run_remote: RunRemote, token: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    retries = {"max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}
    steps = [{"id": "a", "script": DOUBLE, "inputs": {"x": 1}}, {"id": "b", "script": DOUBLE, "inputs": {"x": 2}}]
    started = time.monotonic()

    result = await asyncio.wait_for(run_remote(url, remote_flow(steps, retries=retries)), 20)

    assert time.monotonic() - started < 5
    assert result.status == RunStatus.FAILED
    for outcome in result.steps.values():
        assert outcome.status == StepStatus.FAILED and outcome.attempts == 3
        assert outcome.error is not None and outcome.error.type == "WorkerUnavailable"
        assert url in outcome.error.message and "connection refused" in outcome.error.message
        assert token not in outcome.error.message


@pytest.mark.slow
async def test_a_worker_restarted_on_the_same_port_within_its_reconnect_window_serves_the_run(
    workers: WorkerFactory, servers: ServerFactory, run_remote: RunRemote
) -> None:
    first_gate, second_gate = Gate(), Gate()
    second_gate.release.set()
    first = await workers(functions=first_gate.functions(), grace_s=0.2)
    server = await servers("http", first)
    second = await workers(functions=second_gate.functions(), port=server.port)
    retries = {"max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}  # all spent in well under a second
    steps = [{"id": "a", "script": "outputs['v'] = wait_release()"}, {"id": "b", "script": DOUBLE, "inputs": {"x": 2}}]
    steps[1]["depends_on"] = ["a"]
    run = asyncio.ensure_future(run_remote(server.url, remote_flow(steps, retries=retries)))
    await first_gate.started.wait()

    await server.aclose()  # the grace period ends: the step is cancelled, the connection closed
    await asyncio.sleep(1.5)  # the worker is down: its port refuses connections
    await servers("http", second)
    result = await asyncio.wait_for(run, 20)

    assert result.status == RunStatus.SUCCEEDED, result.steps
    assert result.steps["a"].outputs == {"v": "released"} and result.steps["b"].outputs == {"v": 4}
    assert all(outcome.attempts == 1 for outcome in result.steps.values())  # waited for, not retried
    assert second.status().steps_done == 2


@pytest.mark.slow
async def test_a_graceful_stop_drains_the_step_in_flight_and_refuses_new_ones(
    workers: WorkerFactory, options: ExecutorOptions
) -> None:
    gate = Gate()
    worker = await workers(functions=gate.functions(), port=free_port())
    stop = asyncio.Event()
    serving = asyncio.ensure_future(transport.serve_worker(worker, stop))
    try:
        await wait_listening(worker.settings.port)
        url = f"http://127.0.0.1:{worker.settings.port}?reconnect_s=0.3"
        async with HttpExecutor(url, options) as executor:
            in_flight = asyncio.ensure_future(executor.call(make_request("outputs['v'] = wait_release()")))
            await gate.started.wait()
            stop.set()
            await asyncio.sleep(0.1)
            with pytest.raises(WorkerUnavailable, match="stopping"):
                await executor.call(make_request(DOUBLE, inputs={"x": 1}))
            gate.release.set()
            result = await asyncio.wait_for(in_flight, 10)
        await asyncio.wait_for(serving, 10)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)

    assert result.ok and result.outputs == {"v": "released"}
    assert worker.status().steps_done == 1


@pytest.mark.slow
async def test_a_step_still_running_after_the_grace_period_is_cancelled(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    gate = Gate()
    worker = await workers(functions=gate.functions(), grace_s=0.3)
    server = await servers("http", worker)
    async with HttpExecutor(f"{server.url}?reconnect_s=0.3", options) as executor:
        call = asyncio.ensure_future(executor.call(make_request("outputs['v'] = wait_release()")))
        await gate.started.wait()
        started = time.monotonic()
        await server.aclose()
        assert time.monotonic() - started < 3
        with pytest.raises(WorkerUnavailable):
            await asyncio.wait_for(call, 10)


@pytest.mark.slow
async def test_dagrun_worker_http_serves_steps_and_exits_0_on_sigterm(
    worker_processes: WorkerProcesses, options: ExecutorOptions, token: str
) -> None:
    worker = await worker_processes("http", "--port", "0", "--token-file", str(worker_processes.token_file))
    url = await worker.wait_listening()
    async with HttpExecutor(url, options) as executor:
        result = await executor.call(make_request(DOUBLE, inputs={"x": 5}, run_id="r-cli", step_id="s-cli"))
    worker.process.send_signal(signal.SIGTERM)
    code, log = await worker.finish()

    assert result.outputs == {"v": 10}
    assert code == 0, log
    assert "run r-cli step s-cli attempt 1 succeeded" in log
    assert token not in log


@pytest.mark.slow
async def test_dagrun_workers_lists_an_http_worker_from_its_health(worker_processes: WorkerProcesses) -> None:
    worker = await worker_processes("http", "--port", "0", "--token-file", str(worker_processes.token_file))
    url = await worker.wait_listening()
    code, out, err = await dagrun_command("workers", url, "--token-file", str(worker_processes.token_file), "--json")
    assert code == 0, err
    [status] = orjson.loads(out)
    assert status["contexts"] == ["default"] and status["steps_done"] == 0
    assert status["worker_id"].endswith(f":{worker.process.pid}")
    code, _, err = await dagrun_command("workers", url)
    assert code == 3
    assert b"401" in err or b"token" in err
