"""ChildProcess: the parent's handle on one sandbox child: its pipes, its FIFO of in-flight jobs, its deadline.

It reads the child's lines (capped at `protocol.max_line_bytes`: everything a child sends is untrusted, its
script may have escaped) and routes its messages: a result, checked against the job it answers, to the
pool; a host function call to the pool's HostCalls; anything else is a breach the pool fails the step for.
Also how a child is started clean (`child_command`, `spawn_child`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import StepRequest, StepResult
from dagrun.sandbox import protocol
from dagrun.sandbox.protocol import Message, ProtocolError
from dagrun.sandbox.settings import SandboxSettings

logger = logging.getLogger(__name__)

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the `dagrun` package


@dataclass(slots=True, eq=False)
class Job:
    """One `SandboxPool.run` call: queued in the pool, or in flight on `child` (the head is running)."""

    request: StepRequest
    payload: bytes  # the encoded request, sent as is (again, if the job is re-queued)
    future: asyncio.Future[StepResult]
    dispatch: Dispatch | None = None  # the caller's link: told when the job starts; may withdraw it until then
    child: ChildProcess | None = None
    id: int = 0  # per child; the result must carry it
    started_at: float = 0.0  # loop time when it became the head of its child


class ChildEvents(Protocol):
    """What a ChildProcess reports to its pool."""

    def child_result(self, child: ChildProcess, result: StepResult, exits: bool) -> None:
        """The result of `child.jobs[0]`; after it the child exits if `exits`."""

    def child_breached(self, child: ChildProcess, breach: str) -> None:
        """The child broke the protocol (an unknown message, a call out of turn, a malformed result)."""

    def child_lost(self, child: ChildProcess, reason: str) -> None:
        """The child died, or sent what cannot be read at all."""


class CallHandler(Protocol):
    """What serves a child's host function calls (`host_calls.HostCalls`)."""

    def on_call(self, child: ChildProcess, message: Message) -> str | None:
        """Serve a call message; the breach to report, if it came out of turn."""


def child_command(entry: str = "dagrun.sandbox.child") -> list[str]:
    """The argv of a child: a fresh interpreter (never a fork of the host) that imports only the
    child's modules and runs `entry`'s `main` (the tests of the OS confinement name one of theirs). The
    package roots on the way are lazy (PEP 562), so importing `entry` loads only what it imports."""
    root = str(_SOURCE_ROOT)
    paths = [root, *(p for p in sys.path if p and p != root and os.path.exists(p))]
    bootstrap = f"import sys\nsys.path[:] = {paths!r}\nfrom {entry} import main\nmain()\n"
    return [sys.executable, "-I", "-S", "-B", "-c", bootstrap]


class ChildProcess:
    """One child: its lines go to the pool; `jobs[0]` is the running job, the rest are queued in it."""

    def __init__(self, events: ChildEvents, calls: CallHandler, settings: SandboxSettings) -> None:
        loop = asyncio.get_running_loop()
        self._events = events
        self._calls = calls
        self._parse_result = protocol.result_parser(settings)
        self._max_line = protocol.max_line_bytes(settings)
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._stdin: asyncio.WriteTransport | None = None
        self._stdout: asyncio.ReadTransport | None = None
        self._pidfd = -1  # signals and reaping go through it: a pid may be reused, a pidfd cannot
        self.pid = 0
        self.worker_id = "local:?"
        self.domain: str | None = None  # the run (trust domain) it serves; None until its first job
        self.bound_at = 0.0  # loop time it was bound to `domain`
        self.is_draining = False  # its domain's slice is over: it takes no new job, and is replaced once idle
        self.last_done = 0.0  # loop time its last job ended
        self.jobs: deque[Job] = deque()
        self.outbox: list[bytes] = []  # requests handed to this child, not written yet
        self.next_id = 0
        self.is_retired = False  # killed or exiting: no more jobs, its lines are ignored
        self.layers: tuple[str, ...] = ()  # the OS confinement layers it applied, as it said when ready
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.deadline = 0.0  # of the head job, in loop time (see `deadlines`)
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
            message = protocol.decode_message(line)
        except ProtocolError as exc:
            self._lose(f"sent {exc}")
            return
        if self.ready.done():
            self._on_message(message)
            return
        kind = protocol.kind_of(message)
        if kind == protocol.READY:
            self.layers = protocol.parse_ready(message)
            self.ready.set_result(None)
        elif kind == protocol.FATAL:
            self._lose(f"failed to start ({protocol.parse_fatal(message)})")
        else:
            self._lose(f"sent {kind!r} before it was ready")

    def _on_message(self, message: Message) -> None:
        kind = protocol.kind_of(message)
        if kind == protocol.RESULT:
            self._on_result(message)
        elif kind == protocol.CALL:
            breach = self._calls.on_call(self, message)
            if breach is not None:
                self._events.child_breached(self, breach)
        else:
            self._events.child_breached(self, f"sandbox child sent an unknown message {kind!r}")

    def _on_result(self, message: Message) -> None:
        job = self.jobs[0] if self.jobs else None
        if job is None or not protocol.answers(message, job.id):
            self._events.child_breached(self, "sandbox child answered a request it was not sent")
            return
        try:
            result, exits = self._parse_result(message, self.worker_id)
        except ValueError as exc:
            self._events.child_breached(self, f"sandbox child sent a malformed result: {exc}")
            return
        self._events.child_result(self, result, exits)

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


async def spawn_child(
    events: ChildEvents, calls: CallHandler, settings: SandboxSettings, forker: Forker
) -> ChildProcess:
    """Fork one child and wait until it is confined and ready."""
    child = ChildProcess(events, calls, settings)
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
