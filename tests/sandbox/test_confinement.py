"""The OS layers around a sandbox child hold when the language policy has fallen: unrestricted Python in
a confined child (tests/sandbox/unrestricted_child.py) cannot open a socket, start a process or thread,
read or change a file (the store and the token file included), trace or signal another process, or
touch the machine. Each test starts its own child; this machine kind has all three layers (PLATFORM)."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dagrun.sandbox import confinement
from dagrun.sandbox.process import child_command
from tests.sandbox.conftest import TEST_SETTINGS

DENIED = (errno.EPERM, errno.EACCES)
# RLIMIT_NOFILE leaves a child no descriptor to spare; a test of another layer frees one (stderr) first,
# or RLIMIT_NOFILE's EMFILE would answer before the layer under test is reached.
FREE_A_DESCRIPTOR = "os.close(2)\n"
IS_ROOT = os.geteuid() == 0


class UnrestrictedChild:
    """A confined child that runs whatever Python it is sent."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            child_command(entry="tests.sandbox.unrestricted_child"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={}, close_fds=True, start_new_session=True, cwd="/",
        )  # fmt: skip
        config = {"settings": dataclasses.asdict(TEST_SETTINGS), "functions": []}
        ready = self._exchange(config)
        assert ready.get("t") == "ready", ready
        self.layers: list[str] = ready["layers"]
        self.pid: int = ready["pid"]

    def run(self, code: str) -> dict[str, Any]:
        """What running `code` gave: {"ok": True, "result": repr} or {"ok": False, "error", "errno"}."""
        return self._exchange({"code": code})

    def refuses(self, code: str) -> dict[str, Any]:
        """Run `code`, which must fail with EPERM or EACCES; the answer."""
        answer = self.run(code)
        assert not answer["ok"], f"allowed: {code!r} gave {answer['result']}"
        assert answer["errno"] in DENIED, answer
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(orjson.dumps(message) + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the child died"
        answer: dict[str, Any] = orjson.loads(line)
        return answer


@pytest.fixture
def child() -> Iterator[UnrestrictedChild]:
    started = UnrestrictedChild()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the host that a child must not reach (as the nobody user, like another run's child)."""
    process = subprocess.Popen(["sleep", "60"], user=65534 if IS_ROOT else None)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def test_every_layer_is_applied_on_this_machine_kind(child: UnrestrictedChild) -> None:
    expected = set(confinement.LAYERS) if IS_ROOT else set(confinement.LAYERS) - {confinement.NETWORK_NAMESPACE}
    assert set(child.layers) == expected
    if IS_ROOT:
        assert child.run("result = (os.getuid(), os.geteuid())")["result"] == "(65534, 65534)"


@pytest.mark.parametrize(
    "code",
    [
        "socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
        "socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)",
        "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)",
        "socket.socketpair()",
        "socket.create_connection(('127.0.0.1', 9))",
        # the libc call itself, as native code would make it
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.socket(2, 1, 0) < 0: raise OSError(ctypes.get_errno(), 'socket')",
    ],
)
def test_a_child_cannot_open_any_socket(child: UnrestrictedChild, code: str) -> None:
    child.refuses(code)


def test_a_child_has_a_network_namespace_of_its_own(child: UnrestrictedChild) -> None:
    if not IS_ROOT:  # an ordinary user gets no namespace; seccomp and Landlock refuse sockets anyway
        assert confinement.NETWORK_NAMESPACE not in child.layers
        return
    assert os.readlink(f"/proc/{child.pid}/ns/net") != os.readlink("/proc/self/ns/net")


@pytest.mark.parametrize(
    "code",
    [
        "os.fork()",
        "os.execv('/bin/sh', ['sh', '-c', 'true'])",
        "os.posix_spawn('/bin/true', ['true'], {})",
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.syscall(56, 17, 0, 0, 0, 0) < 0: raise OSError(ctypes.get_errno(), 'clone')",  # clone(SIGCHLD)
    ],
)
def test_a_child_cannot_start_a_process(child: UnrestrictedChild, code: str) -> None:
    child.refuses(code)


def test_a_child_cannot_start_a_thread(child: UnrestrictedChild) -> None:
    answer = child.run("threading.Thread(target=print).start()")
    assert not answer["ok"] and "can't start new thread" in answer["error"], answer


@pytest.mark.parametrize(
    "code",
    [
        "open('/etc/passwd').read()",
        "os.listdir('/')",
        "os.open('/proc/1/environ', os.O_RDONLY)",
        "open('/dev/null', 'rb')",
    ],
)
def test_a_child_cannot_read_any_file(child: UnrestrictedChild, code: str) -> None:
    child.refuses(FREE_A_DESCRIPTOR + code)


def test_a_child_cannot_read_the_store_or_the_token_file(child: UnrestrictedChild, tmp_path: Path) -> None:
    store = tmp_path / "dagrun.db"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE secrets (value TEXT)")
    token = tmp_path / "token"
    token.write_text("s3cret")
    for path in (tmp_path, store, token):
        path.chmod(0o777 if path.is_dir() else 0o666)  # even readable and writable by everyone
    child.refuses(f"{FREE_A_DESCRIPTOR}open({str(store)!r}, 'rb').read()")
    child.refuses(f"open({str(token)!r}).read()")
    child.refuses(f"os.listdir({str(tmp_path)!r})")


@pytest.mark.parametrize(
    "code",
    [
        "open({target!r}, 'w').write('x')",
        "open({target!r}, 'a').write('x')",
        "open({new!r}, 'x')",
        "os.truncate({target!r}, 0)",
        "os.unlink({target!r})",
        "os.rename({target!r}, {new!r})",
        "os.chmod({target!r}, 0o777)",
        "os.mkdir({new!r})",
        "os.symlink({target!r}, {new!r})",
        "os.link({target!r}, {new!r})",
        "os.mkfifo({new!r})",
    ],
)
def test_a_child_cannot_create_change_or_remove_a_file(child: UnrestrictedChild, tmp_path: Path, code: str) -> None:
    tmp_path.chmod(0o777)
    target = tmp_path / "victim"
    target.write_text("intact")
    target.chmod(0o666)
    child.refuses(FREE_A_DESCRIPTOR + code.format(target=str(target), new=str(tmp_path / "new")))
    assert target.read_text() == "intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_a_child_cannot_trace_or_signal_another_process(
    child: UnrestrictedChild, bystander: subprocess.Popen[bytes]
) -> None:
    pid = bystander.pid
    child.refuses(f"os.kill({pid}, {signal.SIGKILL})")
    child.refuses(
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.ptrace(16, {pid}, 0, 0) < 0: raise OSError(ctypes.get_errno(), 'ptrace')"  # PTRACE_ATTACH
    )
    child.refuses(
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.syscall(434, {pid}, 0) < 0: raise OSError(ctypes.get_errno(), 'pidfd_open')"
    )
    child.refuses(
        "buf = ctypes.create_string_buffer(8)\n"
        "local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.process_vm_readv({pid}, local, 1, local, 1, 0) < 0: raise OSError(ctypes.get_errno(), 'readv')"
    )
    assert bystander.poll() is None


@pytest.mark.parametrize(
    ("name", "number", "args"),
    [
        ("mount", 165, "b'none', b'/tmp', b'tmpfs', 0, None"),
        ("unshare", 272, "0x10000000"),  # CLONE_NEWUSER
        ("bpf", 321, "0, None, 0"),
        ("io_uring_setup", 425, "1, None"),
        ("perf_event_open", 298, "None, 0, -1, -1, 0"),
        ("keyctl", 250, "0, 0"),
        ("init_module", 175, "None, 0, b''"),
        ("kexec_load", 246, "0, 0, None, 0"),
    ],
)
def test_a_child_cannot_touch_the_machine(child: UnrestrictedChild, name: str, number: int, args: str) -> None:
    child.refuses(
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.syscall({number}, {args}) < 0: raise OSError(ctypes.get_errno(), {name!r})"
    )


def test_what_a_child_still_does_works(child: UnrestrictedChild) -> None:
    """The filter denies what reaches out, not what a script computes: memory, time, its pipes."""
    answer = child.run("import time\nx = bytearray(10_000_000)\nresult = (len(x), time.time() > 0)")
    assert answer == {"ok": True, "result": "(10000000, True)"}
