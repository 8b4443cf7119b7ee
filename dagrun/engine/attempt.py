"""One attempt of a script step: its inputs resolved (from the run's inputs and the outputs of the steps
that succeeded), its executor called, its declared outputs checked. Whatever goes wrong comes back as a
failed StepResult (an input that cannot be resolved, an executor that cannot deliver), never raised, but
for Withdrawn: `dispatch` took it back unrun."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import ErrorKind, Executor, StepRequest, StepResult
from dagrun.errors import ExecutorError, UnresolvedInput
from dagrun.flow.model import Step
from dagrun.flow.references import Outputs


async def run_attempt(
    step: Step,
    attempt: int,
    *,
    run_id: str,
    flow_inputs: Mapping[str, Any],
    outputs_of: Outputs,
    context: Mapping[str, Any],
    executor_of: Callable[[str], Executor],
    dispatch: Dispatch,
    item: Mapping[str, Any] | None = None,
) -> StepResult:
    """`item`: a map instance's item, given as one more input (`{map.as: item}`)."""
    try:
        inputs = step.resolve_inputs(flow_inputs, outputs_of)
    except UnresolvedInput as exc:
        return StepResult.failure(ErrorKind.INPUT, "UnresolvedInput", str(exc))
    if item is not None:
        inputs.update(item)
    request = StepRequest(
        run_id=run_id, step_id=step.id, attempt=attempt, script=step.script, script_hash=step.script_hash,
        inputs=inputs, context=context, context_id=step.context_id, timeout_s=step.timeout_s,
    )  # fmt: skip
    try:
        # No timeout here: a step may wait in a remote queue; only the executor knows when it started.
        result = await executor_of(step.executor).call(request, dispatch)
    except ExecutorError as exc:
        return StepResult.failure(ErrorKind.WORKER, type(exc).__name__, str(exc))
    if result.ok and step.outputs is not None:
        missing = [key for key in step.outputs if key not in result.outputs]
        if missing:
            message = f"declared outputs not set: {', '.join(missing)}"
            return StepResult.failure(ErrorKind.OUTPUT, "MissingOutput", message, logs=result.logs)
    return result
