"""What only the HTTP transport does, against real worker servers on 127.0.0.1: its status codes and
refusals on the wire, the pooled session, HTTPS, /health and `dagrun workers`. What every transport does
(results, failures, timeouts, cancel, limits, tokens, stops, faults) is the executor contract's:
tests/executors/contract/."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from dagrun.contract.dispatch import Dispatch
from dagrun.contract.envelope import encode_request
from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import open_executor
from executors.http import HttpExecutor
from executors.http.withdrawals import EARLY_WITHDRAWALS, Withdrawals
from tests.executors.conftest import (
    ONE_AT_A_TIME,
    Certificate,
    Gate,
    ServerFactory,
    WorkerFactory,
    WorkerProcesses,
    dagrun_command,
    make_request,
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


async def test_an_oversized_body_is_refused_with_413_and_runs_nothing(
    workers: WorkerFactory, servers: ServerFactory, raw: aiohttp.ClientSession, token: str
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


async def test_a_request_too_malformed_to_parse_is_400_and_one_log_line_without_the_token(
    workers: WorkerFactory, servers: ServerFactory, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await servers("http", await workers())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:  # a NUL byte in the token's header: aiohttp's parser refuses it before the worker sees it
        writer.write(b"POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\x00\r\n\r\n" % token.encode())
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    assert answer.partition(b"\r\n")[0].endswith(b" 400 Bad Request")
    logged = [record for record in caplog.records if "malformed request" in record.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING and logged[0].exc_info is None
    assert "Traceback" not in caplog.text and token not in caplog.text


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


# --- the `dagrun workers` command ----------------------------------------------------------------


@pytest.mark.slow
async def test_dagrun_workers_lists_an_http_worker_from_its_health(worker_processes: WorkerProcesses) -> None:
    worker = await worker_processes("http", "--port", "0", "--token-file", str(worker_processes.token_file))
    url = await worker.wait_listening()
    code, out, err = await dagrun_command("workers", url, "--token-file", str(worker_processes.token_file), "--json")
    assert code == 0, err
    [status] = orjson.loads(out)
    assert status["contexts"] == ["default"] and status["steps_done"] == 0
    assert status["worker_id"].endswith(f":{worker.process.pid}")
    code, _, err = await dagrun_command("workers", url)  # no token given: a bad argument
    assert code == 2
    assert b"token" in err


def test_a_withdrawal_that_comes_before_its_request_takes_it_back_on_arrival() -> None:
    withdrawals, early, held = Withdrawals(), Dispatch(), Dispatch()
    withdrawals.withdraw("early")  # POST /withdraw overtook its POST /execute
    withdrawals.hold("early", early)
    withdrawals.hold("held", held)
    withdrawals.hold("held-again", Dispatch())
    assert early.is_wanted_back and not held.is_wanted_back
    withdrawals.withdraw("held")
    assert held.is_wanted_back
    withdrawals.release("early")
    withdrawals.withdraw("late")  # for a request answered already, or that never comes: kept a while
    for n in range(EARLY_WITHDRAWALS):
        withdrawals.withdraw(f"gone-{n}")
    late = Dispatch()
    withdrawals.hold("late", late)
    assert not late.is_wanted_back  # the early withdrawals kept are bounded: the oldest went
