"""The condition language (`when`): what it accepts, how it judges values, and validation with places."""

import operator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagrun.errors import FlowError, UnresolvedInput
from dagrun.flow.conditions import Condition
from dagrun.flow.parser import parse_flow
from dagrun.flow.references import Reference
from tests.test_flow import flow_of, problems

OUTPUTS = {"check": {"ok": True, "bad": False, "score": 0.75, "grade": "B", "none": None, "n": 3, "rows": [1]}}


def holds(text: str, outputs_of: Any = OUTPUTS, flow_inputs: Any = None) -> bool:
    return Condition(text, step_id="s").holds(flow_inputs or {}, outputs_of)


def test_a_reference_alone_is_its_boolean_and_not_negates_it():
    assert holds("${steps.check.ok}") is True
    assert holds("${steps.check.bad}") is False
    assert holds("not ${steps.check.ok}") is False
    assert holds("  not   ${steps.check.bad} ") is True
    assert holds("${flow.full}", flow_inputs={"full": True}) is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${steps.check.score} >= 0.75", True),
        ("${steps.check.score} > 0.75", False),
        ("${steps.check.n} < 3.5", True),
        ("${steps.check.n} <= 2", False),
        ("${steps.check.n} == 3.0", True),
        ('${steps.check.grade} == "B"', True),
        ('${steps.check.grade} < "C"', True),
        ('${steps.check.grade} != "B"', False),
        ("${steps.check.none} == null", True),
        ("${steps.check.ok} == true", True),
        ("${steps.check.ok} == 1", False),  # JSON's true is not 1, whatever Python says
        ("${steps.check.n} == true", False),
        ('${steps.check.n} == "3"', False),  # different types are unequal, not an error
        ("${steps.check.rows} != null", True),
        ("${steps.check.score}>=0.5", True),
    ],
)
def test_comparisons_with_a_json_literal(text: str, expected: bool):
    assert holds(text) is expected


def test_a_compiled_condition_names_its_parts():
    condition = Condition('${flow.mode} != "dry"')

    assert (condition.reference, condition.operator, condition.literal, condition.negated) == (
        Reference(None, "mode", "${flow.mode}"),
        "!=",
        "dry",
        False,
    )
    assert condition.malformed is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${steps.check.n}", "step 's' condition '${steps.check.n}': the value is a number (3), not a boolean"),
        ("not ${steps.check.none}", "step 's' condition 'not ${steps.check.none}': the value is null, not a boolean"),
        (
            "${steps.check.grade} < 3",
            "step 's' condition '${steps.check.grade} < 3': the value is a string (\"B\"), which '<' cannot compare "
            "with a number",
        ),
        (
            '${steps.check.n} >= "2"',
            "step 's' condition '${steps.check.n} >= \"2\"': the value is a number (3), which '>=' cannot compare "
            "with a string",
        ),
        (
            "${steps.check.ok} > 0",
            "step 's' condition '${steps.check.ok} > 0': the value is a boolean (true), which '>' cannot compare "
            "with a number",
        ),
        (
            "${steps.gone.ok}",
            "step 's' condition '${steps.gone.ok}': step 'gone' did not succeed, so it has no value to judge",
        ),
        (
            "${steps.check.missing}",
            "step 's' condition '${steps.check.missing}': step 'check' succeeded without output 'missing' "
            "(its outputs: bad, grade, n, none, ok, rows, score)",
        ),
        ("${flow.absent}", "step 's' condition '${flow.absent}': flow input 'absent' has no value"),
        ("${steps.check}", "step 's' condition '${steps.check}' is malformed: malformed reference"),
    ],
)
def test_a_value_the_condition_cannot_judge_is_an_error_naming_the_condition_and_the_type(text: str, message: str):
    with pytest.raises(UnresolvedInput) as raised:
        holds(text)

    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "a condition is empty; write '${steps.ID.KEY}'"),
        ("true", "expected '${steps.ID.KEY}' or '${flow.KEY}' (a JSON boolean), 'not ${...}', or '${...} OP VALUE'"),
        ("${steps.a.ok} and ${steps.b.ok}", "expected '${steps.ID.KEY}'"),
        ("${steps.a.ok", "malformed reference '${steps.a.ok': '${' is never closed by '}'"),
        ("${step.a.ok}", "malformed reference '${step.a.ok}': expected '${steps.ID.KEY}' or '${flow.KEY}'"),
        ("${steps.a.n} = 3", "unknown operator '='; use one of ==, !=, <, <=, >, >="),
        ("${steps.a.n} =< 3", "unknown operator '=<'; use one of ==, !=, <, <=, >, >="),
        ("not ${steps.a.n} == 3", "'not' takes a reference alone; to negate a comparison, write the opposite"),
        ("${steps.a.n} == ${steps.b.n}", "a reference is compared with a JSON value, not with another reference"),
        ("${steps.a.n} == [1]", "expected a JSON number, \"string\", true, false or null after '==', not '[1]'"),
        ("${steps.a.n} == 'x'", "expected a JSON number, \"string\", true, false or null after '==', not \"'x'\""),
        ("${steps.a.n} < null", "'<' compares numbers or strings, not null; use == or !="),
        ("${steps.a.n} >= false", "'>=' compares numbers or strings, not a boolean; use == or !="),
        ("${steps.a.n} == 1e400", "expected a JSON number"),
    ],
)
def test_malformed_conditions_say_what_is_wrong(text: str, reason: str):
    condition = Condition(text)

    assert condition.reference is None
    assert condition.malformed is not None and condition.malformed.startswith(reason), condition.malformed


ORDERINGS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
numbers = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False))


@given(value=numbers, literal=numbers, op=st.sampled_from([*sorted(ORDERINGS), "!="]))
def test_comparisons_of_numbers_are_python_s(value: float, literal: float, op: str):
    text = f"${{flow.x}} {op} {orjson.dumps(literal).decode()}"
    expected = value != literal if op == "!=" else ORDERINGS[op](value, literal)

    assert Condition(text).holds({"x": value}, {}) is expected


PIECES = ["${steps.a.ok}", "${flow.k}", "${", "}", "not", " ", "==", "<", "!", "=", "3", '"x"', "null", "[", "$${"]


@given(text=st.one_of(st.text(), st.lists(st.sampled_from(PIECES), max_size=8).map("".join)))
def test_any_string_is_a_condition_or_a_problem_at_its_place_never_a_crash(text: str):
    condition = Condition(text)
    document = flow_of(
        {"id": "a", "script": "", "outputs": ["ok"]}, {"id": "b", "script": "", "depends_on": ["a"], "when": text}
    )
    try:
        flow = parse_flow({**document, "inputs": {"k": 1}})
    except FlowError as exc:
        assert [problem.path for problem in exc.problems] == ["steps[1].when"]
        assert (condition.malformed is None) == (condition.reference is not None)
    else:
        assert flow.step("b").condition is not None and flow.step("b").condition.malformed is None


# --- validation ------------------------------------------------------------------------------------


def test_validation_reports_conditions_with_their_places():
    document = flow_of(
        {"id": "check", "script": "", "outputs": ["ok"]},
        {"id": "other", "script": ""},
        {"id": "a", "script": "", "depends_on": ["check"], "when": "${steps.check.okay}"},
        {"id": "b", "script": "", "depends_on": ["check"], "when": "${steps.other.ok}"},
        {"id": "c", "script": "", "depends_on": ["check"], "when": "${flow.mood} == 1"},
        {"id": "d", "script": "", "depends_on": ["check"], "when": "${steps.check.ok} === 1"},
        {"id": "e", "script": "", "when": "${steps.e.ok}"},
        {"id": "f", "script": "", "when": True},
        inputs={"mode": "x"},
    )

    assert problems(document) == [
        "steps[2].when: step 'a' references '${steps.check.okay}', but step 'check' declares no output 'okay' "
        "(it declares: ok)",
        "steps[3].when: step 'b' references '${steps.other.ok}', but 'other' is not among its dependencies, so it "
        "may not have run yet; add 'other' to depends_on",
        "steps[4].when: step 'c' references undeclared flow input 'mood'; the flow declares: mode "
        "(declare it in the flow's 'inputs')",
        "steps[5].when: step 'd' has a malformed condition: unknown operator '==='; use one of ==, !=, <, <=, >, >=",
        "steps[6].when: step 'e' references its own output '${steps.e.ok}'",
        "steps[7].when (step 'f'): input should be a valid string (got true)",
    ]


def test_a_condition_on_an_ancestor_or_a_wait_for_step_is_accepted_and_written_back():
    document = flow_of(
        {"id": "check", "script": "", "outputs": ["ok"]},
        {"id": "approve", "depends_on": ["check"], "wait_for": {"fields": ["yes"]}, "when": "${steps.check.ok}"},
        {"id": "ship", "script": "", "depends_on": ["approve"], "when": "${steps.check.ok} != false"},
    )

    flow = parse_flow(document)

    assert flow.step("approve").when == "${steps.check.ok}"
    assert flow.step("ship").to_json()["when"] == "${steps.check.ok} != false"
    assert "when" not in flow.step("check").to_json()
    assert parse_flow({"name": flow.name, "steps": [step.to_json() for step in flow.steps]}) == flow
