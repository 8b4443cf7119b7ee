"""Steps with a condition (`when`) in the engine: a false one is a clean skip, a value it cannot judge fails
the step without running it, a wait_for step may have one, and a takeover or a rerun decides it as before."""

from __future__ import annotations

from typing import Any

from dagrun.contract.executor import ErrorKind, StepRequest, StepResult
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.flow.parser import parse_flow
from dagrun.store import MemoryStore, StepRecord
from tests.test_orchestrator import ScriptedExecutor, run

CHECK = {"ok": False, "score": 0.4}


def quality_flow(*, publish_when: str = "${steps.check.ok}", **extra: Any) -> dict[str, Any]:
    """check -> publish (when ok) -> announce; quarantine (when not ok); report (all_done) and alert
    (any_failed) after both."""
    return {
        "name": "quality",
        "inputs": {"threshold": 0.5},
        "steps": [
            {"id": "check", "script": "pass", "outputs": ["ok", "score"]},
            {"id": "publish", "depends_on": ["check"], "script": "pass", "when": publish_when},
            {"id": "announce", "depends_on": ["publish"], "script": "pass"},
            {"id": "quarantine", "depends_on": ["check"], "script": "pass", "when": "not ${steps.check.ok}"},
            {"id": "report", "depends_on": ["publish", "quarantine"], "script": "pass", "run_if": "all_done"},
            {"id": "alert", "depends_on": ["publish", "quarantine"], "script": "pass", "run_if": "any_failed"},
            *extra.get("steps", []),
        ],
    }


def checked(check: dict[str, Any]) -> Any:
    def behaviour(request: StepRequest) -> StepResult:
        return StepResult(ok=True, outputs=check if request.step_id == "check" else {"done": request.step_id})

    return behaviour


def statuses(result: Any) -> dict[str, str]:
    return {step_id: str(outcome.status) for step_id, outcome in result.steps.items()}


async def messages(store: MemoryStore, run_id: str, step_id: str) -> list[tuple[str, str]]:
    return [(event.status, event.message) for event in await store.get_events(run_id) if event.step_id == step_id]


async def test_a_false_condition_skips_the_step_and_its_all_success_descendants_and_all_done_steps_run() -> None:
    result, store, executor = await run(quality_flow(), checked(CHECK))

    assert result.status == RunStatus.SUCCEEDED
    assert statuses(result) == {
        "check": "succeeded", "publish": "skipped", "announce": "skipped", "quarantine": "succeeded",
        "report": "succeeded", "alert": "skipped",
    }  # fmt: skip
    assert sorted(step_id for step_id, _ in executor.calls) == ["check", "quarantine", "report"]
    assert await messages(store, result.run_id, "publish") == [("skipped", "condition ${steps.check.ok} is false")]
    assert await messages(store, result.run_id, "announce") == [("skipped", "run_if all_success not met")]


async def test_a_true_condition_runs_the_step_and_comparisons_read_outputs_and_flow_inputs() -> None:
    document = quality_flow(publish_when="${steps.check.score} >= 0.4")
    document["steps"][3]["when"] = "${flow.threshold} > 0.4"

    result, _, executor = await run(document, checked(CHECK))

    assert statuses(result) == {
        "check": "succeeded", "publish": "succeeded", "announce": "succeeded", "quarantine": "succeeded",
        "report": "succeeded", "alert": "skipped",
    }  # fmt: skip
    assert len(executor.calls) == 5


async def test_a_value_the_condition_cannot_judge_fails_the_step_unrun_with_an_input_error() -> None:
    result, store, executor = await run(quality_flow(), checked({"ok": 3, "score": 0.4}), max_parallel=1)

    assert result.status == RunStatus.FAILED
    assert statuses(result) == {
        "check": "succeeded", "publish": "failed", "announce": "skipped", "quarantine": "failed",
        "report": "succeeded", "alert": "succeeded",
    }  # fmt: skip
    assert sorted(step_id for step_id, _ in executor.calls) == ["alert", "check", "report"]
    error = result.steps["publish"].error
    assert error is not None and error.kind == ErrorKind.INPUT
    assert error.message == "step 'publish' condition '${steps.check.ok}': the value is a number (3), not a boolean"
    assert result.steps["publish"].attempts == 0
    assert (await store.get_run(result.run_id)).error == f"step 'publish' failed: {error}"


async def test_a_condition_on_a_step_that_did_not_succeed_fails_an_all_done_step() -> None:
    document = {
        "name": "f",
        "steps": [
            {"id": "check", "script": "pass", "outputs": ["ok"]},
            {"id": "after", "depends_on": ["check"], "run_if": "all_done", "script": "", "when": "${steps.check.ok}"},
        ],
    }

    def behaviour(request: StepRequest) -> StepResult:
        return StepResult.failure(ErrorKind.SCRIPT, "ValueError", "no")

    result, _, executor = await run(document, behaviour)

    assert statuses(result) == {"check": "failed", "after": "failed"}
    assert executor.calls == [("check", 1)]
    error = result.steps["after"].error
    assert error is not None and error.message == (
        "step 'after' condition '${steps.check.ok}': step 'check' did not succeed, so it has no value to judge"
    )


async def test_a_wait_for_step_with_a_false_condition_is_skipped_without_waiting() -> None:
    document = quality_flow()
    document["steps"][1] = {
        "id": "publish", "depends_on": ["check"], "wait_for": {"fields": ["approved"]}, "when": "${steps.check.ok}",
    }  # fmt: skip

    result, _, _ = await run(document, checked(CHECK))

    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["publish"].status == StepStatus.SKIPPED


async def taken_over(publish: StepRecord | None) -> tuple[Any, MemoryStore, ScriptedExecutor]:
    """A run whose driver died after `check` succeeded (and, if given, after `publish`'s record), driven by
    another orchestrator."""
    flow = parse_flow(quality_flow())
    store = MemoryStore()
    run_id = await RunControl(store).submit(flow)
    await store.record_step(StepRecord(run_id, "check", StepStatus.SUCCEEDED, 1, 1.0, 2.0, CHECK))
    if publish is not None:
        await store.record_step(publish._replace(run_id=run_id), message="condition ${steps.check.ok} is false")
    executor = ScriptedExecutor(checked(CHECK))
    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        result = await orchestrator.drive(run_id)
    return result, store, executor


async def test_a_step_skipped_by_its_condition_is_not_run_after_a_takeover() -> None:
    result, store, executor = await taken_over(StepRecord("", "publish", StepStatus.SKIPPED, 0, None, 2.0))

    assert result is not None and result.status == RunStatus.SUCCEEDED
    assert statuses(result)["publish"] == "skipped" and statuses(result)["announce"] == "skipped"
    assert sorted(step_id for step_id, _ in executor.calls) == ["quarantine", "report"]
    assert [status for status, _ in await messages(store, result.run_id, "publish")] == ["skipped"]  # not again


async def test_a_condition_not_yet_decided_at_a_takeover_is_decided_from_the_stored_outputs() -> None:
    result, store, executor = await taken_over(None)

    assert result is not None and statuses(result)["publish"] == "skipped"
    assert sorted(step_id for step_id, _ in executor.calls) == ["quarantine", "report"]
    assert await messages(store, result.run_id, "publish") == [("skipped", "condition ${steps.check.ok} is false")]


async def test_a_rerun_that_changes_a_flow_input_a_condition_reads_decides_that_step_again() -> None:
    document = {
        "name": "gate",
        "inputs": {"go": False},
        "steps": [{"id": "a", "script": ""}, {"id": "b", "depends_on": ["a"], "script": "", "when": "${flow.go}"}],
    }
    executor = ScriptedExecutor(lambda request: StepResult(ok=True))
    async with Orchestrator(MemoryStore(), executors={"local": executor}) as orchestrator:
        origin = await orchestrator.run(parse_flow(document))
        rerun = await orchestrator.rerun(origin.run_id, inputs={"go": True})

    assert statuses(origin) == {"a": "succeeded", "b": "skipped"}
    assert rerun is not None and statuses(rerun) == {"a": "reused", "b": "succeeded"}
    assert executor.calls == [("a", 1), ("b", 1)]
