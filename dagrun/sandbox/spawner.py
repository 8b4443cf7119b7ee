"""Spawner: a pool's handle on its zygote (see `zygote`), which forks the pool's sandbox children.

The zygote is started clean (`process.child_command`: a fresh interpreter, `-I -S -B`, an empty
environment, no inherited descriptors, its own session) with a Unix SOCK_SEQPACKET socket as its stdin.
For each child the spawner makes two pipes, sends the child's ends with a fork request, and gets back the
child's pid and a pidfd (the messages are `protocol`'s). Forks are answered in the order asked, so waiting
forks queue their futures. A zygote that died is started again by the next fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Sequence

from dagrun.sandbox import protocol
from dagrun.sandbox.process import ChildProcess, child_command
from dagrun.sandbox.protocol import ProtocolError
from dagrun.sandbox.settings import SandboxSettings

logger = logging.getLogger(__name__)

ZYGOTE_ENTRY = "dagrun.sandbox.zygote"  # the tests of run isolation start one whose children obey no policy


class Spawner:
    """`await spawner.fork(child)`; `aclose()` ends the zygote (its children die with it)."""

    def __init__(self, settings: SandboxSettings, functions: Sequence[str]) -> None:
        self._config = protocol.encode_config(settings, functions)
        self._socket: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._answers: deque[asyncio.Future[tuple[int, int]]] = deque()  # the pid and pidfd of a child
        self._starting: asyncio.Lock | None = None

    async def fork(self, child: ChildProcess) -> None:
        """Fork a child from the zygote and attach it to `child`. RuntimeError when the zygote fails."""
        control = await self._running()
        child_stdin, our_stdin = os.pipe()
        our_stdout, child_stdout = os.pipe()
        answer: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        try:
            self._answers.append(answer)
            socket.send_fds(control, [protocol.encode_fork()], [child_stdin, child_stdout])
        except OSError as exc:
            for fd in (our_stdin, our_stdout):
                os.close(fd)
            raise RuntimeError(f"the sandbox zygote cannot be reached: {exc}") from exc
        finally:
            os.close(child_stdin)
            os.close(child_stdout)
        try:
            pid, pidfd = await answer
        except BaseException:  # cancelled or failed: the child, if forked, is killed when its answer comes
            os.close(our_stdin)
            os.close(our_stdout)
            raise
        await child.attach(pid, pidfd, our_stdin, our_stdout)

    async def aclose(self) -> None:
        """Close the zygote's socket (it exits on EOF) and wait for it."""
        control, self._socket = self._socket, None
        if control is not None:
            asyncio.get_running_loop().remove_reader(control)
            control.close()
        self._fail_answers("the sandbox pool is closed")
        if self._process is not None:
            await self._process.wait()

    async def _running(self) -> socket.socket:
        """The zygote's socket, starting the zygote if it is not running."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._socket is None or self._process is None or self._process.returncode is not None:
                await self._start()
            assert self._socket is not None
            return self._socket

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = await asyncio.create_subprocess_exec(
                *child_command(entry=ZYGOTE_ENTRY), stdin=theirs.fileno(), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env={}, close_fds=True, start_new_session=True, cwd="/",
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        ours.send(self._config)
        asyncio.get_running_loop().add_reader(ours, self._on_answer, ours)
        self._socket = ours
        logger.debug("sandbox zygote %d started", self._process.pid)

    def _on_answer(self, control: socket.socket) -> None:
        try:
            message, fds, _flags, _address = socket.recv_fds(control, protocol.MAX_FORKED_BYTES, 1)
        except BlockingIOError:
            return
        except OSError as exc:
            message, fds = b"", []
            logger.error("sandbox zygote: reading its answer failed: %s", exc)
        if not message:  # the zygote exited: start another at the next fork
            asyncio.get_running_loop().remove_reader(control)
            control.close()
            if self._socket is control:
                self._socket = None
            self._fail_answers("the sandbox zygote exited")
            return
        if not self._answers:
            for fd in fds:
                os.close(fd)
            return
        answer = self._answers.popleft()
        if answer.done() or len(fds) != 1:  # its fork was cancelled: the child is killed through its pidfd
            _kill_and_close(fds)
            return
        try:
            pid = protocol.parse_forked(message)
        except ProtocolError as exc:
            _kill_and_close(fds)
            answer.set_exception(RuntimeError(f"the sandbox zygote's answer to a fork is malformed: {exc}"))
            return
        answer.set_result((pid, fds[0]))

    def _fail_answers(self, reason: str) -> None:
        while self._answers:
            answer = self._answers.popleft()
            if not answer.done():
                answer.set_exception(RuntimeError(reason))


def _kill_and_close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)
