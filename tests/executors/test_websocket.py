"""What only the WebSocket transport does, against real worker servers on 127.0.0.1: one multiplexed
connection, its handshake and frames, WSS, /health, a dropped connection, and `dagrun worker ws` with
`dagrun run` and `dagrun workers`. What every transport does (results, failures, timeouts, cancel,
limits, tokens, stops, faults) is the executor contract's: tests/executors/contract/."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dagrun import ExecutorError, RunStatus, WorkerUnavailable
from dagrun.contract.envelope import encode_request
from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import open_executor
from executors.websocket import WebSocketExecutor
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
)

DOUBLE = "outputs['v'] = inputs['x'] * 2"


async def raw_connection(url: str, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(url, additional_headers=headers, compression=None, proxy=None)


async def test_executors_are_found_by_the_ws_scheme(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    server = await servers("ws", await workers())
    executor = open_executor(server.url, options)
    try:
        result = await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    finally:
        await executor.aclose()
    assert isinstance(executor, WebSocketExecutor)
    assert result.outputs == {"v": 2}


async def test_many_concurrent_requests_share_one_connection(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    worker = await workers()
    server = await servers("ws", worker)

    async with WebSocketExecutor(server.url, options) as executor:
        requests = [make_request(DOUBLE, step_id=f"s{n}", inputs={"x": n}) for n in range(300)]
        results = await asyncio.gather(*(executor.call(request) for request in requests))
        connections = len(server.connections)

    assert connections == 1
    assert [result.outputs["v"] for result in results] == [2 * n for n in range(300)]
    assert worker.status().steps_done == 300


async def test_wss_with_a_certificate_the_client_trusts(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions, certificate: Certificate
) -> None:
    worker = await workers(tls_cert_file=certificate.cert_file, tls_key_file=certificate.key_file)
    server = await servers("ws", worker)
    assert server.url.startswith("wss://")

    async with WebSocketExecutor(f"{server.url}?ca_file={certificate.cert_file}", options) as executor:
        result = await executor.call(make_request(DOUBLE, inputs={"x": 4}))
    async with WebSocketExecutor(server.url, options) as untrusting:
        with pytest.raises(WorkerUnavailable, match="certificate verify failed"):
            await untrusting.call(make_request(DOUBLE, inputs={"x": 4}))

    assert result.outputs == {"v": 8}


# --- security --------------------------------------------------------------------------------------


async def test_the_handshake_without_the_token_is_refused_before_the_upgrade(
    workers: WorkerFactory, servers: ServerFactory
) -> None:
    worker = await workers()
    server = await servers("ws", worker)
    for token in (None, "wrong-token-of-some-length"):
        with pytest.raises(InvalidStatus) as refused:
            await raw_connection(server.url, token)
        assert refused.value.response.status_code == 401
    assert worker.status().steps_done == 0


async def test_get_health_answers_the_workers_status_only_with_the_token(
    workers: WorkerFactory, servers: ServerFactory, token: str
) -> None:
    server = await servers("ws", await workers(worker_id="ws-health"))
    health = server.url.replace("ws://", "http://") + "/health"
    async with aiohttp.ClientSession() as session:
        for wrong in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}):
            async with session.get(health, headers=wrong) as refused:
                assert refused.status == 401
        async with session.get(health, headers={"Authorization": f"Bearer {token}"}) as answered:
            assert answered.status == 200 and answered.content_type == "application/json"
            document = await answered.json()
    assert (document["worker_id"], document["steps_done"], document["stopping"]) == ("ws-health", 0, False)
    assert document["limits"]["capacity"] > 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://127.0.0.1:9?bogus=1", "unknown option 'bogus'; known: ca_file, reconnect_s"),
        ("ws://127.0.0.1:9?reconnect_s=soon", "reconnect_s must be a number"),
        ("ws://user:secret@127.0.0.1:9", "credentials in the URL are not used"),
        ("ws://127.0.0.1:9?ca_file=/x.pem", "ca_file needs a TLS scheme"),
    ],
)
def test_url_options_are_checked_at_open(url: str, message: str, options: ExecutorOptions) -> None:
    with pytest.raises(ExecutorError, match=message) as refused:
        open_executor(url, options)
    assert "secret" not in str(refused.value)


async def test_malformed_or_wrong_version_requests_are_refused_by_id_and_run_nothing(
    workers: WorkerFactory, servers: ServerFactory, token: str
) -> None:
    worker = await workers()
    server = await servers("ws", worker)
    wrong_version = orjson.loads(encode_request(make_request(DOUBLE, inputs={"x": 1})))
    wrong_version["v"] = 99
    frames = {
        (1).to_bytes(8, "big"): b"Q{not json",
        (2).to_bytes(8, "big"): b"Q" + orjson.dumps(wrong_version),
        (3).to_bytes(8, "big"): b"Z",
    }
    connection = await raw_connection(server.url, token)
    try:
        for key, body in frames.items():
            await connection.send(key + body)
        replies = [await asyncio.wait_for(connection.recv(), 5) for _ in frames]
    finally:
        await connection.close()

    by_id = {reply[:8]: reply[8:] for reply in replies if isinstance(reply, bytes)}
    assert set(by_id) == set(frames)
    assert by_id[(1).to_bytes(8, "big")].startswith(b"Emalformed request envelope")
    assert by_id[(2).to_bytes(8, "big")].startswith(b"Emalformed request envelope: v:")
    assert by_id[(3).to_bytes(8, "big")].startswith(b"Eunknown frame kind")
    assert worker.status().steps_done == 0


async def test_a_text_frame_closes_the_connection_with_1003(
    workers: WorkerFactory, servers: ServerFactory, token: str
) -> None:
    server = await servers("ws", await workers())
    connection = await raw_connection(server.url, token)
    await connection.send('{"id": 1}')
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(connection.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


async def test_an_oversized_frame_closes_the_connection_with_1009_and_runs_nothing(
    workers: WorkerFactory, servers: ServerFactory, token: str
) -> None:
    worker = await workers(max_message_bytes=1024)
    server = await servers("ws", worker)
    envelope = encode_request(make_request(DOUBLE, inputs={"x": 1, "pad": "x" * 2000}))
    connection = await raw_connection(server.url, token)
    await connection.send((1).to_bytes(8, "big") + b"Q" + envelope)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(connection.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert worker.status().steps_done == 0


async def test_the_handshake_headers_are_logged_with_the_token_masked(
    workers: WorkerFactory, servers: ServerFactory, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await servers("ws", await workers())
    async with WebSocketExecutor(server.url, ExecutorOptions(token=token)) as executor:
        await executor.call(make_request(DOUBLE, inputs={"x": 1}))

    assert "Authorization" in caplog.text  # websockets logged the handshake headers, masked
    assert token not in caplog.text
    assert all(token not in record.getMessage() for record in caplog.records)


async def test_a_busy_worker_refuses_at_once_and_the_client_sends_again(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions, token: str
) -> None:
    gate = Gate()
    worker = await workers(functions=gate.functions(), sandbox=ONE_AT_A_TIME)
    server = await servers("ws", worker, max_queue_wait_s=0.2)
    connection = await raw_connection(server.url, token)
    held = encode_request(make_request("outputs['v'] = wait_release()"))
    await connection.send((1).to_bytes(8, "big") + b"Q" + held)
    await gate.started.wait()
    await connection.send((2).to_bytes(8, "big") + b"Q" + encode_request(make_request(DOUBLE, inputs={"x": 1})))
    started = await asyncio.wait_for(connection.recv(), 5)  # the held step has run a while: said started
    assert started == (1).to_bytes(8, "big") + b"S"
    busy = await asyncio.wait_for(connection.recv(), 5)
    assert busy == (2).to_bytes(8, "big") + b"B"

    async with WebSocketExecutor(server.url, options) as executor:
        queued = [asyncio.ensure_future(executor.call(make_request(DOUBLE, inputs={"x": n}))) for n in range(3)]
        await asyncio.sleep(0.5)  # long enough for busy refusals and resends
        gate.release.set()
        results = await asyncio.gather(*queued)
    await connection.close()

    assert [result.outputs["v"] for result in results] == [0, 2, 4]


# --- cancellation --------------------------------------------------------------------------------


async def test_cancel_frames_for_finished_or_unknown_requests_are_harmless(
    workers: WorkerFactory, servers: ServerFactory, token: str
) -> None:
    worker = await workers()
    server = await servers("ws", worker)
    connection = await raw_connection(server.url, token)
    try:
        first, second = (1).to_bytes(8, "big"), (2).to_bytes(8, "big")
        await connection.send(first + b"Q" + encode_request(make_request(DOUBLE, inputs={"x": 1})))
        assert (await asyncio.wait_for(connection.recv(), 10))[:9] == first + b"R"
        await connection.send(first + b"C")  # finished
        await connection.send((99).to_bytes(8, "big") + b"C")  # never sent
        await connection.send(second + b"Q" + encode_request(make_request(DOUBLE, inputs={"x": 2})))
        reply = await asyncio.wait_for(connection.recv(), 10)
    finally:
        await connection.close()
    assert isinstance(reply, bytes) and reply[:9] == second + b"R"
    assert orjson.loads(reply[9:])["outputs"] == {"v": 4}
    assert (worker.status().steps_done, worker.status().errors) == (2, 0)


# --- faults ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_dropped_connection_is_reopened_and_its_requests_sent_again(
    workers: WorkerFactory, servers: ServerFactory, run_remote: RunRemote
) -> None:
    gate = Gate()
    worker = await workers(functions=gate.functions())
    server = await servers("ws", worker)
    steps: list[dict[str, Any]] = [{"id": f"w{n}", "script": "outputs['v'] = wait_release()"} for n in range(4)]
    steps.append({"id": "join", "depends_on": [f"w{n}" for n in range(4)], "script": "outputs['v'] = 1"})
    run = asyncio.ensure_future(run_remote(server.url, remote_flow(steps)))
    await gate.started.wait()

    for connection in server.connections:
        connection.transport.abort()  # the network drops: no close frame
    gate.release.set()
    result = await asyncio.wait_for(run, 20)

    assert result.status == RunStatus.SUCCEEDED, result.steps
    assert all(outcome.attempts == 1 for outcome in result.steps.values())  # sent again, not retried
    assert gate.entered > 2  # some started twice: once before the drop, once after


# --- the `dagrun worker ws` command ----------------------------------------------------------------


@pytest.mark.slow
async def test_dagrun_worker_ws_serves_steps_and_exits_0_on_sigterm(
    worker_processes: WorkerProcesses, options: ExecutorOptions, token: str, tmp_path: Path
) -> None:
    worker = await worker_processes(
        "ws", "--port", "0", "--token-file", str(worker_processes.token_file), "--id", "w-test"
    )
    url = await worker.wait_listening()

    async with WebSocketExecutor(url, options) as executor:
        result = await executor.call(make_request(DOUBLE, inputs={"x": 5}, run_id="r-cli", step_id="s-cli"))
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps(remote_flow([{"id": "a", "script": "outputs['v'] = 7"}])))
    run = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "dagrun", "run", str(flow), "--executor", f"remote={url}", "--json"],
        *["--token-file", str(worker_processes.token_file), "--store", str(tmp_path / "store")],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(run.communicate(), 30)
    token_file = str(worker_processes.token_file)
    listed = await dagrun_command("workers", f"{url}?reconnect_s=3", "--token-file", token_file, "--json")
    unauthorized = await dagrun_command("workers", url)
    worker.process.send_signal(signal.SIGTERM)
    code, log = await worker.finish()

    assert result.outputs == {"v": 10}
    assert run.returncode == 0, err.decode()
    assert json.loads(out)["steps"]["a"]["outputs"] == {"v": 7}
    assert listed[0] == 0, listed[2]  # `dagrun workers` reads the worker's GET /health
    [status] = orjson.loads(listed[1])
    assert (status["worker_id"], status["contexts"], status["steps_done"]) == ("w-test", ["default"], 2)
    assert unauthorized[0] == 2 and b"token" in unauthorized[2]  # no token given: a bad argument
    assert code == 0, log
    assert f"worker w-test listening on {url}" in log
    assert "run r-cli step s-cli attempt 1 succeeded" in log
    assert "worker w-test stopped" in log
    assert token not in log
