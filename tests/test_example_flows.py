"""Every flow in flows/ validates, and every one that needs no remote worker runs as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagrun import MemoryStore, Orchestrator, RunStatus, StepStatus, load_flow, parse_flow
from dagrun.contract.context import ContextOp, ContextOpKind
from tests.control_support import wait_until_waiting

FLOWS = Path(__file__).resolve().parent.parent / "flows"
ALL_FLOWS = sorted([*FLOWS.glob("*.json"), *FLOWS.glob("*.yaml")])


@pytest.mark.parametrize("path", ALL_FLOWS, ids=[p.name for p in ALL_FLOWS])
def test_every_example_flow_validates(path: Path) -> None:
    flow = load_flow(path)
    assert flow.steps


def local_only(path: Path) -> bool:
    """Runs with no remote worker and no person to send a signal."""
    return all(step.executor == "local" and step.wait_for is None for step in load_flow(path).steps)


@pytest.mark.parametrize("path", [p for p in ALL_FLOWS if local_only(p)], ids=lambda p: p.name)
async def test_every_local_example_flow_runs_to_its_documented_end(path: Path) -> None:
    expected_status = RunStatus.FAILED if path.name == "cleanup_on_failure.json" else RunStatus.SUCCEEDED
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        result = await orchestrator.run(load_flow(path))
    assert result.status == expected_status, {k: v.error for k, v in result.steps.items()}


async def test_etl_fans_out_and_in_and_shares_context() -> None:
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        result = await orchestrator.run(load_flow(FLOWS / "etl.json"), inputs={"rows": 9})
    amounts = [(i * 7) % 11 for i in range(9)]
    assert result.steps["load"].outputs["grand_total"] == sum(amounts)
    assert result.context == {"extracted": 9, "transformed": 9}


async def test_etl_records_which_step_wrote_the_context() -> None:
    store = MemoryStore()
    async with Orchestrator(store, processes=2) as orchestrator:
        result = await orchestrator.run(load_flow(FLOWS / "etl.json"), inputs={"rows": 9})
        writes = {log.step_id: (log.attempt, log.context_ops) for log in await store.get_logs(result.run_id)}
    assert writes == {
        "extract": (1, (ContextOp(ContextOpKind.SET, "extracted", 9),)),
        **{f"transform_{part}": (1, (ContextOp(ContextOpKind.INCR, "transformed", 3),)) for part in range(3)},
    }  # `load` printed and wrote nothing: it has no entry


async def test_the_yaml_twin_of_etl_runs_to_the_same_results() -> None:
    results = []
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        for name in ("etl.json", "etl.yaml"):
            result = await orchestrator.run(load_flow(FLOWS / name), inputs={"rows": 9})
            steps = {step_id: step.outputs for step_id, step in result.steps.items()}
            results.append((steps, result.context, result.outputs))
    assert results[0] == results[1]
    assert results[1][0]["load"]["grand_total"] == sum((i * 7) % 11 for i in range(9))
    assert results[1][2] == {
        "grand_total": results[1][0]["load"]["grand_total"],
        "report": results[1][0]["load"]["report"],
    }


async def test_cleanup_runs_after_a_failure_and_the_independent_branch_goes_on() -> None:
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        result = await orchestrator.run(load_flow(FLOWS / "cleanup_on_failure.json"))
    statuses = {step_id: outcome.status for step_id, outcome in result.steps.items()}
    assert statuses == {
        "prepare": StepStatus.SUCCEEDED,
        "divide": StepStatus.FAILED,
        "publish": StepStatus.SKIPPED,
        "independent": StepStatus.SUCCEEDED,
        "cleanup": StepStatus.SUCCEEDED,
    }
    error = result.steps["divide"].error
    assert error is not None and (error.type, error.line) == ("ZeroDivisionError", 3)
    assert result.steps["cleanup"].outputs == {"removed": "scratch-42"}


@pytest.mark.parametrize("approved", [True, False])
async def test_approval_flow_deploys_only_when_approved(approved: bool) -> None:
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        run_id = await orchestrator.start_run(load_flow(FLOWS / "approval.json"))
        await wait_until_waiting(orchestrator, run_id, "approve")
        await orchestrator.control.signal(run_id, "approve", {"approved": approved, "comment": "checked by ann"})
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
        steps = {step.step_id: step for step in (await orchestrator.control.status(run_id)).steps}
    assert run.status == RunStatus.SUCCEEDED
    assert steps["approve"].outputs == {"approved": approved, "comment": "checked by ann"}
    verb = "deployed to staging" if approved else "not deployed"
    assert steps["report"].outputs == {"summary": f"1.4.42 {verb} (checked by ann)"}


@pytest.mark.parametrize(
    ("min_score", "ran", "skipped", "summary"),
    [
        (0.7, "publish", "quarantine", "score 0.80: published/batch-5-rows"),
        (0.9, "quarantine", "publish", "score 0.80: quarantine/batch-5-rows"),
    ],
)
async def test_branch_flow_publishes_or_quarantines_by_its_quality_check_and_reports_either_way(
    min_score: float, ran: str, skipped: str, summary: str
) -> None:
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        result = await orchestrator.run(load_flow(FLOWS / "branch.json"), inputs={"min_score": min_score})
    statuses = {step_id: outcome.status for step_id, outcome in result.steps.items()}
    assert result.status == RunStatus.SUCCEEDED
    assert statuses == {"check": "succeeded", ran: "succeeded", skipped: "skipped", "report": "succeeded"}
    assert result.steps["check"].outputs == {"ok": min_score <= 0.8, "score": 0.8}
    assert result.steps["report"].outputs == {"summary": summary}


async def test_retries_flow_needs_three_attempts() -> None:
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        result = await orchestrator.run(load_flow(FLOWS / "retries.json"))
    assert result.steps["flaky"].attempts == 3
    assert result.steps["after"].outputs == {"message": "succeeded after 3 attempts"}


async def test_script_file_flow_reads_its_script_and_interpolates() -> None:
    async with Orchestrator(MemoryStore(), processes=2) as orchestrator:
        result = await orchestrator.run(load_flow(FLOWS / "script_file.json"))
    assert result.steps["stats"].outputs == {"mean": 79.2, "best": 92, "grades": ["C", "B", "A", "C", "B"]}
    assert result.steps["summary"].outputs == {"line": "mean 79.2, best 92"}


async def test_host_functions_are_callable_from_scripts() -> None:
    calls: list[str] = []

    def lookup(customer_id: str) -> dict[str, str]:
        calls.append(customer_id)
        return {"id": customer_id, "tier": "gold"}

    document = {
        "name": "host",
        "steps": [{"id": "a", "script": "outputs['tier'] = lookup('c-1')['tier']", "outputs": ["tier"]}],
    }
    async with Orchestrator(MemoryStore(), functions={"lookup": lookup}, processes=1) as orchestrator:
        result = await orchestrator.run(parse_flow(document))
    assert result.steps["a"].outputs == {"tier": "gold"}
    assert calls == ["c-1"]
