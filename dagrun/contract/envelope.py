"""The wire envelope: one JSON document (`PROTOCOL_VERSION`) carries a request or a result on every wire.

The envelopes are derived from the fields of `StepRequest` (their annotations carry the constraints),
`StepResult` and `StepError`, so a new field is written once; only a field whose wire form differs from
its value (a result's context operations and error) is spelled out. Everything decoded here is
untrusted: ExecutorError says what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_type_hints

import orjson
import pydantic

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.executor import StepError, StepRequest, StepResult
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
    """The result envelope: StepResult's fields, its error as an object and its context operations as lists."""
    fields = result._asdict()
    fields["context_ops"] = [list(op) for op in result.context_ops]
    fields["error"] = result.error.to_json() if result.error else None
    return orjson.dumps({"v": PROTOCOL_VERSION, **fields})


class _Envelope(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    v: Literal[1]


def _required(hint: Any) -> Any:
    """A field's wire type: mappings arrive as dicts, and every field must be sent."""
    return (dict[str, Any], ...) if hint is Mapping[str, Any] else (hint, ...)


def _fields_of(record: Any, wire_types: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """pydantic field definitions for a NamedTuple's fields, in order: each required on the wire (mappings
    as dicts), with the wire type `wire_types` gives for a field whose wire form differs from its value."""
    wire_types = wire_types or {}
    hints = get_type_hints(record, include_extras=True)
    return {name: (wire_types[name], ...) if name in wire_types else _required(hints[name]) for name in record._fields}


ErrorEnvelope: type[pydantic.BaseModel] = pydantic.create_model(
    "ErrorEnvelope", __config__=pydantic.ConfigDict(extra="forbid", frozen=True), **_fields_of(StepError)
)
RequestEnvelope: type[_Envelope] = pydantic.create_model(
    "RequestEnvelope", __base__=_Envelope, **_fields_of(StepRequest)
)
ResultEnvelope: type[_Envelope] = pydantic.create_model(
    "ResultEnvelope",
    __base__=_Envelope,
    **_fields_of(StepResult, {"context_ops": list[tuple[ContextOpKind, str, Any]], "error": ErrorEnvelope | None}),
)


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
    return _result_from_envelope(env)


def _result_from_envelope(env: pydantic.BaseModel) -> StepResult:
    fields = {name: getattr(env, name) for name in StepResult._fields}
    fields["context_ops"] = tuple(ContextOp(kind, key, value) for kind, key, value in fields["context_ops"])
    error = fields["error"]
    fields["error"] = StepError._make(getattr(error, name) for name in StepError._fields) if error else None
    return StepResult(**fields)


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "envelope"
    return f"{where}: {err['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
