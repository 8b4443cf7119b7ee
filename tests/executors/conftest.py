"""Fixtures for the WebSocket and HTTP suites: a token, worker factories and in-process worker servers.

`workers` starts ScriptWorkers (small sandbox pools) and `servers` serves them on 127.0.0.1 port 0
over ``ws`` or ``http``; both close everything they started at teardown, servers first. `run_remote`
runs a flow whose steps use the executor ``remote`` against a URL, through a real Orchestrator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, overload

import pytest

from dagrun import MemoryStore, Orchestrator, RunResult, parse_flow
from dagrun.contract.executor import ExecutorOptions, HostFunction, StepRequest, script_hash
from dagrun.sandbox import SandboxSettings
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from executors.http import HttpWorkerServer
from executors.websocket import WebSocketWorkerServer
from tests.conftest import self_signed_certificate, write_token_file
from tests.executors.redis_support import RedisWorkers

SANDBOX = SandboxSettings(processes=2, memory_mb=256, startup_timeout_s=20.0)
ONE_AT_A_TIME = dataclasses.replace(SANDBOX, processes=1, pipeline_depth=1)  # a worker that is easily busy

Server = WebSocketWorkerServer | HttpWorkerServer


def make_request(script: str, **fields: Any) -> StepRequest:
    """A request for `script`; fields override run_id, step_id, attempt, inputs, context, timeout_s ..."""
    values: dict[str, Any] = {
        "run_id": "run-1",
        "step_id": "step-1",
        "attempt": 1,
        "inputs": {},
        "context": {},
        "timeout_s": 10.0,
    }
    values.update(fields)
    return StepRequest(script=script, script_hash=script_hash(script), **values)


@pytest.fixture
def token() -> str:
    return "tok-" + secrets.token_hex(16)


@pytest.fixture
def options(token: str) -> ExecutorOptions:
    return ExecutorOptions(token=token)


class WorkerFactory:
    """Starts ScriptWorkers with the test's token and closes every one it started."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.workers: list[ScriptWorker] = []

    async def __call__(self, functions: Mapping[str, HostFunction] | None = None, **settings: Any) -> ScriptWorker:
        values: dict[str, Any] = {"token": self.token, "concurrency": 2, "grace_s": 5.0, "sandbox": SANDBOX}
        values.update(settings)
        worker = ScriptWorker(WorkerSettings(**values), functions=functions)
        self.workers.append(worker)
        await worker.__aenter__()
        return worker

    async def close_all(self) -> None:
        for worker in reversed(self.workers):
            await worker.aclose()


@pytest.fixture
async def workers(token: str) -> AsyncIterator[WorkerFactory]:
    factory = WorkerFactory(token)
    try:
        yield factory
    finally:
        await factory.close_all()


class ServerFactory:
    """Serves workers on 127.0.0.1 (port 0 unless given) and stops every server it started."""

    def __init__(self) -> None:
        self.servers: list[Server] = []

    @overload
    async def __call__(
        self, kind: Literal["ws"], worker: ScriptWorker, *, max_queue_wait_s: float = ...
    ) -> WebSocketWorkerServer: ...

    @overload
    async def __call__(
        self, kind: Literal["http"], worker: ScriptWorker, *, max_queue_wait_s: float = ...
    ) -> HttpWorkerServer: ...

    async def __call__(self, kind: str, worker: ScriptWorker, *, max_queue_wait_s: float = 5.0) -> Server:
        server: Server
        if kind == "ws":
            server = WebSocketWorkerServer(worker, max_queue_wait_s=max_queue_wait_s)
        else:
            server = HttpWorkerServer(worker, max_queue_wait_s=max_queue_wait_s)
        self.servers.append(server)
        await server.start()
        return server

    async def stop_all(self) -> None:
        for server in reversed(self.servers):
            await server.aclose()


@pytest.fixture
async def servers(workers: WorkerFactory) -> AsyncIterator[ServerFactory]:
    factory = ServerFactory()
    try:
        yield factory
    finally:
        await factory.stop_all()  # before the workers (this fixture depends on `workers`)


RunRemote = Callable[..., Awaitable[RunResult]]


def remote_flow(steps: list[dict[str, Any]], *, retries: Mapping[str, Any] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"executor": "remote", "timeout_s": 10}
    if retries:
        defaults["retries"] = dict(retries)
    return {"name": "remote", "defaults": defaults, "steps": steps}


@pytest.fixture
def run_remote(token: str) -> RunRemote:
    async def run(url: str, document: Mapping[str, Any], *, run_token: str | None = None) -> RunResult:
        store = MemoryStore()
        async with Orchestrator(store, executors={"remote": url}, token=run_token or token) as orchestrator:
            return await orchestrator.run(parse_flow(dict(document)))

    return run


@dataclasses.dataclass(frozen=True)
class Certificate:
    cert_file: str
    key_file: str


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 (the client trusts it through ``?ca_file=``)."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    return Certificate(str(cert), str(key))


class WorkerProcess:
    """`python -m dagrun worker KIND ...` as a child process; `url` once it said where it listens."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.url = ""
        self.stderr_lines: list[str] = []

    async def wait_listening(self, timeout_s: float = 30.0) -> str:
        """The URL from the worker's 'listening on' line; AssertionError with its output when it exits."""
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = (await self.process.stderr.readline()).decode()
                if not line:
                    raise AssertionError("worker exited before listening:\n" + "".join(self.stderr_lines))
                self.stderr_lines.append(line)
                found = LISTENING.search(line)
                if found:
                    self.url = found.group(1)
                    return self.url

    async def finish(self, timeout_s: float = 30.0) -> tuple[int, str]:
        """Wait for the exit; the exit code and everything it wrote on stderr."""
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout_s):
            rest = await self.process.stderr.read()
            code = await self.process.wait()
        return code, "".join(self.stderr_lines) + rest.decode()


LISTENING = re.compile(r"listening on ((?:ws|http)s?://[\d.]+:\d+)")


class WorkerProcesses:
    """Starts `dagrun worker` processes and kills every one still running at teardown."""

    def __init__(self, directory: Path, token: str) -> None:
        self.token_file = write_token_file(directory / "token", token)
        self.started: list[WorkerProcess] = []

    async def __call__(self, kind: str, *args: str) -> WorkerProcess:
        command = [sys.executable, "-m", "dagrun", "worker", kind, "--host", "127.0.0.1", *args]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        worker = WorkerProcess(process)
        self.started.append(worker)
        return worker

    async def kill_all(self) -> None:
        for worker in self.started:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()


@pytest.fixture
async def worker_processes(tmp_path: Path, token: str) -> AsyncIterator[WorkerProcesses]:
    factory = WorkerProcesses(tmp_path, token)
    try:
        yield factory
    finally:
        await factory.kill_all()


class Gate:
    """Host functions that let a test see a script running (`mark_started`, then the script may spin) and
    hold it there until released (`wait_release`)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.entered = 0

    async def mark_started(self) -> None:
        self.entered += 1
        self.started.set()

    async def wait_release(self) -> str:
        await self.mark_started()
        await self.release.wait()
        return "released"

    def functions(self) -> dict[str, HostFunction]:
        return {"mark_started": self.mark_started, "wait_release": self.wait_release}


SPIN = "mark_started()\nwhile True:\n    pass"  # a step that runs until its process is killed


async def no_step_running(worker: ScriptWorker, *, timeout_s: float = 10.0) -> None:
    """Wait until `worker` runs no step. Tests only: a worker's status has no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while worker.status().current:
            await asyncio.sleep(0.02)


async def dagrun_command(*args: str, timeout_s: float = 30) -> tuple[int, bytes, bytes]:
    """`python -m dagrun ARGS` as a child process: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dagrun", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out, err


@pytest.fixture
async def redis_workers(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisWorkers]:
    """Redis workers for one test (in process or as `dagrun worker redis` processes), all closed after it."""
    factory = RedisWorkers(redis_url, tmp_path)
    try:
        yield factory
    finally:
        await factory.close_all()
