"""How the Redis store encodes the values its keys hold (`layout` names the keys and writes them): a step's
state, a run's hash fields, attempt logs, events, commands and notices; what it reads back is decoded here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import StoreError
from dagrun.store.base import AttemptLog, Command, CommandKind, Event, Notice, NoticeKind, RunRecord, StepRecord
from dagrun.store.codec import (
    EMPTY_OBJECT,
    context_ops_json,
    context_ops_of,
    decode_error,
    decode_json,
    encode_error,
    encode_json,
)
from dagrun.store.redis.layout import ORDER_WIDTH


def encode_step_state(step: StepRecord) -> bytes:
    """A step's state as the steps hash holds it: (status, attempt, started_at, finished_at, outputs, error,
    logs, worker_id, elapsed_ms, queued_at)."""
    error = step.error
    try:
        return orjson.dumps(
            (
                step.status, step.attempt, step.started_at, step.finished_at, step.outputs,
                None if error is None else encode_error(error), step.logs, step.worker_id, step.elapsed_ms,
                step.queued_at,
            )
        )  # fmt: skip
    except TypeError as exc:  # the outputs are the one field of a StepRecord that can hold anything
        raise StoreError(f"run {step.run_id!r} step {step.step_id!r} outputs: not a JSON value: {exc}") from exc


PENDING_STEP = encode_step_state(StepRecord("", "", StepStatus.PENDING))


def number_arg(value: float | None) -> str:
    """A timestamp as a script argument: exact (repr round-trips), '' for none."""
    return "" if value is None else repr(float(value))


def run_id_of(member: str) -> str:
    """The run id in a member of a runs sorted set (``<creation number in hex>:<run id>``)."""
    return member[ORDER_WIDTH + 1 :]


def decode_run(values: Sequence[str | None]) -> RunRecord | None:
    """The RunRecord from an HMGET of RUN_FIELDS; None when the run hash does not exist."""
    run_id, flow_name, status, flow, inputs, created_at, started_at, finished_at, error, rerun_of, parent = values
    if run_id is None:
        return None
    return RunRecord(
        run_id=run_id,
        flow_name=flow_name or "",
        status=RunStatus(status or RunStatus.PENDING),
        flow=decode_json(flow or EMPTY_OBJECT),
        inputs=decode_json(inputs or EMPTY_OBJECT),
        created_at=float(created_at or 0.0),
        started_at=None if started_at is None else float(started_at),
        finished_at=None if finished_at is None else float(finished_at),
        error=error,
        rerun_of=rerun_of,
        parent=parent,
    )


def status_of_step(text: str) -> str:
    """The status a step's state begins with (`encode_step_state` writes a JSON list whose first item is the
    status word), read without decoding the rest: a run's outputs and logs can be large."""
    return text[2 : text.index('"', 2)]


def decode_step(run_id: str, step_id: str, text: str) -> StepRecord:
    """A step's state as PENDING_STEP lays it out; states written before `elapsed_ms` or `queued_at` were
    kept lack them."""
    status, attempt, started_at, finished_at, outputs, error, logs, worker_id, *rest = orjson.loads(text)
    elapsed_ms = rest[0] if rest else 0.0
    queued_at = rest[1] if len(rest) > 1 else None
    return StepRecord(
        run_id, step_id, StepStatus(status), attempt, started_at, finished_at, outputs, decode_error(error), logs,
        worker_id, elapsed_ms, queued_at,
    )  # fmt: skip


def attempt_log_field(step_id: str, attempt: int) -> str:
    """The field of the run's logs hash that holds this attempt's logs."""
    return orjson.dumps((step_id, attempt)).decode()


def encode_attempt_log(run_id: str, log: AttemptLog) -> tuple[str, str]:
    """An attempt's logs and context writes as a field of the run's logs hash and its value; StoreError when a
    context write's value is not JSON."""
    value = (log.worker_id, log.at, log.text, context_ops_json(log.context_ops), encode_error(log.error))
    where = f"run {run_id!r} step {log.step_id!r} context writes"
    return attempt_log_field(log.step_id, log.attempt), encode_json(value, where=where)


def decode_attempt_log(field: str, value: str) -> AttemptLog:
    """An attempt's logs as `encode_attempt_log` lays them out; those kept before context writes and errors were
    have none."""
    step_id, attempt = orjson.loads(field)
    worker_id, at, text, *rest = orjson.loads(value)
    ops = context_ops_of(rest[0]) if rest else ()
    return AttemptLog(step_id, attempt, worker_id, at, text, ops, decode_error(rest[1]) if len(rest) > 1 else None)


def seq_of(entry_id: str) -> int:
    """The seq (or notice cursor) of a stream entry, written with the id ``{seq}-0``."""
    return int(entry_id.partition("-")[0])


def decode_event(run_id: str, entry_id: str, fields: dict[str, str]) -> Event:
    at, kind, status, step_id, attempt, message = orjson.loads(fields["e"])
    return Event(seq_of(entry_id), run_id, at, kind, status, step_id, attempt, message)


def encode_command(run_id: str, at: float, kind: CommandKind, step_id: str | None, values: dict[str, Any]) -> str:
    """A command as its entry's `c` field holds it; StoreError when `values` is not JSON."""
    return encode_json((at, kind, step_id, values), where=f"run {run_id!r} {kind} values")


def decode_command(run_id: str, seq: int, text: str) -> Command:
    at, kind, step_id, values = orjson.loads(text)
    return Command(seq, run_id, at, CommandKind(kind), step_id, values)


def decode_notice(entry_id: str, fields: dict[str, str]) -> Notice:
    return Notice(seq_of(entry_id), fields["run_id"], NoticeKind(fields["kind"]))
