"""StepRunner: runs one request inside a sandbox child and turns what happened into a result message.

Runs in the child only (it re-arms RLIMIT_CPU). Compiled scripts are cached by script hash; each step
gets a copy of one base globals dict. Everything the script does ends as a result message, never as an
exception out of `run`; after a memory, recursion or CPU limit the child must exit (`exit` is true),
since its state may be damaged. The error kinds are `protocol`'s (ErrorKind values, written out so that
the child does not import the executor module).
"""

from __future__ import annotations

import gc
import math
import resource
import time
from collections.abc import Callable, Mapping
from types import CodeType, TracebackType
from typing import Any

import orjson

from dagrun.sandbox import protocol
from dagrun.sandbox.policy import Guards, Rejection, build_base_globals, compile_source, step_globals
from dagrun.sandbox.protocol import FAIL, LIMIT, OUTPUT, SCRIPT, SECURITY, Message, error_fields
from dagrun.sandbox.scope import (
    JSON_OPTIONS,
    SCRIPT_FILENAME,
    LimitExceeded,
    SandboxViolation,
    StepFailed,
    StepScope,
    Violations,
)
from dagrun.sandbox.settings import SandboxSettings
from dagrun.sandbox.step_random import StepRandom

_CACHE_SIZE = 512
CPU_LIFETIME_S = 24 * 3600  # the hard RLIMIT_CPU of a child: what kills it even where no handler runs
_REJECTION_KINDS = {"syntax": SCRIPT, "policy": SECURITY, "limit": LIMIT}


class CpuLimitExceeded(LimitExceeded):
    """Raised in the script by the SIGXCPU handler: the step used more CPU than its timeout allows."""


class StepRunner:
    """Runs steps one after another in this process; `run` returns (result line, must exit)."""

    def __init__(self, settings: SandboxSettings, functions: Mapping[str, Callable[..., Any]]) -> None:
        self.settings = settings
        self.violations = Violations()
        self.guards = Guards(self.violations)
        self.step_random = StepRandom()
        self.base = build_base_globals(self.violations, functions, guards=self.guards, step_random=self.step_random)
        self.scope: StepScope | None = None  # the running step's; host functions check it is active
        self.cpu_exceeded = False
        self._cache: dict[str, tuple[str, CodeType | Rejection]] = {}
        self._armed_cpu_s = -1

    def on_cpu_limit(self) -> None:
        """Called by the SIGXCPU handler; raises into whatever Python code is running."""
        self.cpu_exceeded = True
        raise CpuLimitExceeded("the step used more CPU time than its timeout allows")

    def run(self, message: Message) -> tuple[bytes, bool]:
        """The result line of a run message's step, and whether this child must exit after it."""
        started = time.perf_counter()
        job_id, request = protocol.parse_run(message)
        self.violations.start(None)
        self.step_random.start()
        self.cpu_exceeded = False
        self.arm_cpu(min(float(request["timeout_s"]), CPU_LIFETIME_S))
        scope = StepScope(
            context=request["context"],
            violations=self.violations,
            max_log_bytes=self.settings.max_log_bytes,
            max_context_bytes=self.settings.max_context_bytes,
        )
        self.scope = scope
        error, must_exit, outputs = self._execute(request, scope)
        # The step's garbage (its globals are a cycle with its functions) is collected now, so that
        # finalizers it left run inside its own time and accounting, not in a later step.
        gc.collect()
        scope.is_active = False
        self.scope = None
        error = self._sticky_error(scope) or error
        # past half its CPU lifetime a child retires, long before the hard RLIMIT_CPU could cut a step
        must_exit = must_exit or self.cpu_exceeded or time.process_time() > CPU_LIFETIME_S / 2
        encoded = b"{}"
        if error is None:
            encoded, error = self._encode_outputs(outputs)
        line = protocol.encode_result(
            job_id,
            error=self._cap_error(error),
            outputs=encoded,
            ops=scope.context_ops,
            logs=scope.log.text(),
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            exits=must_exit,
        )
        return line, must_exit

    def _execute(self, request: Message, scope: StepScope) -> tuple[Message | None, bool, Any]:
        """Compile (cached) and exec; returns (error, must exit, the outputs value)."""
        compiled = self._compiled(request["script_hash"], request["script"])
        if isinstance(compiled, Rejection):
            line, text = compiled.problems[0]
            more = len(compiled.problems) - 1
            kind = _REJECTION_KINDS[compiled.kind]
            return error_fields(kind, "ScriptError", text + (f" (and {more} more)" if more else ""), line), False, None
        namespace = step_globals(
            self.base,
            scope,
            inputs=request["inputs"],
            attempt=request["attempt"],
            step_id=request["step_id"],
            run_id=request["run_id"],
            context_id=request["context_id"],
        )
        self.violations.start(namespace)
        try:
            exec(compiled, namespace)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt are reachable from scripts
            scope.is_active = False
            error, must_exit = self._classify(exc)
            return error, must_exit, None
        return None, False, namespace.get("outputs")

    def _compiled(self, key: str, source: str) -> CodeType | Rejection:
        cached = self._cache.get(key)
        if cached is not None and cached[0] == source:  # the hash is the caller's: trust but verify
            return cached[1]
        compiled = compile_source(source, max_source_bytes=self.settings.max_source_bytes)
        if len(self._cache) >= _CACHE_SIZE:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (source, compiled)
        return compiled

    def arm_cpu(self, timeout_s: float) -> None:
        """Allow `timeout_s` (rounded up) plus one second more CPU time from now."""
        # RLIMIT_CPU counts the CPU time of the whole (reused) process, so each step moves it on.
        soft = math.ceil(time.process_time() + timeout_s) + 1
        if soft != self._armed_cpu_s:
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]  # fixed for life once privileges are dropped
            resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
            self._armed_cpu_s = soft

    def _classify(self, exc: BaseException) -> tuple[Message, bool]:
        """The error of an exception out of the script, and whether the child must exit after it."""
        line = _traceback_line(exc.__traceback__)
        if isinstance(exc, SandboxViolation):
            return error_fields(SECURITY, "SandboxViolation", exc.message, exc.line or line), False
        if isinstance(exc, MemoryError):
            message = f"the step ran out of memory (limit {self.settings.memory_mb} MB)"
            return error_fields(LIMIT, "MemoryError", message, line), True
        if isinstance(exc, RecursionError):
            message = f"maximum recursion depth exceeded (limit {self.settings.recursion_limit})"
            return error_fields(LIMIT, "RecursionError", message, line), True
        if isinstance(exc, LimitExceeded):
            return error_fields(LIMIT, type(exc).__name__, _text_of(exc), line), isinstance(exc, CpuLimitExceeded)
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            message = f"{type(exc).__name__} cannot end a sandboxed step; use fail(message) to fail it"
            return error_fields(SECURITY, type(exc).__name__, message, line), False
        if isinstance(exc, StepFailed):
            return error_fields(FAIL, "StepFailed", _text_of(exc), line), False
        return error_fields(SCRIPT, type(exc).__name__[: protocol.MAX_TYPE_NAME_CHARS], _text_of(exc), line), False

    def _sticky_error(self, scope: StepScope) -> Message | None:
        """What fails the step even if the script caught the exception: a refusal, CPU, fail()."""
        violation = self.violations.first
        if violation is not None:
            return error_fields(SECURITY, "SandboxViolation", violation.message, violation.line)
        if self.cpu_exceeded:
            return error_fields(LIMIT, "CpuLimitExceeded", "the step used more CPU time than its timeout allows", None)
        if scope.failure is not None:
            return error_fields(FAIL, "StepFailed", scope.failure, None)
        return None

    def _encode_outputs(self, outputs: Any) -> tuple[bytes, Message | None]:
        if not isinstance(outputs, dict):
            return b"{}", error_fields(OUTPUT, "OutputError", "outputs must be a dict", None)
        try:
            encoded = orjson.dumps(outputs, option=JSON_OPTIONS)
        except TypeError:
            return b"{}", error_fields(OUTPUT, "OutputError", _explain_outputs(outputs), None)
        except MemoryError:
            return b"{}", error_fields(LIMIT, "OutputError", "outputs are too large to encode", None)
        limit = self.settings.max_output_bytes
        if len(encoded) > limit:
            message = f"outputs are {len(encoded)} bytes encoded, over the {limit}-byte limit"
            return b"{}", error_fields(LIMIT, "OutputError", message, None)
        return encoded, None

    def _cap_error(self, error: Message | None) -> Message | None:
        if error is not None:
            error["message"] = cap_text(error["message"], self.settings.max_error_bytes)
        return error


def _traceback_line(tb: TracebackType | None) -> int | None:
    """The line of the innermost script frame of a traceback."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == SCRIPT_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _text_of(exc: BaseException) -> str:
    try:
        text = str(exc)  # may run script code (__str__), which may fail in any way
    except BaseException:
        return "(the exception's message could not be formatted)"
    return text if isinstance(text, str) else "(the exception's message is not a str)"


def _explain_outputs(outputs: dict[Any, Any]) -> str:
    """Which output is not a JSON value, and why."""
    for key, value in outputs.items():
        if type(key) is not str:
            return f"outputs key of type {type(key).__name__} is not a str"
        try:
            orjson.dumps(value, option=JSON_OPTIONS)
        except TypeError as exc:
            return f"outputs[{key!r}] is not a JSON value: {exc}"
    return "outputs are not JSON values"


def cap_text(text: str, limit: int) -> str:
    """Valid UTF-8 of at most `limit` bytes (lone surrogates replaced), marked when cut."""
    if len(text) <= limit and text.isascii():
        return text
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    marker = " [truncated]"
    return data[: max(limit - len(marker), 0)].decode("utf-8", "ignore") + marker
