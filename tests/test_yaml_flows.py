"""YAML flow files: the same schema and problems as JSON ones, each problem with its line; safe loading only."""

import json
from pathlib import Path

import pytest
import yaml

from dagrun import MemoryStore, Orchestrator
from dagrun.errors import FlowError
from dagrun.flow import yaml_document
from dagrun.flow.loader import load_flow
from dagrun.flow.references import TOO_DEEP

FLOWS = Path(__file__).resolve().parent.parent / "flows"


@pytest.fixture(autouse=True, params=["libyaml", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with libyaml's parser and with the pure-Python one PyYAML falls back to without it."""
    if request.param == "python":
        monkeypatch.setattr(yaml_document, "_LOADER", yaml.SafeLoader)
    return str(request.param)


def write(directory: Path, text: str, name: str = "flow.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    assert caught.value.source == str(path)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("name", ["flow.yaml", "flow.yml", "FLOW.YAML"])
def test_a_yaml_flow_is_the_json_flow_it_writes(tmp_path: Path, name: str) -> None:
    document = json.loads((FLOWS / "etl.json").read_text())
    json_flow = load_flow(FLOWS / "etl.json")

    yaml_flow = load_flow(write(tmp_path, yaml.safe_dump(document), name))

    assert yaml_flow.steps == json_flow.steps
    assert yaml_flow.document == json_flow.document
    assert (yaml_flow.name, yaml_flow.inputs, yaml_flow.description) == ("etl", json_flow.inputs, json_flow.description)


def test_script_files_are_read_relative_to_the_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flows" / "scripts").mkdir(parents=True)
    (tmp_path / "flows" / "scripts" / "load.py").write_text("outputs['n'] = 1\n", encoding="utf-8")
    write(tmp_path / "flows", "name: etl\nsteps:\n  - id: load\n    script_file: scripts/load.py\n")
    monkeypatch.chdir(tmp_path)

    flow = load_flow(Path("flows") / "flow.yaml")

    assert flow.step("load").script == "outputs['n'] = 1\n"


def test_problems_have_their_json_path_and_line_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
name: bad
steps:
  - id: a
    script: "x = ("
  - id: b
    depends_on: [lod]
    script: pass
    timeout_s: -1
""",
    )

    assert problems(path) == [
        "line 4, steps[0].script (step 'a'): line 1: '(' was never closed",
        "line 6, steps[1].depends_on[0]: step 'b' depends on unknown step 'lod'",
        "line 8, steps[1].timeout_s (step 'b'): input should be greater than 0 (got -1)",
    ]


def test_a_missing_script_file_is_reported_at_its_step_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsteps:\n  - id: load\n    script_file: scripts/x.py\n")

    assert problems(path) == [
        "line 4, steps[0].script_file (step 'load'): cannot read 'scripts/x.py': No such file or directory"
    ]


def test_yaml_syntax_errors_say_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsteps:\n  - id: a\n    script: pass\n   bad: [\n")

    (problem,) = problems(path)

    assert problem.startswith("line 5, column 4: ")


def test_python_tags_are_problems_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write(
        tmp_path,
        f"name: x\nsteps:\n  - id: a\n    script: !!python/object/apply:os.system ['touch {marker}']\n",
    )

    assert problems(path) == [
        "line 4, steps[0].script: the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed: "
        "a flow is plain data"
    ]
    assert not marker.exists()


def test_keys_yaml_reads_as_booleans_or_numbers_are_problems_with_their_place(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\non: push\nsteps:\n  - id: a\n    script: pass\n    inputs: {yes: 1, 2: b}\n")

    assert problems(path) == [
        "line 2: the key 'on' is read as a boolean, not a string: quote it",
        "line 6, steps[0].inputs: the key 'yes' is read as a boolean, not a string: quote it",
        "line 6, steps[0].inputs: the key '2' is read as a number, not a string: quote it",
    ]
    quoted = write(tmp_path, "name: x\n'on': push\nsteps: [{id: a, script: pass}]\n")
    (problem,) = problems(quoted)
    assert problem.startswith("unknown field 'on'; known fields: ")


def test_values_json_cannot_hold_are_problems_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsteps:\n  - id: a\n    script: pass\n    inputs:\n      day: 2024-01-02\n")

    assert problems(path) == ["line 6, steps[0].inputs.day (step 'a'): not a JSON value (got date)"]


def test_duplicate_keys_keep_the_last_value_as_in_json_flow_files(tmp_path: Path) -> None:
    json_path = tmp_path / "flow.json"
    json_path.write_text('{"name": "first", "name": "last", "steps": [{"id": "a", "script": "pass"}]}')
    yaml_path = write(tmp_path, "name: first\nname: last\nsteps: [{id: a, script: pass}]\n")

    assert load_flow(json_path).name == load_flow(yaml_path).name == "last"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file holds no YAML document: a flow is a mapping"),
        ("# only a comment\n", "the file holds no YAML document: a flow is a mapping"),
        ("- a\n- b\n", "a flow is a mapping, not an array"),
        ("just text\n", "a flow is a mapping, not a string"),
        (
            "name: x\n---\nname: y\n",
            "line 2, column 1: expected a single document in the stream, but found another document",
        ),
    ],
)
def test_a_yaml_file_that_is_not_one_mapping_is_one_problem(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(write(tmp_path, text)) == [expected]


def test_an_alias_inside_itself_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsteps:\n  - id: a\n    script: pass\n    inputs: &loop {self: *loop}\n")

    assert problems(path) == [
        "line 5, steps[0].inputs.self: an alias to a node that holds it: a flow cannot contain itself"
    ]


def test_aliases_that_repeat_into_too_many_values_are_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yaml_document, "MAX_VALUES", 10_000)
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]  # 10**9 values
    path = write(tmp_path, "name: x\nsteps: [{id: a, script: pass}]\nlaughs:\n" + "".join(f"  {x}\n" for x in levels))

    assert problems(path) == ["line 1: its aliases repeat nodes into more than 10,000 values; write less"]


def test_aliases_and_merge_keys_are_plain_yaml_and_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
name: x
steps:
  - &base {id: a, script: "outputs['n'] = 1", outputs: [n], timeout_s: 5}
  - <<: *base
    id: b
""",
    )

    flow = load_flow(path)

    assert [(step.id, step.timeout_s, step.outputs) for step in flow.steps] == [("a", 5, ("n",)), ("b", 5, ("n",))]


def deep_flow(tmp_path: Path, depth: int) -> Path:
    return write(
        tmp_path, "name: x\nsteps:\n  - id: a\n    script: pass\n    inputs:\n      deep: " + "[" * depth + "]" * depth
    )


def test_a_value_nested_too_deep_is_reported_at_its_input(tmp_path: Path) -> None:
    assert problems(deep_flow(tmp_path, 100)) == [f"line 6, steps[0].inputs.deep: {TOO_DEEP}"]


def test_nesting_too_deep_for_the_yaml_parser_is_one_problem_never_a_crash(tmp_path: Path, parser: str) -> None:
    (problem,) = problems(deep_flow(tmp_path, 100_000))

    # libyaml stops at 1000 levels; the pure-Python parser runs out of stack before that
    expected = "line 6, column 1009: while increasing flow level, exceeded maximum nesting depth"
    assert problem == (expected if parser == "libyaml" else TOO_DEEP)


def test_a_yaml_flow_that_is_not_utf8_is_reported_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_bytes(b"name: x\nsteps: \xff\n")

    assert problems(path) == ["line 2, column 8: not UTF-8 text"]


def readme_sample() -> str:
    """The YAML flow in the README's "Authoring flows"."""
    section = (FLOWS.parent / "README.md").read_text().split("## Authoring flows", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


async def test_the_readme_yaml_sample_runs_and_its_problem_is_as_told(tmp_path: Path) -> None:
    async with Orchestrator(MemoryStore(), processes=1) as orchestrator:
        result = await orchestrator.run(load_flow(write(tmp_path, readme_sample())))
    assert result.steps["shout"].outputs == {"shouted": "HELLO, WORLD"}

    problem = problems(write(tmp_path, readme_sample().replace("[greet]", "[gret]")))[0]
    assert f"`flow.yaml: {problem}`" in " ".join((FLOWS.parent / "README.md").read_text().split())
