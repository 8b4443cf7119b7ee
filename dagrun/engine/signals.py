"""Signals for human-input steps: the checks a signal passes before it is sent (a driver keeps each
step's signal in its `StepState`).

The first signal for a step counts; later ones are ignored (a run taken over replays every signal in
the command log, so this is also what makes replay idempotent). So a second signal with other values
is refused before it is sent, naming the first; one with the same values is answered with the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from dagrun.errors import ControlError
from dagrun.store.base import Command, RunRecord


def check_signal_fields(run: RunRecord, step_id: str, step_ids: tuple[str, ...], values: Mapping[str, Any]) -> None:
    """ControlError unless `step_id` is a `wait_for` step of the run and `values` holds exactly its fields."""
    fields = wait_for_fields(run)
    if step_id not in step_ids:
        raise ControlError(run.run_id, f"has no step {step_id!r}")
    if step_id not in fields:
        raise ControlError(run.run_id, f"step {step_id!r} runs a script; only a 'wait_for' step takes a signal")
    problems = []
    if missing := [field for field in fields[step_id] if field not in values]:
        problems.append(f"missing {', '.join(missing)}")
    if unknown := [key for key in values if key not in fields[step_id]]:
        problems.append(f"unknown {', '.join(unknown)}")
    if problems:
        wanted = ", ".join(fields[step_id])
        raise ControlError(run.run_id, f"step {step_id!r} waits for {wanted}: {'; '.join(problems)}")


def counted_signal(first: Command, values: Mapping[str, Any]) -> Command:
    """`first`, the signal that counts, when it holds `values`; ControlError naming it when not."""
    if _canonical_json(first.values) != _canonical_json(values):
        sent_at = datetime.fromtimestamp(first.at, UTC).isoformat(timespec="seconds")
        raise ControlError(
            first.run_id,
            f"step {first.step_id!r} already has a signal, and the first one counts: command {first.seq}, "
            f"sent {sent_at} with {_canonical_json(first.values).decode()}",
        )
    return first


def _canonical_json(values: Mapping[str, Any]) -> bytes:
    """Values as JSON with sorted keys, so that `true` and `1` differ and key order does not matter;
    b"" for values that are not JSON (no store holds such values, so they never match one it holds)."""
    try:
        return orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return b""


def wait_for_fields(run: RunRecord) -> dict[str, tuple[str, ...]]:
    """Step id -> the fields its signal must hold, for the `wait_for` steps of the run's flow."""
    found: dict[str, tuple[str, ...]] = {}
    for step in run.flow.get("steps", []):
        wait_for = step.get("wait_for")
        if isinstance(wait_for, dict):
            found[str(step["id"])] = tuple(wait_for.get("fields", ()))
    return found
