"""StepScope: what one step's script sees (log, context, outputs, fail) and what it leaves behind.

Every object handed to a script keeps its state in `_`-prefixed slots, which the attribute guard
never lets a script reach; a script only calls their public methods. Refusals are sticky: a script
that catches a SandboxViolation (or the exception of `fail`) still fails.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any, NoReturn

import orjson

from dagrun.contract.context import ContextOp, ContextOpError, ContextOpKind, apply_op

SCRIPT_FILENAME = "<script>"
JSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS  # only real JSON values pass
LOG_TRUNCATED_MARKER = "\n[log truncated at {limit} bytes]\n"
_CONTEXT_OP_OVERHEAD = 16  # the bytes an operation adds to a result besides its key and value


class SandboxViolation(Exception):
    """The sandbox refused something a script tried; the step fails with ErrorKind.SECURITY."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class StepFailed(Exception):
    """The script called fail(message); the step fails with ErrorKind.FAIL."""


class LimitExceeded(Exception):
    """A step went over a sandbox limit (context size, CPU time); the step fails with ErrorKind.LIMIT."""


class HostFunctionError(Exception):
    """A host function failed or refused its arguments; the script sees it as an ordinary exception."""


def script_frame(depth: int = 1) -> FrameType | None:
    """The innermost script frame on the current stack, if any (refusal path only)."""
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        if frame.f_code.co_filename == SCRIPT_FILENAME:
            return frame
        frame = frame.f_back
    return None


class Violations:
    """The refusals of the running step, kept even when the script catches the exception.

    The running step is known by the id of its globals (a reference would keep its garbage alive):
    code left behind by an earlier step (an object in a host cache) is still refused, but does not fail
    the step it happens to run in."""

    __slots__ = ("first", "namespace_id")

    def __init__(self) -> None:
        self.first: SandboxViolation | None = None
        self.namespace_id: int | None = None

    def refuse(self, message: str) -> SandboxViolation:
        """Record a refusal and return the exception to raise at the script."""
        frame = script_frame(2)
        violation = SandboxViolation(message, frame.f_lineno if frame is not None else None)
        is_foreign = frame is not None and self.namespace_id not in (None, id(frame.f_globals))
        if self.first is None and not is_foreign:
            self.first = violation
        return violation

    def start(self, namespace: dict[str, Any] | None) -> None:
        """Forget the refusals of the previous step; `namespace` is the globals of the one starting."""
        self.first = None
        self.namespace_id = None if namespace is None else id(namespace)


class LogBuffer:
    """The captured log/print text of one step; past the limit, text is dropped and a marker added."""

    __slots__ = ("_limit", "_parts", "_size", "_truncated")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0
        self._truncated = False

    def write(self, text: str) -> None:
        if self._truncated:
            return
        room = self._limit - self._size
        if len(text) > room:
            text = text[: max(room, 0)]
            self._truncated = True
        self._size += len(text)
        self._parts.append(text)

    def log(self, *args: object) -> None:
        """`log(*args)` in scripts: the arguments as str, space-separated, one line."""
        self.write(" ".join([str(arg) for arg in args]) + "\n")

    def text(self) -> str:
        """The captured text: valid UTF-8, at most `limit` bytes, plus the marker when truncated."""
        text = "".join(self._parts)
        if not self._truncated and text.isascii():
            return text
        data = text.encode("utf-8", "replace")  # lone surrogates become '?'
        truncated = self._truncated or len(data) > self._limit
        text = data[: self._limit].decode("utf-8", "ignore")
        return text + LOG_TRUNCATED_MARKER.format(limit=self._limit) if truncated else text


class Printer:
    """What RestrictedPython's `print` calls; `printed` (a call of it) is the text it printed."""

    __slots__ = ("_log", "_parts", "_room", "_violations")

    def __init__(self, log: LogBuffer, violations: Violations, limit: int) -> None:
        self._log = log
        self._violations = violations
        self._parts: list[str] = []
        self._room = limit  # `printed` keeps no more than the log does

    def _call_print(
        self, *objects: object, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
    ) -> None:
        if file is not None:
            # print(file=x) would call x.write(...) outside the attribute guard
            raise self._violations.refuse("print(file=...) is not available in the sandbox")
        if not isinstance(sep, str | None) or not isinstance(end, str | None):
            raise TypeError("print() sep and end must be str or None")
        text = (" " if sep is None else sep).join([str(obj) for obj in objects]) + ("\n" if end is None else end)
        self._log.write(text)
        if self._room > 0:
            self._parts.append(text[: self._room])
            self._room -= len(text)

    def __call__(self) -> str:
        return "".join(self._parts)


class ScriptContext:
    """`context` in scripts: reads see the snapshot plus this step's writes; writes become ContextOps."""

    __slots__ = ("_limit", "_ops", "_size", "_view")

    def __init__(self, snapshot: dict[str, Any], ops: list[ContextOp], limit: int) -> None:
        self._view = snapshot  # owned by this step: decoded from the request for it alone
        self._ops = ops  # owned by the StepScope; no public method hands this list to the script
        self._size = 0
        self._limit = limit

    def get(self, key: str, default: Any = None) -> Any:
        return self._view.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._record(ContextOpKind.SET, key, value)

    def incr(self, key: str, by: int | float = 1) -> Any:
        if not isinstance(by, int | float) or isinstance(by, bool):
            raise TypeError(f"context.incr({key!r}): by must be a number, not {type(by).__name__}")
        self._record(ContextOpKind.INCR, key, by)
        return self._view[key]

    def append(self, key: str, value: Any) -> None:
        self._record(ContextOpKind.APPEND, key, value)

    def __repr__(self) -> str:
        return f"<context with {len(self._view)} keys>"

    def _record(self, kind: ContextOpKind, key: str, value: Any) -> None:
        if type(key) is not str:
            raise TypeError(f"context.{kind.value}: key must be a str, not {type(key).__name__}")
        try:
            encoded = orjson.dumps(value, option=JSON_OPTIONS)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise TypeError(f"context.{kind.value}({key!r}): value is not a JSON value: {exc}") from None
        self._size += len(encoded) + len(orjson.dumps(key)) + _CONTEXT_OP_OVERHEAD
        if self._size > self._limit:
            raise LimitExceeded(f"context writes of this step are over the {self._limit}-byte limit")
        try:
            apply_op(self._view, ContextOp(kind, key, value))
        except ContextOpError as exc:
            raise ValueError(str(exc)) from None
        # the recorded value is a copy, so later changes to the script's object do not leak into it
        self._ops.append(ContextOp(kind, key, orjson.loads(encoded)))


class StepScope:
    """The per-step state behind a script's globals; closed once the step's result is taken."""

    __slots__ = ("context", "context_ops", "failure", "is_active", "log", "max_log_bytes", "outputs", "violations")

    def __init__(
        self, *, context: dict[str, Any], violations: Violations, max_log_bytes: int, max_context_bytes: int
    ) -> None:
        self.log = LogBuffer(max_log_bytes)
        self.max_log_bytes = max_log_bytes
        self.context_ops: list[ContextOp] = []
        self.context = ScriptContext(context, self.context_ops, max_context_bytes)
        self.outputs: dict[str, Any] = {}
        self.failure: str | None = None
        self.violations = violations
        self.is_active = True

    def fail(self, message: object = "the step failed") -> NoReturn:
        """`fail(message)` in scripts; sticky, so catching the exception does not undo it."""
        text = message if isinstance(message, str) else str(message)
        if self.failure is None:
            self.failure = text
        raise StepFailed(text)

    def printer(self, _getattr_: Any = None) -> Printer:
        """`_print_`: RestrictedPython makes one printer per module or function that prints."""
        return Printer(self.log, self.violations, self.max_log_bytes)

    def names(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The script-visible names this scope contributes to the step's globals."""
        return {
            "inputs": inputs,
            "outputs": self.outputs,
            "context": self.context,
            "log": self.log.log,
            "fail": self.fail,
            "_print_": self.printer,
        }
