"""The orchestrator with a scripted in-process executor: ordering, data flow, retries, trigger rules,
fail-fast, concurrency bounds, context merging, cancellation and what reaches the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import ErrorKind, StepError, StepRequest, StepResult
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.errors import FlowError
from dagrun.flow.parser import parse_flow
from dagrun.store import MemoryStore, StepRecord

Behaviour = Callable[[StepRequest], StepResult | Awaitable[StepResult]]


class ScriptedExecutor:
    """Runs a Python function per step instead of a script; checks that dependencies ended first."""

    def __init__(self, behaviour: Behaviour, depends_on: dict[str, tuple[str, ...]] | None = None) -> None:
        self.behaviour = behaviour
        self.depends_on = depends_on or {}
        self.calls: list[tuple[str, int]] = []
        self.finished: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        called = {step_id for step_id, _ in self.calls}  # a dependency never called ended without running
        missing = [d for d in self.depends_on.get(request.step_id, ()) if d in called and d not in self.finished]
        assert not missing, f"{request.step_id} called before {missing}"
        self.calls.append((request.step_id, request.attempt))
        if dispatch is not None:
            dispatch.started()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            result = self.behaviour(request)
            if not isinstance(result, StepResult):
                result = await result
        finally:  # returned, or cancelled: its call has ended either way
            self.in_flight -= 1
            self.finished.add(request.step_id)
        return result

    async def aclose(self) -> None:
        self.closed = True


def add_one(request: StepRequest) -> StepResult:
    return StepResult(ok=True, outputs={"v": 1 + sum(request.inputs.values())})


def chain_flow(edges: dict[str, list[str]], **step_fields: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "steps": [
            {
                "id": step_id,
                "depends_on": deps,
                "script": "pass",
                "inputs": {d: f"${{steps.{d}.v}}" for d in deps},
                **step_fields.get(step_id, {}),
            }
            for step_id, deps in edges.items()
        ],
    }


async def run(document: dict[str, Any], behaviour: Behaviour, **options: Any) -> tuple[Any, MemoryStore, Any]:
    flow = parse_flow(document)
    executor = ScriptedExecutor(behaviour, {s.id: s.depends_on for s in flow.steps})
    store = MemoryStore()
    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        result = await orchestrator.run(flow, **options)
    return result, store, executor


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(min_value=1, max_value=30))
    return {
        f"s{i}": [f"s{d}" for d in sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else [])]
        for i in range(n)
    }


@settings(max_examples=60, deadline=None)
@given(edges=dags(), max_parallel=st.integers(min_value=1, max_value=8))
def test_every_step_runs_once_after_its_dependencies_and_sees_their_outputs(
    edges: dict[str, list[str]], max_parallel: int
) -> None:
    result, _, executor = asyncio.run(run(chain_flow(edges), add_one, max_parallel=max_parallel))
    assert result.status == RunStatus.SUCCEEDED
    assert sorted(step for step, _ in executor.calls) == sorted(edges)
    assert executor.max_in_flight <= max_parallel
    expected: dict[str, int] = {}
    for step_id, deps in edges.items():
        expected[step_id] = 1 + sum(expected[d] for d in deps)
        assert result.steps[step_id].outputs == {"v": expected[step_id]}


async def test_failed_step_skips_dependents_but_not_siblings() -> None:
    def behaviour(request: StepRequest) -> StepResult:
        if request.step_id == "bad":
            return StepResult.failure(ErrorKind.SCRIPT, "ZeroDivisionError", "division by zero", line=3)
        return add_one(request)

    edges = {"root": [], "bad": ["root"], "after_bad": ["bad"], "sibling": ["root"], "after_sibling": ["sibling"]}
    result, store, _ = await run(chain_flow(edges), behaviour)
    statuses = {step_id: outcome.status for step_id, outcome in result.steps.items()}
    assert statuses == {
        "root": StepStatus.SUCCEEDED,
        "bad": StepStatus.FAILED,
        "after_bad": StepStatus.SKIPPED,
        "sibling": StepStatus.SUCCEEDED,
        "after_sibling": StepStatus.SUCCEEDED,
    }
    assert result.status == RunStatus.FAILED
    run_record = await store.get_run(result.run_id)
    assert run_record.status == RunStatus.FAILED
    assert run_record.error == "step 'bad' failed: ZeroDivisionError: division by zero (script line 3)"
    assert result.steps["bad"].error is not None and result.steps["bad"].error.line == 3


async def test_retries_until_success_and_records_each_attempt() -> None:
    def behaviour(request: StepRequest) -> StepResult:
        if request.attempt < 3:
            return StepResult.failure(ErrorKind.FAIL, "StepFailed", f"not yet ({request.attempt})")
        return StepResult(ok=True, outputs={"v": request.attempt})

    retries = {"max_attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.02}
    result, store, executor = await run(chain_flow({"flaky": []}, flaky={"retries": retries}), behaviour)
    assert result.status == RunStatus.SUCCEEDED
    assert executor.calls == [("flaky", 1), ("flaky", 2), ("flaky", 3)]
    assert result.steps["flaky"].attempts == 3
    assert result.steps["flaky"].error is None
    events = [e for e in await store.get_events(result.run_id) if e.step_id == "flaky"]
    assert [(e.status, e.attempt) for e in events] == [
        ("queued", 1),
        ("running", 1),
        ("ready", 1),
        ("queued", 2),
        ("running", 2),
        ("ready", 2),
        ("queued", 3),
        ("running", 3),
        ("succeeded", 3),
    ]
    assert "retrying in" in events[2].message


async def test_retries_exhausted_fail_the_step_with_the_last_error() -> None:
    def behaviour(request: StepRequest) -> StepResult:
        return StepResult.failure(ErrorKind.SCRIPT, "ValueError", f"bad {request.attempt}")

    result, _, executor = await run(chain_flow({"a": []}, a={"retries": {"max_attempts": 2}}), behaviour)
    assert len(executor.calls) == 2
    assert result.steps["a"].status == StepStatus.FAILED
    assert result.steps["a"].error is not None and result.steps["a"].error.message == "bad 2"


async def test_backoff_grows_exponentially() -> None:
    times: list[float] = []

    def behaviour(request: StepRequest) -> StepResult:
        times.append(time.monotonic())
        return StepResult.failure(ErrorKind.SCRIPT, "E", "no")

    retries = {"max_attempts": 3, "backoff_s": 0.1, "max_backoff_s": 10}
    await run(chain_flow({"a": []}, a={"retries": retries}), behaviour)
    first, second = times[1] - times[0], times[2] - times[1]
    assert 0.1 <= first < 0.19
    assert 0.2 <= second < 0.35


async def test_fail_fast_cancels_running_steps_and_pending_ones() -> None:
    started = asyncio.Event()

    async def behaviour(request: StepRequest) -> StepResult:
        if request.step_id == "slow":
            started.set()
            await asyncio.sleep(30)
        await started.wait()
        return StepResult.failure(ErrorKind.SCRIPT, "E", "boom")

    edges = {"slow": [], "bad": [], "after_slow": ["slow"]}
    result, store, _ = await run(chain_flow(edges), behaviour, fail_fast=True)
    assert result.status == RunStatus.FAILED
    assert result.steps["bad"].status == StepStatus.FAILED
    assert result.steps["slow"].status == StepStatus.CANCELLED
    assert result.steps["after_slow"].status == StepStatus.CANCELLED
    steps = {s.step_id: s.status for s in await store.get_steps(result.run_id)}
    assert steps == {"slow": "cancelled", "bad": "failed", "after_slow": "cancelled"}


async def test_fail_fast_still_runs_the_clean_up_steps_and_what_follows_them() -> None:
    started = asyncio.Event()

    async def behaviour(request: StepRequest) -> StepResult:
        if request.step_id == "slow":
            started.set()
            await asyncio.sleep(30)
        if request.step_id == "bad":
            await started.wait()
            return StepResult.failure(ErrorKind.SCRIPT, "E", "boom")
        return StepResult(ok=True, outputs={"v": 1})

    edges = {
        "slow": [], "bad": [], "after_slow": ["slow"], "cleanup": ["bad", "slow"], "report": ["cleanup"],
        "on_success": ["slow"], "notify": ["after_slow"],
    }  # fmt: skip
    rules = {"cleanup": {"run_if": "any_failed"}, "report": {"run_if": "all_done"}, "notify": {"run_if": "all_done"},
             "on_success": {"run_if": "all_success"}}  # fmt: skip
    result, store, executor = await run(chain_flow(edges, **rules), behaviour, fail_fast=True)

    assert result.status == RunStatus.FAILED
    assert {step_id: str(outcome.status) for step_id, outcome in result.steps.items()} == {
        "slow": "cancelled", "bad": "failed", "after_slow": "cancelled", "on_success": "cancelled",
        "cleanup": "succeeded", "report": "succeeded", "notify": "succeeded",
    }  # fmt: skip
    assert {step_id for step_id, _ in executor.calls} == {"slow", "bad", "cleanup", "report", "notify"}
    assert {s.step_id: s.status for s in await store.get_steps(result.run_id)} == {
        step_id: outcome.status for step_id, outcome in result.steps.items()
    }


async def test_a_fail_fast_run_taken_over_after_its_failure_cancels_what_it_cancels_and_runs_its_clean_ups() -> None:
    flow = parse_flow(chain_flow({"slow": [], "bad": [], "cleanup": ["bad", "slow"]}, cleanup={"run_if": "all_done"}))
    store = MemoryStore()
    run_id = await RunControl(store).submit(flow)
    error = StepError(ErrorKind.SCRIPT, "E", "boom")
    await store.record_step(StepRecord(run_id, "bad", StepStatus.FAILED, 1, 1.0, 2.0, error=error))
    await store.record_step(StepRecord(run_id, "slow", StepStatus.RUNNING, 1, 1.0))  # its driver died here
    executor = ScriptedExecutor(lambda request: StepResult(ok=True, outputs={"v": 1}))

    async with Orchestrator(store, executors={"local": executor}, fail_fast=True) as orchestrator:
        result = await orchestrator.drive(run_id)

    assert result is not None and result.status == RunStatus.FAILED
    assert executor.calls == [("cleanup", 1)]
    assert {s.step_id: s.status for s in await store.get_steps(run_id)} == {
        "slow": "cancelled", "bad": "failed", "cleanup": "succeeded",
    }  # fmt: skip


async def test_max_parallel_bounds_steps_in_flight() -> None:
    async def behaviour(request: StepRequest) -> StepResult:
        await asyncio.sleep(0.005)
        return StepResult(ok=True)

    edges: dict[str, list[str]] = {f"s{i}": [] for i in range(40)}
    _, _, executor = await run(chain_flow(edges), behaviour, max_parallel=3)
    assert executor.max_in_flight == 3


async def test_missing_declared_output_fails_the_step() -> None:
    result, _, _ = await run(chain_flow({"a": []}, a={"outputs": ["rows", "v"]}), add_one)
    error = result.steps["a"].error
    assert error is not None and error.kind == ErrorKind.OUTPUT
    assert "rows" in error.message


async def test_skipped_upstream_resolves_to_null_for_all_done_steps() -> None:
    def behaviour(request: StepRequest) -> StepResult:
        if request.step_id == "bad":
            return StepResult.failure(ErrorKind.SCRIPT, "E", "boom")
        return StepResult(ok=True, outputs={"seen": dict(request.inputs)})

    document = chain_flow({"bad": [], "report": ["bad"]}, report={"run_if": "all_done"})
    document["steps"][1]["inputs"] = {"v": "${steps.bad.v}"}
    result, _, _ = await run(document, behaviour)
    assert result.steps["report"].outputs == {"seen": {"v": None}}


async def test_context_operations_from_parallel_steps_are_all_kept() -> None:
    def behaviour(request: StepRequest) -> StepResult:
        ops = (
            ContextOp(ContextOpKind.INCR, "counter", 1),
            ContextOp(ContextOpKind.APPEND, "log", request.step_id),
        )
        return StepResult(ok=True, context_ops=ops)

    edges: dict[str, list[str]] = {f"s{i}": [] for i in range(20)}
    result, store, _ = await run(chain_flow(edges), behaviour)
    assert result.context["counter"] == 20
    assert sorted(result.context["log"]) == sorted(edges)
    assert await store.get_context(result.run_id) == result.context


async def test_steps_see_the_context_written_by_their_dependencies() -> None:
    def behaviour(request: StepRequest) -> StepResult:
        return StepResult(
            ok=True, outputs={"saw": request.context.get("n")}, context_ops=(ContextOp(ContextOpKind.INCR, "n", 1),)
        )

    document = chain_flow({"a": [], "b": ["a"], "c": ["b"]})
    for step in document["steps"]:
        step["inputs"] = {}
    result, _, _ = await run(document, behaviour)
    assert [result.steps[s].outputs["saw"] for s in "abc"] == [None, 1, 2]


async def test_unknown_executor_is_a_flow_error_and_creates_no_run() -> None:
    store = MemoryStore()
    flow = parse_flow(chain_flow({"a": []}, a={"executor": "remote"}))
    async with Orchestrator(store) as orchestrator:
        with pytest.raises(FlowError, match=r"steps\[0\]\.executor: step 'a' uses executor 'remote'"):
            await orchestrator.run(flow)
    assert await store.list_runs() == []


async def test_unknown_flow_input_is_a_flow_error_and_creates_no_run() -> None:
    store = MemoryStore()
    flow = parse_flow({"name": "t", "inputs": {"region": "eu"}, "steps": [{"id": "a", "script": "pass"}]})
    async with Orchestrator(store, executors={"local": ScriptedExecutor(add_one)}) as orchestrator:
        with pytest.raises(FlowError, match="regoin"):
            await orchestrator.run(flow, inputs={"regoin": "us"})
    assert await store.list_runs() == []


async def test_cancelling_a_run_records_it_cancelled() -> None:
    started = asyncio.Event()

    async def behaviour(request: StepRequest) -> StepResult:
        started.set()
        await asyncio.sleep(30)
        return StepResult(ok=True)

    store = MemoryStore()
    flow = parse_flow(chain_flow({"a": [], "b": ["a"]}))
    async with Orchestrator(store, executors={"local": ScriptedExecutor(behaviour)}) as orchestrator:
        task = asyncio.create_task(orchestrator.run(flow))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    [run_record] = await store.list_runs()
    assert run_record.status == RunStatus.CANCELLED
    assert {s.step_id: s.status for s in await store.get_steps(run_record.run_id)} == {
        "a": StepStatus.CANCELLED,
        "b": StepStatus.CANCELLED,
    }


async def test_store_holds_the_whole_story() -> None:
    result, store, _ = await run(chain_flow({"a": [], "b": ["a"]}), add_one)
    run_record = await store.get_run(result.run_id)
    assert run_record.status == RunStatus.SUCCEEDED
    assert run_record.started_at is not None and run_record.finished_at is not None
    assert run_record.flow["name"] == "t"
    steps = await store.get_steps(result.run_id)
    assert [(s.step_id, s.status, s.attempt, s.outputs) for s in steps] == [
        ("a", StepStatus.SUCCEEDED, 1, {"v": 1}),
        ("b", StepStatus.SUCCEEDED, 1, {"v": 2}),
    ]
    kinds = [(e.kind, e.status, e.step_id) for e in await store.get_events(result.run_id)]
    assert kinds == [
        ("run", "running", None),
        ("step", "queued", "a"),
        ("step", "running", "a"),
        ("step", "succeeded", "a"),
        ("step", "queued", "b"),
        ("step", "running", "b"),
        ("step", "succeeded", "b"),
        ("run", "succeeded", None),
    ]


async def test_executors_passed_in_are_not_closed_by_the_orchestrator() -> None:
    executor = ScriptedExecutor(add_one)
    async with Orchestrator(MemoryStore(), executors={"local": executor}):
        pass
    assert executor.closed is False


async def test_closing_while_a_run_is_being_taken_up_hands_that_run_back_too() -> None:
    """A serving orchestrator closing while it claims a submitted run: the driver registered after
    `aclose` handed back the others must not drive on, or closing waits for that run's end (forever, for
    a run waiting for a signal). Found when a test's teardown hung one time in five."""
    store = MemoryStore()
    flow = parse_flow({"name": "gated", "steps": [{"id": "approve", "wait_for": {"fields": ["ok"]}}]})
    claiming, claimed = asyncio.Event(), asyncio.Event()
    claim_lease = store.claim_lease

    async def slow_claim(run_id: str, owner: str, *, ttl_s: float) -> bool:
        claiming.set()
        await claimed.wait()
        return await claim_lease(run_id, owner, ttl_s=ttl_s)

    async with Orchestrator(store, executors={"local": ScriptedExecutor(lambda r: StepResult(ok=True))}) as orch:
        run_id = await RunControl(store).submit(flow)
        store.claim_lease = slow_claim  # type: ignore[method-assign]
        halt = asyncio.Event()
        serving = asyncio.create_task(orch.serve(halt))
        await claiming.wait()
        halt.set()
        await asyncio.sleep(0)  # `aclose` hands back the drivers there are: none yet
        claimed.set()
        await asyncio.wait_for(serving, 10)
    assert (await store.get_run(run_id)).status in (RunStatus.PENDING, RunStatus.RUNNING)
