"""The wire envelope: one JSON document (`PROTOCOL_VERSION`) carries a request or a result on every wire.

The request envelope is derived from `StepRequest`'s fields (their annotations carry the constraints),
so a new request field is written once. Everything decoded here is untrusted: ExecutorError says what
is wrong with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_type_hints

import orjson
import pydantic

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.executor import ErrorKind, StepError, StepRequest, StepResult
from dagrun.errors import ExecutorError

PROTOCOL_VERSION = 1
DEFAULT_MAX_ENVELOPE_BYTES = 16 * 1024 * 1024


def encode_request(request: StepRequest) -> bytes:
    """The request envelope; TypeError when inputs or context are not JSON values."""
    return orjson.dumps({"v": PROTOCOL_VERSION, **request._asdict()}, default=_mapping_as_dict)


def _mapping_as_dict(value: Any) -> Any:
    """Read-only mappings (a MappingProxyType of inputs) travel as objects; anything else is refused."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def encode_result(result: StepResult) -> bytes:
    return orjson.dumps(
        {
            "v": PROTOCOL_VERSION,
            "ok": result.ok,
            "outputs": result.outputs,
            "context_ops": [list(op) for op in result.context_ops],
            "error": result.error.to_json() if result.error else None,
            "logs": result.logs,
            "elapsed_ms": result.elapsed_ms,
            "worker_id": result.worker_id,
        }
    )


class _Envelope(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]


def _required(hint: Any) -> Any:
    """A request field's wire type: mappings arrive as dicts, and every field must be sent."""
    return (dict[str, Any], ...) if hint is Mapping[str, Any] else (hint, ...)


RequestEnvelope: type[_Envelope] = pydantic.create_model(
    "RequestEnvelope",
    __base__=_Envelope,
    **{name: _required(hint) for name, hint in get_type_hints(StepRequest, include_extras=True).items()},
)


class _ErrorModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    kind: ErrorKind
    type: str
    message: str
    line: int | None = None


class ResultEnvelope(_Envelope):
    ok: bool
    outputs: dict[str, Any]
    context_ops: list[tuple[ContextOpKind, str, Any]]
    error: _ErrorModel | None
    logs: str
    elapsed_ms: float
    worker_id: str


def _check_size(data: bytes | str, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ExecutorError(f"envelope of {len(data)} bytes is over the {max_bytes}-byte limit")


def decode_request(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> StepRequest:
    """Parse an untrusted request envelope; ExecutorError says what is wrong with it."""
    _check_size(data, max_bytes)
    try:
        env = RequestEnvelope.model_validate_json(data)
    except pydantic.ValidationError as exc:
        raise ExecutorError(f"malformed request envelope: {_first_error(exc)}") from exc
    return StepRequest._make(getattr(env, name) for name in StepRequest._fields)


def decode_result(data: bytes | str, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> StepResult:
    """Parse an untrusted result envelope; ExecutorError says what is wrong with it."""
    _check_size(data, max_bytes)
    try:
        env = ResultEnvelope.model_validate_json(data)
    except pydantic.ValidationError as exc:
        raise ExecutorError(f"malformed result envelope: {_first_error(exc)}") from exc
    return result_from_envelope(env)


def result_from_envelope(env: ResultEnvelope) -> StepResult:
    error = env.error
    return StepResult(
        ok=env.ok,
        outputs=env.outputs,
        context_ops=tuple(ContextOp(kind, key, value) for kind, key, value in env.context_ops),
        error=StepError(error.kind, error.type, error.message, error.line) if error else None,
        logs=env.logs,
        elapsed_ms=env.elapsed_ms,
        worker_id=env.worker_id,
    )


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "envelope"
    return f"{where}: {err['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
