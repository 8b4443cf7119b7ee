import dataclasses
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dagrun
from dagrun.contract.executor import script_hash
from dagrun.contract.states import RunIf
from dagrun.errors import FlowError, Problem
from dagrun.flow.limits import DEFAULT_TIMEOUT_S
from dagrun.flow.model import Flow, RetryPolicy, Step, WaitFor
from dagrun.flow.parser import parse_flow
from dagrun.flow.references import MAX_NESTING, TOO_DEEP
from dagrun.flow.schema import DEFAULT_CONTEXT_ID, DEFAULT_EXECUTOR, StepModel, flow_json_schema
from dagrun.sandbox.policy import check_script

ETL = {
    "name": "etl",
    "inputs": {"region": "eu"},
    "defaults": {"executor": "local", "timeout_s": 30, "retries": {"max_attempts": 1}},
    "steps": [
        {
            "id": "extract",
            "script": "outputs['rows'] = 3 * len(inputs['region'])",
            "inputs": {"region": "${flow.region}"},
            "outputs": ["rows"],
        },
        {
            "id": "load",
            "depends_on": ["extract"],
            "script_file": "scripts/load.py",
            "inputs": {"n": "${steps.extract.rows}"},
            "run_if": "all_success",
            "executor": "remote",
            "context_id": "eu-workers",
            "timeout_s": 5,
            "retries": {"max_attempts": 3, "backoff_s": 0.5, "max_backoff_s": 10, "jitter": True},
        },
    ],
}
LOAD_SCRIPT = "outputs['loaded'] = inputs['n']\n"


def read_scripts(path: str) -> str:
    if path == "scripts/load.py":
        return LOAD_SCRIPT
    raise FileNotFoundError(2, "No such file or directory", path)


def flow_of(*steps: Any, **fields: Any) -> dict[str, Any]:
    return {"name": "t", **fields, "steps": list(steps)}


def problems(document: Any, **options: Any) -> list[str]:
    with pytest.raises(FlowError) as caught:
        parse_flow(document, **options)
    return [str(problem) for problem in caught.value.problems]


# --- valid flows --------------------------------------------------------------------------------


def test_design_example_parses_with_inherited_defaults_and_scripts_read_in():
    flow = parse_flow(json.dumps(ETL), source="flows/etl.json", read_script=read_scripts)

    extract, load = flow.steps
    assert (flow.name, flow.inputs, flow.source) == ("etl", {"region": "eu"}, "flows/etl.json")
    assert (extract.id, extract.index, extract.outputs, extract.executor, extract.timeout_s) == (
        "extract",
        0,
        ("rows",),
        "local",
        30.0,
    )
    assert extract.script_hash == script_hash(extract.script)
    assert (load.script, load.script_file, load.depends_on) == (LOAD_SCRIPT, "scripts/load.py", ("extract",))
    assert (load.executor, load.context_id, load.timeout_s, load.run_if) == (
        "remote",
        "eu-workers",
        5.0,
        RunIf.ALL_SUCCESS,
    )
    assert load.retries == RetryPolicy(max_attempts=3, backoff_s=0.5, max_backoff_s=10.0, jitter=True)
    assert load.outputs is None


def test_steps_inherit_defaults_and_merge_retries_field_by_field():
    document = flow_of(
        {"id": "plain", "script": ""},
        {"id": "own", "script": "", "timeout_s": 2, "retries": {"max_attempts": 5}},
        defaults={"executor": "remote", "context_id": "gpu", "retries": {"max_attempts": 2, "backoff_s": 1}},
    )

    plain, own = parse_flow(document).steps

    assert (plain.executor, plain.context_id, plain.timeout_s) == ("remote", "gpu", DEFAULT_TIMEOUT_S)
    assert plain.retries == RetryPolicy(max_attempts=2, backoff_s=1.0)
    assert (own.timeout_s, own.retries) == (2.0, RetryPolicy(max_attempts=5, backoff_s=1.0))


def test_integer_step_ids_are_read_as_strings():
    flow = parse_flow(flow_of({"id": 1, "script": ""}, {"id": 2, "script": "", "depends_on": [1]}))

    assert [(step.id, step.depends_on) for step in flow.steps] == [("1", ()), ("2", ("1",))]


def test_text_bytes_mappings_and_a_byte_order_mark_are_all_accepted():
    document = flow_of({"id": "a", "script": "x = 1"})
    text = json.dumps(document)

    flows = [parse_flow(text), parse_flow(text.encode()), parse_flow("\ufeff" + text), parse_flow(document)]

    assert all(flow == flows[0] for flow in flows)


def test_schema_field_is_allowed_for_editors():
    assert parse_flow({"$schema": "./flow.schema.json", **flow_of({"id": "a", "script": ""})}).name == "t"


def test_reference_to_an_ancestor_that_is_not_a_direct_dependency_is_accepted():
    document = flow_of(
        {"id": "a", "script": "", "outputs": ["v"]},
        {"id": "b", "script": "", "depends_on": ["a"]},
        {"id": "c", "script": "", "depends_on": ["b"], "inputs": {"x": ["${steps.a.v}", "${steps.b.anything}"]}},
    )

    assert parse_flow(document).step("c").inputs == {"x": ["${steps.a.v}", "${steps.b.anything}"]}


def test_to_json_round_trips_to_an_equal_flow():
    flow = parse_flow(json.dumps(ETL), source="flows/etl.json", read_script=read_scripts)

    document = flow.to_json()
    again = parse_flow(json.dumps(document))

    assert again == flow
    assert document["steps"][1]["script"] == LOAD_SCRIPT and "script_file" not in document["steps"][1]
    assert [step.script_file for step in again.steps] == [None, None]


def test_to_json_round_trips_descriptions_ids_and_run_if():
    document = flow_of(
        {"id": 7, "script": "", "description": "seven", "run_if": "any_failed", "outputs": []},
        description="d",
        inputs={"k": [1, {"x": None}]},
    )
    flow = parse_flow(document)

    assert parse_flow(flow.to_json()) == flow
    assert flow.to_json()["steps"][0]["outputs"] == []


def test_flow_step_finds_steps_by_id():
    flow = parse_flow(json.dumps(ETL), read_script=read_scripts)

    assert flow.step("load").index == 1
    with pytest.raises(KeyError):
        flow.step("nope")


def test_step_resolve_inputs_uses_its_compiled_inputs():
    flow = parse_flow(json.dumps(ETL), read_script=read_scripts)
    load = flow.step("load")

    assert load.resolve_inputs({"region": "eu"}, {"extract": {"rows": 6}}) == {"n": 6}
    assert load.compiled_inputs is load.compiled_inputs


def test_retry_delay_of_a_huge_attempt_number_is_capped_not_an_overflow():
    assert RetryPolicy(max_attempts=5000, backoff_s=1, max_backoff_s=60).delay_s(5000) == 60


# --- Flow.inputs_with ------------------------------------------------------------------------------


def test_flow_inputs_with_overrides_declared_defaults():
    flow = parse_flow(flow_of({"id": "a", "script": ""}, inputs={"region": "eu", "n": 1}))

    assert flow.inputs_with({"n": 5}) == {"region": "eu", "n": 5}


def test_flow_inputs_with_rejects_unknown_names_listing_declared_ones():
    flow = parse_flow(flow_of({"id": "a", "script": ""}, inputs={"region": "eu"}), source="flows/etl.json")

    with pytest.raises(FlowError) as caught:
        flow.inputs_with({"regoin": "us", "other": 1})

    assert str(caught.value) == (
        "flows/etl.json: inputs.regoin: unknown flow input; the flow declares: region\n"
        "flows/etl.json: inputs.other: unknown flow input; the flow declares: region"
    )


def test_flow_inputs_with_rejects_values_that_are_not_json():
    flow = parse_flow(flow_of({"id": "a", "script": ""}, inputs={"when": None}))

    with pytest.raises(FlowError, match=r"inputs\.when: not a JSON value \(got set\)"):
        flow.inputs_with({"when": {1}})


# --- one problem of each kind, with its place ------------------------------------------------------


def test_malformed_json_is_reported_with_line_and_column():
    assert problems('{\n  "name": "x",\n  "steps": [\n    {"id": "a" "script": ""}\n  ]\n}') == [
        "line 4, column 16: expecting ',' delimiter"
    ]


def test_bytes_that_are_not_utf8_are_reported_with_their_place():
    assert problems(b'{"name": "caf\xe9"}') == ["line 1, column 14: not UTF-8 text"]


def test_a_document_that_is_not_an_object_is_a_problem():
    assert problems("[1, 2]") == ["a flow is a JSON object, not an array"]


def test_missing_required_fields_are_named():
    assert problems({"steps": [{"script": ""}]}) == [
        "missing required field 'name'",
        "steps[0]: missing required field 'id'",
    ]
    assert problems({"name": "x"}) == ["missing required field 'steps'"]


def test_a_flow_needs_at_least_one_step():
    assert problems({"name": "x", "steps": []}) == ["steps: a flow needs at least one step"]


def test_unknown_fields_are_named_with_a_suggestion():
    document = flow_of(
        {"id": "a", "script": ""},
        {"id": "b", "script": "", "dependson": ["a"], "retries": {"max_atempts": 2}},
        defalts={},
    )

    assert problems(document) == [
        "unknown field 'defalts'; did you mean 'defaults'?",
        "steps[1] (step 'b'): unknown field 'dependson'; did you mean 'depends_on'?",
        "steps[1].retries (step 'b'): unknown field 'max_atempts'; did you mean 'max_attempts'?",
    ]


def test_wrong_types_and_values_are_reported_at_their_place():
    document = flow_of(
        {"id": "a", "script": "", "timeout_s": 0},
        {"id": "b", "script": "", "timeout_s": "30", "run_if": "all_sucess"},
        {"id": "c", "script": "", "retries": {"max_attempts": True, "backoff_s": -1}},
        {"id": "d", "script": "", "depends_on": "a"},
        7,
    )

    assert problems(document) == [
        "steps[0].timeout_s (step 'a'): input should be greater than 0 (got 0)",
        "steps[1].timeout_s (step 'b'): input should be a valid number (got \"30\")",
        "steps[1].run_if (step 'b'): input should be 'all_success', 'all_done' or 'any_failed' (got \"all_sucess\")",
        "steps[2].retries.max_attempts (step 'c'): input should be a valid integer (got true)",
        "steps[2].retries.backoff_s (step 'c'): input should be greater than or equal to 0 (got -1)",
        "steps[3].depends_on (step 'd'): expected a JSON array (got \"a\")",
        "steps[4]: expected a JSON object (got 7)",
    ]


def test_invalid_step_ids_are_reported():
    document = flow_of(
        {"id": "a.b", "script": ""}, {"id": 1.5, "script": ""}, {"id": "c", "script": "", "depends_on": [True]}
    )

    assert problems(document) == [
        "steps[0].id: step id 'a.b' must be 1-200 characters without whitespace, '.', '{' or '}'",
        "steps[1].id: a step id is a string or an integer (got 1.5)",
        "steps[2].depends_on[0] (step 'c'): a step id is a string or an integer (got true)",
    ]


def test_a_step_needs_exactly_one_of_script_script_file_wait_for_and_flow():
    document = flow_of(
        {"id": "both", "script": "", "script_file": "x.py"},
        {"id": "neither"},
        {"id": "waits", "script": "", "wait_for": {"fields": ["ok"]}},
        {"id": "all", "script": "", "script_file": "x.py", "wait_for": {"fields": ["ok"]}},
    )
    exactly_one = "keep one (a step has exactly one of 'script', 'script_file', 'wait_for' or 'flow')"

    assert problems(document, read_script=lambda path: "") == [
        f"steps[0] (step 'both'): has both 'script' and 'script_file'; {exactly_one}",
        "steps[1] (step 'neither'): needs 'script' (Python source), 'script_file' (a path relative to the flow "
        "file), 'wait_for' (the fields a signal must provide) or 'flow' (a flow to run as a child run)",
        f"steps[2] (step 'waits'): has both 'script' and 'wait_for'; {exactly_one}",
        f"steps[3] (step 'all'): has 'script', 'script_file' and 'wait_for'; {exactly_one}",
    ]


def test_an_invalid_script_next_to_a_wait_for_is_still_one_too_many():
    document = flow_of({"id": "a", "script": 5, "wait_for": {"fields": ["ok"]}})

    assert problems(document) == [
        "steps[0] (step 'a'): has both 'script' and 'wait_for'; keep one (a step has exactly one of 'script', "
        "'script_file', 'wait_for' or 'flow')",
        "steps[0].script (step 'a'): input should be a valid string (got 5)",
    ]


def test_duplicate_step_ids_are_reported_at_the_second_one():
    document = flow_of({"id": "a", "script": ""}, {"id": "b", "script": ""}, {"id": "a", "script": ""})

    assert problems(document) == ["steps[2].id: duplicate step id 'a' (also steps[0])"]


def test_unknown_and_self_dependencies_are_reported_with_the_step_id():
    document = flow_of(
        {"id": "load", "script": ""},
        {"id": "x", "script": "", "depends_on": ["x"]},
        {"id": "y", "script": "", "depends_on": ["load", "load"]},
        {"id": "save", "script": "", "depends_on": ["x", "lod"]},
    )

    assert problems(document) == [
        "steps[1].depends_on[0]: step 'x' depends on itself",
        "steps[2].depends_on[1]: step 'y' lists dependency 'load' twice",
        "steps[3].depends_on[1]: step 'save' depends on unknown step 'lod'; did you mean 'load'?",
    ]


def test_cycles_are_printed_as_cycles_one_per_tangle():
    document = flow_of(
        {"id": "a", "script": "", "depends_on": ["c"]},
        {"id": "b", "script": "", "depends_on": ["a"]},
        {"id": "c", "script": "", "depends_on": ["b"]},
        {"id": "x", "script": "", "depends_on": ["y"]},
        {"id": "y", "script": "", "depends_on": ["x"]},
        {"id": "ok", "script": "", "depends_on": ["a"]},
    )

    assert problems(document) == [
        "steps[0].depends_on[0]: step 'a' is in a dependency cycle: a -> b -> c -> a",
        "steps[3].depends_on[0]: step 'x' is in a dependency cycle: x -> y -> x",
    ]


def test_a_reference_to_a_step_that_is_not_an_ancestor_is_a_race():
    document = flow_of(
        {"id": "a", "script": ""},
        {"id": "b", "script": "", "inputs": {"v": "${steps.a.v}"}},
    )

    assert problems(document) == [
        "steps[1].inputs.v: step 'b' references '${steps.a.v}', but 'a' is not among its dependencies, "
        "so it may not have run yet; add 'a' to depends_on"
    ]


def test_references_to_unknown_steps_own_outputs_and_undeclared_outputs_are_reported():
    document = flow_of(
        {"id": "a", "script": "", "outputs": ["rows", "cols"]},
        {
            "id": "b",
            "script": "",
            "depends_on": ["a"],
            "inputs": {"u": "${steps.nope.v}", "o": "${steps.b.v}", "k": ["n=${steps.a.row}"]},
        },
    )

    assert problems(document) == [
        "steps[1].inputs.u: step 'b' references unknown step 'nope' in '${steps.nope.v}'",
        "steps[1].inputs.o: step 'b' references its own output '${steps.b.v}'",
        "steps[1].inputs.k[0]: step 'b' references '${steps.a.row}', but step 'a' declares no output 'row' "
        "(it declares: rows, cols)",
    ]


def test_undeclared_flow_inputs_and_malformed_references_are_reported():
    document = flow_of(
        {"id": "a", "script": "", "inputs": {"r": "${flow.regoin}", "m": "x ${steps.a}"}}, inputs={"region": "eu"}
    )

    assert problems(document) == [
        "steps[0].inputs.r: step 'a' references undeclared flow input 'regoin'; the flow declares: region "
        "(declare it in the flow's 'inputs')",
        "steps[0].inputs.m: step 'a' has a malformed reference '${steps.a}': "
        "expected '${steps.ID.KEY}' or '${flow.KEY}'",
    ]


def test_an_unreadable_script_file_is_reported_with_the_reason():
    document = flow_of(
        {"id": "a", "script": ""}, {"id": "b", "script": ""}, {"id": "load", "script_file": "scripts/x.py"}
    )

    assert problems(document, read_script=read_scripts) == [
        "steps[2].script_file (step 'load'): cannot read 'scripts/x.py': No such file or directory"
    ]


def test_a_script_file_needs_a_reader():
    assert problems(flow_of({"id": "a", "script_file": "a.py"})) == [
        "steps[0].script_file (step 'a'): cannot read 'a.py': a flow given as a document must inline its scripts "
        "with 'script'"
    ]


def test_a_script_syntax_error_is_reported_with_its_script_line():
    found = problems(flow_of({"id": "a", "script": ""}, {"id": "load", "script": "x = 1\ny = 2\nz = (\n"}))

    assert len(found) == 1
    assert found[0].startswith("steps[1].script (step 'load'): line 3: ")


def test_a_script_file_syntax_error_is_reported_at_script_file():
    found = problems(flow_of({"id": "load", "script_file": "scripts/load.py"}), read_script=lambda path: "def f(:\n")

    assert len(found) == 1
    assert found[0].startswith("steps[0].script_file (step 'load'): line 1: ")


def test_a_script_the_sandbox_refuses_is_reported_with_its_script_line():
    found = problems(flow_of({"id": "a", "script": "x = 1\ny = _secret\n"}), check_script=check_script)

    assert len(found) == 1
    assert found[0].startswith("steps[0].script (step 'a'): line 2: ")


def test_the_flow_model_checks_only_syntax_unless_told_and_the_embedding_api_tells_it_the_sandbox_policy():
    document = flow_of({"id": "a", "script": "import os"})

    assert parse_flow(document).step("a").script == "import os"  # Python runs it; whether the sandbox does ...
    with pytest.raises(FlowError, match=r"steps\[0\]\.script \(step 'a'\): line 1: import of 'os' is not allowed"):
        dagrun.parse_flow(document)  # ... is for whoever knows it runs the flow


def test_each_distinct_script_is_checked_once():
    checked: list[str] = []

    def checker(source: str) -> list[tuple[int | None, str]]:
        checked.append(source)
        return [(1, "nope")] if "bad" in source else []

    document = flow_of(*({"id": f"s{i}", "script": "bad" if i % 2 else "good"} for i in range(6)))

    assert problems(document, check_script=checker) == [
        f"steps[{i}].script (step 's{i}'): line 1: nope" for i in (1, 3, 5)
    ]
    assert sorted(checked) == ["bad", "good"]


def test_values_that_are_not_json_in_a_mapping_document_are_reported():
    document = flow_of({"id": "a", "script": "", "inputs": {"s": {1, 2}, "n": [float("nan")]}}, inputs={"t": (1,)})

    assert problems(document) == [
        "inputs.t: not a JSON value (got tuple)",
        "steps[0].inputs.s (step 'a'): not a JSON value (got set)",
        "steps[0].inputs.n[0] (step 'a'): not a JSON value (got nan)",
    ]


# --- every problem at once ---------------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_file_order():
    document = """{
      "name": "etl",
      "inputs": {"region": "eu"},
      "steps": [
        {"id": "extract", "script": "rows = (", "inputs": {"r": "${flow.regoin}"}},
        {"id": "load", "depends_on": ["extract", "lod"], "script": "", "timeout_s": -1},
        {"id": "report", "script": "", "inputs": {"n": "${steps.load.n}"}, "color": "red"}
      ]
    }"""

    with pytest.raises(FlowError) as caught:
        parse_flow(document, source="flows/etl.json")

    found = [problem.path for problem in caught.value.problems]
    assert found == [
        "steps[0].script (step 'extract')",
        "steps[0].inputs.r",
        "steps[1].depends_on[1]",
        "steps[1].timeout_s (step 'load')",
        "steps[2] (step 'report')",
    ]
    assert all(line.startswith("flows/etl.json: steps[") for line in str(caught.value).splitlines())


def test_a_misspelled_depends_on_does_not_also_report_every_reference_as_a_race():
    document = flow_of(
        {"id": "a", "script": ""}, {"id": "b", "script": "", "dependson": ["a"], "inputs": {"v": "${steps.a.v}"}}
    )

    assert problems(document) == ["steps[1] (step 'b'): unknown field 'dependson'; did you mean 'depends_on'?"]


def test_an_invalid_depends_on_does_not_make_references_downstream_look_like_races():
    document = flow_of(
        {"id": "a", "script": ""},
        {"id": "b", "script": "", "depends_on": ["a", 1.5]},
        {"id": "c", "script": "", "depends_on": ["b"], "inputs": {"v": "${steps.a.v}", "u": "${steps.zz.v}"}},
    )

    assert problems(document) == [
        "steps[1].depends_on[1] (step 'b'): a step id is a string or an integer (got 1.5)",
        "steps[2].inputs.u: step 'c' references unknown step 'zz' in '${steps.zz.v}'",
    ]


def test_an_invalid_step_keeps_its_id_so_its_dependents_are_not_told_it_is_unknown():
    document = flow_of({"id": "a", "script": 5}, {"id": "b", "script": "", "depends_on": ["a"]})

    assert problems(document) == ["steps[0].script (step 'a'): input should be a valid string (got 5)"]


def test_flow_error_is_a_list_of_problems_with_the_source():
    error = FlowError([Problem("steps[0]", "bad")], source="x.json")

    assert str(error) == "x.json: steps[0]: bad"


# --- steps that wait for a signal ------------------------------------------------------------------

APPROVAL = flow_of(
    {"id": "build", "script": "outputs['artifact'] = 'app.tar.gz'", "outputs": ["artifact"]},
    {
        "id": "approve",
        "description": "a person decides",
        "depends_on": ["build"],
        "run_if": "all_done",
        "wait_for": {"fields": ["approved", "comment"], "timeout_s": 3600},
    },
    {
        "id": "deploy",
        "depends_on": ["approve"],
        "script": "outputs['deployed'] = inputs['ok']",
        "inputs": {"ok": "${steps.approve.approved}", "why": "said: ${steps.approve.comment}"},
    },
    defaults={"executor": "remote", "context_id": "gpu", "timeout_s": 5, "retries": {"max_attempts": 3}},
)


def test_a_wait_for_step_runs_no_script_and_declares_its_fields_as_outputs():
    approve = parse_flow(APPROVAL).step("approve")

    assert approve.wait_for == WaitFor(fields=("approved", "comment"), timeout_s=3600.0)
    assert approve.outputs == ("approved", "comment")
    assert (approve.script, approve.script_hash, approve.script_file, approve.inputs) == ("", "", None, {})
    assert (approve.depends_on, approve.run_if, approve.description) == (
        ("build",),
        RunIf.ALL_DONE,
        "a person decides",
    )


def test_a_wait_for_step_inherits_nothing_from_defaults_and_other_steps_still_do():
    flow = parse_flow(APPROVAL)
    approve, deploy = flow.step("approve"), flow.step("deploy")

    assert (approve.executor, approve.context_id, approve.timeout_s, approve.retries) == (
        DEFAULT_EXECUTOR,
        DEFAULT_CONTEXT_ID,
        DEFAULT_TIMEOUT_S,
        RetryPolicy(),
    )
    assert (deploy.executor, deploy.context_id, deploy.timeout_s) == ("remote", "gpu", 5.0)
    assert deploy.retries == RetryPolicy(max_attempts=3)
    assert deploy.wait_for is None


@pytest.mark.parametrize("wait_for", [{"fields": ["ok"]}, {"fields": ["ok"], "timeout_s": None}])
def test_a_wait_for_without_a_timeout_waits_indefinitely(wait_for):
    flow = parse_flow(flow_of({"id": "a", "wait_for": wait_for}))

    assert flow.step("a").wait_for == WaitFor(fields=("ok",), timeout_s=None)


def test_references_to_wait_for_fields_are_checked_like_declared_outputs():
    document = flow_of(
        {"id": "approve", "wait_for": {"fields": ["approved"]}},
        {
            "id": "deploy",
            "depends_on": ["approve"],
            "script": "",
            "inputs": {"ok": "${steps.approve.approved}", "why": "${steps.approve.comment}"},
        },
    )

    assert problems(document) == [
        "steps[1].inputs.why: step 'deploy' references '${steps.approve.comment}', but step 'approve' declares no "
        "output 'comment' (it declares: approved)"
    ]


def test_a_reference_to_a_wait_for_step_that_is_not_an_ancestor_is_a_race():
    document = flow_of(
        {"id": "approve", "wait_for": {"fields": ["approved"]}},
        {"id": "deploy", "script": "", "inputs": {"ok": "${steps.approve.approved}"}},
    )

    assert problems(document) == [
        "steps[1].inputs.ok: step 'deploy' references '${steps.approve.approved}', but 'approve' is not among its "
        "dependencies, so it may not have run yet; add 'approve' to depends_on"
    ]


def test_fields_about_a_script_are_problems_on_a_wait_for_step_at_their_place():
    document = flow_of(
        {"id": "build", "script": ""},
        {
            "id": "approve",
            "depends_on": ["build"],
            "wait_for": {"fields": ["approved"]},
            "inputs": {"x": "${steps.nope.v}"},
            "outputs": ["approved"],
            "executor": "local",
            "context_id": "default",
            "timeout_s": 30,
            "retries": {"max_attempts": 2},
        },
    )
    runs_no_script = "a 'wait_for' step runs no script"

    assert problems(document) == [
        f"steps[1].inputs (step 'approve'): {runs_no_script}; 'inputs' does not apply",
        f"steps[1].outputs (step 'approve'): {runs_no_script}; 'outputs' does not apply "
        "(its outputs are the 'wait_for' fields)",
        f"steps[1].executor (step 'approve'): {runs_no_script}; 'executor' does not apply",
        f"steps[1].context_id (step 'approve'): {runs_no_script}; 'context_id' does not apply",
        f"steps[1].timeout_s (step 'approve'): {runs_no_script}; 'timeout_s' does not apply",
        f"steps[1].retries (step 'approve'): {runs_no_script}; 'retries' does not apply",
    ]


def test_an_invalid_field_about_a_script_on_a_wait_for_step_is_told_both_ways():
    document = flow_of({"id": "a", "wait_for": {"fields": ["ok"]}, "timeout_s": "30"})

    assert problems(document) == [
        "steps[0].timeout_s (step 'a'): input should be a valid number (got \"30\")",
        "steps[0].timeout_s (step 'a'): a 'wait_for' step runs no script; 'timeout_s' does not apply",
    ]


@pytest.mark.parametrize(
    ("wait_for", "expected"),
    [
        (None, "steps[0].wait_for (step 'a'): expected a JSON object (got null)"),
        (["ok"], "steps[0].wait_for (step 'a'): expected a JSON object (got [\"ok\"])"),
        ({}, "steps[0].wait_for (step 'a'): missing required field 'fields'"),
        (
            {"fields": []},
            "steps[0].wait_for.fields (step 'a'): a 'wait_for' needs at least one field for the signal to provide",
        ),
        ({"fields": "ok"}, "steps[0].wait_for.fields (step 'a'): expected a JSON array (got \"ok\")"),
        ({"fields": ["ok", 1]}, "steps[0].wait_for.fields[1] (step 'a'): input should be a valid string (got 1)"),
        (
            {"fields": ["ok", "no", "ok"]},
            "steps[0].wait_for.fields (step 'a'): field 'ok' is listed twice; list each field once",
        ),
        (
            {"fields": ["ok"], "timeout_s": 0},
            "steps[0].wait_for.timeout_s (step 'a'): input should be greater than 0 (got 0)",
        ),
        (
            {"fields": ["ok"], "timeout_s": -5},
            "steps[0].wait_for.timeout_s (step 'a'): input should be greater than 0 (got -5)",
        ),
        (
            {"fields": ["ok"], "timeout_s": "60"},
            "steps[0].wait_for.timeout_s (step 'a'): input should be a valid number (got \"60\")",
        ),
        (
            {"fields": ["ok"], "timeout_s": True},
            "steps[0].wait_for.timeout_s (step 'a'): input should be a valid number (got true)",
        ),
        (
            {"fields": ["ok"], "timeout_s": float("inf")},
            "steps[0].wait_for.timeout_s (step 'a'): input should be a finite number (got inf)",
        ),
        (
            {"fields": ["ok"], "timout_s": 5},
            "steps[0].wait_for (step 'a'): unknown field 'timout_s'; did you mean 'timeout_s'?",
        ),
    ],
)
def test_an_invalid_wait_for_is_reported_at_its_place(wait_for, expected):
    assert problems(flow_of({"id": "a", "wait_for": wait_for})) == [expected]


def test_an_invalid_wait_for_hides_no_other_problem():
    document = flow_of(
        {"id": "build", "script": "x = (", "outputs": ["artifact"]},
        {
            "id": "approve",
            "depends_on": ["build", "nope"],
            "wait_for": {"fields": ["ok"], "timeout_s": 0},
            "retries": {},
        },
        {
            "id": "deploy",
            "depends_on": ["approve"],
            "script": "",
            "inputs": {"ok": "${steps.approve.ok}", "no": "${steps.approve.no}", "a": "${steps.build.artefact}"},
        },
        {"id": "lonely", "wait_for": {"fields": []}, "color": "red"},
    )

    assert [problem.split(":")[0] for problem in problems(document)] == [
        "steps[0].script (step 'build')",
        "steps[1].depends_on[1]",
        "steps[1].wait_for.timeout_s (step 'approve')",
        "steps[1].retries (step 'approve')",
        "steps[2].inputs.no",
        "steps[2].inputs.a",
        "steps[3] (step 'lonely')",
        "steps[3].wait_for.fields (step 'lonely')",
    ]


def test_a_wait_for_step_round_trips_through_to_json():
    flow = parse_flow(APPROVAL)
    rebuilt = Flow(flow.name, flow.steps, flow.inputs)  # no document: Step.to_json writes each step

    assert parse_flow(flow.to_json()) == flow
    assert parse_flow(rebuilt.to_json()) == flow
    assert flow.step("approve").to_json() == {
        "id": "approve",
        "wait_for": {"fields": ["approved", "comment"], "timeout_s": 3600.0},
        "description": "a person decides",
        "depends_on": ["build"],
        "run_if": "all_done",
    }


def test_a_wait_for_step_without_a_timeout_writes_none():
    step = parse_flow(flow_of({"id": "a", "wait_for": {"fields": ["ok"], "timeout_s": None}})).step("a")

    assert step.to_json() == {"id": "a", "wait_for": {"fields": ["ok"]}, "run_if": "all_success"}


def test_a_script_step_writes_its_fields_in_order_with_the_inherited_ones_spelled_out():
    document = {**ETL, "defaults": {"executor": "gpu", "retries": {"backoff_s": 2}}}
    flow = parse_flow(document, read_script=read_scripts)

    assert list(flow.step("extract").to_json().items()) == [
        ("id", "extract"),
        ("script", ETL["steps"][0]["script"]),
        ("inputs", {"region": "${flow.region}"}),
        ("outputs", ["rows"]),
        ("run_if", "all_success"),
        ("executor", "gpu"),
        ("context_id", DEFAULT_CONTEXT_ID),
        ("timeout_s", DEFAULT_TIMEOUT_S),
        ("retries", {"max_attempts": 1, "backoff_s": 2, "max_backoff_s": 60.0, "jitter": False}),
    ]
    assert flow.step("load").to_json()["script"] == LOAD_SCRIPT and "script_file" not in flow.step("load").to_json()


def test_the_flow_file_and_the_step_value_name_the_same_step_fields():
    # a step field is declared in the schema (StepModel) and in the value (Step); the parser and to_json go
    # by the names, so a field added to one only is caught here
    written = {field.name for field in dataclasses.fields(Step) if field.metadata.get("written", True)}

    assert set(StepModel.model_fields) == written | {"script_file"}  # script_file is read in, never written
    assert {field.name for field in dataclasses.fields(Step)} - written == {
        "index",
        "script_hash",
        "script_file",
        "flow_file",
        "_compiled",
        "_condition",
    }


# --- the JSON Schema ---------------------------------------------------------------------------


def test_schema_is_valid_json_schema_with_descriptions():
    schema = flow_json_schema()
    step = schema["$defs"]["StepModel"]

    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["name", "steps"]
    assert step["additionalProperties"] is False
    assert all(prop.get("description") for prop in step["properties"].values())
    assert "default" not in step["properties"]["timeout_s"]  # inherited from `defaults`, not a constant


def test_schema_accepts_the_design_example_and_rejects_unknown_fields_and_two_scripts():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(flow_json_schema())
    validator.check_schema(flow_json_schema())

    misspelled = json.loads(json.dumps(ETL))
    misspelled["steps"][1]["dependson"] = misspelled["steps"][1].pop("depends_on")
    two_scripts = json.loads(json.dumps(ETL))
    two_scripts["steps"][0]["script_file"] = "x.py"
    bad_id = flow_of({"id": "a b", "script": ""})

    assert validator.is_valid(ETL)
    assert validator.is_valid(flow_of({"id": 3, "script": ""}))
    assert not validator.is_valid(misspelled)
    assert not validator.is_valid(two_scripts)
    assert not validator.is_valid(bad_id)


def test_schema_says_a_step_has_exactly_one_of_script_script_file_wait_for_and_flow():
    step = flow_json_schema()["$defs"]["StepModel"]

    assert [branch["required"] for branch in step["oneOf"]] == [["script"], ["script_file"], ["wait_for"], ["flow"]]
    assert step["properties"]["wait_for"] == {
        "$ref": "#/$defs/WaitForModel",
        "description": step["properties"]["wait_for"]["description"],
    }


def test_schema_accepts_wait_for_steps_and_rejects_what_the_parser_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(flow_json_schema())

    def with_approve(**fields: Any) -> dict[str, Any]:
        document = json.loads(json.dumps(APPROVAL))
        document["steps"][1] |= fields
        return document

    assert validator.is_valid(APPROVAL)
    assert validator.is_valid(with_approve(wait_for={"fields": ["approved"], "timeout_s": None}))
    assert validator.is_valid(with_approve(wait_for={"fields": ["approved"]}))
    rejected = [
        with_approve(script=""),
        with_approve(script_file="x.py"),
        with_approve(wait_for=None),
        with_approve(wait_for={"fields": []}),
        with_approve(wait_for={"fields": ["a", "a"]}),
        with_approve(wait_for={"fields": ["a"], "timeout_s": 0}),
        with_approve(wait_for={"fields": ["a"], "timout_s": 5}),
        *(with_approve(**{name: value}) for name, value in SCRIPT_FIELDS.items()),
    ]
    for document in rejected:
        assert not validator.is_valid(document), document["steps"][1]
        with pytest.raises(FlowError):
            parse_flow(document, read_script=lambda path: "")


SCRIPT_FIELDS = {
    "inputs": {},
    "outputs": ["approved"],
    "executor": "local",
    "context_id": "default",
    "timeout_s": 30,
    "retries": {},
}


# --- values nested deep: problems at their place, never a crash ------------------------------------

# Where a value goes in a flow document (as JSON text), and the place a problem about it names.
PLACES = {
    "step input": ('{"name": "t", "steps": [{"id": "a", "script": "", "inputs": {"x": %s}}]}', "steps[0].inputs.x"),
    "flow input": ('{"name": "t", "inputs": {"x": %s}, "steps": [{"id": "a", "script": ""}]}', "inputs.x"),
    "description": ('{"name": "t", "description": %s, "steps": [{"id": "a", "script": ""}]}', "description"),
}
FREE_VALUES = ["step input", "flow input"]  # where any JSON value belongs


def document_with(place: str, value: Any) -> dict[str, Any]:
    """The mapping document of PLACES[place] holding `value`, built without a parser."""
    if place == "step input":
        return flow_of({"id": "a", "script": "", "inputs": {"x": value}})
    if place == "flow input":
        return flow_of({"id": "a", "script": ""}, inputs={"x": value})
    return flow_of({"id": "a", "script": ""}, description=value)


def nested_text(depth: int, opener: str) -> str:
    """JSON text of arrays (opener '[') or objects ('{') nested `depth` deep: `[[]]` and `{"a": {}}` are 2."""
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def nested_value(depth: int, opener: str) -> Any:
    """The value of `nested_text`, built without a parser (which stops at 1024 levels)."""
    value: Any = [] if opener == "[" else {}
    for _ in range(depth - 1):
        value = [value] if opener == "[" else {"a": value}
    return value


@pytest.mark.parametrize("opener", ["[", "{"])
@pytest.mark.parametrize("place", FREE_VALUES)
def test_a_value_nested_as_deep_as_the_maximum_is_accepted(place, opener):
    text = PLACES[place][0] % nested_text(MAX_NESTING, opener)

    assert parse_flow(text).to_json() == json.loads(text)
    assert parse_flow(document_with(place, nested_value(MAX_NESTING, opener))) == parse_flow(text)


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 1000, 100_000])
@pytest.mark.parametrize("opener", ["[", "{"])
@pytest.mark.parametrize("place", FREE_VALUES)
def test_a_value_nested_deeper_than_the_maximum_is_one_problem_at_its_place(place, opener, depth):
    template, where = PLACES[place]

    assert problems(template % nested_text(depth, opener)) == [f"{where}: {TOO_DEEP}"]
    assert problems(document_with(place, nested_value(depth, opener))) == [f"{where}: {TOO_DEEP}"]


def test_a_value_that_contains_itself_is_nested_too_deep_not_walked_forever():
    loop: list[Any] = []
    loop.append(loop)

    assert problems(flow_of({"id": "a", "script": "", "inputs": {"x": loop}}, inputs={"y": loop})) == [
        f"inputs.y: {TOO_DEEP}",
        f"steps[0].inputs.x: {TOO_DEEP}",
    ]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ('"description": %s', "description: input should be a valid string (got [[[[[[[...]]]]]]])"),
        (
            '"extra": %s',
            "unknown field 'extra'; known fields: $schema, name, description, inputs, defaults, outputs, steps",
        ),
        ('"defaults": {"retries": %s}', "defaults.retries: expected a JSON object (got [[[[[[[...]]]]]]])"),
    ],
)
def test_deep_nesting_where_no_free_value_belongs_is_reported_where_it_is(field, expected):
    document = '{"name": "t", "steps": [{"id": "a", "script": ""}], ' + field + "}"

    assert problems(document % nested_text(1000, "[")) == [expected]
    # too deep for the JSON parser itself: the field that holds it, from where the parser stopped
    where = expected.split(":")[0] if expected.startswith(("description", "defaults")) else "extra"
    assert problems(document % nested_text(100_000, "[")) == [f"{where}: {TOO_DEEP}"]


def test_a_document_nested_too_deep_to_parse_is_one_problem():
    assert problems(nested_text(100_000, "[")) == [TOO_DEEP]


def test_flow_inputs_with_rejects_a_value_nested_too_deep():
    flow = parse_flow(flow_of({"id": "a", "script": ""}, inputs={"x": None}))

    assert flow.inputs_with({"x": nested_value(MAX_NESTING, "[")})["x"] == nested_value(MAX_NESTING, "[")
    with pytest.raises(FlowError) as caught:
        flow.inputs_with({"x": nested_value(100_000, "{")})
    assert [str(problem) for problem in caught.value.problems] == [f"inputs.x: {TOO_DEEP}"]


@settings(max_examples=60, deadline=None)
@given(
    depth=st.integers(1, 1500), opener=st.sampled_from("[{"), place=st.sampled_from(list(PLACES)), as_text=st.booleans()
)
def test_any_nesting_depth_is_either_a_valid_flow_or_a_flow_error(depth, opener, place, as_text):
    document = (
        PLACES[place][0] % nested_text(depth, opener) if as_text else document_with(place, nested_value(depth, opener))
    )

    try:
        parse_flow(document)
    except FlowError as exc:
        assert place == "description" or depth > MAX_NESTING, exc
    else:
        assert place in FREE_VALUES and depth <= MAX_NESTING


# --- scale ---------------------------------------------------------------------------------------


def big_flow(size: int) -> str:
    steps = []
    for i in range(size):
        deps = [f"s{i - 1}", f"s{i // 2}"] if i > 1 else ([f"s{i - 1}"] if i else [])
        inputs: dict[str, Any] = {"i": i}
        if deps:
            inputs["prev"] = f"${{steps.{deps[0]}.v}}"
        if i > 4 and i % 100 == 0:
            inputs["far"] = f"from ${{steps.s{i - 4}.v}}"  # an ancestor, not a direct dependency
        steps.append(
            {
                "id": f"s{i}",
                "script": f"outputs['v'] = {i % 5}",
                "depends_on": list(dict.fromkeys(deps)),
                "inputs": inputs,
                "outputs": ["v"],
            }
        )
    return json.dumps({"name": "big", "steps": steps})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_100k_step_flow_validates_in_seconds():
    document = big_flow(100_000)

    started = time.monotonic()
    flow = parse_flow(document)
    elapsed_s = time.monotonic() - started

    assert len(flow.steps) == 100_000
    assert elapsed_s < 20


def test_flow_equality_ignores_where_it_came_from():
    flow = parse_flow(flow_of({"id": "a", "script": ""}), source="a.json")

    assert flow == parse_flow(flow.to_json(), source="elsewhere.json")
    assert isinstance(flow, Flow)
