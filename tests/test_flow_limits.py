"""Flow limits: a timeout, attempt count or wait written over them is a problem at its place, naming the
maximum; whoever runs dagrun sets them, never below what a flow gets without asking."""

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagrun.contract.states import RunStatus
from dagrun.engine.orchestrator import Orchestrator
from dagrun.errors import FlowError
from dagrun.flow.limits import (
    DEFAULT_LIMITS,
    FLOORS,
    LIMIT_ATTEMPTS,
    LIMIT_BACKOFF_S,
    LIMIT_TIMEOUT_S,
    LIMIT_WAIT_S,
    NO_LIMITS,
    FlowLimits,
)
from dagrun.flow.parser import parse_flow
from dagrun.flow.schema import flow_json_schema
from dagrun.store import MemoryStore

SCRIPT = {"id": "a", "script": "pass"}

# (where the value goes, its place in a problem, the default maximum, the option that sets it)
BOUNDED = [
    ({"timeout_s": "V"}, "steps[0].timeout_s", LIMIT_TIMEOUT_S, "--max-timeout-s"),
    ({"retries": {"max_attempts": "V"}}, "steps[0].retries.max_attempts", LIMIT_ATTEMPTS, "--max-attempts"),
    ({"retries": {"backoff_s": "V"}}, "steps[0].retries.backoff_s", LIMIT_BACKOFF_S, "--max-backoff-s"),
    ({"retries": {"max_backoff_s": "V"}}, "steps[0].retries.max_backoff_s", LIMIT_BACKOFF_S, "--max-backoff-s"),
    ({"defaults": {"timeout_s": "V"}}, "defaults.timeout_s", LIMIT_TIMEOUT_S, "--max-timeout-s"),
    (
        {"defaults": {"retries": {"max_attempts": "V"}}},
        "defaults.retries.max_attempts",
        LIMIT_ATTEMPTS,
        "--max-attempts",
    ),
    ({"defaults": {"retries": {"backoff_s": "V"}}}, "defaults.retries.backoff_s", LIMIT_BACKOFF_S, "--max-backoff-s"),
    ({"wait_for": {"fields": ["ok"], "timeout_s": "V"}}, "steps[0].wait_for.timeout_s", LIMIT_WAIT_S, "--max-wait-s"),
]


def with_value(where: dict[str, Any], value: float) -> dict[str, Any]:
    """A flow of one step with `value` put where `where` says ("V")."""

    def put(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: put(item) for key, item in node.items()}
        return value if node == "V" else node

    fields = put(where)
    if "defaults" in fields:
        return {"name": "f", "defaults": fields["defaults"], "steps": [SCRIPT]}
    step = {"id": "a", **fields} if "wait_for" in fields else {**SCRIPT, **fields}
    return {"name": "f", "steps": [step]}


def labelled(place: str) -> str:
    return place + (" (step 'a')" if place.startswith("steps") else "")


def problems(document: Any, **options: Any) -> list[str]:
    with pytest.raises(FlowError) as caught:
        parse_flow(document, **options)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(("where", "place", "maximum", "option"), BOUNDED)
def test_a_value_at_its_maximum_is_accepted_and_one_over_it_is_a_problem_naming_it(where, place, maximum, option):
    parse_flow(with_value(where, maximum))
    over = maximum + 1 if isinstance(maximum, int) else maximum + 0.5
    unit = "attempts" if option == "--max-attempts" else "seconds"

    assert problems(with_value(where, over)) == [
        f"{labelled(place)}: {over:.15g} is over the maximum of {maximum:.15g} {unit} ({option}); lower it"
    ]


@pytest.mark.parametrize(("where", "place", "maximum", "option"), BOUNDED)
def test_whoever_runs_dagrun_sets_the_limits_higher_or_lower(where, place, maximum, option):
    name = option.removeprefix("--").replace("-", "_")
    value = maximum * 10

    assert parse_flow(with_value(where, value), limits=FlowLimits(**{name: value}))
    assert parse_flow(with_value(where, 1e300 if name != "max_attempts" else 10**18), limits=NO_LIMITS)
    lower = FlowLimits(**{name: FLOORS[name]})
    assert problems(with_value(where, FLOORS[name] + 1), limits=lower) == [
        f"{labelled(place)}: {FLOORS[name] + 1:.15g} is over the maximum of {FLOORS[name]:.15g} "
        f"{'attempts' if name == 'max_attempts' else 'seconds'} ({option}); lower it"
    ]


def test_a_flow_that_asks_for_nothing_is_within_the_lowest_limits():
    lowest = FlowLimits(**FLOORS)
    flow = parse_flow({"name": "f", "steps": [SCRIPT, {"id": "w", "wait_for": {"fields": ["ok"]}}]}, limits=lowest)

    step = flow.step("a")
    assert step.timeout_s <= lowest.max_timeout_s and step.retries.max_attempts <= lowest.max_attempts
    assert step.retries.max_backoff_s <= lowest.max_backoff_s


@pytest.mark.parametrize("name", list(FLOORS))
def test_a_limit_below_its_floor_is_refused(name):
    for value in (FLOORS[name] - 1, math.nan):
        with pytest.raises(ValueError, match=f"flow limit {name} must be at least"):
            FlowLimits(**{name: value})


def test_script_fields_of_a_wait_for_step_are_one_problem_each_not_two():
    step = {"id": "w", "wait_for": {"fields": ["ok"]}, "timeout_s": 1e9, "retries": {"max_attempts": 1000}}

    assert problems({"name": "f", "steps": [step]}) == [
        "steps[0].timeout_s (step 'w'): a 'wait_for' step runs no script; 'timeout_s' does not apply",
        "steps[0].retries (step 'w'): a 'wait_for' step runs no script; 'retries' does not apply",
    ]


@settings(max_examples=50, deadline=None)
@given(
    limit=st.floats(LIMIT_TIMEOUT_S / 100, LIMIT_TIMEOUT_S * 100),
    value=st.floats(1e-3, LIMIT_TIMEOUT_S * 1000),
    in_defaults=st.booleans(),
)
def test_a_timeout_is_refused_exactly_when_it_is_over_the_limit(limit, value, in_defaults):
    where: dict[str, Any] = {"defaults": {"timeout_s": "V"}} if in_defaults else {"timeout_s": "V"}
    try:
        parse_flow(with_value(where, value), limits=FlowLimits(max_timeout_s=limit))
    except FlowError as exc:
        assert value > limit and len(exc.problems) == 1
    else:
        assert value <= limit


def test_the_schema_shows_the_default_maxima():
    definitions = flow_json_schema()["$defs"]

    assert definitions["StepModel"]["properties"]["timeout_s"]["maximum"] == LIMIT_TIMEOUT_S
    assert definitions["DefaultsModel"]["properties"]["timeout_s"]["maximum"] == LIMIT_TIMEOUT_S
    retries = definitions["RetriesModel"]["properties"]
    assert [retries[name]["maximum"] for name in ("max_attempts", "backoff_s", "max_backoff_s")] == [
        LIMIT_ATTEMPTS,
        LIMIT_BACKOFF_S,
        LIMIT_BACKOFF_S,
    ]
    assert definitions["WaitForModel"]["properties"]["timeout_s"]["maximum"] == LIMIT_WAIT_S
    assert FlowLimits(LIMIT_TIMEOUT_S, LIMIT_ATTEMPTS, LIMIT_BACKOFF_S, LIMIT_WAIT_S) == DEFAULT_LIMITS


async def test_a_stored_run_accepted_under_higher_limits_is_still_driven_by_any_orchestrator():
    flow = parse_flow(
        {"name": "long", "steps": [{**SCRIPT, "timeout_s": 2 * LIMIT_TIMEOUT_S}]},
        limits=FlowLimits(max_timeout_s=2 * LIMIT_TIMEOUT_S),
    )
    store = MemoryStore()
    async with Orchestrator(store, processes=1) as submitter:
        run_id = await submitter.control.submit(flow)
    async with Orchestrator(store, processes=1) as later:  # the default, lower limits
        result = await later.drive(run_id)

    assert result is not None and result.status == RunStatus.SUCCEEDED
