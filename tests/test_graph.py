import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagrun.errors import CycleError
from dagrun.flow.drawing import to_dot, to_mermaid
from dagrun.flow.graph import ancestors, check_graph, find_cycles, topological_order
from dagrun.flow.model import Flow, Step, WaitFor
from dagrun.flow.parser import parse_flow


def make_flow(dag: dict[str, list[str]], name: str = "f") -> Flow:
    """A Flow straight from the dataclasses: no validation, so tests can build what parse_flow refuses."""
    steps = tuple(
        Step(id=step_id, index=i, script="pass", script_hash="h", depends_on=tuple(deps))
        for i, (step_id, deps) in enumerate(dag.items())
    )
    return Flow(name=name, steps=steps)


def test_topological_order_puts_dependencies_first_and_keeps_file_order_for_ties():
    flow = make_flow({"load": ["extract", "clean"], "extract": [], "clean": ["extract"], "report": []})

    assert topological_order(flow) == ["extract", "report", "clean", "load"]


@st.composite
def random_dags(draw):
    size = draw(st.integers(min_value=1, max_value=40))
    order = draw(st.permutations([f"s{i}" for i in range(size)]))
    dag = {}
    for position, step_id in enumerate(order):
        earlier = order[:position]
        dag[step_id] = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=4)) if earlier else []
    file_order = draw(st.permutations(list(dag)))
    return {step_id: dag[step_id] for step_id in file_order}


@settings(max_examples=200, deadline=None)
@given(random_dags())
def test_topological_order_puts_every_step_after_all_its_dependencies(dag):
    order = topological_order(make_flow(dag))
    position = {step_id: i for i, step_id in enumerate(order)}

    assert sorted(order) == sorted(dag)
    for step_id, deps in dag.items():
        assert all(position[dep] < position[step_id] for dep in deps)


@settings(max_examples=100, deadline=None)
@given(random_dags())
def test_ancestors_are_exactly_the_steps_reachable_through_depends_on(dag):
    def reach(step_id):
        found = set()
        for dep in dag[step_id]:
            found |= {dep} | reach(dep)
        return found

    flow = make_flow(dag)
    for step_id in dag:
        assert ancestors(flow, step_id) == reach(step_id)


@settings(max_examples=100, deadline=None)
@given(random_dags(), st.data())
def test_a_reference_is_a_race_exactly_when_its_step_is_not_an_ancestor(dag, data):
    flow = make_flow(dag)
    targets = {step_id: data.draw(st.lists(st.sampled_from(sorted(dag)), max_size=3)) for step_id in dag}
    steps = [
        Step(
            id=step.id,
            index=step.index,
            script="",
            script_hash="",
            depends_on=step.depends_on,
            inputs={"refs": [f"${{steps.{target}.v}}" for target in targets[step.id]]},
        )
        for step in flow.steps
    ]

    races = {(loc[1], loc[4]) for loc, message in check_graph(steps, {}) if "not among its dependencies" in message}

    expected = {
        (step.index, n)
        for step in flow.steps
        for n, target in enumerate(targets[step.id])
        if target != step.id and target not in ancestors(flow, step.id)
    }
    assert races == expected


def test_topological_order_raises_cycle_error_naming_the_cycle():
    flow = make_flow({"a": ["c"], "b": ["a"], "c": ["b"], "d": []})

    with pytest.raises(CycleError) as caught:
        topological_order(flow)

    assert caught.value.cycle == ("a", "b", "c", "a")
    assert "dependency cycle: a -> b -> c -> a" in str(caught.value)


def test_find_cycles_reports_one_closed_cycle_per_strongly_connected_component_in_file_order():
    dependents = {"x": ["y"], "y": ["x"], "a": ["b"], "b": ["c", "a"], "c": ["a"], "free": []}
    order = {step_id: i for i, step_id in enumerate(["a", "b", "c", "x", "y", "free"])}

    assert find_cycles(dependents, order=order) == [("a", "b", "a"), ("x", "y", "x")]


def test_check_graph_reports_unknown_self_repeated_duplicate_and_cycles_with_places():
    flow = make_flow({"a": ["lod", "a"], "b": ["a", "a"], "c": ["d"], "d": ["c"]})
    duplicate = Step(id="a", index=4, script="", script_hash="")

    assert check_graph([*flow.steps, duplicate], {}) == [
        (("steps", 0, "depends_on", 0), "step 'a' depends on unknown step 'lod'"),
        (("steps", 0, "depends_on", 1), "step 'a' depends on itself"),
        (("steps", 1, "depends_on", 1), "step 'b' lists dependency 'a' twice"),
        (("steps", 4, "id"), "duplicate step id 'a' (also steps[0])"),
        (("steps", 2, "depends_on", 0), "step 'c' is in a dependency cycle: c -> d -> c"),
    ]


def test_ancestors_of_an_unknown_step_raise_key_error():
    with pytest.raises(KeyError):
        ancestors(make_flow({"a": []}), "nope")


def test_to_dot_draws_steps_by_id_and_edges_from_dependency_to_dependent():
    flow = parse_flow(
        {
            "name": "etl",
            "steps": [{"id": "extract", "script": ""}, {"id": "load", "script": "", "depends_on": ["extract"]}],
        }
    )

    assert to_dot(flow) == (
        'digraph "etl" {\n  node [shape=box];\n  "extract";\n  "load";\n  "extract" -> "load";\n}\n'
    )


def test_to_dot_quotes_and_escapes_ids():
    flow = make_flow({'say "hi"': [], "back\\slash": ['say "hi"']}, name="a\nb")

    assert to_dot(flow) == (
        'digraph "a\\nb" {\n  node [shape=box];\n  "say \\"hi\\"";\n  "back\\\\slash";\n'
        '  "say \\"hi\\"" -> "back\\\\slash";\n}\n'
    )


def test_to_mermaid_uses_safe_node_names_labelled_by_id():
    flow = make_flow({"extract": [], "end": ["extract"], "load": ["extract", "end"]})

    assert to_mermaid(flow) == (
        'flowchart TD\n  s0["extract"]\n  s1["end"]\n  s2["load"]\n  s0 --> s1\n  s0 --> s2\n  s1 --> s2\n'
    )


def test_to_mermaid_escapes_characters_that_could_break_a_label():
    flow = make_flow({'a"]-->b': [], "<x>#1": []})

    assert to_mermaid(flow) == 'flowchart TD\n  s0["a#34;#93;--#62;b"]\n  s1["#60;x#62;#35;1"]\n'


APPROVAL = {
    "name": "release",
    "steps": [
        {"id": "build", "script": ""},
        {"id": "approve", "depends_on": ["build"], "wait_for": {"fields": ["approved"], "timeout_s": 60}},
        {"id": "deploy", "depends_on": ["approve"], "script": "", "inputs": {"ok": "${steps.approve.approved}"}},
    ],
}


def test_to_dot_draws_a_step_that_waits_for_a_signal_as_a_diamond():
    assert to_dot(parse_flow(APPROVAL)) == (
        'digraph "release" {\n  node [shape=box];\n  "build";\n  "approve" [shape=diamond];\n  "deploy";\n'
        '  "build" -> "approve";\n  "approve" -> "deploy";\n}\n'
    )


def test_to_mermaid_draws_a_step_that_waits_for_a_signal_as_a_rhombus():
    assert to_mermaid(parse_flow(APPROVAL)) == (
        'flowchart TD\n  s0["build"]\n  s1{"approve"}\n  s2["deploy"]\n  s0 --> s1\n  s1 --> s2\n'
    )


def test_to_mermaid_escapes_braces_in_the_label_of_a_waiting_step():
    step = Step(id="a}b", index=0, script="", script_hash="", outputs=("ok",), wait_for=WaitFor(("ok",)))

    assert to_mermaid(Flow(name="f", steps=(step,))) == 'flowchart TD\n  s0{"a#125;b"}\n'


def test_references_to_fields_of_a_waiting_step_are_checked_against_them():
    approve = Step(id="approve", index=0, script="", script_hash="", outputs=("ok",), wait_for=WaitFor(("ok",)))
    deploy = Step(
        id="deploy",
        index=1,
        script="",
        script_hash="",
        depends_on=("approve",),
        inputs={"ok": "${steps.approve.ok}", "no": "${steps.approve.no}"},
    )

    assert check_graph([approve, deploy], {}) == [
        (
            ("steps", 1, "inputs", "no"),
            "step 'deploy' references '${steps.approve.no}', but step 'approve' declares no output 'no' "
            "(it declares: ok)",
        )
    ]


BRANCH = {
    "name": "branch",
    "steps": [
        {"id": "check", "script": "", "outputs": ["grade"]},
        {"id": "publish", "depends_on": ["check"], "script": "", "when": '${steps.check.grade} == "A"'},
        {"id": "report", "depends_on": ["check", "publish"], "script": "", "run_if": "all_done"},
    ],
}


def test_to_dot_draws_the_edges_into_a_conditional_step_dashed_and_labelled_with_the_condition():
    assert to_dot(parse_flow(BRANCH)) == (
        'digraph "branch" {\n  node [shape=box];\n  "check";\n  "publish";\n  "report";\n'
        '  "check" -> "publish" [style=dashed, label="${steps.check.grade} == \\"A\\""];\n'
        '  "check" -> "report";\n  "publish" -> "report";\n}\n'
    )


def test_to_mermaid_draws_the_edges_into_a_conditional_step_dotted_and_labelled_with_the_condition():
    assert to_mermaid(parse_flow(BRANCH)) == (
        'flowchart TD\n  s0["check"]\n  s1["publish"]\n  s2["report"]\n'
        '  s0 -.->|"#36;#123;steps.check.grade#125; #61;#61; #34;A#34;"| s1\n  s0 --> s2\n  s1 --> s2\n'
    )
