"""A cancelled call stops its step on the worker, on every transport: the sandbox process running the
script is killed and replaced, the worker logs the cancel, counts the step neither done nor failed, and
holds nothing any more."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from dagrun.contract.executor import Executor, StepResult
from tests.executors.contract.conftest import Executors, needs
from tests.executors.contract.steps import DOUBLE, SPIN, make_request, pid_of, started
from tests.executors.contract.targets import Capability, RemoteTarget, Target, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def cancel_a_spinning_step(executor: Executor, target: Target) -> tuple[StepResult, StepResult]:
    """Run a step, cancel the call of a step that spins on the same (only) sandbox process, run another:
    the first and the last results."""
    first = await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    calling = await started(executor, make_request(SPIN, step_id="spin", timeout_s=60), target.host.gate.started)

    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling
    after = await asyncio.wait_for(executor.call(make_request(DOUBLE, inputs={"x": 2})), 10)
    return first, after


async def test_a_cancelled_call_stops_its_step(executor: Executor, target: Target) -> None:
    first, after = await cancel_a_spinning_step(executor, target)

    assert after.outputs == {"v": 4} and pid_of(after) != pid_of(first)  # the spinning process was replaced

    async def is_gone() -> bool:
        return not os.path.exists(f"/proc/{pid_of(first)}")

    await eventually(is_gone, what="the spinning sandbox process is reaped", timeout_s=5)


@needs(Capability.STATUS)
async def test_a_cancelled_step_is_logged_and_counted_neither_done_nor_failed(
    executor: Executor, target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = target.status(executor)

    await cancel_a_spinning_step(executor, target)

    after = target.status(executor)
    assert "run run-1 step spin attempt 1 cancelled after" in caplog.text
    assert (after.steps_done - before.steps_done, after.errors - before.errors, after.current) == (2, 0, ())


@needs(Capability.SERVER)
async def test_after_a_cancel_the_worker_holds_nothing_and_stops_at_once(executors: Executors, target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    served = await target.serve(place)  # its grace period: 5 s
    await cancel_a_spinning_step(executors.at(place), target)

    stopping_at = time.monotonic()
    served.stop.set()
    await asyncio.wait_for(served.task, 10)

    assert time.monotonic() - stopping_at < 2  # no wait for the grace period
    assert served.worker.status().current == ()
