"""The steps the contract cases run, and what the engine records for a call."""

from __future__ import annotations

import asyncio

from dagrun.contract.executor import ErrorKind, Executor, StepRequest, StepResult
from dagrun.errors import ExecutorError
from tests.executors.conftest import SPIN, make_request

DOUBLE = "outputs['v'] = inputs['x'] * 2"
HELD = "outputs['v'] = wait_release()"  # runs until the case releases its gate
SPIN_ON_A_PROCESS = """
try:
    outputs['v'] = worker_side(1)
except NameError:  # a `dagrun worker` process has no host functions: spin until killed
    while True:
        pass
"""  # on a worker served in process (with the suite's host functions) it returns {"v": 101} at once

__all__ = ["DOUBLE", "HELD", "SPIN", "SPIN_ON_A_PROCESS", "make_request", "pid_of", "recorded", "started"]


async def recorded(executor: Executor, request: StepRequest) -> StepResult:
    """The call's result as the engine records it: an ExecutorError (the step could not be delivered) is an
    ErrorKind.WORKER failure, as in the run driver. Transports may fail either way where the contract
    allows both (a request over the worker's limit)."""
    try:
        return await executor.call(request)
    except ExecutorError as exc:
        return StepResult.failure(ErrorKind.WORKER, type(exc).__name__, str(exc))


def pid_of(result: StepResult) -> int:
    """The pid of the sandbox process that ran a step (its worker id ends with ``local:<pid>``)."""
    sandbox_process = result.worker_id.rpartition("/")[2]
    assert sandbox_process.startswith("local:"), result.worker_id
    return int(sandbox_process.removeprefix("local:"))


async def started(executor: Executor, request: StepRequest, gate_started: asyncio.Event) -> asyncio.Future[StepResult]:
    """The call of `request`, once its step has said it started (by a host function that sets `gate_started`);
    AssertionError with the result if the call ended first."""
    calling = asyncio.ensure_future(executor.call(request))
    waiting = asyncio.ensure_future(gate_started.wait())
    await asyncio.wait([calling, waiting], return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        raise AssertionError(f"the call ended before its step started: {calling.result()}")
    return calling
