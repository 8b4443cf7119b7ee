"""Sub-flows in the engine (`engine/subflows.py`), with a scripted in-process executor: the child run and
its derived id and parent link, outputs flowing up, a failing child, the parent's pause and cancel
reaching the child, and a takeover of the parent that finds its child instead of starting another; then
the real CLI with flows/parent.json."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from dagrun.contract.executor import ErrorKind, StepRequest, StepResult
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.errors import FlowError, RunNotFound
from dagrun.flow.parser import parse_flow
from dagrun.store import MemoryStore, StepRecord
from tests.test_cli import FLOWS, dagrun, write_flow
from tests.test_orchestrator import ScriptedExecutor

CHILD: dict[str, Any] = {
    "name": "child",
    "inputs": {"n": 1},
    "outputs": {"doubled": "${steps.double.value}"},
    "steps": [{"id": "double", "script": "pass", "inputs": {"n": "${flow.n}"}, "outputs": ["value"]}],
}
PARENT: dict[str, Any] = {
    "name": "parent",
    "outputs": {"total": "${steps.use.total}"},
    "steps": [
        {"id": "make", "script": "pass", "outputs": ["n"]},
        {"id": "sub", "depends_on": ["make"], "flow": CHILD, "inputs": {"n": "${steps.make.n}"}},
        {"id": "use", "depends_on": ["sub"], "script": "pass", "inputs": {"d": "${steps.sub.doubled}"}},
    ],
}


def behaviour(*, fail_double: bool = False, gate: asyncio.Event | None = None) -> Any:
    async def answer(request: StepRequest) -> StepResult:
        if request.step_id == "make":
            return StepResult(ok=True, outputs={"n": 21})
        if request.step_id == "double":
            if gate is not None:
                await gate.wait()
            if fail_double:
                return StepResult.failure(ErrorKind.SCRIPT, "ValueError", "no doubling today")
            return StepResult(ok=True, outputs={"value": request.inputs["n"] * 2})
        return StepResult(ok=True, outputs={"total": request.inputs["d"] + 1})

    return answer


async def test_the_child_run_gets_the_step_inputs_and_its_declared_outputs_flow_up() -> None:
    store = MemoryStore()
    async with Orchestrator(store, executors={"local": ScriptedExecutor(behaviour())}) as orchestrator:
        result = await orchestrator.run(parse_flow(PARENT))

    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["sub"].outputs == {"doubled": 42}
    assert result.outputs == {"total": 43} and result.to_json()["outputs"] == {"total": 43}
    child = await store.get_run(f"{result.run_id}.sub")
    assert child.parent == f"{result.run_id}/sub" and child.status == RunStatus.SUCCEEDED
    assert child.inputs == {"n": 21}
    assert (await store.get_run(result.run_id)).parent is None


async def test_a_failing_child_fails_the_step_naming_the_child_and_its_error() -> None:
    store = MemoryStore()
    async with Orchestrator(store, executors={"local": ScriptedExecutor(behaviour(fail_double=True))}) as orchestrator:
        result = await orchestrator.run(parse_flow(PARENT))

    assert result.status == RunStatus.FAILED
    error = result.steps["sub"].error
    assert error is not None and error.type == "ChildRunFailed"
    assert error.message.startswith(f"child run {result.run_id}.sub ended failed: ")
    assert "no doubling today" in error.message
    assert result.steps["use"].status == StepStatus.SKIPPED


async def child_started(store: MemoryStore, child_id: str) -> None:
    while not [s for s in await _steps(store, child_id) if s.status == StepStatus.RUNNING]:
        await asyncio.sleep(0.01)


async def _steps(store: MemoryStore, run_id: str) -> list[StepRecord]:
    try:
        return await store.get_steps(run_id)
    except RunNotFound:  # not created yet
        return []


async def test_cancelling_the_parent_cancels_the_child() -> None:
    store = MemoryStore()
    executor = ScriptedExecutor(behaviour(gate=asyncio.Event()))  # the child's step never ends on its own
    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        run_id = await orchestrator.start_run(parse_flow(PARENT))
        await asyncio.wait_for(child_started(store, f"{run_id}.sub"), 30)
        await orchestrator.control.cancel(run_id)
        parent = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
        child = await orchestrator.control.wait_for_completion(f"{run_id}.sub", timeout_s=30)

    assert parent.status == RunStatus.CANCELLED
    assert child.status == RunStatus.CANCELLED


async def test_pausing_the_parent_pauses_the_child_and_resuming_resumes_it() -> None:
    store = MemoryStore()
    gate = asyncio.Event()
    async with Orchestrator(store, executors={"local": ScriptedExecutor(behaviour(gate=gate))}) as orchestrator:
        run_id = await orchestrator.start_run(parse_flow(PARENT))
        child_id = f"{run_id}.sub"
        await asyncio.wait_for(child_started(store, child_id), 30)
        await orchestrator.control.pause(run_id)
        assert (await store.get_run(child_id)).status == RunStatus.PAUSED
        await orchestrator.control.resume(run_id)
        assert (await store.get_run(child_id)).status == RunStatus.RUNNING
        gate.set()
        parent = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)

    assert parent.status == RunStatus.SUCCEEDED


async def test_a_takeover_of_the_parent_finds_its_child_instead_of_starting_another() -> None:
    flow = parse_flow(PARENT)
    store = MemoryStore()
    run_id = await RunControl(store).submit(flow)
    gate = asyncio.Event()
    first = Orchestrator(store, executors={"local": ScriptedExecutor(behaviour(gate=gate))})
    driving = asyncio.create_task(first.drive(run_id))
    await asyncio.wait_for(child_started(store, f"{run_id}.sub"), 30)
    await first.aclose()  # handed back, the child with it, while the child's step ran
    assert await driving is None
    assert (await store.get_run(f"{run_id}.sub")).status == RunStatus.RUNNING

    executor = ScriptedExecutor(behaviour())
    async with Orchestrator(store, executors={"local": executor}) as second:
        result = await second.drive(run_id, wait_for_lease=True)

    assert result is not None and result.status == RunStatus.SUCCEEDED
    assert result.outputs == {"total": 43}
    assert sorted(run.run_id for run in await store.list_runs()) == [run_id, f"{run_id}.sub"]  # no second child
    assert sorted(executor.calls) == [("double", 2), ("use", 1)]


async def test_a_paused_parent_handed_back_and_resumed_elsewhere_resumes_its_child() -> None:
    flow = parse_flow(PARENT)
    store = MemoryStore()
    run_id = await RunControl(store).submit(flow)
    first = Orchestrator(store, executors={"local": ScriptedExecutor(behaviour(gate=asyncio.Event()))})
    driving = asyncio.create_task(first.drive(run_id))
    await asyncio.wait_for(child_started(store, f"{run_id}.sub"), 30)
    await first.control.pause(run_id)
    assert (await store.get_run(f"{run_id}.sub")).status == RunStatus.PAUSED
    await first.aclose()
    assert await driving is None

    async with Orchestrator(store, executors={"local": ScriptedExecutor(behaviour())}) as second:
        result = await asyncio.wait_for(second.resume(run_id), 30)

    assert result is not None and result.status == RunStatus.SUCCEEDED
    assert (await store.get_run(f"{run_id}.sub")).status == RunStatus.SUCCEEDED


def test_dagrun_runs_the_example_parent_flow_and_status_links_the_child_to_it(tmp_path: Path) -> None:
    result = dagrun("run", str(FLOWS / "parent.json"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    run_id = document["run_id"]
    assert document["outputs"] == {"larger": document["steps"]["compare"]["outputs"]["larger"]}
    assert set(document["steps"]["etl_eu"]["outputs"]) == {"grand_total", "report"}

    status = dagrun("status", f"{run_id}.etl_eu", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"child of {run_id} step etl_eu" in status.stdout
    child = json.loads(dagrun("status", f"{run_id}.etl_us", "--json", cwd=tmp_path).stdout)
    assert child["parent"] == f"{run_id}/etl_us" and child["inputs"] == {"region": "us", "rows": 12}
    assert child["outputs"] == document["steps"]["etl_us"]["outputs"]
    runs = json.loads(dagrun("runs", "--json", cwd=tmp_path).stdout)
    assert sorted(run["run_id"] for run in runs) == [run_id, f"{run_id}.etl_eu", f"{run_id}.etl_us"]


def test_graph_draws_a_sub_flow_step_as_a_node_naming_its_child_flow(tmp_path: Path) -> None:
    dot = dagrun("graph", str(FLOWS / "parent.json"), cwd=tmp_path)
    mermaid = dagrun("graph", str(FLOWS / "parent.json"), "--format", "mermaid", cwd=tmp_path)

    assert '"etl_eu" [shape=component, label="etl_eu [flow etl]", URL="etl.json", tooltip="etl.json"];' in dot.stdout
    assert 's0[/"etl_eu #91;flow etl#93;"/]' in mermaid.stdout


def test_validate_reports_a_missing_sub_flow_file_at_its_place_with_exit_2(tmp_path: Path) -> None:
    path = write_flow(tmp_path, {"name": "p", "steps": [{"id": "sub", "flow": "gone.json"}]})

    result = dagrun("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"{path}: steps[0].flow (step 'sub'): cannot read 'gone.json': No such file or directory"
    )


def test_last_names_the_run_someone_started_not_its_children(tmp_path: Path) -> None:
    result = dagrun("run", str(FLOWS / "parent.json"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parent = json.loads(result.stdout)["run_id"]
    assert len(json.loads(dagrun("runs", "--json", cwd=tmp_path).stdout)) == 3  # the parent and its two children
    status = dagrun("status", "last", "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["run_id"] == parent


class SlowChildCreation(MemoryStore):
    """Holds the creation of a child run (an id with a '.') until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.creating = asyncio.Event()
        self.release = asyncio.Event()

    async def create_run(self, run: Any, step_ids: Any, reuse: Any = None) -> None:
        if "." in run.run_id:
            self.creating.set()
            await self.release.wait()
        await super().create_run(run, step_ids, reuse)


async def test_a_pause_while_the_child_run_is_being_created_still_pauses_it() -> None:
    store = SlowChildCreation()
    async with Orchestrator(store, executors={"local": ScriptedExecutor(behaviour())}) as orchestrator:
        run_id = await orchestrator.start_run(parse_flow(PARENT))
        await asyncio.wait_for(store.creating.wait(), 30)
        await orchestrator.control.pause(run_id)  # no child to reach yet
        store.release.set()
        child_id = f"{run_id}.sub"
        await asyncio.wait_for(wait_for_status(store, child_id, RunStatus.PAUSED), 30)
        await orchestrator.control.resume(run_id)
        parent = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)

    assert parent.status == RunStatus.SUCCEEDED
    kinds = [command.kind for command in await store.get_commands(child_id)]
    assert kinds == ["pause", "resume"]


async def wait_for_status(store: MemoryStore, run_id: str, status: RunStatus) -> None:
    after = 0
    while (await store.get_run(run_id)).status != status:
        events = await store.wait_events(run_id, after_seq=after, timeout_s=1)
        after = events[-1].seq if events else after


async def test_the_executors_of_a_sub_flows_steps_are_checked_with_the_parent() -> None:
    child = {**CHILD, "steps": [{**CHILD["steps"][0], "executor": "remote"}]}
    parent = parse_flow(
        {**PARENT, "steps": [PARENT["steps"][0], {**PARENT["steps"][1], "flow": child}, PARENT["steps"][2]]}
    )
    store = MemoryStore()
    async with Orchestrator(store, executors={"local": ScriptedExecutor(behaviour())}) as orchestrator:
        with pytest.raises(FlowError) as caught:
            await orchestrator.run(parent)
    assert caught.value.problems[0].path == "steps[1].flow.steps[0].executor"
    assert await store.list_runs() == []  # refused before anything was recorded

    remote = ScriptedExecutor(behaviour())
    async with Orchestrator(
        store, executors={"local": ScriptedExecutor(behaviour()), "remote": remote}
    ) as orchestrator:
        result = await orchestrator.run(parent)
    assert result.status == RunStatus.SUCCEEDED
    assert [step for step, _ in remote.calls] == ["double"]
