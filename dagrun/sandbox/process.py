"""ChildProcess: the parent's handle on one sandbox child: its pipes, its FIFO of in-flight jobs, its deadline.

Also the parent's half of the pipe protocol (see `child.py`): how a child is started clean, how a
request is encoded, and how a child's messages are checked. Everything a child sends is untrusted (its
script may have escaped): messages are size-capped, and a result that is not exactly the expected
shape is garbage, which the pool turns into an ErrorKind.WORKER failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.executor import ErrorKind, StepError, StepRequest, StepResult
from dagrun.sandbox.settings import SandboxSettings

logger = logging.getLogger(__name__)

_LINE_SLACK_BYTES = 64 * 1024
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the `dagrun` package
_JSON_ESCAPE_FACTOR = 6  # "\u0000" is 6 bytes for 1


@dataclass(slots=True, eq=False)
class Job:
    """One `SandboxPool.run` call: queued in the pool, or in flight on `child` (the head is running)."""

    request: StepRequest
    payload: bytes  # the encoded request, sent as is (again, if the job is re-queued)
    future: asyncio.Future[StepResult]
    child: ChildProcess | None = None
    id: int = 0  # per child; the result must carry it
    started_at: float = 0.0  # loop time when it became the head of its child


class ChildEvents(Protocol):
    """What a ChildProcess reports to its pool."""

    def child_message(self, child: ChildProcess, message: dict[str, Any]) -> None: ...

    def child_lost(self, child: ChildProcess, reason: str) -> None: ...


def child_command(entry: str = "dagrun.sandbox.child") -> list[str]:
    """The argv of a child: a fresh interpreter (never a fork of the host) that imports only the
    child's modules and runs `entry`'s `main` (the tests of the OS confinement name one of theirs). The
    package roots on the way are lazy (PEP 562), so importing `entry` loads only what it imports."""
    root = str(_SOURCE_ROOT)
    paths = [root, *(p for p in sys.path if p and p != root and os.path.exists(p))]
    bootstrap = f"import sys\nsys.path[:] = {paths!r}\nfrom {entry} import main\nmain()\n"
    return [sys.executable, "-I", "-S", "-B", "-c", bootstrap]


def max_line_bytes(settings: SandboxSettings) -> int:
    """The longest line a child may send: its capped parts, JSON-escaped in the worst case."""
    escaped = _JSON_ESCAPE_FACTOR * (settings.max_log_bytes + settings.max_error_bytes)
    return settings.max_output_bytes + settings.max_context_bytes + escaped + _LINE_SLACK_BYTES


class ChildProcess:
    """One child: its lines go to the pool; `jobs[0]` is the running job, the rest are queued in it."""

    def __init__(self, events: ChildEvents, max_line: int) -> None:
        loop = asyncio.get_running_loop()
        self._events = events
        self._max_line = max_line
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._stdin: asyncio.WriteTransport | None = None
        self._stdout: asyncio.ReadTransport | None = None
        self._pidfd = -1  # signals and reaping go through it: a pid may be reused, a pidfd cannot
        self.pid = 0
        self.worker_id = "local:?"
        self.domain: str | None = None  # the run (trust domain) it serves; None until its first job
        self.last_done = 0.0  # loop time its last job ended
        self.jobs: deque[Job] = deque()
        self.outbox: list[bytes] = []  # requests handed to this child, not written yet
        self.next_id = 0
        self.is_retired = False  # killed or exiting: no more jobs, its lines are ignored
        self.layers: tuple[str, ...] = ()  # the OS confinement layers it applied, as it said when ready
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.deadline = 0.0  # of the head job, in loop time
        self.timer: asyncio.TimerHandle | None = None
        self.call_task: asyncio.Task[None] | None = None

    async def attach(self, pid: int, pidfd: int, stdin_fd: int, stdout_fd: int) -> None:
        """Take over a forked child: its pidfd and our ends of its pipes (all closed by `wait_closed`)."""
        loop = asyncio.get_running_loop()
        self.pid, self.worker_id, self._pidfd = pid, f"local:{pid}", pidfd
        loop.add_reader(pidfd, self._on_exit)  # a pidfd is readable once its process has exited
        self._stdin, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, os.fdopen(stdin_fd, "wb", 0))
        self._stdout, _ = await loop.connect_read_pipe(lambda: _Output(self), os.fdopen(stdout_fd, "rb", 0))

    def data_received(self, data: bytes) -> None:
        start = 0
        while not self.is_retired:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep_partial(data[start:])
                return
            line = data[start:end]
            if self._partial:
                line = b"".join((*self._partial, line))
                self._partial.clear()
                self._partial_size = 0
            start = end + 1
            if len(line) > self._max_line:
                self._lose(f"sent a {len(line)}-byte message, over the {self._max_line}-byte limit")
                return
            self._on_line(line)

    def output_closed(self) -> None:
        self._lose("closed its output (it died)")

    def _on_exit(self) -> None:
        # not a loss by itself: the last result may still be in the pipe; its EOF comes after it
        asyncio.get_running_loop().remove_reader(self._pidfd)
        if not self.exited.done():
            self.exited.set_result(None)

    # --- used by the pool ---

    def write(self, data: bytes) -> None:
        if self._stdin is not None and not self.is_retired and not self._stdin.is_closing():
            self._stdin.write(data)

    def kill(self) -> None:
        """SIGKILL the child (it cannot start a process of its own); idempotent."""
        self.is_retired = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.call_task is not None:
            self.call_task.cancel()
        if self._pidfd >= 0 and not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def wait_closed(self) -> None:
        """Wait until the killed child has exited, then release its pipes and pidfd."""
        if self._pidfd < 0:
            return
        await asyncio.shield(self.exited)
        for transport in (self._stdin, self._stdout):
            if transport is not None:
                transport.close()
        os.close(self._pidfd)
        self._pidfd = -1

    def arm_deadline(self, deadline: float, on_deadline: Callable[[ChildProcess], None]) -> None:
        """Keep ONE timer per child: it is moved only when the new deadline is earlier than the timer."""
        self.deadline = deadline
        if self.timer is not None and self.timer.when() <= deadline:
            return  # fires early, finds the deadline moved on, and re-arms itself for it
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_at(deadline, on_deadline, self)

    # --- internals ---

    def _keep_partial(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._partial.append(chunk)
        self._partial_size += len(chunk)
        if self._partial_size > self._max_line:
            self._lose(f"sent a message over the {self._max_line}-byte limit")

    def _on_line(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._lose("sent a message that is not JSON")
            return
        if not isinstance(message, dict):
            self._lose("sent a message that is not a JSON object")
        elif not self.ready.done():
            if message.get("t") == "ready":
                layers = message.get("layers")
                self.layers = tuple(layer for layer in layers if type(layer) is str) if type(layers) is list else ()
                self.ready.set_result(None)
            elif message.get("t") == "fatal":
                self._lose(f"failed to start ({str(message.get('message'))[:1000]})")
            else:
                self._lose(f"sent {message.get('t')!r} before it was ready")
        else:
            self._events.child_message(self, message)

    def _lose(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"sandbox child {self.worker_id} {reason} before it was ready"))
            # Observed here: if the start was cancelled meanwhile, nobody will ever await it.
            self.ready.exception()
        elif not self.is_retired:
            self._events.child_lost(self, reason)


class _Output(asyncio.Protocol):
    """The child's stdout, passed to its ChildProcess."""

    def __init__(self, child: ChildProcess) -> None:
        self._child = child

    def data_received(self, data: bytes) -> None:
        self._child.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._child.output_closed()


class Forker(Protocol):
    """What forks children: `zygote.Zygote`'s parent half (`spawner.Spawner`)."""

    async def fork(self, child: ChildProcess) -> None: ...


async def spawn_child(events: ChildEvents, settings: SandboxSettings, forker: Forker) -> ChildProcess:
    """Fork one child and wait until it is confined and ready."""
    child = ChildProcess(events, max_line_bytes(settings))
    try:
        async with asyncio.timeout(settings.startup_timeout_s):
            await forker.fork(child)
            await child.ready
    except BaseException:
        child.kill()
        await asyncio.shield(child.wait_closed())  # reaped even if cancelled again meanwhile
        raise
    logger.debug("sandbox child %s is ready", child.worker_id)
    return child


# --- results: untrusted ---------------------------------------------------------------------------


def parse_result(message: dict[str, Any], child: ChildProcess, settings: SandboxSettings) -> StepResult:
    """A result message as a StepResult; ValueError when it is not exactly the expected shape."""
    ok, outputs, ops = message.get("ok"), message.get("outputs"), message.get("ops")
    error, logs, elapsed_ms = message.get("error"), message.get("logs"), message.get("elapsed_ms")
    if type(ok) is not bool or type(outputs) is not dict or type(ops) is not list or type(logs) is not str:
        raise ValueError("a result field has the wrong type")
    if not isinstance(elapsed_ms, int | float) or ok != (error is None) or type(message.get("exit")) is not bool:
        raise ValueError("a result field has the wrong type")
    return StepResult(
        ok=ok,
        outputs=outputs,
        context_ops=tuple(_parse_op(op) for op in ops),
        error=None if error is None else _parse_error(error, settings.max_error_bytes),
        logs=logs[: settings.max_log_bytes + 64],
        elapsed_ms=float(elapsed_ms),
        worker_id=child.worker_id,
    )


def _parse_op(op: Any) -> ContextOp:
    if type(op) is not list or len(op) != 3 or type(op[1]) is not str:
        raise ValueError("a context operation has the wrong shape")
    return ContextOp(ContextOpKind(op[0]), op[1], op[2])


def _parse_error(error: Any, max_error_bytes: int) -> StepError:
    if type(error) is not dict:
        raise ValueError("the error is not an object")
    kind, type_, message, line = error.get("kind"), error.get("type"), error.get("message"), error.get("line")
    if type(kind) is not str or type(type_) is not str or type(message) is not str:
        raise ValueError("an error field has the wrong type")
    if line is not None and type(line) is not int:
        raise ValueError("an error field has the wrong type")
    return StepError(ErrorKind(kind), type_[:200], message[:max_error_bytes], line)
