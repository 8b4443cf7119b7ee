"""The child process alone, driven over its pipes: the wire protocol, host calls, and RLIMIT_CPU."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from dagrun.contract.executor import ErrorKind, script_hash
from dagrun.sandbox.process import child_command
from dagrun.sandbox.protocol import result_parser
from tests.sandbox.conftest import TEST_SETTINGS


class Child:
    def __init__(self, functions: list[str]) -> None:
        self.process = subprocess.Popen(
            child_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            close_fds=True,
            start_new_session=True,
        )
        self.send({"settings": dataclasses.asdict(TEST_SETTINGS), "functions": functions})
        assert self.read()["t"] == "ready"

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(message) + b"\n")
        self.process.stdin.flush()

    def run(self, id_: int, script: str, timeout_s: float = 5.0) -> None:
        request = {
            "run_id": "r",
            "step_id": f"s{id_}",
            "attempt": 1,
            "script": script,
            "script_hash": script_hash(script),
            "inputs": {},
            "context": {},
            "context_id": "default",
            "timeout_s": timeout_s,
        }
        self.send({"t": "run", "id": id_, "req": request})

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        message: dict[str, Any] = orjson.loads(self.process.stdout.readline())
        return message

    def close(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        code = self.process.wait(timeout=10)
        self.process.stdout.close()
        return code


@pytest.fixture
def child() -> Iterator[Child]:
    child = Child(["lookup"])
    try:
        yield child
    finally:
        if child.process.poll() is None:
            child.process.kill()
        child.close()


def test_results_come_back_in_order_and_parse_as_step_results(child: Child) -> None:
    child.run(1, "outputs['a'] = 1\nprint('hi')")
    child.run(2, "fail('no')")

    first, second = child.read(), child.read()

    assert (first["id"], first["ok"], first["outputs"], first["logs"]) == (1, True, {"a": 1}, "hi\n")
    assert (second["id"], second["ok"], second["error"]["kind"]) == (2, False, "fail")
    assert child.close() == 0  # EOF on stdin: the child leaves quietly


def test_host_calls_are_answered_over_the_pipe_while_later_requests_wait(child: Child) -> None:
    child.run(1, "outputs['v'] = lookup('eu', limit=2)")
    child.run(2, "outputs['v'] = 2")

    call = child.read()
    assert call == {"t": "call", "fn": "lookup", "args": ["eu"], "kwargs": {"limit": 2}}
    child.send({"t": "reply", "ok": True, "value": {"rows": 3}})
    first, second = child.read(), child.read()

    assert first["outputs"] == {"v": {"rows": 3}}
    assert second["outputs"] == {"v": 2}


def test_a_host_call_error_reply_raises_in_the_script(child: Child) -> None:
    child.run(1, "try:\n    lookup()\nexcept Exception as e:\n    outputs['e'] = str(e)")

    assert child.read()["t"] == "call"
    child.send({"t": "reply", "ok": False, "error": "host function 'lookup' failed: KeyError: 'x'"})

    assert child.read()["outputs"] == {"e": "host function 'lookup' failed: KeyError: 'x'"}


def test_rlimit_cpu_stops_a_step_the_parent_did_not_kill(child: Child) -> None:
    child.run(1, "while True:\n    pass", timeout_s=0.2)  # nobody kills it here: SIGXCPU must

    result = child.read()

    assert result["error"]["kind"] == ErrorKind.LIMIT
    assert result["exit"] is True
    assert child.process.wait(timeout=10) == 0


def test_a_result_of_the_wrong_shape_is_refused() -> None:
    good: dict[str, Any] = {
        "t": "result",
        "id": 1,
        "ok": True,
        "outputs": {},
        "ops": [],
        "error": None,
        "logs": "",
        "elapsed_ms": 1.0,
        "exit": False,
    }
    bad_values: list[tuple[str, Any]] = [
        ("ok", "yes"),
        ("outputs", []),
        ("ops", [["delete", "k", 1]]),
        ("ops", [["set", 1, 1]]),
        ("error", {"kind": "script", "type": "X", "message": "m", "line": None}),
        ("logs", None),
        ("elapsed_ms", "1"),
        ("exit", None),
    ]
    parse_result = result_parser(TEST_SETTINGS)
    result, exits = parse_result(good, "local:1")
    assert result.ok and not exits
    for field, value in bad_values:
        with pytest.raises(ValueError):
            parse_result({**good, field: value}, "local:1")
    failed = {**good, "ok": False, "error": {"kind": "nonsense", "type": "X", "message": "m", "line": None}}
    with pytest.raises(ValueError):
        parse_result(failed, "local:1")


def test_a_child_dies_with_its_parent_even_when_stuck() -> None:
    # the parent starts a child, hands it a step that never reads stdin again, and is killed
    parent_script = (
        "import dataclasses, subprocess, sys, orjson\n"
        "from dagrun.sandbox.process import child_command\n"
        "from tests.sandbox.conftest import TEST_SETTINGS\n"
        "child = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,\n"
        "                         stderr=subprocess.DEVNULL, env={}, start_new_session=True)\n"
        "config = {'settings': dataclasses.asdict(TEST_SETTINGS), 'functions': []}\n"
        "child.stdin.write(orjson.dumps(config) + b'\\n'); child.stdin.flush()\n"
        "child.stdout.readline()\n"
        "request = {'run_id': 'r', 'step_id': 's', 'attempt': 1, 'script': 'while True:\\n    pass',\n"
        "           'script_hash': 'h', 'inputs': {}, 'context': {}, 'context_id': 'c', 'timeout_s': 60}\n"
        "child.stdin.write(orjson.dumps({'t': 'run', 'id': 1, 'req': request}) + b'\\n'); child.stdin.flush()\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert parent.stdout is not None and parent.stdin is not None
    child_pid = int(parent.stdout.readline())
    pidfd = os.pidfd_open(child_pid)
    try:
        parent.kill()
        parent.wait(timeout=10)

        readable, _, _ = select.select([pidfd], [], [], 10)  # readable once the child has exited
        assert readable == [pidfd]
    finally:
        with contextlib.suppress(ProcessLookupError):  # if it is still spinning: the pidfd names it for sure
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        parent.stdin.close()
        parent.stdout.close()
