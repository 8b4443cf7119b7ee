"""A call's `Dispatch`, on every transport: the executor says when its step started, and a step that waits
for the worker can be taken back unrun (Withdrawn), while one the worker took runs on and answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.executor import Executor, StepResult
from tests.executors.contract.steps import HELD, make_request
from tests.executors.contract.targets import Target, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

COUNTED = "mark_started()\noutputs['v'] = inputs['x'] * 2"  # each run of it counts in the gate


async def test_a_running_step_is_said_started_before_its_result(executor: Executor, target: Target) -> None:
    dispatch = Dispatch()
    sent_at = time.time()
    calling = asyncio.ensure_future(executor.call(make_request(HELD, step_id="held", timeout_s=60), dispatch))
    await asyncio.wait_for(target.host.gate.started.wait(), 30)

    async def is_started() -> bool:
        return dispatch.started_at is not None

    await eventually(is_started, what="the executor says the step started", timeout_s=5)
    target.host.gate.release.set()
    result = await asyncio.wait_for(calling, 30)

    assert result.ok and result.outputs == {"v": "released"}
    assert dispatch.started_at is not None and sent_at <= dispatch.started_at <= time.time()


async def test_steps_waiting_for_the_worker_are_withdrawn_unrun(executor: Executor, target: Target) -> None:
    gate = target.host.gate
    held = asyncio.ensure_future(executor.call(make_request(HELD, step_id="held", timeout_s=60)))
    await asyncio.wait_for(gate.started.wait(), 30)  # the worker's only sandbox process is busy
    dispatches = [Dispatch() for _ in range(4)]
    calls = [
        asyncio.ensure_future(executor.call(make_request(COUNTED, step_id=f"q{n}", inputs={"x": n}), dispatch))
        for n, dispatch in enumerate(dispatches)
    ]
    await asyncio.sleep(0.3)  # each is queued where its transport queues it
    entered = gate.entered
    for dispatch in dispatches:
        dispatch.withdraw()
    await asyncio.wait(calls, timeout=0.5)  # the withdrawn end; those a worker took wait for the held step
    gate.release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
    assert (await asyncio.wait_for(held, 30)).ok

    withdrawn = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, Withdrawn)]
    answered = {n: outcome for n, outcome in enumerate(outcomes) if isinstance(outcome, StepResult)}
    assert len(withdrawn) + len(answered) == len(calls), outcomes
    assert withdrawn, "no step waiting for the worker could be taken back"
    assert all(result.ok and result.outputs == {"v": 2 * n} for n, result in answered.items())
    assert gate.entered == entered + len(answered)  # what was withdrawn never ran
