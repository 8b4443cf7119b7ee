"""The sandbox child process: reads requests on stdin, runs them one at a time, writes results on stdout.

A child is forked by the pool's zygote (`zygote`), or exec'd clean on its own (`process.child_command`:
`-I -S -B`, an empty environment, no inherited fds, its own session). It loads everything scripts can ever
need, confines itself (rlimits, root privileges dropped for good, imports switched off), says ready, and
serves. The messages both ways are `protocol`'s; results come back in request order, and after one with
"exit": true the child is gone.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn

from dagrun.sandbox import confinement, protocol
from dagrun.sandbox.protocol import ChildConfig, Message, ProtocolError, Reply
from dagrun.sandbox.runner import CPU_LIFETIME_S, StepRunner
from dagrun.sandbox.scope import HostFunctionError, LimitExceeded, StepScope
from dagrun.sandbox.settings import SandboxSettings

STARTUP_CPU_S = 5.0  # until the first request re-arms RLIMIT_CPU
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
MAX_OPEN_FILES = 3  # stdin, stdout, stderr: a script that escaped still cannot open anything


class Channel:
    """The child's end of the pipes; run messages read while waiting for a reply are kept in order. What it
    does not understand raises ProtocolError: the child exits."""

    def __init__(self, reader: BinaryIO, fd: int) -> None:
        self._reader = reader
        self._fd = fd
        self._pending: collections.deque[Message] = collections.deque()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def read(self) -> Message | None:
        line = self._reader.readline()
        return protocol.decode_message(line) if line else None

    def next_run(self) -> Message | None:
        """The next run message, or None when the parent closed the pipe."""
        if self._pending:
            return self._pending.popleft()
        message = self.read()
        if message is not None and protocol.kind_of(message) != protocol.RUN:
            raise ProtocolError(f"expected a run message, got {protocol.kind_of(message)!r}")
        return message

    def wait_reply(self) -> Reply:
        while True:
            message = self.read()
            if message is None:
                raise ProtocolError("the parent closed the pipe during a host function call")
            kind = protocol.kind_of(message)
            if kind == protocol.REPLY:
                return protocol.parse_reply(message)
            if kind != protocol.RUN:
                raise ProtocolError(f"expected a reply message, got {kind!r}")
            self._pending.append(message)


def make_host_function(
    name: str, channel: Channel, current: Callable[[], StepScope | None], *, max_bytes: int
) -> Callable[..., Any]:
    """The stub a script calls for a host function: an RPC to the parent over the same pipes."""

    def host_function(*args: Any, **kwargs: Any) -> Any:
        scope = current()
        if scope is None or not scope.is_active:
            # e.g. a __del__ planted by an earlier step: it must not act on behalf of this one
            raise HostFunctionError(f"host function {name!r} can only be called while its step runs")
        try:
            call = protocol.encode_call(name, args, kwargs)
        except TypeError as exc:
            raise HostFunctionError(f"host function {name!r}: arguments must be JSON values ({exc})") from None
        if len(call) > max_bytes + 1:  # + its newline
            raise HostFunctionError(f"host function {name!r}: arguments are over the {max_bytes}-byte limit")
        channel.send(call)
        reply = channel.wait_reply()
        if reply.ok:
            return reply.value
        raise HostFunctionError(reply.error)

    host_function.__name__ = host_function.__qualname__ = name
    return host_function


def confine(settings: SandboxSettings, parent_pid: int, seccomp: bytes | None) -> list[str]:
    """Apply the rlimits, leave the network, drop root privileges for good (RLIMIT_NPROC does not bind
    root), apply Landlock and seccomp (see `confinement`), stop imports. The OS layers applied."""
    layers = [confinement.NETWORK_NAMESPACE] if confinement.enter_network_namespace() else []
    _lower_limit(resource.RLIMIT_AS, settings.memory_mb * 1024 * 1024)
    _lower_limit(resource.RLIMIT_FSIZE, 0)
    _lower_limit(resource.RLIMIT_CORE, 0)
    _lower_limit(resource.RLIMIT_NPROC, 0)
    # SIGXCPU (the soft limit) raises in Python code only; the hard limit kills even a loop in C
    used_s = math.ceil(time.process_time())
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    hard = used_s + CPU_LIFETIME_S if hard == resource.RLIM_INFINITY else min(hard, used_s + CPU_LIFETIME_S)
    resource.setrlimit(resource.RLIMIT_CPU, (min(used_s + math.ceil(STARTUP_CPU_S), hard), hard))
    drop_to = settings.drop_to
    if drop_to is not None and drop_to != (os.geteuid(), os.getegid()):
        uid, gid = drop_to
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
            raise RuntimeError("could not drop privileges")
    die_with(parent_pid)
    if confinement.restrict_filesystem():
        layers.append(confinement.LANDLOCK)
    if confinement.filter_syscalls(seccomp):
        layers.append(confinement.SECCOMP)
    _lower_limit(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)  # last: Landlock and seccomp needed an fd each
    # Everything is loaded: from now on any import (a codec looked up by name ...) fails cleanly with
    # ImportError, instead of reaching the file system with an error that names host paths.
    sys.meta_path.clear()
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()
    sys.path.clear()
    return layers


def die_with(parent_pid: int) -> None:
    """Have the kernel SIGKILL this child when its parent dies, even while a script spins in C code and
    never reads stdin. Set after dropping privileges, which clears it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(0)


def _lower_limit(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _failure_line(message: Message, exc: BaseException) -> bytes:
    """The result of a step whose handling failed outside the script (e.g. memory ran out in encoding)."""
    limited = isinstance(exc, MemoryError | RecursionError | LimitExceeded)
    kind = protocol.LIMIT if limited else protocol.WORKER
    error = protocol.error_fields(kind, type(exc).__name__, "the sandbox child failed while handling the step", None)
    job_id = protocol.job_id_of(message)
    return protocol.encode_result(job_id, error=error, outputs=b"{}", ops=(), logs="", elapsed_ms=0.0, exits=True)


def serve(channel: Channel, runner: StepRunner) -> None:
    """Run requests until the parent closes the pipe or a step leaves this process damaged."""
    while True:
        message = channel.next_run()
        if message is None:
            return
        try:
            line, must_exit = runner.run(message)
        except BaseException as exc:  # our own code failed: answer, then leave
            line, must_exit = _failure_line(message, exc), True
        channel.send(line)
        if must_exit:
            return


def start(reader: BinaryIO, channel: Channel, parent_pid: int) -> tuple[StepRunner, list[str]]:
    """Read the configuration, load everything, confine this process; the runner, ready to serve, and the
    OS confinement layers applied."""
    config = protocol.parse_config(reader.readline())
    return prepare(config, channel, parent_pid, confinement.compile_seccomp())


def prepare(
    config: ChildConfig, channel: Channel, parent_pid: int, seccomp: bytes | None
) -> tuple[StepRunner, list[str]]:
    """Build the runner for `config`, its host functions calling the parent over `channel`, and confine this
    process (`seccomp` is the program from `confinement.compile_seccomp`, compiled while that was still
    possible); the runner and the OS layers applied."""
    settings = config.settings
    holder: list[StepRunner] = []
    functions = {
        name: make_host_function(
            name, channel, lambda: holder[0].scope if holder else None, max_bytes=settings.max_output_bytes
        )
        for name in config.functions
    }
    runner = StepRunner(settings, functions)  # loads every module a script can reach (facades.preload_modules)
    holder.append(runner)
    layers = confine(settings, parent_pid, seccomp)
    signal.signal(signal.SIGXCPU, lambda signum, frame: runner.on_cpu_limit())
    sys.setrecursionlimit(settings.recursion_limit)
    if gc.get_freeze_count() == 0:  # a child exec'd on its own; one forked from the zygote has it frozen
        gc.collect()
    gc.freeze()  # the base objects are never garbage: keep them out of every later collection
    return runner, layers


def run_child(reader: BinaryIO, channel: Channel, ready: Callable[[], tuple[StepRunner, list[str]]]) -> NoReturn:
    """Get ready (`ready()` loads and confines), say so, and serve until the parent is gone; never returns."""
    try:
        runner, layers = ready()
    except Exception as exc:  # stderr is /dev/null: tell the parent why, for its log
        channel.send(protocol.encode_fatal(f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    channel.send(protocol.encode_ready(os.getpid(), layers))
    try:
        serve(channel, runner)
    except (OSError, ProtocolError):
        pass  # the parent went away or is not speaking the protocol: nothing left to answer
    finally:
        os._exit(0)  # no atexit, no finalizers: script objects with __del__ get no last word


def main() -> NoReturn:
    """A child exec'd on its own (the zygote forks the pool's: see `zygote`): configuration on stdin."""
    parent_pid = os.getppid()
    reader: BinaryIO = sys.stdin.buffer
    # fd 1 carries the protocol alone: anything printed by accident goes to stderr, i.e. /dev/null
    sys.stdout = sys.stderr
    channel = Channel(reader, 1)
    run_child(reader, channel, lambda: start(reader, channel, parent_pid))


if __name__ == "__main__":
    main()
