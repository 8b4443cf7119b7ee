"""Mapped steps (`map`): one instance per item of a list produced at run time, with a scripted in-process
executor: what instances run and see, the lists downstream steps read, failures, bounds, an empty list,
pause, cancel and a takeover mid-map; then validation with places, and a real run through the CLI."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagrun.contract.executor import ErrorKind, StepRequest, StepResult
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.errors import FlowError
from dagrun.flow.drawing import to_dot, to_mermaid
from dagrun.flow.parser import parse_flow
from dagrun.store import MemoryStore, StepRecord
from tests.test_cli import dagrun, write_flow
from tests.test_orchestrator import ScriptedExecutor


def mapped_flow(
    items: list[Any] | None = None, **map_fields: Any
) -> dict[str, Any]:  # list -> each (item * k) -> total
    return {
        "name": "fan",
        "inputs": {"items": [1, 2, 3] if items is None else items},
        "steps": [
            {"id": "list", "script": "pass", "inputs": {"xs": "${flow.items}"}, "outputs": ["xs"]},
            {
                "id": "each",
                "depends_on": ["list"],
                "script": "pass",
                "inputs": {"k": 10},
                "outputs": ["y"],
                "map": {"over": "${steps.list.xs}", "as": "x", **map_fields},
            },
            {"id": "total", "depends_on": ["each"], "script": "pass", "inputs": {"ys": "${steps.each.y}"}},
        ],
    }


def behaviour(fail_on: frozenset[Any] = frozenset(), delay_s: float = 0.0) -> Any:
    async def answer(request: StepRequest) -> StepResult:
        if delay_s:
            await asyncio.sleep(delay_s)
        if request.step_id == "list":
            return StepResult(ok=True, outputs={"xs": request.inputs["xs"]})
        if request.step_id == "total":
            return StepResult(ok=True, outputs={"sum": sum(y for y in request.inputs["ys"] if y is not None)})
        x = request.inputs["x"]
        if x in fail_on:
            return StepResult.failure(ErrorKind.SCRIPT, "ValueError", f"bad item {x}")
        return StepResult(ok=True, outputs={"y": x * request.inputs["k"]})

    return answer


async def run(document: dict[str, Any], answer: Any, **options: Any) -> tuple[Any, MemoryStore, ScriptedExecutor]:
    flow = parse_flow(document)
    executor = ScriptedExecutor(answer)
    store = MemoryStore()
    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        result = await orchestrator.run(flow, **options)
    return result, store, executor


async def test_each_item_runs_once_as_an_instance_and_downstream_reads_the_lists_in_item_order() -> None:
    result, store, executor = await run(mapped_flow([3, 1, 2]), behaviour())

    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["each"].outputs == {"y": [30, 10, 20]}
    assert result.steps["total"].outputs == {"sum": 60}
    assert sorted(step for step, _ in executor.calls) == ["each[0]", "each[1]", "each[2]", "list", "total"]
    records = {record.step_id: record for record in await store.get_steps(result.run_id)}
    assert [records[f"each[{i}]"].outputs for i in range(3)] == [{"y": 30}, {"y": 10}, {"y": 20}]
    assert records["each"].status == StepStatus.SUCCEEDED
    messages = [e.message for e in await store.get_events(result.run_id) if e.step_id == "each"]
    assert messages == ["mapped over 3 items", "3 items: 3 succeeded"]


async def test_an_empty_list_succeeds_at_once_with_empty_lists() -> None:
    result, _, executor = await run(mapped_flow([]), behaviour())

    assert result.steps["each"].outputs == {"y": []}
    assert result.steps["total"].outputs == {"sum": 0}
    assert not [call for call in executor.calls if call[0].startswith("each")]


async def test_a_failed_item_fails_the_step_and_starts_no_more_items() -> None:
    result, store, executor = await run(mapped_flow(list(range(20)), max_parallel=1), behaviour(frozenset({2})))

    assert result.status == RunStatus.FAILED
    each = result.steps["each"]
    assert each.status == StepStatus.FAILED and each.error is not None
    assert each.error.message == "1 of 20 items failed (17 not run); the first, each[2]: ValueError: bad item 2"
    assert result.steps["total"].status == StepStatus.SKIPPED
    assert [step for step, _ in executor.calls if step.startswith("each")] == ["each[0]", "each[1]", "each[2]"]
    assert "each[3]" not in {record.step_id for record in await store.get_steps(result.run_id)}


async def test_with_continue_every_item_runs_and_a_failed_one_is_null_in_the_lists() -> None:
    document = mapped_flow([1, 2, 3], on_item_failure="continue")
    result, _, _ = await run(document, behaviour(frozenset({2})))

    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["each"].outputs == {"y": [10, None, 30]}
    assert result.steps["total"].outputs == {"sum": 40}


async def test_at_most_max_parallel_items_run_at_once() -> None:
    result, _, executor = await run(mapped_flow(list(range(12)), max_parallel=3), behaviour(delay_s=0.01))

    assert result.status == RunStatus.SUCCEEDED
    assert executor.max_in_flight == 3


@pytest.mark.parametrize(("items", "message"), [("nope", "which is a str, not a list"), (None, "a null, not a list")])
async def test_a_value_that_is_not_a_list_fails_the_step_unrun(items: Any, message: str) -> None:
    document = mapped_flow()
    document["inputs"]["items"] = items
    result, _, executor = await run(document, behaviour())

    error = result.steps["each"].error
    assert error is not None and error.kind == ErrorKind.INPUT and message in error.message
    assert [step for step, _ in executor.calls] == ["list"]


@settings(max_examples=25, deadline=None)
@given(items=st.lists(st.integers(-100, 100), max_size=30), limit=st.integers(1, 8))
def test_results_equal_the_static_equivalent(items: list[int], limit: int) -> None:
    result, _, _ = asyncio.run(run(mapped_flow(items, max_parallel=limit), behaviour()))
    assert result.steps["each"].outputs == {"y": [x * 10 for x in items]}
    assert result.steps["total"].outputs == {"sum": sum(x * 10 for x in items)}


async def test_a_run_taken_over_mid_map_keeps_the_items_that_ended_and_runs_the_others() -> None:
    flow = parse_flow(mapped_flow([1, 2, 3, 4]))
    store = MemoryStore()
    run_id = await RunControl(store).submit(flow)
    await store.record_step(StepRecord(run_id, "list", StepStatus.SUCCEEDED, 1, 1.0, 2.0, {"xs": [1, 2, 3, 4]}))
    await store.record_step(StepRecord(run_id, "each", StepStatus.RUNNING, 0, 2.0))
    await store.record_step(StepRecord(run_id, "each[0]", StepStatus.SUCCEEDED, 1, 2.0, 3.0, {"y": 10}))
    await store.record_step(StepRecord(run_id, "each[1]", StepStatus.RUNNING, 1, 2.0))  # its driver died here
    executor = ScriptedExecutor(behaviour())

    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        result = await orchestrator.drive(run_id)

    assert result is not None and result.steps["each"].outputs == {"y": [10, 20, 30, 40]}
    assert sorted(executor.calls) == [("each[1]", 2), ("each[2]", 1), ("each[3]", 1), ("total", 1)]
    ends = Counter((e.step_id, e.status) for e in await store.get_events(run_id) if e.status == "succeeded")
    assert all(count == 1 for count in ends.values())


async def test_a_pause_holds_the_items_not_started_and_a_cancel_ends_those_under_way_cancelled() -> None:
    store = MemoryStore()
    release = asyncio.Event()

    async def answer(request: StepRequest) -> StepResult:
        if request.step_id.startswith("each"):
            await release.wait()
        return await behaviour()(request)

    executor = ScriptedExecutor(answer)
    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        run_id = await orchestrator.start_run(parse_flow(mapped_flow(list(range(10)), max_parallel=2)))
        while len([call for call in executor.calls if call[0].startswith("each")]) < 2:
            await asyncio.sleep(0.01)
        await orchestrator.control.pause(run_id)
        release.set()
        await asyncio.sleep(0.2)
        assert len([call for call in executor.calls if call[0].startswith("each")]) == 2  # none started since
        await orchestrator.control.cancel(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)

    assert run.status == RunStatus.CANCELLED
    statuses = {record.step_id: record.status for record in await store.get_steps(run_id)}
    assert not [step for step, status in statuses.items() if not status.is_terminal]


def test_validation_places_the_problems_of_a_map() -> None:
    document = mapped_flow()
    document["steps"][1]["map"] = {"over": "${steps.nope.xs}"}
    document["steps"].append(
        {"id": "w", "wait_for": {"fields": ["ok"]}, "map": {"over": "${flow.items}"}, "depends_on": ["each"]}
    )
    document["steps"].append({"id": "v", "script": "pass", "inputs": {"item": 1}, "map": {"over": "${flow.items}"}})
    document["steps"].append({"id": "u", "script": "pass", "map": {"over": "${flow.items} and more"}})
    with pytest.raises(FlowError) as caught:
        parse_flow(document)
    assert str(caught.value).splitlines() == [
        "<flow>: steps[1].map.over: step 'each' references unknown step 'nope' in '${steps.nope.xs}'",
        "<flow>: steps[3].map (step 'w'): a 'wait_for' step runs no script; 'map' does not apply",
        "<flow>: steps[4].map.as (step 'v'): the item input 'item' is also one of the step's inputs; name it another "
        "way",
        "<flow>: steps[5].map.over: step 'u' maps over '${flow.items} and more', which is not one reference: "
        "expected '${steps.ID.KEY}' or '${flow.KEY}'",
    ]


def test_a_fan_out_over_files_runs_through_the_cli(tmp_path: Path) -> None:
    flow = write_flow(tmp_path, json.loads((Path(__file__).parents[1] / "flows" / "fan_out.json").read_text()))
    result = dagrun("run", str(flow), "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == "succeeded"
    assert document["steps"]["count_words"]["outputs"]["words"] == [4, 2, 3]
    assert document["steps"]["report"]["outputs"] == {"total": 9, "longest": "a.txt"}
    logs = dagrun("logs", "last", "count_words[1]", cwd=tmp_path)
    assert logs.returncode == 0 and "count_words[1]#1" in logs.stdout


def test_graph_draws_a_mapped_step_as_one_node_marked_with_its_list() -> None:
    flow = parse_flow(mapped_flow())
    assert '  "each" [shape=box3d, label="each [map over ${steps.list.xs}]"];' in to_dot(flow).splitlines()
    assert '  s1[["each #91;map over #36;#123;steps.list.xs#125;#93;"]]' in to_mermaid(flow).splitlines()


async def test_a_rerun_reuses_a_mapped_step_whole_or_runs_it_again_whole() -> None:
    store = MemoryStore()
    executor = ScriptedExecutor(behaviour())
    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        first = await orchestrator.run(parse_flow(mapped_flow([1, 2])))
        rerun = await orchestrator.rerun(first.run_id, from_steps=["total"])
        again = await orchestrator.rerun(first.run_id, from_steps=["each"])

    assert rerun.steps["each"].status == StepStatus.REUSED and rerun.steps["total"].outputs == {"sum": 30}
    assert {record.step_id for record in await store.get_steps(rerun.run_id)} == {"list", "each", "total"}
    assert again.steps["each"].outputs == {"y": [10, 20]}
    assert [step for step, _ in executor.calls].count("each[0]") == 2  # in the first run and the last


async def test_errors_show_a_failed_instance_with_its_mapped_steps_script_line() -> None:
    document = mapped_flow([1, 2], on_item_failure="continue")
    document["steps"][1]["script"] = "x = inputs['x']\nboom()"

    async def answer(request: StepRequest) -> StepResult:
        if request.step_id == "each[1]":
            return StepResult.failure(ErrorKind.SCRIPT, "NameError", "boom", line=2)
        return await behaviour()(request)

    result, store, _ = await run(document, answer)
    (failure,) = await RunControl(store).errors(result.run_id)

    assert (failure.step_id, failure.source_line) == ("each[1]", "boom()")


def test_a_map_over_a_flow_input_whose_default_is_not_a_list_is_refused() -> None:
    document = mapped_flow()
    document["inputs"]["items"] = "a,b"
    document["steps"][0]["inputs"] = {}
    document["steps"][1]["map"]["over"] = "${flow.items}"
    with pytest.raises(FlowError) as caught:
        parse_flow(document)
    assert str(caught.value) == (
        "<flow>: steps[1].map.over: step 'each' maps over flow input 'items', whose default is a str, not a list "
        "(make it a list, or null for one each run must give)"
    )
    document["inputs"]["items"] = None  # each run gives it
    parse_flow(document)
