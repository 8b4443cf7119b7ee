"""The executor contract on every transport: what a call returns for what its step does, and how a call
fails when the worker cannot run it (a request over its limit, a sandbox process killed)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import pytest

from dagrun import MemoryStore, Orchestrator, RunStatus, parse_flow
from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.executor import ErrorKind, Executor
from dagrun.errors import ExecutorError
from tests.executors.contract.conftest import needs
from tests.executors.contract.steps import DOUBLE, SPIN, make_request, pid_of, recorded, started
from tests.executors.contract.targets import LIMIT_BYTES, Capability, Target

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_step_returns_its_outputs_context_operations_and_logs(executor: Executor) -> None:
    script = "log('hello')\ncontext.incr('seen')\ncontext.append('days', inputs['day'])\noutputs['v'] = inputs['x'] * 2"

    result = await executor.call(make_request(script, inputs={"x": 21, "day": "monday"}))

    assert result.ok, result.error
    assert result.error is None
    assert result.outputs == {"v": 42}
    assert "hello" in result.logs
    assert result.context_ops == (
        ContextOp(ContextOpKind.INCR, "seen", 1),
        ContextOp(ContextOpKind.APPEND, "days", "monday"),
    )
    assert result.elapsed_ms > 0
    assert pid_of(result) > 0  # the worker (if any), then its sandbox process


async def test_the_worker_sides_host_functions_serve_the_step(executor: Executor) -> None:
    result = await executor.call(make_request("outputs['v'] = worker_side(inputs['x'])", inputs={"x": 1}))
    assert result.outputs == {"v": 101}


async def test_a_script_error_is_a_failed_result_with_the_script_line(executor: Executor) -> None:
    result = await executor.call(make_request("x = 1\ny = x / 0"))
    assert not result.ok
    assert result.error is not None
    assert (result.error.kind, result.error.type, result.error.line) == (ErrorKind.SCRIPT, "ZeroDivisionError", 2)
    assert "division by zero" in result.error.message


async def test_fail_is_a_failed_result_with_its_message(executor: Executor) -> None:
    script = "log('looked')\nfail('no data for ' + inputs['day'])"
    result = await executor.call(make_request(script, inputs={"day": "mon"}))
    assert not result.ok
    assert result.error is not None
    assert (result.error.kind, result.error.message) == (ErrorKind.FAIL, "no data for mon")
    assert "looked" in result.logs


async def test_the_worker_enforces_the_timeout_and_the_call_returns(executor: Executor) -> None:
    started_at = time.monotonic()
    timed_out = await asyncio.wait_for(executor.call(make_request("while True:\n    pass", timeout_s=0.5)), 10)
    elapsed_s = time.monotonic() - started_at
    after = await executor.call(make_request(DOUBLE, inputs={"x": 3}))

    assert timed_out.error is not None and timed_out.error.kind == ErrorKind.TIMEOUT
    assert 0.5 <= elapsed_s < 5
    assert after.outputs == {"v": 6} and pid_of(after) != pid_of(timed_out)  # the looping process was replaced


async def test_concurrent_calls_each_get_their_own_result(executor: Executor) -> None:
    requests = [make_request(DOUBLE, step_id=f"s{n}", inputs={"x": n}) for n in range(30)]
    results = await asyncio.gather(*(executor.call(request) for request in requests))
    assert [result.outputs for result in results] == [{"v": 2 * n} for n in range(30)]


async def test_a_killed_sandbox_process_fails_its_step_with_kind_worker(executor: Executor, target: Target) -> None:
    first = await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    calling = await started(executor, make_request(SPIN, step_id="spin", timeout_s=60), target.host.gate.started)

    os.kill(pid_of(first), signal.SIGKILL)  # one sandbox process: the one that ran `first` runs the spin
    lost = await asyncio.wait_for(calling, 10)
    after = await executor.call(make_request(DOUBLE, inputs={"x": 2}))

    assert not lost.ok and lost.error is not None
    assert (lost.error.kind, lost.error.type) == (ErrorKind.WORKER, "WorkerLost")
    assert after.outputs == {"v": 4} and pid_of(after) != pid_of(first)


async def test_a_flow_runs_with_host_functions_on_both_sides(executor: Executor) -> None:
    """The orchestrator's functions serve its local steps, the worker's serve the steps sent to it."""
    document = {
        "name": "both-sides",
        "defaults": {"executor": "remote", "timeout_s": 10},
        "steps": [
            {"id": "local", "executor": "local", "script": "outputs['v'] = host_side(1)", "outputs": ["v"]},
            {
                "id": "remote",
                "depends_on": ["local"],
                "script": "outputs['v'] = worker_side(inputs['v'])",
                "inputs": {"v": "${steps.local.v}"},
            },
        ],
    }
    functions = {"host_side": lambda n: n + 10}
    async with Orchestrator(
        MemoryStore(), executors={"remote": executor}, functions=functions, processes=1
    ) as orchestrator:
        result = await orchestrator.run(parse_flow(document))
    assert result.status == RunStatus.SUCCEEDED, result.steps
    assert result.steps["remote"].outputs == {"v": 111}


@needs(Capability.STATUS)
async def test_the_worker_counts_the_steps_it_ran_and_those_that_failed(executor: Executor, target: Target) -> None:
    before = target.status(executor)
    succeeded = await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    await executor.call(make_request("fail('no')"))
    after = target.status(executor)
    assert (after.steps_done - before.steps_done, after.errors - before.errors) == (2, 1)
    assert after.current == ()
    assert succeeded.worker_id.startswith(after.worker_id + "/local:")  # the worker, then its sandbox process


@needs(Capability.SIZE_LIMIT, Capability.STATUS)
async def test_a_request_over_the_workers_limit_fails_with_kind_worker_and_runs_nothing(
    executor: Executor, target: Target
) -> None:
    before = target.status(executor).steps_done
    oversized = make_request(DOUBLE, inputs={"x": 1, "pad": "x" * LIMIT_BYTES})

    refused = await recorded(executor, oversized)  # refused by the client or by the worker: both are documented
    unchanged = target.status(executor).steps_done
    small = await executor.call(make_request(DOUBLE, inputs={"x": 1}))

    assert refused.error is not None and refused.error.kind == ErrorKind.WORKER
    assert re.search(rf"over the (worker's )?{LIMIT_BYTES}-byte limit", refused.error.message), refused.error
    assert unchanged == before
    assert small.ok and target.status(executor).steps_done == before + 1


@needs(Capability.CALLER_KNOWS_LIMIT)
async def test_the_caller_refuses_a_request_over_the_workers_limit(executor: Executor) -> None:
    oversized = make_request(DOUBLE, inputs={"x": 1, "pad": "x" * LIMIT_BYTES})
    with pytest.raises(ExecutorError, match=f"over the worker's {LIMIT_BYTES}-byte limit"):
        await executor.call(oversized)
