"""The child pipe protocol alone: every message kind survives its encoder and parser, and what a child may
send is refused unless it is exactly the expected shape (tests/sandbox/test_child.py drives a real child)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.executor import ErrorKind, StepError
from dagrun.sandbox import protocol
from dagrun.sandbox.protocol import ProtocolError
from tests.sandbox.conftest import TEST_SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def test_the_error_kinds_a_child_reports_are_error_kinds() -> None:
    written_out = {protocol.SECURITY, protocol.LIMIT, protocol.FAIL, protocol.OUTPUT, protocol.SCRIPT, protocol.WORKER}

    assert written_out <= {kind.value for kind in ErrorKind}


def test_the_configuration_and_the_messages_to_a_child_round_trip() -> None:
    config = protocol.parse_config(protocol.encode_config(TEST_SETTINGS, ["lookup"]))
    run = protocol.decode_message(protocol.encode_run(7, orjson.dumps({"step_id": "s"})))
    value = protocol.decode_message(protocol.encode_reply({"rows": 3}))
    error = protocol.decode_message(protocol.encode_reply_error("no host function 'x'"))

    assert config == (TEST_SETTINGS, ["lookup"])
    assert protocol.kind_of(run) == protocol.RUN and protocol.parse_run(run) == (7, {"step_id": "s"})
    assert protocol.parse_reply(value) == (True, {"rows": 3}, "")
    assert protocol.parse_reply(error) == (False, None, "no host function 'x'")


def test_a_reply_that_is_not_json_is_refused_before_it_is_sent() -> None:
    with pytest.raises(TypeError):
        protocol.encode_reply({1, 2})


def test_ready_and_fatal_round_trip_and_odd_layers_are_dropped() -> None:
    ready = protocol.decode_message(protocol.encode_ready(42, ["landlock"]))
    fatal = protocol.decode_message(protocol.encode_fatal("x" * 5000))

    assert protocol.kind_of(ready) == protocol.READY and protocol.parse_ready(ready) == ("landlock",)
    assert protocol.parse_ready({"t": "ready", "layers": ["seccomp", 1, None]}) == ("seccomp",)
    assert protocol.parse_ready({"t": "ready", "layers": "seccomp"}) == ()
    assert protocol.kind_of(fatal) == protocol.FATAL
    assert protocol.parse_fatal(fatal) == "x" * protocol.MAX_FATAL_CHARS
    assert len(protocol.parse_fatal({"t": "fatal", "message": ["y"] * 5000})) == protocol.MAX_FATAL_CHARS


def test_a_call_parses_only_when_it_names_a_known_function_with_list_and_dict_arguments() -> None:
    call = protocol.decode_message(protocol.encode_call("lookup", ("eu",), {"limit": 2}))
    bad_calls = [
        {**call, "fn": "other"},
        {**call, "fn": 5},
        {**call, "args": {"a": 1}},
        {**call, "kwargs": ["limit"]},
        {"t": "call"},
    ]

    assert protocol.parse_call(call, {"lookup"}) == ("lookup", ["eu"], {"limit": 2})
    for bad in bad_calls:
        with pytest.raises(ProtocolError, match="no host function"):
            protocol.parse_call(bad, {"lookup"})


def test_a_result_round_trips_as_a_step_result() -> None:
    ok_line = protocol.encode_result(
        3,
        error=None,
        outputs=b'{"a":1}',
        ops=[ContextOp(ContextOpKind.SET, "k", 1)],
        logs="hi\n",
        elapsed_ms=2.5,
        exits=False,
    )
    error = protocol.error_fields(protocol.FAIL, "StepFailed", "no", 4)
    failed_line = protocol.encode_result(
        4,
        error=error,
        outputs=b'{"a":1}',
        ops=[ContextOp(ContextOpKind.SET, "k", 1)],
        logs="",
        elapsed_ms=1.0,
        exits=True,
    )
    ok_message, failed_message = protocol.decode_message(ok_line), protocol.decode_message(failed_line)

    result, exits = protocol.result_parser(TEST_SETTINGS)(ok_message, "local:9")
    failure, failed_exits = protocol.result_parser(TEST_SETTINGS)(failed_message, "local:9")

    assert protocol.answers(ok_message, 3) and not protocol.answers(ok_message, 4)
    assert (result.ok, result.outputs, result.context_ops, result.logs, exits) == (
        True,
        {"a": 1},
        (ContextOp(ContextOpKind.SET, "k", 1),),
        "hi\n",
        False,
    )
    assert (result.elapsed_ms, result.worker_id) == (2.5, "local:9")
    assert (failure.ok, failure.outputs, failure.context_ops, failed_exits) == (False, {}, (), True)
    assert failure.error == StepError(ErrorKind.FAIL, "StepFailed", "no", 4)


def test_a_result_from_a_child_is_capped_to_the_pool_limits() -> None:
    error = protocol.error_fields(protocol.SCRIPT, "T" * 1000, "m" * 100_000, None)
    line = protocol.encode_result(
        1, error=error, outputs=b"{}", ops=(), logs="l" * 1_000_000, elapsed_ms=1, exits=False
    )

    result, _ = protocol.result_parser(TEST_SETTINGS)(protocol.decode_message(line), "w")

    assert result.error is not None
    assert len(result.error.type) == protocol.MAX_TYPE_NAME_CHARS
    assert len(result.error.message) == TEST_SETTINGS.max_error_bytes
    assert len(result.logs) < TEST_SETTINGS.max_log_bytes + 100


def test_lines_that_are_not_json_objects_are_refused() -> None:
    for line in [b"not json", b"[1, 2]", b'"text"', b"", b'{"t": "result"']:
        with pytest.raises(ProtocolError):
            protocol.decode_message(line)


def test_the_line_limit_admits_a_result_at_every_limit_with_the_worst_escaping() -> None:
    settings = TEST_SETTINGS
    outputs = orjson.dumps({"v": "x" * (settings.max_output_bytes - 10)})
    ops = [ContextOp(ContextOpKind.SET, "k", "y" * (settings.max_context_bytes - 20))]
    error = protocol.error_fields(
        protocol.SCRIPT, "T" * protocol.MAX_TYPE_NAME_CHARS, "\0" * settings.max_error_bytes, 1
    )
    logs = "\0" * settings.max_log_bytes + "\n[log truncated at 65536 bytes]\n"

    line = protocol.encode_result(1, error=None, outputs=outputs, ops=ops, logs=logs, elapsed_ms=1.0, exits=False)
    failed = protocol.encode_result(1, error=error, outputs=b"{}", ops=(), logs=logs, elapsed_ms=1.0, exits=True)

    assert len(line) <= protocol.max_line_bytes(settings)
    assert len(failed) <= protocol.max_line_bytes(settings)


def test_the_zygote_messages_round_trip_and_garbage_is_refused() -> None:
    assert protocol.is_fork(protocol.encode_fork())
    assert protocol.parse_forked(protocol.encode_forked(1234)) == 1234
    for garbage in [b"", b"nonsense", b'{"t": "forked"}', protocol.encode_forked(1234)]:
        assert not protocol.is_fork(garbage)
    for garbage in [b"", b"[]", protocol.encode_fork(), b'{"t": "forked", "pid": "1"}', b'{"t": "forked", "pid": 0}']:
        with pytest.raises(ProtocolError):
            protocol.parse_forked(garbage)


def test_a_child_loads_neither_the_executor_module_nor_pydantic() -> None:
    code = "import sys, dagrun.sandbox.child, dagrun.sandbox.zygote\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)

    loaded = set(out.stdout.split())
    assert "dagrun.sandbox.protocol" in loaded
    assert not loaded & {"dagrun.contract.executor", "dagrun.contract.envelope", "pydantic"}
