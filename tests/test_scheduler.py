"""Scheduler properties over random DAGs: each step is decided once, never before its dependencies,
and a failure skips exactly its descendants (under all_success)."""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagrun.contract.states import RunIf, StepStatus
from dagrun.engine.scheduler import Scheduler
from dagrun.flow.model import Flow, Step


def make_flow(edges: dict[str, list[str]], run_if: dict[str, RunIf] | None = None) -> Flow:
    run_if = run_if or {}
    steps = tuple(
        Step(
            id=step_id,
            index=i,
            script="pass",
            script_hash="h",
            depends_on=tuple(deps),
            run_if=run_if.get(step_id, RunIf.ALL_SUCCESS),
        )
        for i, (step_id, deps) in enumerate(edges.items())
    )
    return Flow(name="t", steps=steps)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(min_value=1, max_value=25))
    edges: dict[str, list[str]] = {}
    for i in range(n):
        deps = draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=4)) if i else set()
        edges[f"s{i}"] = [f"s{d}" for d in sorted(deps)]
    return edges


def simulate(flow: Flow, fails: set[str], order: st.DataObject) -> tuple[list[str], list[str], Scheduler]:
    """Drive a Scheduler to the end, completing ready steps in an order hypothesis picks."""
    scheduler = Scheduler(flow)
    ready = scheduler.roots()
    started: list[str] = []
    skipped: list[str] = []
    ended: set[str] = set()
    deps = {step.id: step.depends_on for step in flow.steps}
    while ready:
        step_id = ready.pop(order.draw(st.integers(min_value=0, max_value=len(ready) - 1)))
        assert all(d in ended for d in deps[step_id]), f"{step_id} started before its dependencies ended"
        scheduler.start(step_id)
        started.append(step_id)
        decisions = scheduler.complete(step_id, StepStatus.FAILED if step_id in fails else StepStatus.SUCCEEDED)
        ended.add(step_id)
        for skipped_id in decisions.skipped:
            assert all(d in ended for d in deps[skipped_id]), f"{skipped_id} skipped before its dependencies ended"
            ended.add(skipped_id)
        skipped.extend(decisions.skipped)
        ready.extend(decisions.ready)
    return started, skipped, scheduler


@settings(max_examples=300, deadline=None)
@given(edges=dags(), data=st.data())
def test_every_step_is_decided_exactly_once_and_failures_skip_exactly_their_descendants(
    edges: dict[str, list[str]], data: st.DataObject
) -> None:
    flow = make_flow(edges)
    fails = data.draw(st.sets(st.sampled_from(sorted(edges))))
    started, skipped, scheduler = simulate(flow, fails, data)

    assert all(status.is_terminal for status in scheduler.status.values())
    assert sorted(started + skipped) == sorted(edges), "every step is started or skipped, once"
    graph = nx.DiGraph()  # not DiGraph(edges): networkx < 3.4 then probes for pandas, warning when it is missing
    graph.add_nodes_from(edges)
    graph.add_edges_from((d, s) for s, deps in edges.items() for d in deps)
    failed_started = [s for s in started if s in fails]
    descendants = set().union(*(nx.descendants(graph, f) for f in failed_started)) if failed_started else set()
    assert set(skipped) == descendants
    for step_id in edges:
        expected = (
            StepStatus.SKIPPED
            if step_id in descendants
            else (StepStatus.FAILED if step_id in fails else StepStatus.SUCCEEDED)
        )
        assert scheduler.status[step_id] == expected


@settings(max_examples=200, deadline=None)
@given(edges=dags(), data=st.data())
def test_all_done_steps_always_run(edges: dict[str, list[str]], data: st.DataObject) -> None:
    flow = make_flow(edges, {step_id: RunIf.ALL_DONE for step_id in edges})
    fails = data.draw(st.sets(st.sampled_from(sorted(edges))))
    started, skipped, _ = simulate(flow, fails, data)
    assert skipped == []
    assert sorted(started) == sorted(edges)


@settings(max_examples=200, deadline=None)
@given(edges=dags(), data=st.data())
def test_fail_fast_cancels_every_open_step_but_the_clean_ups_which_are_decided_by_their_rules(
    edges: dict[str, list[str]], data: st.DataObject
) -> None:
    rules = {step_id: data.draw(st.sampled_from(list(RunIf))) for step_id in edges}
    scheduler = Scheduler(make_flow(edges, rules))
    ready = scheduler.roots()
    failing = ready.pop(data.draw(st.integers(0, len(ready) - 1)))
    for step_id in ready:  # running beside the failure
        scheduler.start(step_id)
    scheduler.start(failing)
    decided = scheduler.complete(failing, StepStatus.FAILED)

    cancelled, unlocked = scheduler.fail_fast()

    open_before = set(edges) - {failing} - set(decided.skipped)
    assert set(cancelled) == {s for s in open_before if rules[s] == RunIf.ALL_SUCCESS}
    assert all(scheduler.status[s] == StepStatus.CANCELLED for s in cancelled)
    clean_ups = open_before - set(cancelled)
    for step_id in unlocked.ready + decided.ready:  # ready now: a clean-up whose dependencies all ended
        assert step_id in clean_ups
        assert all(scheduler.status[d].is_terminal for d in edges[step_id])
    assert all(scheduler.status[s] == StepStatus.SKIPPED for s in unlocked.skipped)
    assert not set(unlocked.ready) & set(decided.ready)


def test_any_failed_runs_after_a_failure_even_through_skipped_steps() -> None:
    flow = make_flow(
        {"a": [], "b": ["a"], "c": ["b"], "cleanup": ["c"]},
        {"cleanup": RunIf.ANY_FAILED},
    )
    scheduler = Scheduler(flow)
    assert scheduler.roots() == ["a"]
    decisions = scheduler.complete("a", StepStatus.FAILED)
    assert decisions.skipped == ["b", "c"]
    assert decisions.ready == ["cleanup"]


def test_any_failed_is_skipped_when_nothing_failed() -> None:
    flow = make_flow({"a": [], "cleanup": ["a"], "after": ["cleanup"]}, {"cleanup": RunIf.ANY_FAILED})
    scheduler = Scheduler(flow)
    decisions = scheduler.complete("a", StepStatus.SUCCEEDED)
    assert decisions.ready == []
    assert decisions.skipped == ["cleanup", "after"]
    assert all(status.is_terminal for status in scheduler.status.values())


def test_a_clean_skip_does_not_trigger_any_failed_downstream() -> None:
    flow = make_flow(
        {"a": [], "alert": ["a"], "notify": ["alert"]},
        {"alert": RunIf.ANY_FAILED, "notify": RunIf.ANY_FAILED},
    )
    decisions = Scheduler(flow).complete("a", StepStatus.SUCCEEDED)
    assert decisions.skipped == ["alert", "notify"]


def test_a_step_cannot_end_twice_or_in_a_non_final_state() -> None:
    scheduler = Scheduler(make_flow({"a": []}))
    with pytest.raises(ValueError, match="not a final state"):
        scheduler.complete("a", StepStatus.RUNNING)
    scheduler.complete("a", StepStatus.SUCCEEDED)
    with pytest.raises(ValueError, match="already ended"):
        scheduler.complete("a", StepStatus.FAILED)


def test_cancel_rest_ends_every_open_step() -> None:
    scheduler = Scheduler(make_flow({"a": [], "b": ["a"], "c": []}))
    scheduler.start("a")
    scheduler.complete("c", StepStatus.SUCCEEDED)
    assert sorted(scheduler.cancel_rest()) == ["a", "b"]
    assert all(status.is_terminal for status in scheduler.status.values())
    assert scheduler.status["c"] == StepStatus.SUCCEEDED


def test_long_chains_skip_without_recursion() -> None:
    edges = {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(20_000)}
    decisions = Scheduler(make_flow(edges)).complete("c0", StepStatus.FAILED)
    assert len(decisions.skipped) == 19_999
