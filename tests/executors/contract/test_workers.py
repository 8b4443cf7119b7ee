"""The worker side of the remote transports, served in this process through `serve_worker`: listing it,
a port already taken, and stopping: a graceful stop lets the step in flight finish, a step still running
after the grace period is stopped and its call fails."""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

import pytest

from dagrun.contract.executor import StepResult
from dagrun.errors import ExecutorError, WorkerUnavailable
from tests.executors.contract.conftest import Executors, needs
from tests.executors.contract.steps import DOUBLE, HELD, make_request, started
from tests.executors.contract.targets import Capability, RemoteTarget, ServedWorker, Target

pytestmark = [pytest.mark.asyncio(loop_scope="module"), needs(Capability.SERVER)]


async def test_list_workers_reports_the_worker(executors: Executors, target: Target) -> None:
    await executors()  # starts the shared worker
    assert isinstance(target, RemoteTarget) and target.shared is not None
    [listed] = await target.list_workers(target.shared.url)
    assert listed.worker_id == target.shared.worker.settings.worker_id
    assert listed.contexts == ("default",) and listed.pid == os.getpid()


@needs(Capability.LISTENS)
async def test_a_port_in_use_is_a_clear_error(executors: Executors, target: Target) -> None:
    await executors()  # the shared worker listens
    assert isinstance(target, RemoteTarget) and target.shared is not None
    taken = target.shared.url
    served = await target.serve_unready(taken, target.settings(taken))
    port = urlsplit(taken).port
    with pytest.raises(ExecutorError, match=f"cannot listen on 127.0.0.1:{port}: address already in use"):
        await asyncio.wait_for(served.task, 10)


async def a_step_in_flight(
    executors: Executors, target: Target, **settings: float
) -> tuple[ServedWorker, asyncio.Future[StepResult]]:
    """A worker served at a new place, and a call of it whose step waits on the gate."""
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    served = await target.serve(place, **settings)
    executor = executors.at(place, patience_s=0.3)
    in_flight = await started(executor, make_request(HELD), target.host.gate.started)
    return served, in_flight


async def test_a_graceful_stop_lets_the_step_in_flight_finish(executors: Executors, target: Target) -> None:
    served, in_flight = await a_step_in_flight(executors, target)
    served.stop.set()
    await asyncio.sleep(0.1)
    assert not served.task.done()  # draining

    target.host.gate.release.set()
    result = await asyncio.wait_for(in_flight, 10)
    await asyncio.wait_for(served.task, 10)

    assert result.ok and result.outputs == {"v": "released"}
    assert served.worker.status().steps_done == 1


@needs(Capability.REFUSES_WHILE_STOPPING)
async def test_a_stopping_worker_refuses_new_calls(executors: Executors, target: Target) -> None:
    served, in_flight = await a_step_in_flight(executors, target)
    served.stop.set()
    await asyncio.sleep(0.1)
    with pytest.raises(WorkerUnavailable, match="stopping"):
        await executors.at(served.url, patience_s=0.3).call(make_request(DOUBLE, inputs={"x": 1}))

    target.host.gate.release.set()
    result = await asyncio.wait_for(in_flight, 10)
    await asyncio.wait_for(served.task, 10)
    assert result.ok and served.worker.status().steps_done == 1


async def test_a_step_still_running_after_the_grace_period_is_stopped_and_its_call_fails(
    executors: Executors, target: Target
) -> None:
    served, in_flight = await a_step_in_flight(executors, target, grace_s=0.3)
    stopping_at = time.monotonic()
    served.stop.set()
    await asyncio.wait_for(served.task, 10)
    assert time.monotonic() - stopping_at < 3

    with pytest.raises(WorkerUnavailable):
        await asyncio.wait_for(in_flight, 10)
    assert served.worker.status().current == ()
