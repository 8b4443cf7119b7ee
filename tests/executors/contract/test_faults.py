"""Faults of the remote transports, with workers as `dagrun worker` processes: a worker killed mid-step
(its call fails, or its step runs again on a live worker where the transport redelivers), a worker
restarted within a caller's patience (the call in flight is served), a place nobody serves."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from dagrun import MemoryStore, Orchestrator, RunStatus, StepStatus, parse_flow
from dagrun.errors import WorkerUnavailable
from tests.executors.contract.conftest import Executors, needs
from tests.executors.contract.steps import DOUBLE, HELD, SPIN_ON_A_PROCESS, make_request, started
from tests.executors.contract.targets import TOKEN, Capability, RemoteTarget, Target, eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow, needs(Capability.SERVER)]


async def running_on(target: RemoteTarget, place: str, worker_id: str) -> None:
    """Wait until the worker's status (from `list_workers`) says it runs a step."""

    async def is_running() -> bool:
        statuses = await target.list_workers(place)
        return any(status.worker_id == worker_id and status.current for status in statuses)

    await eventually(is_running, what=f"worker {worker_id} runs the step", timeout_s=15)


async def test_a_killed_worker_fails_its_call_with_worker_unavailable(executors: Executors, target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    doomed = await target.spawn(place)
    calling = asyncio.ensure_future(
        executors.at(place, patience_s=1).call(make_request(SPIN_ON_A_PROCESS, timeout_s=60))
    )
    await running_on(target, place, doomed.worker_id)

    doomed.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(WorkerUnavailable) as lost:
        await asyncio.wait_for(calling, 20)

    assert time.monotonic() - killed_at < 10
    assert TOKEN not in str(lost.value)


@needs(Capability.REDELIVERY)
async def test_the_step_of_a_killed_worker_runs_again_on_a_live_one(executors: Executors, target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    doomed = await target.spawn(place)
    calling = asyncio.ensure_future(executors.at(place).call(make_request(SPIN_ON_A_PROCESS, timeout_s=60)))
    await running_on(target, place, doomed.worker_id)
    survivor = await target.serve(place)

    doomed.kill(signal.SIGKILL)
    result = await asyncio.wait_for(calling, 30)

    assert result.ok and result.outputs == {"v": 101}
    assert result.worker_id.startswith(survivor.worker.settings.worker_id + "/")
    assert survivor.worker.status().steps_done == 1


@needs(Capability.RECONNECT)
async def test_a_worker_killed_and_restarted_at_its_address_within_the_patience_serves_the_call_in_flight(
    executors: Executors, target: Target
) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    first = await target.spawn(place)
    calling = asyncio.ensure_future(
        executors.at(place, patience_s=15).call(make_request(SPIN_ON_A_PROCESS, timeout_s=60))
    )
    await running_on(target, place, first.worker_id)

    first.kill(signal.SIGKILL)
    await asyncio.to_thread(first.wait)
    await asyncio.sleep(1.0)  # the worker is down for a while: its port refuses connections
    second = await target.serve(place)
    result = await asyncio.wait_for(calling, 30)

    assert result.ok and result.outputs == {"v": 101}
    assert second.worker.status().steps_done == 1


@needs(Capability.RECONNECT)
async def test_a_worker_stopped_and_restarted_at_its_address_within_the_patience_serves_the_call_in_flight(
    executors: Executors, target: Target
) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    first = await target.serve(place, grace_s=0.2)
    executor = executors.at(place, patience_s=15)
    calling = await started(executor, make_request(HELD), target.host.gate.started)

    first.stop.set()
    await asyncio.wait_for(first.task, 10)  # the grace period ended: the step was cancelled, the connection closed
    await asyncio.sleep(1.0)  # the worker is down for a while: its port refuses connections
    target.host.gate.release.set()
    second = await target.serve(place)
    result = await asyncio.wait_for(calling, 15)
    next_one = await executor.call(make_request(DOUBLE, inputs={"x": 2}))

    assert result.ok and result.outputs == {"v": "released"}
    assert next_one.outputs == {"v": 4}
    assert (first.worker.status().steps_done, second.worker.status().steps_done) == (0, 2)


async def test_steps_sent_where_no_worker_serves_fail_after_their_retries(executors: Executors, target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()  # nobody serves it
    retries = {"max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}
    steps = [{"id": name, "script": DOUBLE, "inputs": {"x": 1}} for name in ("a", "b")]
    flow = parse_flow({"name": "lonely", "defaults": {"executor": "remote", "retries": retries}, "steps": steps})
    started_at = time.monotonic()

    async with Orchestrator(MemoryStore(), executors={"remote": executors.at(place, patience_s=0.5)}) as orchestrator:
        result = await asyncio.wait_for(orchestrator.run(flow), 20)

    assert time.monotonic() - started_at < 5
    assert result.status == RunStatus.FAILED
    for outcome in result.steps.values():
        assert outcome.status == StepStatus.FAILED and outcome.attempts == 3
        assert outcome.error is not None and outcome.error.type == "WorkerUnavailable"
        for phrase in target.says_nobody_serves(place):
            assert phrase in outcome.error.message
        assert TOKEN not in outcome.error.message
