"""Rerun from failure (engine.rerun): which steps run again, what is reused, and what is refused, with real
sandboxed scripts; the context counts how often each step really ran."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.orchestrator import Orchestrator
from dagrun.engine.rerun import submit_rerun
from dagrun.errors import ControlError, FlowError
from dagrun.flow.parser import parse_flow
from dagrun.store import MemoryStore

# a -> b -> c, with a clean-up step after b. b fails while the flow input `fail` is true; each step counts
# its runs in the context, so a step that was reused has run once over both runs.
B_SCRIPT = (
    "context.incr('ran_b')\nif inputs['fail']:\n    raise ValueError('told to fail')\noutputs['y'] = inputs['x'] * 10"
)
FLOW = parse_flow(
    {
        "name": "rerun",
        "inputs": {"fail": True, "scale": 2},
        "steps": [
            {"id": "a", "script": "context.incr('ran_a')\noutputs['x'] = inputs['scale']",
             "inputs": {"scale": "${flow.scale}"}},
            {"id": "b", "depends_on": ["a"], "script": B_SCRIPT,
             "inputs": {"fail": "${flow.fail}", "x": "${steps.a.x}"}},
            {"id": "c", "depends_on": ["b"], "script": "context.incr('ran_c')\noutputs['z'] = inputs['y'] + 1",
             "inputs": {"y": "${steps.b.y}"}},
            {"id": "cleanup", "depends_on": ["b"], "run_if": "any_failed", "script": "context.incr('ran_cleanup')"},
        ],
    }
)  # fmt: skip


@pytest.fixture
async def orchestrator() -> AsyncIterator[Orchestrator]:
    async with MemoryStore() as store, Orchestrator(store, processes=2) as orchestrator:
        yield orchestrator


def statuses(result: Any) -> dict[str, str]:
    return {step_id: str(outcome.status) for step_id, outcome in result.steps.items()}


async def test_a_rerun_reuses_what_succeeded_and_runs_the_failed_step_and_what_follows(
    orchestrator: Orchestrator,
) -> None:
    failed = await orchestrator.run(FLOW)
    assert statuses(failed) == {"a": "succeeded", "b": "failed", "c": "skipped", "cleanup": "succeeded"}

    heard: list[tuple[str, str]] = []
    rerun = await orchestrator.rerun(
        failed.run_id, inputs={"fail": False}, listener=lambda r: heard.append((r.step_id, r.status))
    )

    assert rerun.status == RunStatus.SUCCEEDED
    assert statuses(rerun) == {"a": "reused", "b": "succeeded", "c": "succeeded", "cleanup": "skipped"}
    assert heard[0] == ("a", StepStatus.REUSED)  # the listener hears the reused steps first
    assert rerun.steps["c"].outputs == {"z": 21}  # from a's reused output: 2 * 10 + 1
    record = await orchestrator.store.get_run(rerun.run_id)
    assert record.rerun_of == failed.run_id
    assert record.inputs == {"fail": False, "scale": 2}
    # a ran once over both runs (a failed attempt's context writes are dropped: b counts its success only);
    # the clean-up ran for the failure only
    assert rerun.context == {"ran_a": 1, "ran_b": 1, "ran_c": 1, "ran_cleanup": 1}
    assert (await orchestrator.store.get_run(failed.run_id)).status == RunStatus.FAILED  # the origin is kept


async def test_from_steps_reruns_them_and_everything_downstream_of_a_succeeded_run(orchestrator: Orchestrator) -> None:
    succeeded = await orchestrator.run(FLOW, inputs={"fail": False})

    rerun = await orchestrator.rerun(succeeded.run_id, from_steps=["b"])

    assert statuses(rerun) == {"a": "reused", "b": "succeeded", "c": "succeeded", "cleanup": "skipped"}
    assert rerun.context == {"ran_a": 1, "ran_b": 2, "ran_c": 2}


async def test_a_changed_input_reruns_the_steps_that_read_it_and_their_dependents(orchestrator: Orchestrator) -> None:
    succeeded = await orchestrator.run(FLOW, inputs={"fail": False})

    rerun = await orchestrator.rerun(succeeded.run_id, inputs={"scale": 3})

    assert statuses(rerun) == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "cleanup": "skipped"}
    assert rerun.steps["c"].outputs == {"z": 31}


async def test_a_rerun_of_a_rerun_reuses_the_reused_steps_again(orchestrator: Orchestrator) -> None:
    failed = await orchestrator.run(FLOW)
    still_failed = await orchestrator.rerun(failed.run_id)
    assert statuses(still_failed)["a"] == "reused"
    assert still_failed.status == RunStatus.FAILED

    fixed = await orchestrator.rerun(still_failed.run_id, inputs={"fail": False})

    assert statuses(fixed)["a"] == "reused"
    assert fixed.steps["a"].outputs == {"x": 2}
    assert fixed.status == RunStatus.SUCCEEDED


async def test_a_submitted_rerun_is_driven_by_whoever_drives_runs_and_keeps_its_reused_steps(
    orchestrator: Orchestrator,
) -> None:
    failed = await orchestrator.run(FLOW)

    run_id = await submit_rerun(orchestrator.store, failed.run_id, inputs={"fail": False})
    steps = {step.step_id: step.status for step in await orchestrator.store.get_steps(run_id)}
    assert steps == {"a": "reused", "b": "pending", "c": "pending", "cleanup": "pending"}
    result = await orchestrator.drive(run_id)

    assert result is not None and result.status == RunStatus.SUCCEEDED
    assert result.context["ran_a"] == 1


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"from_steps": ["nope"]}, ControlError, "has no step 'nope' \\(steps: a, b, c, cleanup\\)"),
        ({"inputs": {"colour": "red"}}, FlowError, "unknown flow input"),
        ({}, ControlError, "it succeeded and nothing was named to run again"),
    ],
)
async def test_a_rerun_that_cannot_be_made_creates_no_run(
    orchestrator: Orchestrator, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    succeeded = await orchestrator.run(FLOW, inputs={"fail": False})

    with pytest.raises(error, match=message):
        await orchestrator.rerun(succeeded.run_id, **change)

    assert [run.run_id for run in await orchestrator.store.list_runs()] == [succeeded.run_id]


async def test_a_run_that_has_not_ended_cannot_be_rerun(orchestrator: Orchestrator) -> None:
    run_id = await orchestrator.control.submit(FLOW)

    with pytest.raises(ControlError, match="it is still pending; a rerun starts from a run that has ended"):
        await orchestrator.rerun(run_id)
