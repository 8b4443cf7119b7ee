"""The transports under the executor contract: one Target per transport, and what applies to it.

A Target reaches its transport through public interfaces only: executors from `open_executor` (inline's
from its class, so that the suite does not depend on the installed entry points), workers as `ScriptWorker`s
served by `find_worker_transport(scheme).serve_worker` or as `dagrun worker KIND` processes, their status
from `ScriptWorker.status` or the transport's `list_workers`. Every worker runs one step at a time in one
sandbox process, with the worker-side host functions of `HostSide`. `capabilities` say which contract
cases apply: a case that needs what a Target lacks is not made for it. A new transport needs one Target class here
and one entry in `conftest.TARGETS`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from dagrun.contract.executor import Executor, ExecutorOptions, HostFunction
from dagrun.contract.transport import WorkerStatus, find_transport, open_executor
from dagrun.errors import ExecutorError
from dagrun.sandbox import SandboxSettings
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from dagrun.worker.transport import find_worker_transport
from executors.inline import InlineExecutor
from tests.conftest import RedisServer, free_port, write_token_file
from tests.executors.conftest import Gate
from tests.executors.redis_support import REPO, WorkerProcess

TOKEN = "contract-token-" + secrets.token_hex(8)  # every worker's and, unless a case says otherwise, caller's
LIMIT_BYTES = 64 * 1024  # every worker's max_message_bytes
SANDBOX = SandboxSettings(processes=1, pipeline_depth=1, memory_mb=256, startup_timeout_s=20.0)
READY_TIMEOUT_S = 30.0
_worker_numbers = itertools.count(1)


class Capability(enum.Enum):
    STATUS = "the status of the worker that runs a caller's steps can be read (steps done, errors, current)"
    SIZE_LIMIT = "the worker refuses a request over its max_message_bytes"
    CALLER_KNOWS_LIMIT = "the caller learns the worker's size limit and refuses a request over it before sending"
    TOKEN = "callers and workers share a token; a caller with another one is refused"
    SERVER = "workers are served by serve_worker, in process or as `dagrun worker` processes"
    LISTENS = "a worker listens on a host and port of its own"
    REDELIVERY = "the step of a killed worker runs again on a live worker of the same place"
    RECONNECT = "a call waits, within its patience, for its worker to come back at the same address"
    REFUSES_WHILE_STOPPING = "a stopping worker refuses new calls at once (WorkerUnavailable)"


class HostSide:
    """The worker side's host functions; `gate` is replaced for each test, the functions stay."""

    def __init__(self) -> None:
        self.gate = Gate()

    async def mark_started(self) -> None:
        await self.gate.mark_started()

    async def wait_release(self) -> str:
        return await self.gate.wait_release()

    @staticmethod
    def worker_side(number: int) -> int:
        return number + 100

    def functions(self) -> dict[str, HostFunction]:
        return {"mark_started": self.mark_started, "wait_release": self.wait_release, "worker_side": self.worker_side}


def new_worker_id(kind: str) -> str:
    return f"{kind}-{os.getpid()}-{next(_worker_numbers)}"


async def eventually(
    predicate: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Wait until `predicate` holds, asking every 50 ms. Tests only: a worker's readiness has no event."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


class Target:
    """A transport's side of the suite: opens executors whose steps run on a worker it started."""

    name = ""
    capabilities: frozenset[Capability] = frozenset()

    def __init__(self) -> None:
        self.host = HostSide()

    def open(self, *, token: str | None = TOKEN, patience_s: float | None = None) -> Executor:
        """An executor whose steps run on this target's worker (started on first use); the caller closes it.
        `patience_s`: how long a call waits for a worker that went away (remote transports)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start the worker side that `open`'s executors reach."""

    def status(self, executor: Executor) -> WorkerStatus:
        """The status of the worker that runs `executor`'s steps (Capability.STATUS)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Stop everything this target started."""


class LocalTarget(Target):
    """`local://`: each executor is its own worker (a sandbox pool); nothing to stop, no status to read."""

    name = "local"

    def open(self, *, token: str | None = TOKEN, patience_s: float | None = None) -> Executor:
        url = f"local://?processes={SANDBOX.processes}&pipeline_depth=1&memory_mb={SANDBOX.memory_mb}"
        return open_executor(url, ExecutorOptions(functions=self.host.functions(), token=token))


class InlineTarget(Target):
    """`inline`: each executor owns a ScriptWorker and hands it envelopes."""

    name = "inline"
    capabilities = frozenset({Capability.STATUS, Capability.SIZE_LIMIT})

    def open(self, *, token: str | None = TOKEN, patience_s: float | None = None) -> Executor:
        settings = worker_settings(worker_id=new_worker_id("inline"))
        return InlineExecutor(settings, ExecutorOptions(functions=self.host.functions(), token=token))

    def status(self, executor: Executor) -> WorkerStatus:
        assert isinstance(executor, InlineExecutor)
        return executor.worker.status()


def worker_settings(**changes: Any) -> WorkerSettings:
    """A worker of the suite: one step at a time, the suite's token and size limit; `changes` override."""
    values: dict[str, Any] = {
        "token": TOKEN,
        "concurrency": 1,
        "grace_s": 5.0,
        "sandbox": SANDBOX,
        "max_message_bytes": LIMIT_BYTES,
    }
    return WorkerSettings(**(values | changes))


@dataclasses.dataclass
class ServedWorker:
    """A ScriptWorker served in this event loop at `url` until `stop` is set."""

    url: str
    worker: ScriptWorker
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def aclose(self) -> None:
        """Stop serving and close the worker. How serving ended is the case's to check (await `task`)."""
        self.stop.set()
        try:
            await asyncio.wait_for(asyncio.gather(self.task, return_exceptions=True), READY_TIMEOUT_S)
        finally:
            await self.worker.aclose()


class RemoteTarget(Target):
    """A transport with worker servers: a shared worker for the quick cases, fresh places for the faults.

    A place is a URL at which workers serve and callers reach them; each transport says how to make one
    (`new_place`), what a worker's settings are for it (`place_settings`), how a caller says its patience
    (`with_patience`) and what `dagrun worker` needs to serve it (`command_args`)."""

    scheme = ""
    capabilities = frozenset({Capability.STATUS, Capability.SIZE_LIMIT, Capability.TOKEN, Capability.SERVER})
    refusal_logged = ""  # what a worker logs when it refuses a caller's token

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.token_file = write_token_file(directory / "token", TOKEN)
        self.shared: ServedWorker | None = None
        self._served: list[ServedWorker] = []
        self._processes: list[WorkerProcess] = []

    # --- what each transport says ---

    def new_place(self) -> str:
        raise NotImplementedError

    def place_settings(self, url: str) -> dict[str, Any]:
        raise NotImplementedError

    def with_patience(self, url: str, patience_s: float) -> str:
        raise NotImplementedError

    def command_args(self, url: str) -> list[str]:
        raise NotImplementedError

    def says_token_refused(self, url: str) -> tuple[str, ...]:
        """What the error of a call with another token says, besides the word "token"."""
        raise NotImplementedError

    def says_nobody_serves(self, url: str) -> tuple[str, ...]:
        """What the error of a call that no worker at `url` answers says."""
        raise NotImplementedError

    # --- the shared worker ---

    async def start(self) -> None:
        if self.shared is None:
            self.shared = await self.serve(self.new_place())

    def open(self, *, token: str | None = TOKEN, patience_s: float | None = None) -> Executor:
        assert self.shared is not None, "start() the target first"
        return self.open_at(self.shared.url, token=token, patience_s=patience_s)

    def open_at(self, url: str, *, token: str | None = TOKEN, patience_s: float | None = None) -> Executor:
        if patience_s is not None:
            url = self.with_patience(url, patience_s)
        return open_executor(url, ExecutorOptions(token=token))

    def status(self, executor: Executor) -> WorkerStatus:
        assert self.shared is not None
        return self.shared.worker.status()

    # --- more workers ---

    def settings(self, url: str, **changes: Any) -> WorkerSettings:
        return worker_settings(worker_id=new_worker_id(self.name), **(self.place_settings(url) | changes))

    async def serve(self, url: str, **changes: Any) -> ServedWorker:
        """A worker served in this process at `url` (with settings `changes`), ready when returned."""
        served = await self.serve_unready(url, self.settings(url, **changes))
        await self.wait_ready(url, served.worker.settings.worker_id, served.task)
        return served

    async def serve_unready(self, url: str, settings: WorkerSettings) -> ServedWorker:
        """Start serving at `url` the worker of `settings`; its task fails with ExecutorError if the
        transport refuses."""
        worker = ScriptWorker(settings, functions=self.host.functions())
        await worker.__aenter__()
        stop = asyncio.Event()
        task = asyncio.create_task(find_worker_transport(self.scheme).serve_worker(worker, stop))
        served = ServedWorker(url, worker, stop, task)
        self._served.append(served)
        return served

    async def spawn(self, url: str, *args: str) -> WorkerProcess:
        """A `dagrun worker` process serving `url` (one step at a time, the suite's token), ready when returned."""
        handle = self.launch(url, "--token-file", str(self.token_file), *args)
        await self.wait_ready(url, handle.worker_id, process=handle)
        return handle

    def launch(self, url: str, *args: str) -> WorkerProcess:
        """A `dagrun worker` process serving `url` with `args`, not waited for; its output goes to its log."""
        worker_id = new_worker_id(f"{self.name}-process")
        log = self.directory / f"{worker_id}.log"
        command = [sys.executable, "-m", "dagrun", "worker", self.scheme, *self.command_args(url)]
        command += ["--concurrency", "1", "--id", worker_id, *args]
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        handle = WorkerProcess(worker_id, process, log)
        self._processes.append(handle)
        return handle

    async def wait_ready(
        self,
        url: str,
        worker_id: str,
        task: asyncio.Task[None] | None = None,
        *,
        process: WorkerProcess | None = None,
    ) -> None:
        """Wait until `list_workers(url)` names the worker; its task's error, or its log, if it stops."""

        async def listed() -> bool:
            if task is not None and task.done():
                task.result()
                raise AssertionError(f"worker {worker_id} stopped serving before it was ready")
            if process is not None and process.process.poll() is not None:
                raise AssertionError(f"worker {worker_id} exited before it was ready:\n{process.log_text()}")
            try:
                found = await self.list_workers(url)
            except ExecutorError:
                return False  # not listening yet
            return any(status.worker_id == worker_id for status in found)

        await eventually(listed, what=f"worker {worker_id} ready at {url}")

    async def list_workers(self, url: str) -> list[WorkerStatus]:
        """What the transport's `list_workers` says of the workers at `url`."""
        return await find_transport(self.scheme).list_workers(url, ExecutorOptions(token=TOKEN))

    async def aclose(self) -> None:
        for handle in self._processes:
            handle.kill()
        for handle in self._processes:
            await asyncio.to_thread(handle.wait)
        for served in reversed(self._served):
            await served.aclose()


class ServerTarget(RemoteTarget):
    """WebSocket or HTTP: a worker is a server on 127.0.0.1 and a port of its own."""

    capabilities = RemoteTarget.capabilities | {
        Capability.CALLER_KNOWS_LIMIT,
        Capability.LISTENS,
        Capability.RECONNECT,
        Capability.REFUSES_WHILE_STOPPING,
    }
    refusal_logged = "missing or wrong token"

    def __init__(self, directory: Path, scheme: str) -> None:
        super().__init__(directory)
        self.name = self.scheme = scheme

    def new_place(self) -> str:
        return f"{self.scheme}://127.0.0.1:{free_port()}"

    def place_settings(self, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        return {"host": parts.hostname, "port": parts.port}

    def with_patience(self, url: str, patience_s: float) -> str:
        return f"{url}?reconnect_s={patience_s}"

    def command_args(self, url: str) -> list[str]:
        parts = urlsplit(url)
        return ["--host", str(parts.hostname), "--port", str(parts.port)]

    def says_token_refused(self, url: str) -> tuple[str, ...]:
        return url, "refused the token"

    def says_nobody_serves(self, url: str) -> tuple[str, ...]:
        return url, "connection refused"


class RedisTarget(RemoteTarget):
    """Redis: workers of a place share its key prefix on the session's redis-server. Heartbeats are fast
    (a dead worker is noticed within a second) so that the fault cases are."""

    name = scheme = "redis"
    capabilities = RemoteTarget.capabilities | {Capability.REDELIVERY}
    refusal_logged = "its signature does not match (signed with another token"

    def __init__(self, directory: Path, server: RedisServer) -> None:
        super().__init__(directory)
        self.server = server
        self._prefixes: list[str] = []

    def new_place(self) -> str:
        prefix = f"contract-{os.getpid()}-{next(_worker_numbers)}:"
        self._prefixes.append(prefix)
        return f"{self.server.url}?prefix={prefix}&heartbeat_s=0.2&heartbeat_ttl_s=1&visibility_timeout_s=1"

    def place_settings(self, url: str) -> dict[str, Any]:
        return {"url": url}

    def with_patience(self, url: str, patience_s: float) -> str:
        # the caller's blocking reads (half the socket timeout) are when it looks for refused requests
        return f"{url}&queue_timeout_s={patience_s}&socket_timeout={max(2 * patience_s, 1)}"

    def command_args(self, url: str) -> list[str]:
        return [url]

    def says_token_refused(self, url: str) -> tuple[str, ...]:
        return ("was deleted with no reply: a worker refused it (does its --token-file hold this caller's token?",)

    def says_nobody_serves(self, url: str) -> tuple[str, ...]:
        return ("no live worker serves context 'default'", "--context default")

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            client = aioredis.Redis(host="127.0.0.1", port=self.server.port)
            try:
                for prefix in self._prefixes:
                    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
                    if keys:
                        await client.delete(*keys)
            finally:
                await client.aclose()
