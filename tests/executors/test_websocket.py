"""The WebSocket transport against real worker servers on 127.0.0.1: in process, and `dagrun worker ws`."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from dagrun import (
    ErrorKind,
    ExecutorError,
    MemoryStore,
    Orchestrator,
    RunStatus,
    StepStatus,
    WorkerUnavailable,
    parse_flow,
)
from dagrun.contract.envelope import encode_request
from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import open_executor
from executors.websocket import WebSocketExecutor, WebSocketWorkerServer, transport
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


async def raw_connection(url: str, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await connect(url, additional_headers=headers, compression=None, proxy=None)


async def test_round_trip_returns_outputs_context_and_logs(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    worker = await workers()
    server = await servers("ws", worker)
    script = "log('hello')\ncontext.incr('seen')\noutputs['v'] = inputs['x'] * 2"

    async with WebSocketExecutor(server.url, options) as executor:
        result = await executor.call(make_request(script, inputs={"x": 21}))

    assert result.ok, result.error
    assert result.outputs == {"v": 42}
    assert "hello" in result.logs
    assert [op.key for op in result.context_ops] == ["seen"]
    assert "/local:" in result.worker_id  # the worker, then its sandbox process
    assert worker.status().steps_done == 1


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


async def test_a_failing_script_is_a_failed_result_not_an_error(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    server = await servers("ws", await workers())
    async with WebSocketExecutor(server.url, options) as executor:
        result = await executor.call(make_request("x = 1 / 0"))
    assert not result.ok
    assert result.error is not None
    assert (result.error.kind, result.error.type) == (ErrorKind.SCRIPT, "ZeroDivisionError")


async def test_the_worker_enforces_the_step_timeout(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    server = await servers("ws", await workers())
    started = time.monotonic()
    async with WebSocketExecutor(server.url, options) as executor:
        result = await executor.call(make_request("while True:\n    pass", timeout_s=0.5))
    assert result.error is not None and result.error.kind == ErrorKind.TIMEOUT
    assert time.monotonic() - started < 5


async def test_host_functions_work_on_both_sides_of_the_wire(
    workers: WorkerFactory, servers: ServerFactory, run_remote: RunRemote, token: str
) -> None:
    """The orchestrator's functions serve local steps, the worker's serve remote steps."""
    worker = await workers(functions={"worker_side": lambda n: n + 100})
    server = await servers("ws", worker)
    document = remote_flow(
        [
            {"id": "local", "executor": "local", "script": "outputs['v'] = host_side(1)", "outputs": ["v"]},
            {
                "id": "remote",
                "depends_on": ["local"],
                "script": "outputs['v'] = worker_side(inputs['v'])",
                "inputs": {"v": "${steps.local.v}"},
            },
        ]
    )
    executors = {"remote": server.url}
    async with Orchestrator(
        MemoryStore(), executors=executors, token=token, functions={"host_side": lambda n: n + 10}, processes=1
    ) as orchestrator:
        result = await orchestrator.run(parse_flow(document))

    assert result.status == RunStatus.SUCCEEDED, result.steps
    assert result.steps["remote"].outputs == {"v": 111}


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


async def test_a_wrong_token_fails_the_call_clearly_and_never_shows_a_token(
    workers: WorkerFactory, servers: ServerFactory, token: str
) -> None:
    worker = await workers()
    server = await servers("ws", worker)
    wrong = "wrong-" + token[::-1]
    async with WebSocketExecutor(server.url, ExecutorOptions(token=wrong)) as executor:
        with pytest.raises(ExecutorError, match="refused the token") as refused:
            await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    message = str(refused.value)
    assert server.url in message
    assert token not in message and wrong not in message
    assert worker.status().steps_done == 0


def test_an_executor_without_a_token_is_refused_at_open() -> None:
    with pytest.raises(ExecutorError, match="no token"):
        open_executor("ws://127.0.0.1:9", ExecutorOptions())


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


async def test_a_worker_server_without_a_token_refuses_to_start(workers: WorkerFactory) -> None:
    worker = await workers(token=None)
    with pytest.raises(ExecutorError, match="needs a shared token"):
        WebSocketWorkerServer(worker)


async def test_a_port_in_use_is_a_clear_error(workers: WorkerFactory, servers: ServerFactory) -> None:
    first = await servers("ws", await workers())
    second = await workers(port=first.port)
    with pytest.raises(ExecutorError, match=f"cannot listen on 127.0.0.1:{first.port}: address already in use"):
        await servers("ws", second)


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


async def test_the_client_refuses_a_request_over_the_workers_limit(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    worker = await workers(max_message_bytes=1024)
    server = await servers("ws", worker)
    async with WebSocketExecutor(server.url, options) as executor:
        with pytest.raises(ExecutorError, match="over the worker's 1024-byte limit"):
            await executor.call(make_request(DOUBLE, inputs={"x": 1, "pad": "x" * 2000}))
        small = await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    assert small.ok
    assert worker.status().steps_done == 1


async def test_the_token_never_appears_in_logs(
    workers: WorkerFactory, servers: ServerFactory, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await servers("ws", await workers())
    async with WebSocketExecutor(server.url, ExecutorOptions(token=token)) as executor:
        await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    async with WebSocketExecutor(server.url, ExecutorOptions(token=token + "-wrong")) as executor:
        with pytest.raises(ExecutorError):
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


@pytest.mark.slow
async def test_a_worker_restarted_on_the_same_port_takes_over_requests_in_flight(
    workers: WorkerFactory, servers: ServerFactory, options: ExecutorOptions
) -> None:
    first_gate, second_gate = Gate(), Gate()
    second_gate.release.set()
    first = await workers(functions=first_gate.functions(), grace_s=0.2)
    server = await servers("ws", first)
    second = await workers(functions=second_gate.functions(), port=server.port)

    async with WebSocketExecutor(server.url, options) as executor:
        call = asyncio.ensure_future(executor.call(make_request("outputs['v'] = wait_release()")))
        await first_gate.started.wait()
        await server.aclose()  # the grace period ends: the step is cancelled, the connection closed
        await servers("ws", second)
        result = await asyncio.wait_for(call, 15)

    assert result.ok and result.outputs == {"v": "released"}
    assert second.status().steps_done == 1


@pytest.mark.slow
async def test_a_worker_that_is_down_fails_steps_after_their_retries(run_remote: RunRemote, token: str) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    retries = {"max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}
    document = remote_flow([{"id": "a", "script": DOUBLE}, {"id": "b", "script": DOUBLE}], retries=retries)
    document["steps"][0]["inputs"] = document["steps"][1]["inputs"] = {"x": 1}
    started = time.monotonic()

    result = await asyncio.wait_for(run_remote(url, document), 20)

    assert time.monotonic() - started < 5
    assert result.status == RunStatus.FAILED
    for outcome in result.steps.values():
        assert outcome.status == StepStatus.FAILED and outcome.attempts == 3
        assert outcome.error is not None and outcome.error.type == "WorkerUnavailable"
        assert url in outcome.error.message and "connection refused" in outcome.error.message
        assert token not in outcome.error.message


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
        url = f"ws://127.0.0.1:{worker.settings.port}?reconnect_s=0.3"
        async with WebSocketExecutor(url, options) as executor:
            in_flight = asyncio.ensure_future(executor.call(make_request("outputs['v'] = wait_release()")))
            await gate.started.wait()
            stop.set()
            await asyncio.sleep(0.1)
            with pytest.raises(WorkerUnavailable):
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
    server = await servers("ws", worker)
    async with WebSocketExecutor(f"{server.url}?reconnect_s=0.3", options) as executor:
        call = asyncio.ensure_future(executor.call(make_request("outputs['v'] = wait_release()")))
        await gate.started.wait()
        started = time.monotonic()
        await server.aclose()
        assert time.monotonic() - started < 3
        with pytest.raises(WorkerUnavailable):
            await asyncio.wait_for(call, 10)


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
    assert unauthorized[0] == 3 and b"token" in unauthorized[2]
    assert code == 0, log
    assert f"worker w-test listening on {url}" in log
    assert "run r-cli step s-cli attempt 1 succeeded" in log
    assert "worker w-test stopped" in log
    assert token not in log


@pytest.mark.slow
async def test_dagrun_worker_ws_on_a_port_in_use_exits_with_a_clear_message(worker_processes: WorkerProcesses) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = await worker_processes("ws", "--port", str(port), "--token-file", str(worker_processes.token_file))
        code, log = await worker.finish()

    assert code != 0
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log
    assert "Traceback" not in log


@pytest.mark.slow
async def test_dagrun_worker_ws_without_a_token_exits_with_a_clear_message(worker_processes: WorkerProcesses) -> None:
    worker = await worker_processes("ws", "--port", "0")
    code, log = await worker.finish()
    assert code != 0
    assert "needs a shared token" in log and "--token-file" in log
    assert "Traceback" not in log
