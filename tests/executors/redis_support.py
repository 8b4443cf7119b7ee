"""Helpers of the Redis transport suites: flows for remote steps, and a factory of workers (in-process
tasks or `python -m dagrun worker redis` processes) that stops every worker it started. Workers and
callers share TOKEN unless a test gives another."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from dagrun import Flow, MemoryStore, Orchestrator, RunResult, parse_flow
from dagrun.contract.executor import ExecutorOptions, HostFunction
from dagrun.sandbox import SandboxSettings
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from executors.redis_queue import QueueSettings, transport
from executors.redis_queue.signing import Signer
from tests.conftest import write_token_file

REPO = Path(__file__).resolve().parents[2]
TOKEN = "redis-suite-token-0123456789"  # the workers' shared token: requests and replies are signed with it
OPTIONS = ExecutorOptions(token=TOKEN)  # a caller's, for RedisExecutor and open_executor
SIGNER = Signer.from_token(TOKEN, who="the tests")

# A step that keeps its sandbox process busy for inputs['s'] seconds and says when it ran.
BUSY_SCRIPT = """
import datetime
started = datetime.datetime.now()
end = started + datetime.timedelta(seconds=inputs['s'])
while datetime.datetime.now() < end:
    pass
outputs['started'] = started.timestamp()
outputs['ended'] = datetime.datetime.now().timestamp()
"""


def remote_flow(*steps: dict[str, Any], name: str = "remote", timeout_s: float = 30) -> Flow:
    """A flow whose steps run on the executor named ``remote``."""
    return parse_flow({"name": name, "defaults": {"executor": "remote", "timeout_s": timeout_s}, "steps": list(steps)})


def busy_step(step_id: str, seconds: float, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "script": BUSY_SCRIPT, "inputs": {"s": seconds}, **fields}


async def run_remote(url: str, flow: Flow, *, token: str = TOKEN) -> tuple[RunResult, MemoryStore]:
    """Run `flow` with ``remote`` = `url` on a fresh MemoryStore (returned, still open, for its events)."""
    store = MemoryStore()
    async with Orchestrator(store, executors={"remote": url}, token=token) as orchestrator:
        result = await orchestrator.run(flow)
    return result, store


async def eventually(predicate: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> float:
    """Wait until `predicate` holds (checked every 50 ms); the seconds it took. Tests only."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def request_entry(
    stream: str, request_id: bytes, reply_stream: str, envelope: bytes, *, signer: Signer = SIGNER
) -> dict[bytes, bytes]:
    """The fields of a request entry for `stream` as a caller signs them, for a raw XADD."""
    fields = signer.request_fields(stream, request_id, reply_stream.encode(), envelope)
    return dict(zip(fields[::2], fields[1::2], strict=True))


def redis_client(url: str) -> aioredis.Redis:
    """A plain client of the server behind a queue URL (dagrun's query parameters removed)."""
    return aioredis.Redis.from_url(QueueSettings.from_url(url).redis_url)


@dataclass
class InProcessWorker:
    worker: ScriptWorker
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def worker_id(self) -> str:
        return self.worker.settings.worker_id

    async def aclose(self) -> None:
        self.stop.set()
        try:
            await asyncio.wait_for(self.task, timeout=60)
        finally:
            await self.worker.aclose()


@dataclass
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        return self.process.wait(timeout=timeout_s)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class RedisWorkers:
    """Starts workers on a queue URL, with a shared token, and stops every one it started."""

    def __init__(self, url: str, directory: Path, token: str = TOKEN) -> None:
        self.url = url
        self.token = token
        self.token_file = write_token_file(directory / "redis-token", token)
        self._directory = directory
        self._in_process: list[InProcessWorker] = []
        self._processes: list[WorkerProcess] = []

    async def start(
        self,
        *,
        contexts: tuple[str, ...] = ("default",),
        concurrency: int = 2,
        worker_id: str | None = None,
        url: str | None = None,
        grace_s: float = 10.0,
        functions: Mapping[str, HostFunction] | None = None,
        token: str | None = None,
    ) -> InProcessWorker:
        """A worker serving in this event loop (with these host functions; `token` instead of the shared
        one), ready (its heartbeat is in Redis) when returned."""
        worker_id = worker_id or f"w{len(self._in_process) + len(self._processes) + 1}-{os.getpid()}"
        sandbox = SandboxSettings(processes=concurrency, memory_mb=256, startup_timeout_s=20.0)
        settings = WorkerSettings(
            url=url or self.url,
            contexts=contexts,
            concurrency=concurrency,
            grace_s=grace_s,
            worker_id=worker_id,
            sandbox=sandbox,
            token=token or self.token,
        )
        worker = ScriptWorker(settings, functions=functions)
        await worker.__aenter__()
        stop = asyncio.Event()
        task = asyncio.create_task(transport.serve_worker(worker, stop))
        handle = InProcessWorker(worker, stop, task)
        self._in_process.append(handle)
        await self.wait_ready(worker_id, url=url, task=task)
        return handle

    def spawn(
        self,
        *,
        contexts: tuple[str, ...] = ("default",),
        concurrency: int = 1,
        worker_id: str | None = None,
        grace_s: float = 10.0,
    ) -> WorkerProcess:
        """A `python -m dagrun worker redis` process; wait for it with `wait_ready`."""
        worker_id = worker_id or f"p{len(self._in_process) + len(self._processes) + 1}-{os.getpid()}"
        log = self._directory / f"{worker_id}.log"
        args = [sys.executable, "-m", "dagrun", "worker", "redis", self.url, "--concurrency", str(concurrency)]
        args += ["--id", worker_id, "--grace", str(grace_s), "--token-file", str(self.token_file)]
        for context_id in contexts:
            args += ["--context", context_id]
        with log.open("wb") as out:
            process = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        handle = WorkerProcess(worker_id, process, log)
        self._processes.append(handle)
        return handle

    async def wait_ready(
        self, worker_id: str, *, url: str | None = None, task: asyncio.Task[None] | None = None, timeout_s: float = 30
    ) -> None:
        client = redis_client(url or self.url)
        key = QueueSettings.from_url(url or self.url).keys.heartbeat(worker_id)

        async def has_heartbeat() -> bool:
            if task is not None and task.done():
                task.result()  # surfaces why it stopped
                raise AssertionError(f"worker {worker_id} stopped before it was ready")
            return bool(await client.exists(key))

        try:
            await eventually(has_heartbeat, timeout_s=timeout_s, what=f"worker {worker_id} ready")
        finally:
            await client.aclose()

    async def close_all(self) -> None:
        for handle in self._processes:
            handle.kill(signal.SIGKILL)
        for handle in self._processes:
            handle.wait()
        errors = []
        for worker in reversed(self._in_process):
            try:
                await worker.aclose()
            except Exception as exc:  # close the others anyway; report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]
