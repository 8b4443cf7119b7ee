"""Sub-flows and flow outputs in flow files: a step's `flow` (a file or inline) parsed into a child Flow,
checked against the child's declared inputs and outputs, and a flow's `outputs` checked like references."""

import json
from pathlib import Path
from typing import Any

import pytest

from dagrun.errors import FlowError
from dagrun.flow.loader import load_flow
from dagrun.flow.parser import parse_flow

CHILD: dict[str, Any] = {
    "name": "child",
    "inputs": {"n": 1},
    "outputs": {"doubled": "${steps.double.value}"},
    "steps": [{"id": "double", "script": "outputs['value'] = inputs['n'] * 2", "inputs": {"n": "${flow.n}"}}],
}


def parent(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "parent", "steps": list(steps), **fields}


def user(**inputs: Any) -> dict[str, Any]:
    return {"id": "use", "depends_on": ["sub"], "script": "pass", "inputs": inputs}


def write(directory: Path, name: str, document: dict[str, Any]) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def load_problems(path: Path) -> list[str]:
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    return [str(problem) for problem in caught.value.problems]


def parse_problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(FlowError) as caught:
        parse_flow(document)
    return [str(problem) for problem in caught.value.problems]


def test_an_inline_sub_flow_is_kept_on_its_step_with_the_child_outputs_as_the_step_outputs():
    flow = parse_flow(parent({"id": "sub", "flow": CHILD, "inputs": {"n": 4}}, user(x="${steps.sub.doubled}")))

    sub = flow.step("sub")
    assert sub.flow is not None and sub.flow.name == "child"
    assert sub.outputs == ("doubled",)
    assert sub.flow.outputs == {"doubled": "${steps.double.value}"}
    assert sub.script == "" and sub.flow_file is None


def test_a_sub_flow_file_is_read_relative_to_the_flow_file_and_inlined_in_its_json(tmp_path: Path):
    write(tmp_path / "lib", "child.json", CHILD | {"steps": [{"id": "double", "script_file": "double.py"}]})
    (tmp_path / "lib" / "double.py").write_text("outputs['value'] = 2\n")
    path = write(tmp_path, "parent.json", parent({"id": "sub", "flow": "lib/child.json"}))

    flow = load_flow(path)

    sub = flow.step("sub")
    assert sub.flow_file == "lib/child.json"
    assert sub.flow is not None and sub.flow.source == str(tmp_path / "lib" / "child.json")
    written = flow.to_json()["steps"][0]["flow"]  # a stored run is self-contained: no file names in it
    assert written["steps"][0]["script"] == "outputs['value'] = 2\n" and "script_file" not in written["steps"][0]
    assert parse_flow(flow.to_json()) == flow
    assert parse_flow(json.dumps(flow.to_json())).step("sub").flow == sub.flow


def test_a_step_and_flow_to_json_round_trip_without_the_document():
    flow = parse_flow(
        parent({"id": "sub", "flow": CHILD}, user(x="${steps.sub.doubled}"), outputs={"x": "${steps.sub.doubled}"})
    )
    rebuilt = parse_flow(
        {"name": flow.name, "steps": [step.to_json() for step in flow.steps], "outputs": dict(flow.outputs)}
    )

    assert rebuilt == flow
    assert "executor" not in flow.step("sub").to_json() and "outputs" not in flow.step("sub").to_json()


def test_a_missing_sub_flow_file_is_a_problem_at_the_step_flow(tmp_path: Path):
    path = write(tmp_path, "parent.json", parent({"id": "sub", "flow": "nope.json"}))

    assert load_problems(path) == ["steps[0].flow (step 'sub'): cannot read 'nope.json': No such file or directory"]


def test_a_sub_flow_file_outside_the_flow_directory_is_refused(tmp_path: Path):
    write(tmp_path, "child.json", CHILD)
    path = write(tmp_path / "flows", "parent.json", parent({"id": "sub", "flow": "../child.json"}))

    [problem] = load_problems(path)
    assert problem.startswith("steps[0].flow (step 'sub'): cannot read '../child.json': it resolves to")


def test_a_cycle_of_flow_files_is_refused_naming_the_chain(tmp_path: Path):
    write(tmp_path, "b.json", parent({"id": "back", "flow": "a.json"}) | {"name": "b"})
    path = write(tmp_path, "a.json", parent({"id": "sub", "flow": "b.json"}) | {"name": "a"})

    [problem] = load_problems(path)
    a, b = str(path), str(tmp_path / "b.json")
    assert problem == (
        f"steps[0].flow (step 'sub'): {b}: steps[0].flow (step 'back'): flows call each other in a cycle: "
        f"{a} -> {b} -> {a}"
    )


def test_a_flow_calling_its_own_file_is_a_cycle(tmp_path: Path):
    path = write(tmp_path, "self.json", parent({"id": "sub", "flow": "self.json"}))

    assert load_problems(path) == [f"steps[0].flow (step 'sub'): flows call each other in a cycle: {path} -> {path}"]


def test_the_same_file_twice_side_by_side_is_no_cycle(tmp_path: Path):
    write(tmp_path, "child.json", CHILD)
    path = write(
        tmp_path, "parent.json", parent({"id": "one", "flow": "child.json"}, {"id": "two", "flow": "child.json"})
    )

    assert [step.flow.name for step in load_flow(path).steps if step.flow] == ["child", "child"]


def test_an_input_the_child_does_not_declare_is_a_problem_at_its_place():
    assert parse_problems(parent({"id": "sub", "flow": CHILD, "inputs": {"n": 1, "m": 2}})) == [
        "steps[0].inputs.m (step 'sub'): flow 'child' declares no input 'm' (it declares: n)"
    ]


def test_a_reference_to_an_output_the_child_does_not_declare_is_a_problem():
    [problem] = parse_problems(parent({"id": "sub", "flow": CHILD}, user(x="${steps.sub.tripled}")))

    assert problem.startswith("steps[1].inputs.x: step 'use' references '${steps.sub.tripled}', but step 'sub'")
    assert problem.endswith("declares no output 'tripled' (it declares: doubled)")


def test_problems_inside_an_inline_child_are_reported_at_the_step_flow():
    broken = CHILD | {"steps": [{"id": "double", "script": "def ("}]}

    [problem] = parse_problems(parent({"id": "sub", "flow": broken}))
    assert problem.startswith("steps[0].flow (step 'sub'): steps[0].script (step 'double'): line 1:")


def test_script_fields_map_and_retries_do_not_apply_to_a_sub_flow_step():
    step = {"id": "sub", "flow": CHILD, "outputs": ["x"], "executor": "gpu", "retries": {"max_attempts": 3}}

    assert parse_problems(parent(step)) == [
        "steps[0].outputs (step 'sub'): a 'flow' step runs a child run, not a script; 'outputs' does not apply "
        "(its outputs are the child flow's 'outputs')",
        "steps[0].executor (step 'sub'): a 'flow' step runs a child run, not a script; 'executor' does not apply "
        "(it runs once)",
        "steps[0].retries (step 'sub'): a 'flow' step runs a child run, not a script; 'retries' does not apply "
        "(it runs once)",
    ]


def test_a_document_must_inline_its_sub_flows():
    assert parse_problems(parent({"id": "sub", "flow": "child.json"})) == [
        "steps[0].flow (step 'sub'): a flow given as a document must inline its sub-flows ('flow': {...})"
    ]


def test_sub_flows_nested_too_deep_are_refused_not_a_recursion_error():
    document: dict[str, Any] = CHILD
    for depth in range(40):
        document = {"name": f"level{depth}", "steps": [{"id": "sub", "flow": document}]}

    [problem] = parse_problems(document)
    assert "sub-flows nest more than 16 deep; flatten them" in problem


def test_flow_outputs_are_checked_like_references():
    steps = [{"id": "a", "script": "", "outputs": ["x"]}]

    assert parse_problems(
        parent(
            *steps,
            outputs={
                "ok": "${steps.a.x}",
                "u": "${steps.b.x}",
                "k": "${steps.a.y}",
                "f": "${flow.n}",
                "m": "total: ${steps.a.x}",
            },
        )
    ) == [
        "outputs.u: flow output 'u' refers to unknown step 'b' in '${steps.b.x}'",
        "outputs.k: flow output 'k' refers to '${steps.a.y}', but step 'a' declares no output 'y' (it declares: x)",
        "outputs.f: flow output 'f' refers to a flow input; it names a step's output ('${steps.ID.KEY}')",
        "outputs.m: flow output 'm' is not one reference to a step's output ('${steps.ID.KEY}'): "
        "expected '${steps.ID.KEY}' or '${flow.KEY}'",
    ]
