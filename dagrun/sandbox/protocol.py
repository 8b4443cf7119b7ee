"""The child pipe protocol: every message between a pool, its zygote and its sandbox children, each with its
encoder and its parser. Both sides import this module, so it loads only what a sandbox child may load.

Pipes carry one JSON object per line (orjson, never pickle); the zygote's socket one per datagram, with
file descriptors attached.
    parent -> child   {"settings": {...}, "functions": [names]}       the configuration (the zygote's too)
                      {"t": "run", "id": n, "req": {...}}             requests, up to pipeline_depth queued
                      {"t": "reply", "ok": true, "value": v}          the answer to a host function call
                      {"t": "reply", "ok": false, "error": "..."}
    child -> parent   {"t": "ready", "pid": n, "layers": [names]}     or {"t": "fatal", "message": "..."}
                      {"t": "call", "fn": name, "args": [...], "kwargs": {...}}       while its step runs
                      {"t": "result", "id": n, "ok": ..., "outputs": {...}, "ops": [...], "error": ...,
                       "logs": "...", "elapsed_ms": ..., "exit": false}    in request order; after "exit": true
                                                                          the child is gone
    parent -> zygote  {"t": "fork"} + [the child's stdin, its stdout]
    zygote -> parent  {"t": "forked", "pid": n} + [a pidfd of the child]
Everything a child sends is untrusted (its script may have escaped): its lines are capped at `max_line_bytes`,
and a message that is not exactly the expected shape raises ProtocolError. The parent is trusted by its child.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.sandbox.scope import JSON_OPTIONS
from dagrun.sandbox.settings import SandboxSettings

if TYPE_CHECKING:
    from dagrun.contract.executor import StepResult

Message = dict[str, Any]

# The kinds of message (their "t"):
RUN, REPLY, CALL, RESULT = "run", "reply", "call", "result"
READY, FATAL, FORK, FORKED = "ready", "fatal", "fork", "forked"
# The error kinds a child reports: ErrorKind values, written out so that a child never imports the executor
# module (and pydantic). The parent checks them against ErrorKind itself.
SECURITY, LIMIT, FAIL, OUTPUT, SCRIPT, WORKER = "security", "limit", "fail", "output", "script", "worker"

MAX_FATAL_CHARS = 1000
MAX_TYPE_NAME_CHARS = 200
MAX_ZYGOTE_MESSAGE_BYTES = 1 << 20  # the configuration, sent to the zygote in one datagram
MAX_FORKED_BYTES = 4096
_LINE_SLACK_BYTES = 64 * 1024
_JSON_ESCAPE_FACTOR = 6  # "\u0000" is 6 bytes for 1
_LOG_SLACK_CHARS = 64  # the truncation marker a child appends to its capped log
_NUMBER = (int, float)


class ProtocolError(ValueError):
    """A message that is not exactly what the protocol allows there."""


def max_line_bytes(settings: SandboxSettings) -> int:
    """The longest line a child may send: its capped parts, JSON-escaped in the worst case."""
    escaped = _JSON_ESCAPE_FACTOR * (settings.max_log_bytes + settings.max_error_bytes)
    return settings.max_output_bytes + settings.max_context_bytes + escaped + _LINE_SLACK_BYTES


def decode_message(line: bytes) -> Message:
    """One line (or datagram) as a JSON object; ProtocolError when it is not one."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ProtocolError("a message that is not JSON") from None
    if type(message) is not dict:
        raise ProtocolError("a message that is not a JSON object")
    return message


def kind_of(message: Message) -> Any:
    """The message's kind (RUN, RESULT, ...); anything at all in a message from a child."""
    return message.get("t")


# --- configuration: parent -> child, parent -> zygote --------------------------------------------------


class ChildConfig(NamedTuple):
    settings: SandboxSettings
    functions: list[str]  # the names of the host functions scripts may call


def encode_config(settings: SandboxSettings, functions: Sequence[str]) -> bytes:
    return orjson.dumps({"settings": dataclasses.asdict(settings), "functions": list(functions)}) + b"\n"


def parse_config(data: bytes) -> ChildConfig:
    config = decode_message(data)
    return ChildConfig(SandboxSettings(**config["settings"]), list(config["functions"]))


# --- requests and host function replies: parent -> child -----------------------------------------------


def encode_run(job_id: int, request: bytes) -> bytes:
    """`request` is the request envelope (`contract.envelope.encode_request`), sent as is."""
    return b'{"t":"run","id":%d,"req":%b}\n' % (job_id, request)


def parse_run(message: Message) -> tuple[int, Message]:
    """The id a run message's result must carry, and its request envelope."""
    return message["id"], message["req"]


def job_id_of(message: Message) -> Any:
    """The id of a run message, whatever it holds: for the answer to one that could not be handled."""
    return message.get("id")


def encode_reply(value: Any) -> bytes:
    """TypeError when `value` is not a JSON value."""
    return orjson.dumps({"t": REPLY, "ok": True, "value": value}, option=JSON_OPTIONS) + b"\n"


def encode_reply_error(error: str) -> bytes:
    return orjson.dumps({"t": REPLY, "ok": False, "error": error}) + b"\n"


class Reply(NamedTuple):
    ok: bool
    value: Any  # the function's value when ok
    error: str  # what went wrong when not


def parse_reply(message: Message) -> Reply:
    if message.get("ok") is True:
        return Reply(True, message.get("value"), "")
    return Reply(False, None, str(message.get("error")))


# --- child -> parent: untrusted --------------------------------------------------------------------------


def encode_ready(pid: int, layers: Sequence[str]) -> bytes:
    return orjson.dumps({"t": READY, "pid": pid, "layers": list(layers)}) + b"\n"


def parse_ready(message: Message) -> tuple[str, ...]:
    """The OS confinement layers the child says it applied (only ever logged: kept if names, else none)."""
    layers = message.get("layers")
    return tuple(layer for layer in layers if type(layer) is str) if type(layers) is list else ()


def encode_fatal(text: str) -> bytes:
    return orjson.dumps({"t": FATAL, "message": text[:MAX_FATAL_CHARS]}) + b"\n"


def parse_fatal(message: Message) -> str:
    return str(message.get("message"))[:MAX_FATAL_CHARS]


class HostCall(NamedTuple):
    name: str
    args: list[Any]
    kwargs: dict[str, Any]


def encode_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """TypeError when an argument is not a JSON value."""
    return orjson.dumps({"t": CALL, "fn": name, "args": args, "kwargs": kwargs}, option=JSON_OPTIONS) + b"\n"


def parse_call(message: Message, names: Container[str]) -> HostCall:
    """A call of one of the functions `names`; ProtocolError, worded for the script, for anything else."""
    name, args, kwargs = message.get("fn"), message.get("args"), message.get("kwargs")
    if type(name) is not str or name not in names or type(args) is not list or type(kwargs) is not dict:
        raise ProtocolError(f"no host function {name!r}")
    return HostCall(name, args, kwargs)


def error_fields(kind: str, type_: str, message: str, line: int | None) -> Message:
    """The error of a result message; `kind` is one of SECURITY, LIMIT, ... above."""
    return {"kind": kind, "type": type_, "message": message, "line": line}


def encode_result(
    job_id: Any, *, error: Message | None, outputs: bytes, ops: Sequence[Sequence[Any]], logs: str,
    elapsed_ms: float, exits: bool,
) -> bytes:  # fmt: skip
    """`outputs` is already encoded (and size-checked); a failed result carries no outputs and no operations."""
    ok = error is None
    result = {
        "t": RESULT,
        "id": job_id,
        "ok": ok,
        "outputs": orjson.Fragment(outputs if ok else b"{}"),
        "ops": [list(op) for op in ops] if ok else [],
        "error": error,
        "logs": logs,
        "elapsed_ms": elapsed_ms,
        "exit": exits,
    }
    return orjson.dumps(result) + b"\n"


def answers(message: Message, job_id: int) -> bool:
    """Whether a result message is the answer to the run message sent with `job_id`."""
    return message.get("id") == job_id


def result_parser(settings: SandboxSettings) -> Callable[[Message, str], tuple[StepResult, bool]]:
    """The parent's parser of result messages under the caps of `settings`: `parse(message, worker_id)` is
    the StepResult the message carries and whether the child exits after it; ProtocolError (or another
    ValueError) when the message is not exactly the expected shape."""
    # Imported here, in the parent, once per child: a child imports this module and must never load the
    # executor module (and pydantic).
    from dagrun.contract.executor import ErrorKind, StepError, StepResult

    max_error_bytes, max_log_chars = settings.max_error_bytes, settings.max_log_bytes + _LOG_SLACK_CHARS

    def parse_result(message: Message, worker_id: str) -> tuple[StepResult, bool]:
        ok, outputs, ops, error = message.get("ok"), message.get("outputs"), message.get("ops"), message.get("error")
        logs, elapsed_ms, exits = message.get("logs"), message.get("elapsed_ms"), message.get("exit")
        if type(ok) is not bool or type(outputs) is not dict or type(ops) is not list or type(logs) is not str:
            raise ProtocolError("a result field has the wrong type")
        if not isinstance(elapsed_ms, _NUMBER) or ok != (error is None) or type(exits) is not bool:
            raise ProtocolError("a result field has the wrong type")
        step_error = None
        if error is not None:
            kind, type_, text, line = _parse_error(error)
            step_error = StepError(ErrorKind(kind), type_[:MAX_TYPE_NAME_CHARS], text[:max_error_bytes], line)
        context_ops = tuple(map(_parse_op, ops))
        # positional: this runs for every step, and keywords cost twice the time
        result = StepResult(ok, outputs, context_ops, step_error, logs[:max_log_chars], float(elapsed_ms), worker_id)
        return result, exits

    return parse_result


def _parse_op(op: Any) -> ContextOp:
    if type(op) is not list or len(op) != 3 or type(op[1]) is not str:
        raise ProtocolError("a context operation has the wrong shape")
    return ContextOp(ContextOpKind(op[0]), op[1], op[2])


def _parse_error(error: Any) -> tuple[str, str, str, int | None]:
    if type(error) is not dict:
        raise ProtocolError("the error is not an object")
    kind, type_, message, line = error.get("kind"), error.get("type"), error.get("message"), error.get("line")
    if type(kind) is not str or type(type_) is not str or type(message) is not str:
        raise ProtocolError("an error field has the wrong type")
    if line is not None and type(line) is not int:
        raise ProtocolError("an error field has the wrong type")
    return kind, type_, message, line


# --- the zygote's socket -----------------------------------------------------------------------------------


def encode_fork() -> bytes:
    return orjson.dumps({"t": FORK}) + b"\n"


def is_fork(data: bytes) -> bool:
    try:
        return bool(kind_of(decode_message(data)) == FORK)
    except ProtocolError:
        return False


def encode_forked(pid: int) -> bytes:
    return orjson.dumps({"t": FORKED, "pid": pid}) + b"\n"


def parse_forked(data: bytes) -> int:
    """The pid of the child the zygote forked; ProtocolError when the answer is not exactly that."""
    message = decode_message(data)
    pid = message.get("pid")
    if kind_of(message) != FORKED or type(pid) is not int or pid <= 0:
        raise ProtocolError("expected the pid of a forked child")
    return pid
